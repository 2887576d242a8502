"""`late_concat`: utterance-level late fusion of a text and an audio branch (Zhou et al., USC report).

Text: the paper fine-tunes BERT; the cache-first head instead learns a softmax-weighted sum of the stored
layers and attention pooling over tokens (score = v^T tanh(W h), masked softmax) -> ReLU(Linear) = the
text representation.
Audio: a small VGG-style 2-D CNN (paper: 5 conv layers with max pooling, LeakyReLU) over the frame feature
seen as an image [1, T, D] -> masked global max + mean over time -> LeakyReLU(Linear) = the audio
representation. Padding is kept out exactly: padded frames are zeroed before every conv, set to -inf before
every max pool, and the time mask is pooled alongside, so a real item's output does not depend on how far
its batch was padded.
Fusion: concat the two representations -> dropout 0.6 -> Linear -> C. Optional soft-target CE on the
annotators' label shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.heads import TEXT_WEIGHTS, HeadSpec, check_choice, classification_loss, register
from train.heads.probe import LayerMix, masked_mean, pool_frames
from train.recipe import Recipe


@dataclass
class Config:
    dropout: float = 0.6
    soft_labels: bool = False  # train on batch["soft_labels"] (annotator shares) when the loader has them
    cnn_channels: tuple[int, ...] = (16, 32, 64, 64, 128)  # five 3x3 conv + 2x2 max-pool blocks (VGG frame)
    audio_hidden: int = 128  # the audio branch's penultimate width (its first of two Linear layers)
    text_hidden: int = 256  # text representation width after attention pooling
    attn_hidden: int = 128  # width of the attention-pooling scorer
    leaky_slope: float = 0.01
    audio_pool: int = 1  # mean of each k frames before the CNN (k = 4: Whisper's 50 frames/s to 12.5)
    batch_norm: bool = False  # batch normalisation (over real frames only) after each conv, before its activation
    # ours, after MSMSER's random modality masking: in training, each utterance of a fused model has its text
    # representation zeroed with probability p / 2 and otherwise its audio one with p / 2, so that neither branch
    # can be leant on alone (0: off, the paper). rav8 seed 0, Whisper frames, fused: 0.5 gave UA 0.488 against
    # 0.500 without (2026-12-03, bench/results/tuning-2026-12-03.md): not in the grid
    modality_dropout: float = 0.0
    # ours, as dialog's: fixed (the paper) | validation: after training, the text representation is scored as
    # mean + w * (t - mean) (mean: its running mean over training batches), with w in TEXT_WEIGHTS the one whose
    # logits give the lowest validation cross-entropy (the refit reuses it). The logits are linear in t, so w
    # scales the text branch's share of them; w = 0 leaves the audio branch and the text's average contribution
    text_weight: str = "fixed"
    # ours, after dialog's perspective loss (Wu et al. 2023) and gradient blending (Wang et al. 2020): a fused
    # model adds branch_loss x the cross-entropy of each branch's own Linear classifier on its representation, so
    # the audio branch keeps learning from every utterance the text branch already fits (0: off, the paper)
    branch_loss: float = 0.0

    def check(self) -> Config:
        check_choice("late_concat", "text_weight", self.text_weight, ("fixed", "validation"))
        if self.audio_pool < 1:
            raise ValueError(f"late_concat: audio_pool must be at least 1, got {self.audio_pool}")
        return self


# The paper's Adam weight decay 1e-3, 15 epochs; batch 32 is ours (unpublished). 15 epochs of a 400-utterance
# fold are ~190 steps: the budget has a floor of 600 steps, with warm-up and cosine decay. The paper's lr 1.5e-4
# (it fine-tunes BERT with it) leaves the CNN at UA ~0.44 on rav4 (seed 0, 5 folds, training loss still 0.87
# at epoch 30); lr 1e-3: audio-only folds 0-2 0.644 / 0.481 / 0.556 against 0.444 / 0.381 / 0.494, fused folds
# 0-2 0.463 / 0.500 / 0.619 against 0.387 / 0.462 / 0.444 (2026-12-02, seed 0, log-mel pooled 2 to 1).
# Half the steps (300) left it at 0.41-0.46 on folds 0-2 (training loss 0.82-0.87): the floor stays at 600.
RECIPE = Recipe(lr=1e-3, weight_decay=1e-3, epochs=15, min_steps=600, batch_size=32, warmup=0.05, patience=20)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of x [B, T, D] over positions where mask [B, T] is True; zeros for an empty row."""
    y = x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), y, torch.zeros_like(y))


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over [B, C, T, F] whose batch statistics count only real frames (mask [B, 1, T, 1]), so
    an item's output in training does not depend on how much padding its batch carries."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)
        w = mask.to(x.dtype)
        n = (w.sum() * x.size(3)).clamp_min(1.0)
        mean = (x * w).sum(dim=(0, 2, 3)) / n
        var = (((x - mean[None, :, None, None]) * w) ** 2).sum(dim=(0, 2, 3)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * n / (n - 1).clamp_min(1.0)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class AudioCNN(nn.Module):
    """[B, T, D] frames + [B, T] mask -> [B, audio_hidden]."""

    def __init__(self, cfg: Config, d_in: int) -> None:
        super().__init__()
        chans = (1, *cfg.cnn_channels)
        self.convs = nn.ModuleList([nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)
                                    for i in range(len(chans) - 1)])
        self.slope = cfg.leaky_slope
        self.norms = nn.ModuleList([MaskedBatchNorm2d(c) for c in chans[1:]]) if cfg.batch_norm else None
        # He initialisation for the LeakyReLU: PyTorch's default conv init shrinks the activations' std by
        # about half per block (0.98 -> 0.40 -> 0.18 -> 0.09 -> 0.04 -> 0.02 through the five), so the
        # logits start nearly constant and validation sat at one class for the first epochs.
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=cfg.leaky_slope, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
        freq = d_in
        for _ in self.convs:
            freq = (freq + 1) // 2  # ceil_mode pooling halves rounding up
        self.fc = nn.Linear(2 * chans[-1] * freq, cfg.audio_hidden)  # [max; mean] over time of C x F' maps

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x.unsqueeze(1)  # [B, 1, T, D]
        m = mask[:, None, :, None]  # [B, 1, T, 1], broadcasts over channels and frequency
        for i, conv in enumerate(self.convs):
            # zero padding before the conv = what the conv's own zero padding gives at the true end
            x = conv(x.masked_fill(~m, 0.0))
            if self.norms is not None:
                x = self.norms[i](x, m)
            x = F.leaky_relu(x, self.slope)
            # -inf before the pool, so a window straddling the end sees only its real frame, as it would
            # with ceil_mode on the unpadded item
            # pooled in channels-last layout: on CPU the same max, several times faster than the default layout
            x = x.masked_fill(~m, float("-inf")).contiguous(memory_format=torch.channels_last)
            x = F.max_pool2d(x, 2, ceil_mode=True).contiguous()
            m = F.max_pool2d(m.float(), (2, 1), ceil_mode=True) > 0
        b, c, t, f = x.shape
        x = x.permute(0, 2, 1, 3).reshape(b, t, c * f).masked_fill(~m[:, 0], 0.0)  # [B, T', C*F']
        tmask = m[:, 0, :, 0]
        pooled = torch.cat([masked_max(x, tmask), masked_mean(x, tmask)], dim=-1)
        return F.leaky_relu(self.fc(pooled), self.slope)


