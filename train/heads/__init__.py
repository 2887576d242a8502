"""Head registry: a name maps to a config dataclass and an nn.Module; one file per head.

The contract every head follows (the loop and the data loader rely on nothing else):

* ``Config`` is a plain dataclass holding the paper's hyperparameters as defaults, including the
  optimisation ones the loop reads: ``lr``, ``weight_decay``, ``epochs``, ``batch_size``.
  ``train run --set key=value`` overrides any field.
* ``INPUTS`` declares, per modality the head can use (``audio``, ``text``), the form it wants:
    - ``"pooled"``: one vector per utterance, ``batch[m]`` is ``[B, D]`` (layered features come as
      ``[B, L, D]``);
    - ``"sequence"``: frames / tokens, ``batch[m]`` is ``[B, T, D]`` (or ``[B, T, L, D]``) with
      ``batch[m + "_mask"]`` ``[B, T]`` bool, True on real positions;
    - ``"words"`` (text only): word vectors ``batch["words"]`` ``[B, W, D]``, ``batch["word_mask"]``
      ``[B, W]`` and ``batch["word_frames"]`` ``[B, W, 2]`` long = [first, last+1) audio frame of
      each word at the audio feature's frame rate (empty span = word without frames).
* ``DIALOGUE = True`` heads get dialogues instead of utterances: every tensor gains an utterance
  axis after the batch axis (``[B, U, D]``), ``batch["utt_mask"]`` is ``[B, U]``, labels ``[B, U]``
  with -100 on padding.
* ``forward(batch) -> dict`` with ``"logits"`` (``[B, C]`` or ``[B, U, C]``) and any extra outputs;
  ``loss(out, batch) -> Tensor`` uses ``batch["labels"]`` (long; -100 = ignore) or, when present
  and the head supports it, ``batch["soft_labels"]`` ``[B, C]``.
* ``batch["epoch"]`` (int) and ``self.training`` are available for schedules (e.g. RMM decay).
* ``modalities`` (constructor argument) lists the modalities actually given; unimodal variants
  are the same head built with one modality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class HeadSpec:
    name: str
    config_cls: type
    build: Callable[
        ..., nn.Module
    ]  # build(config, dims: dict[str, int], layers: dict[str, int], n_classes, modalities)
    inputs: dict[str, str]  # modality -> "pooled" | "sequence" | "words"
    dialogue: bool = False
    description: str = ""


HEADS: dict[str, HeadSpec] = {}


def register(spec: HeadSpec) -> HeadSpec:
    HEADS[spec.name] = spec
    return spec


def get_head(name: str) -> HeadSpec:
    _load_all()
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known: {', '.join(sorted(HEADS))}")
    return HEADS[name]


def make_config(spec: HeadSpec, overrides: dict[str, Any] | None = None) -> Any:
    """The head's config with ``overrides`` (strings from the command line are converted to the field's type)."""
    cfg = spec.config_cls()
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"head {spec.name!r} has no option {key!r}; options: {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        if isinstance(value, str) and not isinstance(current, str):
            value = _convert(value, current, key)
        setattr(cfg, key, value)
    return cfg


def _convert(value: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {key!r} wants true/false, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, (list, tuple)):
        return type(current)(type(current[0])(v) if current else v for v in value.split(","))
    if current is None:
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return None if value.lower() == "none" else value
    return value


def _load_all() -> None:
    import importlib
    import pkgutil

    import train.heads as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"train.heads.{mod.name}")
