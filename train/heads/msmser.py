"""`msmser`: query-token modality interaction transformer + random modality masking (Wang, Ma, Ding 2023).

heads.md section 3, top to bottom:
1. per modality: (layer mix) -> Linear to d_model -> + sinusoidal positions;
2. uni-modal refinement: a transformer encoder per modality (8 heads, 2 layers: depth unpublished, ours);
3. frame scaling: s = sigmoid(MLP(x)) per frame / token, x' = s * x;
4. modality interaction transformer (MIT): + learned type embedding (audio / text), memory = [a'; w'],
   L learned emotion queries attend to it in a transformer decoder (8 heads, memory pad mask);
5. self-attention pooling over the L outputs (v^T tanh(W h), softmax over L) -> 2-layer MLP -> C.
Random modality masking (training only): each sample is hit with probability p(epoch) = rmm_p0, decaying
linearly to 0 at rmm_end_epoch; a hit sample loses its text (prob rmm_text_prob) or else its audio, by
removing that modality's positions from the memory pad mask. `eval_mask` removes one modality from every
sample at test time only (validation, which picks the checkpoint, sees both), to measure modality bias
(the paper's Table 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from train.heads import HeadSpec, check_choice, classification_loss, register
from train.heads.probe import LayerMix, pool_frames
from train.recipe import Recipe


@dataclass
class Config:
    d_model: int = 768  # d_e, the paper's hidden size
    n_heads: int = 8
    enc_layers: int = 2  # per-modality encoder depth: not published, ours
    dec_layers: int = 1  # MIT decoder depth: not published, ours (one cross-attention hop over the memory)
    ff_dim: int = 3072  # transformer feed-forward width, 4 x d_model
    n_queries: int = 30  # L, emotion query tokens
    scale_hidden: int = 256  # frame-scaling MLP hidden width: ours
    mlp_hidden: int = 256  # classifier MLP hidden width: ours
    dropout: float = 0.1  # transformer / classifier dropout: not published, the transformer default
    # Dropout on the attention weights: not published. Off by default because on CPU any attention dropout
    # sends PyTorch to its unfused attention path, about 5x slower per attention call.
    attn_dropout: float = 0.0
    # Mean-pool this many consecutive audio frames (real frames only) before the audio encoder: 1 is the
    # paper; 4 turns 50 frames/s into 12.5, which makes CPU training about 4x cheaper.
    audio_pool: int = 1
    rmm_p0: float = 0.8
    rmm_end_epoch: int = 70
    rmm_text_prob: float = 0.6  # a hit sample loses text with this probability, else audio
    eval_mask: str | None = None  # "text" | "audio": drop that modality for every sample at test time

    def check(self) -> Config:
        check_choice("msmser", "eval_mask", self.eval_mask, (None, "text", "audio"))
        if self.audio_pool < 1:
            raise ValueError(f"msmser: audio_pool must be at least 1, got {self.audio_pool}")
        if self.d_model % self.n_heads:
            raise ValueError(f"msmser: d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        return self


# The paper's Adam lr 2e-5, batch 8, 100 epochs; warm-up and cosine decay are ours. The head itself forbids
# early stopping before rmm_end_epoch (see MSMSER.min_epochs).
RECIPE = Recipe(lr=2e-5, epochs=100, batch_size=8, warmup=0.05, patience=20)


def sinusoid(n: int, d: int, device: torch.device) -> Tensor:
    """The Vaswani et al. position table [n, d]."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe


def at_least_one(mask: Tensor) -> Tensor:
    """The pad mask with position 0 counted as real in rows that have no real position: attention over an
    all-masked row is a softmax over nothing (NaN), which would reach the loss through 0 * NaN."""
    first = torch.arange(mask.size(1), device=mask.device)[None, :] == 0
    return mask | (~mask.any(dim=1, keepdim=True) & first)


