"""SpecAugment-style masking of training frames (train/augment.py) and its place in the loop."""

from __future__ import annotations

import torch

from tests.test_recipes import fold_of, synthetic
from train.augment import mask_frames
from train.heads import get_head, make_config, make_recipe
from train.loop import LoopOptions, train_fold


def test_masks_are_bands_of_dimensions_and_spans_of_real_frames_within_their_widths():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([50, 20, 35])
    x = torch.randn(3, 50, 40).abs() + 1.0  # never 0 by itself
    mask = torch.arange(50)[None, :] < lengths[:, None]
    x = x * mask[..., None]
    for _ in range(20):
        y = mask_frames(x, mask, freq_width=8, time_width=10, gen=gen)
        assert y.shape == x.shape
        assert (y[~mask] == 0).all()  # padding stays padding
        for b, n in enumerate(lengths.tolist()):
            real = y[b, :n]
            zero_dims = (real == 0).all(dim=0)  # a dimension masked in every frame: a frequency band
            zero_frames = (real == 0).all(dim=1)
            assert zero_dims.sum() <= 16 and zero_frames.sum() <= 20
            kept = real[~zero_frames][:, ~zero_dims]
            assert (kept == x[b, :n][~zero_frames][:, ~zero_dims]).all()  # the rest untouched
            assert (real != 0).any()


def test_masks_are_drawn_from_the_generator_and_reach_stored_layers():
    mask = torch.ones(2, 30, dtype=torch.bool)
    x = torch.ones(2, 30, 3, 16)  # [B, T, L, D]
    a = mask_frames(x, mask, 4, 6, gen=torch.Generator().manual_seed(1))
    b = mask_frames(x, mask, 4, 6, gen=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a == 0).any()
    assert torch.equal(a[:, :, 0], a[:, :, 2])  # every layer of a frame masked alike
    assert torch.equal(mask_frames(x, mask, 0, 0), x)


def test_masking_changes_the_training_and_a_fold_still_learns_through_it():
    data = synthetic()
    spec = get_head("probe")
    base = {"epochs": 30, "lr": 3e-2, "min_steps": 0, "warmup": 0.0}
    plain = train_fold(spec, make_config(spec), make_recipe(spec, base), data, fold_of(data), 0, LoopOptions())
    masked = train_fold(spec, make_config(spec), make_recipe(spec, {**base, "freq_mask": 2, "time_mask": 3}), data,
                        fold_of(data), 0, LoopOptions())
    assert masked["train_loss_final"] != plain["train_loss_final"]
    assert masked["ua"] > 0.6  # 3 classes (chance 0.33): the signal in 1 of 8 dimensions survives the masking
