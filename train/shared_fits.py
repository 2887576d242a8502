"""Fits one sweep cell makes and another would make again, trained once.

A fused cell that chooses its inputs on validation (recipe ``choose_modalities``) fits each one-modality
variant of its head on the fold's training speakers, and refits the one it keeps. Its audio-only twin in the
same sweep fits exactly that model again: same head, options, recipe, rows, normaliser and seed. The fused
cell keeps those one-modality fits under ``<sweep>/fits/``, and a fit of the twin whose key matches loads one
instead of training it. The key is a hash of everything the fit's result depends on, the training code,
torch's thread count and the CPU's instruction set included, so a reused fit is the fit the cell would have
trained (a test checks the twin's results against a run of its own); a fold records how many of its fits it
reused (``fits_reused``) and its ``seconds`` are what it spent.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from train.files import save_atomic

# recipe fields that decide what happens around a fit, not the fit itself
_NOT_IN_A_FIT = ("choose_modalities", "refit")


@functools.lru_cache(maxsize=1)
def training_code() -> str:
    """A hash of the training package's source: a fit made by other code is never reused."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _tensor_hash(h: Any, tensors: list[torch.Tensor]) -> None:
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def fit_key(head: str, config: Any, recipe: Any, data: Any, norm: Any, train_rows: list[int],
            select: tuple[str, list[int]] | None, seed: int, device: str, max_epochs: int | None,
            chosen: dict | None) -> str:
    """The hash that names one fit: the head and its options, the recipe, the inputs (store groups, arrays,
    normaliser statistics), the rows it trains and selects on with their labels, word spans and soft labels,
    the seed, the device, what a refit reuses, the training code, torch's version, thread count and the CPU
    instruction set its kernels use."""
    rows = list(train_rows) + (list(select[1]) if select else [])
    recipe_fields = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in _NOT_IN_A_FIT}
    described = {
        "head": head,
        "config": dataclasses.asdict(config),
        "recipe": recipe_fields,
        "inputs": {m: [i.feature, i.array, list(i.tail), i.form, i.rows_per_second] for m, i in data.inputs.items()},
        "classes": data.classes,
        "label_set": data.label_set,
        "dialogue": data.dialogue,
        "train": [data.utts[r].utt_id for r in train_rows],
        "select": [select[0], [data.utts[r].utt_id for r in select[1]]] if select else None,
        "seed": seed,
        "device": device,
        "max_epochs": max_epochs,
        "chosen": chosen or {},
        "code": training_code(),
        # the kernels torch picks differ with the CPU's instruction set, and so do a fit's last bits
        "torch": [torch.__version__, torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()],
    }
    h = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    _tensor_hash(h, [data.labels[rows]])
    _tensor_hash(h, [t for m in sorted(data.inputs) for t in norm.stats.get(m, ())])
    if data.word_frames is not None:
        _tensor_hash(h, [data.word_frames[r] for r in rows])
    if data.soft is not None:
        _tensor_hash(h, [data.soft[rows]])
    return h.hexdigest()[:32]


class SharedFits:
    """The fits of one sweep's cells, one file per fit (``<key>.pt``), written whole or not at all."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def load(self, key: str) -> dict | None:
        path = self.folder / f"{key}.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged file is no fit: it is trained again, and its file rewritten
            return None

    def save(self, key: str, fit: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_atomic(self.folder / f"{key}.pt", fit)  # two cells may save the same fit at once
