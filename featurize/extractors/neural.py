"""What the neural extractors share: layer specs, model identity for fingerprints, device and autocast.

No extractor is registered here.
"""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^(-?\d+)\s*-\s*(-?\d+)$")  # "0-12", "-3--1"


def parse_layers(spec: str | None, n_layers: int, default: str = "last") -> list[int]:
    """Hidden-state indices from a spec: ``last``, ``all``, ``0-12``, ``9,12``, ``-1`` (from the end).

    Index 0 is the encoder's input (the embeddings / the convolutional features after projection)
    and index ``n_layers`` the last layer, as in ``output_hidden_states``.
    """
    spec = (spec or default).strip().lower()
    if spec == "last":
        return [n_layers]
    if spec == "all":
        return list(range(n_layers + 1))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = _RANGE.match(part)
        if m:
            idx = list(range(_layer_index(m.group(1), n_layers), _layer_index(m.group(2), n_layers) + 1))
            if not idx:
                raise ValueError(f"empty layer range {part!r}")
            out.extend(idx)
        else:
            out.append(_layer_index(part, n_layers))
    if not out:
        raise ValueError(f"no layers in {spec!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"layer spec {spec!r} names a layer twice")
    return out


def _layer_index(text: str, n_layers: int) -> int:
    try:
        i = int(text)
    except ValueError as e:
        raise ValueError(f"bad layer {text!r}: use e.g. last, all, 0-12, 9,12") from e
    if i < 0:
        i += n_layers + 1
    if not 0 <= i <= n_layers:
        raise ValueError(f"layer {text} out of range: the model has hidden states 0..{n_layers}")
    return i


def length_groups(lengths: list[int], cap: float, equal_only: bool = False) -> list[list[int]]:
    """Indices grouped into forward passes: sorted by length, padded size (longest × count) at most
    ``cap``; with ``equal_only`` a group holds inputs of one exact length (nothing is padded)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        cur = groups[-1] if groups else None
        if cur and (len(cur) + 1) * lengths[i] <= cap and (not equal_only or lengths[cur[0]] == lengths[i]):
            cur.append(i)
        else:
            groups.append([i])
    return groups


def describe_layers(layers: list[int]) -> str:
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(i) for i in layers)


@lru_cache(maxsize=32)
def model_identity(model_id: str | None, model_path: str | None, revision: str | None) -> dict[str, Any]:
    """What names the weights in a fingerprint: a local directory by a hash of its content (so a
    moved copy keeps its groups and different weights get new ones); a hub id by its commit hash
    when it can be resolved (from the local cache when offline), else by the revision asked for.
    Cached per process: config() is asked for more than once per run, and hashing a model takes a second."""
    from featurize.models import path_fingerprint

    if model_path is not None:
        # Content only, not the path: the same weights in another checkout resume the same groups.
        return {"model_hash": path_fingerprint(model_path)}
    commit = None
    try:
        from transformers.utils.hub import resolve_revision

        resolved = resolve_revision(model_id, revision)
        # transformers 5 returns a str equal to the revision asked for ("main"), the commit in `.resolved`
        commit = getattr(resolved, "resolved", None) or resolved
    except Exception:  # best effort: offline without a cache entry, or an older transformers
        commit = None
    return {"model_id": model_id, "revision": str(commit or revision or "main")}


def load_config(where: str, revision: str | None, local: bool) -> Any:
    """The model's config (no weights), with an error that says what to do when it cannot be had."""
    from transformers import AutoConfig

    if local:
        from featurize.models import check_model_dir

        check_model_dir(where)
    try:
        return AutoConfig.from_pretrained(where, revision=revision, local_files_only=local)
    except OSError as e:
        hint = "check the directory" if local else \
            "the hub is unreachable and the model is not in the local cache: pass --model-path DIR"
        reason = " ".join(str(e).split())  # transformers' messages run over several lines
        raise FileNotFoundError(f"cannot load the model config of {where}: {hint} ({reason})") from e


def location(model_id: str | None, model_path: str | None) -> str:
    return str(model_path) if model_path is not None else str(model_id)


def is_local(value: str | None) -> bool:
    """A string given as a model id that is an existing directory is treated as a path."""
    return value is not None and Path(value).is_dir()


def pick_device(device: str | None, check: bool = True) -> str:
    """``auto``: cuda where torch sees a GPU, else cpu. ``check=False`` takes an explicit cuda without one here:
    a fingerprint made by a process that only plans (its cluster's workers compute, and check it)."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if check and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    return device


def pick_autocast(autocast: str | None, device: str) -> str:
    """``auto``: bf16 on CUDA (fp16 where bf16 is unsupported), none on CPU, where exact fp32 is
    the reference and bf16 would change the stored values for a modest speed-up."""
    import torch

    autocast = (autocast or "auto").lower()
    if autocast == "auto":
        if device.startswith("cuda"):
            # without a GPU here (a planning process), a current GPU's: its workers check they agree
            return "bfloat16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "float16"
        return "none"
    if autocast not in ("none", "bfloat16", "float16"):
        raise ValueError(f"autocast must be auto, none, bfloat16 or float16, got {autocast!r}")
    return autocast


def autocast_context(autocast: str, device: str) -> contextlib.AbstractContextManager:
    import torch

    if autocast == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, autocast))


def torch_versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def as_float(value: float | str, name: str) -> float:
    try:
        return float(value)
    except ValueError as e:
        raise ValueError(f"option {name} wants a number, got {value!r}") from e


def as_int(value: int | str, name: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"option {name} wants an integer, got {value!r}") from e