class UniModal(nn.Module):
    """Steps 1-3 for one modality: [B, T, (L,) D] -> [B, T, d_model] scaled features."""

    def __init__(self, cfg: Config, d_in: int, n_layers: int) -> None:
        super().__init__()
        self.mix = LayerMix(n_layers)
        self.proj = nn.Linear(d_in, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                           batch_first=True)
        # no nested-tensor conversion: keeps padded outputs as plain zeros-or-values and the path predictable
        layer.self_attn.dropout = cfg.attn_dropout
        self.encoder = nn.TransformerEncoder(layer, cfg.enc_layers, enable_nested_tensor=False)
        self.scale = nn.Sequential(nn.Linear(cfg.d_model, cfg.scale_hidden), nn.ReLU(),
                                   nn.Linear(cfg.scale_hidden, 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.proj(self.mix(x))
        x = x + sinusoid(x.size(1), x.size(2), x.device)
        x = x.masked_fill(~mask[..., None], 0.0)
        x = self.encoder(x, src_key_padding_mask=~at_least_one(mask))
        return torch.sigmoid(self.scale(x)) * x


class MSMSER(nn.Module):
    def __init__(self, cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
                 modalities: list[str]) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.modalities = [m for m in ("audio", "text") if m in modalities]
        # While random modality masking is still on, validation scores a model trained on masked inputs:
        # the loop must not stop (and keep that checkpoint) before the masking has decayed to 0.
        self.min_epochs = cfg.rmm_end_epoch if len(self.modalities) == 2 else 0
        self.enc = nn.ModuleDict({m: UniModal(cfg, dims[m], layers.get(m, 1)) for m in self.modalities})
        self.type_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(cfg.d_model) * 0.02)
                                          for m in self.modalities})
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, cfg.d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout,
                                           batch_first=True)
        layer.self_attn.dropout = layer.multihead_attn.dropout = cfg.attn_dropout
        self.decoder = nn.TransformerDecoder(layer, cfg.dec_layers)
        self.pool_w = nn.Linear(cfg.d_model, cfg.d_model)
        self.pool_v = nn.Linear(cfg.d_model, 1, bias=False)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.mlp_hidden, n_classes))

    def rmm_p(self, epoch: int) -> float:
        return self.cfg.rmm_p0 * max(0.0, 1.0 - epoch / self.cfg.rmm_end_epoch)

    def keep_masks(self, batch: dict, b: int, device: torch.device) -> dict[str, Tensor]:
        """Per sample, whether each modality stays visible to the queries ([B] bool each)."""
        keep = {m: torch.ones(b, dtype=torch.bool, device=device) for m in self.modalities}
        if len(self.modalities) < 2:
            return keep  # masking the only modality would leave the queries nothing to read
        if self.training:
            hit = torch.rand(b, device=device) < self.rmm_p(int(batch.get("epoch", 0)))
            lose_text = torch.rand(b, device=device) < self.cfg.rmm_text_prob
            keep["text"] = ~(hit & lose_text)
            keep["audio"] = ~(hit & ~lose_text)
        elif self.cfg.eval_mask is not None and batch.get("phase") == "test":
            # the paper masks a normally trained model at test only: validation (checkpoint choice) sees both
            keep[self.cfg.eval_mask] = torch.zeros(b, dtype=torch.bool, device=device)
        return keep

    def forward(self, batch: dict) -> dict[str, Tensor]:
        b = batch[self.modalities[0]].size(0)
        device = batch[self.modalities[0]].device
        keep = self.keep_masks(batch, b, device)
        memory, memory_mask = [], []
        for m in self.modalities:
            x, mask = batch[m], batch[m + "_mask"]
            if m == "audio":
                x, mask = pool_frames(x, mask, self.cfg.audio_pool)
            memory.append(self.enc[m](x, mask) + self.type_emb[m])
            memory_mask.append(mask & keep[m][:, None])  # RMM: a dropped modality's positions become padding
        memory, memory_mask = torch.cat(memory, dim=1), torch.cat(memory_mask, dim=1)
        # a sample with nothing left to read (no text, audio masked) gets one zero slot: `at_least_one` opens its
        # position 0, an audio frame that the encoder filled from the whole clip
        nothing = ~memory_mask.any(dim=1)
        first = torch.arange(memory.size(1), device=device)[None, :, None] == 0
        memory, memory_mask = memory.masked_fill(first & nothing[:, None, None], 0.0), at_least_one(memory_mask)
        h = self.decoder(self.queries.expand(b, -1, -1), memory, memory_key_padding_mask=~memory_mask)
        alpha = torch.softmax(self.pool_v(torch.tanh(self.pool_w(h))).squeeze(-1), dim=1)  # [B, L]
        pooled = (alpha[..., None] * h).sum(dim=1)
        return {"logits": self.mlp(pooled), "query_weights": alpha,
                **{f"{m}_kept": keep[m] for m in self.modalities}}

    def loss(self, out: dict[str, Tensor], batch: dict) -> Tensor:
        return classification_loss(out["logits"], batch["labels"], batch)


def build(cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
          modalities: list[str]) -> nn.Module:
    return MSMSER(cfg, dims, layers, n_classes, modalities)


register(HeadSpec(
    name="msmser",
    config_cls=Config,
    build=build,
    inputs={"audio": "sequence", "text": "sequence"},
    recipe=RECIPE,
    dialogue=False,
    paper="Wang, Ma, Ding 2023 (MSMSER)",
    description="uni-modal encoders + L emotion query tokens over [audio; text] + random modality masking "
                "(Wang et al.)",
))
