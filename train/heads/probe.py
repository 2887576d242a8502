"""`probe`: the SUPERB-style probe (Yang et al., 2021) on frozen features.

Per modality: learnable softmax weights over the stored layers -> masked mean over frames / tokens;
the modalities' vectors are concatenated -> one Linear -> C. It is the floor every fusion head has to
clear on the same features. ``LayerMix`` and ``masked_mean`` live here because the other heads that read
layered features reuse exactly this weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.heads import HeadSpec, classification_loss, register
from train.recipe import Recipe


@dataclass
class Config:
    dropout: float = 0.0  # on the pooled vector; SUPERB uses none


# SUPERB trains its probes far longer than 30 epochs of a small corpus; at lr 1e-3 a probe on 40-d fbank
# had not left its first epochs (best epoch 0 in 4 of 15 rav4 runs). A higher lr with warm-up and cosine decay,
# and a budget of at least 800 steps, converges on 400-utterance folds.
RECIPE = Recipe(lr=5e-3, epochs=40, min_steps=800, batch_size=32, warmup=0.05, patience=20)


class LayerMix(nn.Module):
    """Softmax-weighted sum over the layer axis (-2) of a layered feature; identity for a 1-layer feature."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        # zeros = a uniform mixture at the start (SUPERB's initialisation); no parameter when nothing to mix
        self.weights = nn.Parameter(torch.zeros(n_layers)) if n_layers > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.weights is None:
            return x
        w = torch.softmax(self.weights, dim=0)
        return (x * w[:, None]).sum(dim=-2)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [B, T, D] over the positions where mask [B, T] is True (zeros for an empty row)."""
    # where(), not multiply: a padded NaN / inf must not leak through 0 * value
    total = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)


def pool_frames(x: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean of each run of ``k`` frames over its real frames: [B, T, ...] -> [B, ceil(T/k), ...]. A group
    with no real frame is padding, so extra padding never changes a real group's value."""
    if k <= 1:
        return x, mask
    b, t = mask.shape
    extra = (-t) % k
    if extra:
        x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, extra])
        mask = F.pad(mask, [0, extra])
    groups = mask.view(b, -1, k)
    weight = groups.to(x.dtype).view(b, groups.size(1), k, *[1] * (x.dim() - 2))
    x = x.reshape(b, groups.size(1), k, *x.shape[2:])
    pooled = (x * weight).sum(2) / weight.sum(2).clamp(min=1.0)
    return pooled, groups.any(-1)


class Probe(nn.Module):
    def __init__(self, cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
                 modalities: list[str]) -> None:
        super().__init__()
        self.modalities = [m for m in ("audio", "text") if m in modalities]
        self.mix = nn.ModuleDict({m: LayerMix(layers.get(m, 1)) for m in self.modalities})
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(sum(dims[m] for m in self.modalities), n_classes)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        pooled = [masked_mean(self.mix[m](batch[m]), batch[m + "_mask"]) for m in self.modalities]
        return {"logits": self.out(self.drop(torch.cat(pooled, dim=-1)))}

    def loss(self, out: dict[str, Tensor], batch: dict) -> Tensor:
        return classification_loss(out["logits"], batch["labels"], batch)


def build(cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
          modalities: list[str]) -> nn.Module:
    return Probe(cfg, dims, layers, n_classes, modalities)


register(HeadSpec(
    name="probe",
    config_cls=Config,
    build=build,
    inputs={"audio": "sequence", "text": "sequence"},
    recipe=RECIPE,
    dialogue=False,
    paper="SUPERB (Yang et al., 2021)",
    description="SUPERB probe: softmax layer weights, masked mean pooling, Linear (baseline)",
))
