"""`linear`: regularised logistic regression on z-scored utterance vectors (e.g. ComParE functionals).

The classical reference: the data loader z-scores each pooled feature with training-set statistics, the
given modalities' vectors are concatenated and one Linear layer maps them to C logits. The L2 penalty is the
optimiser's ``weight_decay`` (Adam's coupled decay = an L2 term on the loss gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.heads import HeadSpec, register


@dataclass
class Config:
    lr: float = 1e-2
    weight_decay: float = 1e-4  # the L2 strength of the logistic regression
    epochs: int = 100
    batch_size: int = 64


class LinearHead(nn.Module):
    def __init__(self, cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
                 modalities: list[str]) -> None:
        super().__init__()
        self.modalities = [m for m in ("audio", "text") if m in modalities]
        self.layered = {m: layers.get(m, 1) > 1 for m in self.modalities}
        self.out = nn.Linear(sum(dims[m] for m in self.modalities), n_classes)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        # a layered vector [B, L, D] is averaged over layers: a fixed mixture keeps this a plain linear model
        xs = [batch[m].mean(dim=-2) if self.layered[m] else batch[m] for m in self.modalities]
        return {"logits": self.out(torch.cat(xs, dim=-1))}

    def loss(self, out: dict[str, Tensor], batch: dict) -> Tensor:
        return F.cross_entropy(out["logits"], batch["labels"], ignore_index=-100)


def build(cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
          modalities: list[str]) -> nn.Module:
    return LinearHead(cfg, dims, layers, n_classes, modalities)


register(HeadSpec(
    name="linear",
    config_cls=Config,
    build=build,
    inputs={"audio": "pooled", "text": "pooled"},
    dialogue=False,
    description="logistic regression on z-scored utterance vectors (classical baseline)",
))
