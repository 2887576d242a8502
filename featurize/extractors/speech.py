"""`hubert` (and `wav2vec2`, `wavlm`): frame-level hidden states of a Hugging Face speech encoder.

Any encoder ``AutoModel`` loads (HuBERT, wav2vec 2.0, WavLM, data2vec-audio) by hub id
(``--model-id``) or local directory (``--model-path``). One ``frames`` array ``hidden``, 50 rows
per second, float16, row shape ``(layers, dim)`` or ``(dim,)`` for one layer.

Layers. ``--layers`` takes ``last`` (the default), ``all``, ``0-12`` or ``9,12``; index 0 is the
transformer's input, index ``n`` (the last) is the model's final output (``last_hidden_state``,
which for pre-LN "stable layer norm" models includes the final layer norm). The default is the last
layer only: it is what the MSMSER head consumes, and it costs one thirteenth of all layers of a
base model (50 × 768 × 2 bytes = 77 kB per second of audio per layer; IEMOCAP's ~12 h at 13 layers
is ~43 GB before compression). The SUPERB-style probe learns weights over stored layers: ask for
``--layers all`` (or a few middle-to-upper layers, e.g. ``6-12``) when running it. For wav2vec 2.0
the last layers are known to be weaker for paralinguistics than the middle ones; pick layers there.

Normalisation. The model's feature-extractor config decides ``do_normalize`` (zero mean, unit
variance per utterance) and whether the model takes an attention mask. A directory without
``preprocessor_config.json`` falls back to fairseq's convention: both on for models whose
convolutional front end uses layer norm (``feat_extract_norm == "layer"``: large models, WavLM),
both off for group-norm models (wav2vec2-base, HuBERT-base).

Batching and padding. Every mode below but ``zeros`` computes each utterance as if alone (the tests
check it against the model run on the utterance by itself). Models that take an attention mask are
zero-padded with one (padding cannot reach the real frames: the mask zeroes padded frames before the
positional convolution and hides them from attention). Group-norm models (HuBERT-base, wav2vec2-base)
are the catch: Hugging Face's docs say to zero-pad them without a mask, but their first convolution's
group norm normalises each channel over time, so padding moves every frame of an utterance. The default
(``pad=auto``) batches them as ``masked_norm``: zero-padded, with the attention mask, and that one group
norm computing its statistics over each utterance's own frames only (``install_masked_channel_norm``).
The later convolutions are unpadded ("valid"), so a real frame never sees a padded sample, and the mask
does the rest as above. A GPU batches 60 padded seconds a pass; a CPU takes one input a pass unless
``max_batch_seconds`` is set, since on the quiet 2-core box padded batches of ~14 RAVDESS utterances
reached 5.7 audio-s/s and one at a time 7.1 (bench/feat_neural.py's compute limit, 2026-12-01).
``pad=none`` batches group-norm models over inputs of equal length only (never pads); ``pad=zeros``
zero-pads without a mask, as HF does (values shift with the batch's composition). Each output is cut to
the utterance's real frame count, ``model._get_feat_extract_output_lengths(samples)``.

Long utterances are never truncated: audio longer than ``chunk_seconds`` (30 s) is cut into windows
of that length overlapping by ``chunk_overlap`` (1 s), window starts on the model's frame grid; the
frames are stitched by frame index, each overlap split at its middle. The stitched row count equals
the unchunked formula.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from featurize.audio import decoder_versions
from featurize.extractors import Extractor, register
from featurize.extractors.neural import (
    as_float,
    autocast_context,
    describe_layers,
    is_local,
    length_groups,
    load_config,
    location,
    model_identity,
    parse_layers,
    pick_autocast,
    pick_device,
    torch_versions,
)
from featurize.records import Utterance
from featurize.store import ArraySpec

PAD_MODES = ("auto", "masked_norm", "none", "zeros")


@register
class SpeechEncoder(Extractor):
    name = "hubert"
    needs = "audio"
    batched = True
    default_model_id: ClassVar[str] = "facebook/hubert-base-ls960"

    def __init__(self, model_id: str | None = None, model_path: str | None = None, revision: str | None = None,
                 layers: str | None = None, device: str | None = None, autocast: str = "auto",
                 dtype: str = "float16", pad: str = "auto", chunk_seconds: float = 30.0,
                 chunk_overlap: float = 1.0, max_batch_seconds: float | None = None):
        if model_path is None and is_local(model_id):
            model_id, model_path = None, model_id
        self.model_id = None if model_path is not None else (model_id or self.default_model_id)
        self.model_path = str(model_path) if model_path is not None else None
        self.revision = revision
        self.layer_spec = layers
        self.device_opt = device
        self.autocast_opt = autocast
        self.dtype = dtype
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}, got {pad!r}")
        self.pad_opt = pad
        self.chunk_seconds = as_float(chunk_seconds, "chunk_seconds")
        self.chunk_overlap = as_float(chunk_overlap, "chunk_overlap")
        # Windows must overlap by more than a frame's receptive field (25 ms for these models), or the
        # frames straddling a window boundary would be missing.
        if not 0.05 <= self.chunk_overlap < self.chunk_seconds / 2:
            raise ValueError("chunk_overlap must be at least 0.05 s and under half of chunk_seconds")
        # padded seconds per forward pass; default 60 on a GPU and one input at a time on a CPU, where padded
        # batches were slower than one at a time on the quiet 2-core box (see the module docstring)
        self.max_batch_seconds = None if max_batch_seconds is None else as_float(max_batch_seconds,
                                                                                 "max_batch_seconds")
        self._resolved: dict[str, Any] | None = None
        self._model = None
        self._masked_norm = None

    # -- what the model is (config only, no weights) ---------------------------------------------------
    def _resolve(self) -> dict[str, Any]:
        """Read the model's config and feature-extractor settings once (cheap: no weights)."""
        if self._resolved is not None:
            return self._resolved
        from transformers import AutoFeatureExtractor

        where = location(self.model_id, self.model_path)
        local = self.model_path is not None
        cfg = load_config(where, self.revision, local)
        n_layers = int(cfg.num_hidden_layers)
        layer_norm_front = getattr(cfg, "feat_extract_norm", "group") == "layer"
        # data2vec-audio has no feat_extract_norm: its convolutions use per-frame layer norms (nothing to mask)
        group_norm_front = getattr(cfg, "feat_extract_norm", None) == "group"
        try:
            fe = AutoFeatureExtractor.from_pretrained(where, revision=self.revision, local_files_only=local)
            if "input_values" not in getattr(fe, "model_input_names", ["input_values"]):
                raise ValueError(f"{where}: this extractor feeds raw waveforms (input_values); the model's "
                                 f"feature extractor makes {fe.model_input_names}")
            do_normalize = bool(getattr(fe, "do_normalize", layer_norm_front))
            use_mask = bool(getattr(fe, "return_attention_mask", layer_norm_front))
            source = "preprocessor_config.json"
        except OSError:
            # A config-only directory: fairseq's convention (see the module docstring).
            fe = None
            do_normalize = use_mask = layer_norm_front
            source = "fallback: feat_extract_norm"
        stride = int(np.prod(cfg.conv_stride))
        pad = self.pad_opt
        if pad == "auto":
            pad = "masked_norm" if group_norm_front else "mask" if use_mask else "none"
        self._resolved = {
            "config": cfg, "feature_extractor": fe, "n_layers": n_layers, "hidden_size": int(cfg.hidden_size),
            "layers": parse_layers(self.layer_spec, n_layers), "do_normalize": do_normalize,
            "attention_mask": (use_mask and pad == "mask") or pad == "masked_norm", "normalize_source": source,
            "stride": stride,
            "pad": pad, "model_type": cfg.model_type,
        }
        return self._resolved

    @property
    def layers(self) -> list[int]:
        return self._resolve()["layers"]

    def _device(self) -> str:
        return pick_device(self.device_opt)

    def cpu_replicas(self) -> bool:
        return not self._device().startswith("cuda")

    def config(self) -> dict[str, Any]:
        r = self._resolve()
        device = pick_device(self.device_opt, check=False)
        return {
            **model_identity(self.model_id, self.model_path, self.revision),
            "model_type": r["model_type"], "n_hidden_layers": r["n_layers"], "hidden_size": r["hidden_size"],
            "layers": r["layers"], "last_layer": "last_hidden_state",
            "do_normalize": r["do_normalize"], "normalize_source": r["normalize_source"],
            "attention_mask": r["attention_mask"], "padding": r["pad"],
            "frames": "trimmed to _get_feat_extract_output_lengths(samples)",
            "chunk_seconds": self.chunk_seconds, "chunk_overlap": self.chunk_overlap,
            "stitch": "frame grid, overlap split at its middle",
            "sample_rate": self.sample_rate, "frame_stride_samples": r["stride"],
            "compute_dtype": "float32", "autocast": pick_autocast(self.autocast_opt, device),
            "dtype": self.dtype, **torch_versions(), **decoder_versions(), "code_version": 1,
        }

    def _tail(self) -> tuple[int, ...]:
        r = self._resolve()
        return (r["hidden_size"],) if len(r["layers"]) == 1 else (len(r["layers"]), r["hidden_size"])

    def arrays(self) -> list[ArraySpec]:
        rate = self.sample_rate / self._resolve()["stride"]
        return [ArraySpec("hidden", "frames", self._tail(), self.dtype, rows_per_second=rate)]

    def describe(self) -> str:
        r = self._resolve()
        which = "last layer only (default; --layers all for every layer)" if r["layers"] == [r["n_layers"]] \
            else f"layers {describe_layers(r['layers'])} of 0-{r['n_layers']}"
        return (f"{self.name}: {location(self.model_id, self.model_path)}, {which}, {r['hidden_size']}-d "
                f"{self.dtype}, {self.sample_rate / r['stride']:g} frames/s")

    # -- compute -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the pipeline draws its own bar
        local = self.model_path is not None
        model = AutoModel.from_pretrained(location(self.model_id, self.model_path), revision=self.revision,
                                          local_files_only=local, dtype=torch.float32)
        if self._resolve()["pad"] == "masked_norm":
            self._masked_norm = install_masked_channel_norm(model)
        self._model = model.to(self._device()).eval()

    def frame_count(self, n_samples: int) -> int:
        """Frames the model makes of ``n_samples`` (0 when shorter than its receptive field)."""
        if self._model is None:
            self.setup()
        n = int(self._model._get_feat_extract_output_lengths(int(n_samples)))
        return max(n, 0)

    def _normalize(self, audio: np.ndarray) -> np.ndarray:
        """The model's input for one whole utterance, before any chunking or padding (the feature
        extractor's batched form would normalise over the padding of unmasked models too)."""
        x = np.asarray(audio, dtype=np.float32)
        r = self._resolve()
        if r["feature_extractor"] is not None:
            values = r["feature_extractor"](x, sampling_rate=self.sample_rate, return_tensors="np")["input_values"]
            return np.asarray(values[0], dtype=np.float32)
        if r["do_normalize"]:
            # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm's formula.
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        return x

    def _windows(self, n_samples: int) -> list[int]:
        """Start samples of the windows covering an utterance (one window when it fits)."""
        stride = self._resolve()["stride"]
        size = int(round(self.chunk_seconds * self.sample_rate))
        if n_samples <= size:
            return [0]
        # Steps on the frame grid, so a window's frame t is global frame start/stride + t.
        step = int((self.chunk_seconds - self.chunk_overlap) * self.sample_rate) // stride * stride
        starts = [0]
        while starts[-1] + size < n_samples:
            starts.append(starts[-1] + step)
        return starts

    def _forward(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        """Hidden states of the selected layers for each piece, cut to its real frames:
        [frames, len(layers), dim] float32."""
        import torch

        r = self._resolve()
        device = self._device()
        longest = max(len(p) for p in pieces)
        batch = np.zeros((len(pieces), longest), dtype=np.float32)  # zero padding, as HF prescribes
        mask = np.zeros((len(pieces), longest), dtype=np.int64)
        for j, p in enumerate(pieces):
            batch[j, :len(p)] = p
            mask[j, :len(p)] = 1
        kwargs = {}
        if r["attention_mask"]:
            kwargs["attention_mask"] = torch.from_numpy(mask).to(device)
        if r["pad"] == "masked_norm":
            # the first convolution's real frames per input, for its norm; none when nothing is padded
            first = self._model.feature_extractor.conv_layers[0].conv
            lengths = [(len(p) - first.kernel_size[0]) // first.stride[0] + 1 for p in pieces]
            padded = len(set(lengths)) > 1
            self._masked_norm.lengths = torch.tensor(lengths, device=device) if padded else None
        try:
            with torch.inference_mode(), autocast_context(pick_autocast(self.autocast_opt, device), device):
                out = self._model(torch.from_numpy(batch).to(device), output_hidden_states=True, **kwargs)
        finally:
            if self._masked_norm is not None:
                self._masked_norm.lengths = None
        states = list(out.hidden_states)
        states[-1] = out.last_hidden_state  # the final output (incl. a pre-LN model's last layer norm)
        picked = torch.stack([states[i] for i in r["layers"]], dim=2).float().cpu().numpy()
        return [picked[j, :self.frame_count(len(p))] for j, p in enumerate(pieces)]

    def process_batch(self, items: list[tuple[Utterance, np.ndarray | None]]) -> list[dict[str, np.ndarray]]:
        self.setup()
        r = self._resolve()
        stride = r["stride"]
        size = int(round(self.chunk_seconds * self.sample_rate))
        # Cut every utterance into pieces (one, unless it is longer than a window).
        pieces: list[np.ndarray] = []
        owner: list[tuple[int, int]] = []  # piece -> (utterance, start sample)
        for i, (_, audio) in enumerate(items):
            x = self._normalize(audio)
            for start in self._windows(len(x)):
                piece = x[start:start + size]
                if self.frame_count(len(piece)) > 0:
                    pieces.append(piece)
                    owner.append((i, start))
        results: list[np.ndarray | None] = [None] * len(pieces)
        # Group-norm models are batched over equal lengths only unless zero padding is allowed.
        equal_only = r["pad"] == "none"
        batch_seconds = self.max_batch_seconds
        if batch_seconds is None:
            batch_seconds = 60.0 if self._device().startswith("cuda") else 0.0
        cap = batch_seconds * self.sample_rate
        for group in length_groups([len(p) for p in pieces], cap, equal_only):
            for j, states in zip(group, self._forward([pieces[j] for j in group]), strict=True):
                results[j] = states
        out = []
        n_layers, dim = len(r["layers"]), r["hidden_size"]
        for i, (_, audio) in enumerate(items):
            total = self.frame_count(len(audio))
            frames = np.zeros((total, n_layers, dim), dtype=np.float32)
            mine = [(start, results[j]) for j, (u, start) in enumerate(owner) if u == i]
            half = int(round(self.chunk_overlap * self.sample_rate)) // stride // 2
            for k, (start, states) in enumerate(mine):
                first = start // stride
                # Keep frames from the middle of this window's overlap with its neighbours.
                lo = first + half if k > 0 else 0
                hi = mine[k + 1][0] // stride + half if k + 1 < len(mine) else total
                if hi - first > len(states):
                    raise RuntimeError(f"window at sample {start} has {len(states)} frames, stitching needs "
                                       f"{hi - first}: raise chunk_overlap")
                frames[lo:hi] = states[lo - first:hi - first]
            value = frames[:, 0] if n_layers == 1 else frames
            out.append({"hidden": value.astype(self.dtype)})
        return out


def install_masked_channel_norm(model):
    """Swap a group-norm model's first group norm (one group per channel: each channel normalised over
    time) for one computed over each input's first ``lengths[b]`` frames only (set before each forward),
    so in a padded batch every utterance gets the statistics it has alone. Returns the new module."""
    import torch

    layer = model.feature_extractor.conv_layers[0]
    norm = layer.layer_norm
    if not (isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine):
        raise ValueError(f"pad=masked_norm needs a first-layer GroupNorm with one group per channel; this "
                         f"model's first layer has {norm!r}")

    class MaskedChannelNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = norm
            self.lengths: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, channels, time]
            if self.lengths is None:  # nothing padded: the model's own norm
                return self.norm(x)
            # in float32 whatever the autocast: as autocast runs group_norm, and a frame count over
            # 65504 (a 20 s piece) is inf in float16
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                keep = (torch.arange(x.shape[-1], device=x.device)[None, :] < self.lengths[:, None])[:, None, :]
                keep = keep.float()
                count = self.lengths.float()[:, None, None]
                mean = (x * keep).sum(-1, keepdim=True) / count
                centred = (x - mean) * keep
                var = (centred * centred).sum(-1, keepdim=True) / count  # biased, as GroupNorm's
                scale = torch.rsqrt(var + self.norm.eps) * self.norm.weight.float()[None, :, None]
                return centred * scale + self.norm.bias.float()[None, :, None] * keep  # padded frames: zeros

    layer.layer_norm = MaskedChannelNorm()
    return layer.layer_norm


@register
class Wav2Vec2Encoder(SpeechEncoder):
    name = "wav2vec2"
    default_model_id = "facebook/wav2vec2-base"


@register
class WavLMEncoder(SpeechEncoder):
    name = "wavlm"
    default_model_id = "microsoft/wavlm-base-plus"
