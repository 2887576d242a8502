"""How a head is trained: one plain dataclass per head (its ``RECIPE``, declared beside the head).

A recipe is the optimisation half of a run; the head's ``Config`` is the model half. ``--set key=value``
and a YAML file (``train run --recipe FILE``, or ``options:`` in a sweep) override either, by field name.

The loop (train/loop.py) reads it as follows:

* the budget is ``epochs``, raised when needed so that it holds at least ``min_steps`` optimiser steps:
  a 400-utterance fold at batch 32 is 13 steps an epoch, and a paper's 20 epochs are then only 260 steps;
* the learning rate warms up linearly over ``warmup`` (a fraction of the budget), then follows
  ``schedule``: ``cosine`` to 0 at the end of the budget, ``step`` (x ``step_gamma`` at each of
  ``step_at``, fractions of the budget) or ``constant``;
* early stopping (``patience`` epochs without a better validation ``select_on``) can fire only after
  ``stop_after`` of the budget: before that the schedule is still in its useful, high-lr part;
* ``autocast``: ``bfloat16`` runs the head's forward pass (and so its backward) in bfloat16 where torch's
  autocast allows, the weights, optimiser and loss staying float32 (cme on rav4: about 20% less time a step
  on a CPU with AVX-512 BF16; msmser was slower); ``none`` (the default) is exact float32;
* ``length_window`` k: training batches of similar length (each k batches' worth of shuffled utterances
  sorted by length, then cut): less padding, so less work for a convolution or attention over frames;
* ``select_window`` k: the checkpoint (and the epoch count a refit reuses) is chosen on the mean of the last k
  epochs' validation scores, not on one epoch's: UA on a hundred validation utterances jumps by several points
  from epoch to epoch, and a refit that trusts one early spike trains too few epochs;
* ``freq_mask`` / ``time_mask``: SpecAugment on the audio frames of training batches (train/augment.py);
* ``normalize``: ``fold`` (the default) standardises every input per dimension with its training fold's
  statistics; ``speaker`` first standardises each speaker's inputs with that speaker's own statistics, over all
  of that speaker's utterances in the store (their features only; no label is read), test speakers included, then
  the fold's (train/data.py, ``speaker_statistics``). Speaker normalisation takes away what a voice is (its level,
  pitch range, timbre) and leaves how an utterance departs from it. Still speaker-independent (no test speaker's
  label or utterance is trained on) but transductive: to score a new speaker it needs a batch of that speaker's
  speech, so it is never the default and every table names it;
* ``refit``: the epoch count (or, for convex heads, the regularisation) is chosen on the validation
  speakers, then the head is trained again from scratch on training + validation speakers with that
  choice and tested; the test fold is never looked at before.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
SELECT_ON = ("ua", "wa", "macro_f1", "loss")  # loss: the lowest validation cross-entropy
CLASS_WEIGHTS = ("none", "balanced")
AUTOCASTS = ("none", "bfloat16")
NORMALIZE = ("fold", "speaker")


@dataclass
class Recipe:
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0  # adam: L2 added to the gradient; adamw: decoupled decay
    epochs: int = 30
    min_steps: int = 0  # floor on the budget in optimiser steps (epochs are raised to reach it)
    batch_size: int = 32
    warmup: float = 0.0  # fraction of the budget with a linear warm-up from 0
    schedule: str = "cosine"
    step_at: tuple[float, ...] = (0.5, 0.75)  # `step` schedule: where the lr is multiplied by step_gamma
    step_gamma: float = 0.1
    patience: int = 20  # epochs without a better validation score before stopping ...
    stop_after: float = 0.5  # ... and never before this fraction of the budget
    clip_norm: float | None = None  # gradient clipping (global L2 norm)
    select_on: str = "ua"  # validation metric that picks the checkpoint (or C): ua | wa | macro_f1 | loss
    select_window: int = 1  # choose on the mean of the last k epochs' validation scores (1: each epoch alone)
    refit: bool = False  # retrain on train + validation speakers with the chosen epochs / regularisation
    # ours: a fused head also fits each one-modality variant on the training speakers, and the fold keeps the one
    # whose chosen epoch scored best on validation (ties keep the fused model); a refit retrains that one. A
    # modality that carries nothing (RAVDESS's two fixed sentences) is then left out by validation, as C is chosen
    choose_modalities: bool = False
    # balanced: class c weighs n / (k * n_c) in the training loss (scikit-learn's "balanced"), so the loss counts
    # every class alike, as UA does; none: every utterance alike, as WA does
    class_weight: str = "none"
    autocast: str = "none"  # none (float32) | bfloat16: the forward pass in bfloat16 where autocast allows
    # k > 0: training batches drawn from runs of k batches' worth of shuffled utterances sorted by length, so
    # a batch pads less (0: batches at random)
    length_window: int = 0
    # SpecAugment on the training batches' audio frames (train/augment.py): two bands of at most freq_mask feature
    # dimensions and two spans of at most time_mask frames per utterance set to the training mean (0: off)
    freq_mask: int = 0
    time_mask: int = 0
    normalize: str = "fold"  # fold | speaker: each speaker's inputs standardised on that speaker's own speech first

    def check(self) -> Recipe:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"recipe: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"recipe: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"recipe: select_on must be one of {', '.join(SELECT_ON)}, got {self.select_on!r}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"recipe: class_weight must be one of {', '.join(CLASS_WEIGHTS)}, "
                             f"got {self.class_weight!r}")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"recipe: autocast must be one of {', '.join(AUTOCASTS)}, got {self.autocast!r}")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"recipe: normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        if self.freq_mask < 0 or self.time_mask < 0:
            raise ValueError("recipe: freq_mask and time_mask are widths (0: off), not negative")
        if self.select_window < 1:
            raise ValueError("recipe: select_window must be a number of epochs, at least 1")
        if self.length_window < 0:
            raise ValueError("recipe: length_window must be 0 (off) or a number of batches")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("recipe: epochs, batch_size and lr must be positive")
        if not 0 <= self.warmup < 1 or not 0 <= self.stop_after <= 1:
            raise ValueError("recipe: warmup must be in [0, 1) and stop_after in [0, 1]")
        return self

    def budget(self, steps_per_epoch: int) -> int:
        """Epochs to train: ``epochs``, or more when that many epochs would be fewer than ``min_steps`` steps."""
        return max(self.epochs, math.ceil(self.min_steps / max(steps_per_epoch, 1)))

    def earliest_stop(self, budget: int) -> int:
        """The first epoch after which early stopping may fire."""
        return math.ceil(self.stop_after * budget)


def class_weights(mode: str, labels: np.ndarray, n_classes: int) -> np.ndarray | None:
    """Per-class loss weights [k] for these training labels (negative = unlabelled, ignored), or None for
    ``none``. ``balanced``: n / (k * n_c), so the weighted mean over the rows is still a mean (the weights sum to
    n when every class is present); a class with no training row gets 0."""
    if mode == "none":
        return None
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)


def selection_score(select_on: str, metrics: dict[str, float], loss: float) -> float:
    """The validation score that picks a checkpoint or a C, higher is better: a metric, or minus the
    mean cross-entropy (``loss``: smooth where UA on a hundred utterances moves in steps and is noisy)."""
    return -loss if select_on == "loss" else metrics[select_on]


class EpochSelector:
    """Picks the best epoch as validation scores arrive, one per epoch: the epoch whose trailing mean over
    ``window`` epochs (fewer at the start) is highest. A trailing mean, so the chosen epoch's weights are the
    ones in hand when it is chosen. ``first``: the epoch reported until a score is seen (a refit scores none)."""

    def __init__(self, window: int = 1, first: int = -1) -> None:
        self.window = window
        self.scores: list[float] = []
        self.best_score, self.best_epoch = -math.inf, first

    def update(self, score: float) -> tuple[float, bool]:
        """Add the next epoch's score; returns its windowed score and whether that epoch is the new best."""
        self.scores.append(score)
        recent = self.scores[-self.window:]
        windowed = sum(recent) / len(recent)
        if windowed > self.best_score:
            self.best_score, self.best_epoch = windowed, len(self.scores) - 1
            return windowed, True
        return windowed, False