class TextPool(nn.Module):
    """[B, N, D] token states + [B, N] mask -> [B, text_hidden] via attention pooling."""

    def __init__(self, cfg: Config, d_in: int) -> None:
        super().__init__()
        self.w = nn.Linear(d_in, cfg.attn_hidden)
        self.v = nn.Linear(cfg.attn_hidden, 1, bias=False)
        self.fc = nn.Linear(d_in, cfg.text_hidden)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        h = h.masked_fill(~mask[..., None], 0.0)
        scores = self.v(torch.tanh(self.w(h))).squeeze(-1).masked_fill(~mask, float("-inf"))
        # an item without tokens would softmax over nothing (NaN): give it uniform weights over its zeros
        scores = torch.where(mask.any(dim=1, keepdim=True), scores, torch.zeros_like(scores))
        alpha = torch.softmax(scores, dim=1)  # exact zeros on padding
        return F.relu(self.fc((alpha[..., None] * h).sum(dim=1)))


class LateConcat(nn.Module):
    def __init__(self, cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
                 modalities: list[str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = [m for m in ("text", "audio") if m in modalities]
        self.mix = nn.ModuleDict({m: LayerMix(layers.get(m, 1)) for m in self.modalities})
        width = 0
        if "text" in self.modalities:
            self.text = TextPool(cfg, dims["text"])
            width += cfg.text_hidden
        if "audio" in self.modalities:
            self.audio = AudioCNN(cfg, dims["audio"])
            width += cfg.audio_hidden
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(width, n_classes)
        widths = {"text": cfg.text_hidden, "audio": cfg.audio_hidden}
        self.branch_out = (nn.ModuleDict({m: nn.Linear(widths[m], n_classes) for m in self.modalities})
                           if cfg.branch_loss > 0 and len(self.modalities) == 2 else None)
        cfg.check()
        # the loop tries each candidate on the validation speakers (set_text_weight) and keeps the best; buffers,
        # so the checkpoint carries the choice and the mean it scales around
        self.text_weight_candidates = None
        if cfg.text_weight == "validation" and len(self.modalities) == 2:
            self.text_weight_candidates = TEXT_WEIGHTS
            self.register_buffer("text_weight", torch.tensor(1.0))
            self.register_buffer("text_mean", torch.zeros(cfg.text_hidden))

    def set_text_weight(self, w: float) -> None:
        self.text_weight.fill_(w)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        reps = []
        if "text" in self.modalities:
            reps.append(self.text(self.mix["text"](batch["text"]), batch["text_mask"]))
        if "audio" in self.modalities:
            x, mask = pool_frames(self.mix["audio"](batch["audio"]), batch["audio_mask"], self.cfg.audio_pool)
            reps.append(self.audio(x, mask))
        out: dict[str, Tensor] = {}
        if self.branch_out is not None:  # each branch's own classifier, on its representation as computed
            out.update({f"{m}_logits": self.branch_out[m](self.drop(r))
                        for m, r in zip(self.modalities, reps, strict=True)})
        if self.text_weight_candidates is not None:
            if self.training:  # training always uses t itself; the mean follows it (BatchNorm's momentum)
                with torch.no_grad():
                    self.text_mean.lerp_(reps[0].mean(dim=0).float(), 0.1)  # float: autocast
            else:
                reps[0] = (self.text_mean + self.text_weight * (reps[0] - self.text_mean)).to(reps[0].dtype)
        if self.training and self.cfg.modality_dropout > 0 and len(reps) == 2:
            u = torch.rand(reps[0].shape[0], 1, device=reps[0].device)
            half = self.cfg.modality_dropout / 2
            reps = [reps[0] * (u >= half), reps[1] * ((u < half) | (u >= 2 * half))]  # text, audio
        out["logits"] = self.out(self.drop(torch.cat(reps, dim=-1)))
        return out

    def loss(self, out: dict[str, Tensor], batch: dict) -> Tensor:
        total = self.target_loss(out["logits"], batch)
        if self.branch_out is not None:
            total = total + self.cfg.branch_loss * sum(self.target_loss(out[f"{m}_logits"], batch)
                                                       for m in self.modalities)
        return total

    def target_loss(self, logits: Tensor, batch: dict) -> Tensor:
        soft = batch.get("soft_labels")
        if self.cfg.soft_labels and soft is not None:
            # shares over the kept classes need not sum to 1 (votes for dropped classes): renormalise;
            # rows with no share at all (unlabelled / padding) are left out
            total = soft.sum(dim=-1, keepdim=True)
            keep = total.squeeze(-1) > 0
            target = soft[keep] / total[keep]
            per_row = -(target * F.log_softmax(logits[keep], dim=-1)).sum(dim=-1)
            weights = batch.get("class_weights")
            if weights is None:
                return per_row.mean()
            row_weight = target @ weights  # a soft target weighs as the mixture of its classes' weights
            return (row_weight * per_row).sum() / row_weight.sum().clamp_min(1e-12)
        return classification_loss(logits, batch["labels"], batch)


def build(cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
          modalities: list[str]) -> nn.Module:
    return LateConcat(cfg, dims, layers, n_classes, modalities)


register(HeadSpec(
    name="late_concat",
    config_cls=Config,
    build=build,
    inputs={"text": "sequence", "audio": "sequence"},
    recipe=RECIPE,
    dialogue=False,
    paper="Zhou et al. (USC late fusion)",
    description="text layer-mix + attention pooling, audio 2-D CNN, concat -> dropout -> Linear "
                "(Zhou et al.)",
))
