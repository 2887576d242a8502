"""What `featurize` and `train` share as command lines: one-line errors with documented exit codes, `--version`,
`--debug`, and help text filled from the registries only when a command's help is asked for.

Exit codes (README "Exit codes"):

    0  done
    1  an internal error (a bug: the traceback is printed, please report it)
    2  usage: an unknown option, name or value (an unknown head, extractor, feature, protocol, a bad -o / --set)
    3  data: something in the corpus or the store is missing, broken or skipped (named in the message)
    4  busy: another process holds a lock on the part of the store this command needs (--lock-timeout)
  130  interrupted (Ctrl-C)

Domain errors print one paragraph on stderr — what, which file or option, what to do — and no traceback,
unless ``--debug`` or ``SERCACHE_DEBUG=1``. Everything here imports nothing heavy: ``--help`` must stay fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import typer

EXIT_INTERNAL, EXIT_USAGE, EXIT_DATA, EXIT_BUSY, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


def sercache_version() -> str:
    try:
        return version("sercache")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def debugging() -> bool:
    return os.environ.get("SERCACHE_DEBUG", "") not in ("", "0")


def exit_code(e: BaseException) -> int | None:
    """The documented exit code of a domain error; None for anything else (a bug)."""
    from featurize.locks import LockTimeout  # light modules only
    from featurize.registry import UnknownName

    names = {c.__name__ for c in type(e).__mro__}
    if isinstance(e, LockTimeout):
        return EXIT_BUSY
    if isinstance(e, UnknownName) or "OptionError" in names:
        return EXIT_USAGE
    if {"StoreError", "DamagedFile"} & names or isinstance(e, (FileNotFoundError, NotADirectoryError,
                                                               IsADirectoryError, FileExistsError, PermissionError,
                                                               UnicodeDecodeError)):
        return EXIT_DATA
    if isinstance(e, OSError) and e.errno in (28, 30):  # ENOSPC, EROFS: the message names the path
        return EXIT_DATA
    if isinstance(e, ValueError):
        return EXIT_USAGE
    return None


def friendly(command: Callable) -> Callable:
    """Wrap a typer command: a domain error becomes one line on stderr and its exit code."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            code = exit_code(e)
            if code is None or debugging():
                raise
            text = str(e).strip() or type(e).__name__
            print(f"error: {text}", file=sys.stderr)
            print("(SERCACHE_DEBUG=1 or --debug shows the traceback)", file=sys.stderr)
            raise typer.Exit(code) from None

    return run


def common_options(app: typer.Typer, name: str) -> None:
    """``--version`` and ``--debug`` on the top-level command."""

    def show_version(value: bool) -> None:
        if value:
            print(f"{name} (sercache) {sercache_version()}")
            raise typer.Exit()

    @app.callback()
    def _root(
        version_: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help="print the version and exit"),
        debug: bool = typer.Option(False, "--debug", help="show tracebacks of errors (or SERCACHE_DEBUG=1)"),
    ) -> None:
        if debug:
            os.environ["SERCACHE_DEBUG"] = "1"


def run_app(app: typer.Typer, fill_help: Callable[[Any], None] | None = None) -> None:
    """Run ``app``; when a command's ``--help`` is asked for, ``fill_help(click_group)`` first puts the
    registries' names into its options' help (they import torch and friends, which plain runs and the top-level
    help never pay for)."""
    group = typer.main.get_command(app)
    if fill_help is not None and "--help" in sys.argv[2:] and len(sys.argv) > 2:
        fill_help(group)
    group(prog_name=os.path.basename(sys.argv[0]))


def set_help(group: Any, command: str, param: str, text: str) -> None:
    cmd = group.commands.get(command)
    if cmd is None:
        return
    for p in cmd.params:
        if p.name == param:
            p.help = text
