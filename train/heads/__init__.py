"""Head registry: a name maps to a config dataclass and an nn.Module; one file per head.

The contract every head follows (the loop and the data loader rely on nothing else):

* ``Config`` is a plain dataclass holding the paper's model hyperparameters as defaults; ``RECIPE``
  (a ``train.recipe.Recipe``, given to ``HeadSpec``) says how it is trained: optimiser, lr, schedule,
  budget, batch size, patience. ``train run --set key=value`` overrides a field of either by name.
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
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from featurize.registry import Registry
from train.recipe import Recipe, apply_overrides, field_names

# `text_weight = validation` (dialog, late_concat): the text contributions the loop tries on the validation speakers
# after training, the paper's plain sum first (a tie keeps it); see train.loop.choose_text_weight
TEXT_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass
class HeadSpec:
    name: str
    config_cls: type
    build: Callable[
        ..., nn.Module
    ]  # build(config, dims: dict[str, int], layers: dict[str, int], n_classes, modalities)
    inputs: dict[str, str]  # modality -> "pooled" | "sequence" | "words"
    recipe: Recipe = dataclasses.field(default_factory=Recipe)
    dialogue: bool = False
    description: str = ""
    # A head with a closed training problem (``linear``: a convex fit) trains itself instead of going
    # through the epoch loop: fit(model, train: dict, select: dict | None, classes, recipe) -> dict (its history).
    fit: Callable[..., dict] | None = None
    paper: str = ""  # where the head comes from, for tables


HEADS: Registry[HeadSpec] = Registry("head", __name__)


def register(spec: HeadSpec) -> HeadSpec:
    return HEADS.add(spec.name, spec)


def get_head(name: str) -> HeadSpec:
    return HEADS.get(name)


def check_overrides(spec: HeadSpec, overrides: dict[str, Any]) -> None:
    """Every override must name a field of the head's config or of its recipe."""
    known = field_names(spec.config_cls) | field_names(Recipe)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"head {spec.name!r} has no option {', '.join(map(repr, unknown))}; head options: "
            f"{', '.join(sorted(field_names(spec.config_cls)))}; "
            f"recipe options: {', '.join(sorted(field_names(Recipe)))}"
        )


def make_config(spec: HeadSpec, overrides: dict[str, Any] | None = None) -> Any:
    """The head's model config with the ``overrides`` that name its fields (strings are converted to the
    field's type), checked by its ``check()`` when it has one, so a bad value is refused before anything is
    loaded or written; the recipe's keys are left to ``make_recipe``."""
    check_overrides(spec, overrides or {})
    config = apply_overrides(spec.config_cls(), overrides or {})
    if hasattr(config, "check"):
        config.check()
    return config


def check_choice(head: str, option: str, value: Any, choices: tuple) -> None:
    """A head option that takes one of a few values: ValueError naming it and them otherwise."""
    if value not in choices:
        raise ValueError(f"{head}: {option} must be one of {', '.join(map(str, choices))}, got {value!r}")


def make_recipe(spec: HeadSpec, overrides: dict[str, Any] | None = None) -> Recipe:
    """The head's training recipe with the ``overrides`` that name recipe fields."""
    check_overrides(spec, overrides or {})
    return apply_overrides(spec.recipe, overrides or {}).check()


def classification_loss(logits: Tensor, labels: Tensor, batch: dict) -> Tensor:
    """Cross-entropy over the labelled positions (-100: unlabelled), each class weighted as the recipe's
    ``class_weight`` says (the loop puts the weights in ``batch["class_weights"]``; absent: unweighted)."""
    return F.cross_entropy(logits, labels, weight=batch.get("class_weights"), ignore_index=-100)


def fill_new_fields(head: str, head_config: dict | None, recipe: dict | None) -> tuple[dict | None, dict | None]:
    """A stored head configuration and recipe (a run's config.json, a bench record) with the fields added
    since it was written filled in with the dataclasses' own defaults. A new field's dataclass default is the
    behaviour from before it existed (that is the rule for adding one), so an old run compares equal to the
    same run today, while a head whose recipe sets another value (linear's balanced class weights) does not."""
    def filled(stored: dict | None, cls: type) -> dict | None:
        if stored is None:
            return None
        defaults = json.loads(json.dumps(dataclasses.asdict(cls()), default=str))
        return {**{k: v for k, v in defaults.items() if k not in stored}, **stored}

    config_cls = HEADS.get(head).config_cls if head in HEADS.names() else None
    return (filled(head_config, config_cls) if config_cls else head_config), filled(recipe, Recipe)