def lr_factor(recipe: Recipe, progress: float) -> float:
    """The learning-rate multiplier at ``progress`` in [0, 1) of the budget (per optimiser step)."""
    if progress < recipe.warmup:
        return progress / recipe.warmup
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "step":
        return recipe.step_gamma ** sum(progress >= s for s in recipe.step_at)
    done = (progress - recipe.warmup) / (1.0 - recipe.warmup)  # cosine over what follows the warm-up
    return 0.5 * (1.0 + math.cos(math.pi * done))


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def apply_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """``obj`` (a dataclass instance) with the ``overrides`` that name its fields applied, each converted to the
    field's declared type (strings from the command line, YAML's own types from a file); a value that is not of
    that type is refused, naming the option. Other keys are left to the caller."""
    obj = dataclasses.replace(obj)
    hints = typing.get_type_hints(type(obj))
    for key, value in overrides.items():
        if key in hints:
            setattr(obj, key, convert(value, hints[key], key))
    return obj


def convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` of field ``key``: one of bool, int, float, str, ``X | None`` and
    ``tuple[X, ...]`` (the types the heads' configs and recipes use); ValueError when it is not one."""
    def refuse(wanted: str) -> ValueError:
        return ValueError(f"option {key!r} wants {wanted}, got {value!r}")

    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(value, inner, key)
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]: a list, a comma-separated string, or one value
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            items = [items]  # `c_grid: 0.001` in a sweep, where a list would be a grid axis
        if not isinstance(items, (list, tuple)):
            raise refuse(f"a comma-separated list of {args[0].__name__}")
        return tuple(convert(v.strip() if isinstance(v, str) else v, args[0], key) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # YAML's 0 / 1
            return bool(value)
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise refuse("true/false")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise refuse(f"a number ({hint.__name__})")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise refuse("a whole number")
        try:
            return hint(float(value)) if hint is int and isinstance(value, float) else hint(value)
        except ValueError:
            raise refuse(f"a number ({hint.__name__})") from None
    if hint is str:
        if isinstance(value, (list, tuple, dict)) or value is None:
            raise refuse("a single value")
        return str(value)
    raise TypeError(f"option {key!r}: field type {hint} is not one options can set")
