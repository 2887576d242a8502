"""Training-time augmentation of audio frame sequences: SpecAugment-style masking (Park et al., 2019).

Each training utterance gets ``n_masks`` bands of feature dimensions and ``n_masks`` spans of its own frames set
to 0, which after the fold's standardisation is the training mean. Widths are drawn uniformly in [0, max]. The
loop applies it to training batches only (never to validation, test or a prediction), so a small corpus cannot
be memorised frame by frame: a CNN over log-mel must find the emotion in more than one band and one moment.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _bands(n_items: int, n_masks: int, max_width: int, extent: Tensor, size: int,
           gen: torch.Generator | None) -> Tensor:
    """[n_items, size] True inside any of ``n_masks`` random bands per item, each of width in [0, max_width]
    and lying inside the item's ``extent`` (its own length along this axis)."""
    width = torch.randint(0, max_width + 1, (n_items, n_masks), generator=gen)
    width = torch.minimum(width, extent[:, None])
    start = (torch.rand((n_items, n_masks), generator=gen) * (extent[:, None] - width + 1)).long()
    pos = torch.arange(size)[None, None, :]
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return inside.any(dim=1)


def mask_frames(x: Tensor, mask: Tensor, freq_width: int, time_width: int, n_masks: int = 2,
                gen: torch.Generator | None = None) -> Tensor:
    """``x`` [B, T, D] or [B, T, L, D] (stored layers) with bands of D and spans of each item's real frames
    (``mask`` [B, T]) set to 0. The masks are drawn on the CPU (with ``gen``) and moved to ``x``'s device."""
    b, t, d = x.shape[0], x.shape[1], x.shape[-1]
    keep = torch.ones(b, t, d, dtype=torch.bool)
    if freq_width > 0:
        keep &= ~_bands(b, n_masks, freq_width, torch.full((b,), d), d, gen)[:, None, :]
    if time_width > 0:
        lengths = mask.sum(dim=1).cpu()
        keep &= ~_bands(b, n_masks, time_width, lengths, t, gen)[:, :, None]
    keep = keep.to(x.device)
    if x.dim() == 4:
        keep = keep[:, :, None, :]
    return x * keep.to(x.dtype)
