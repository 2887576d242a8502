"""`bert` | `mpnet` | `minilm`: token, word and sentence vectors of a Hugging Face text encoder.

Any encoder ``AutoModel`` loads with a fast tokenizer, by hub id or local directory. Defaults:
``bert`` → ``bert-base-uncased``; ``mpnet`` → the offline all-mpnet-base-v2 from ``make models``
when installed, else ``microsoft/mpnet-base``; ``minilm`` → the installed all-MiniLM-L6-v2 package.

Arrays per utterance (D = hidden size):

* ``tokens``  frames ``(layers, D)`` or ``(D,)``: hidden states of the chosen layers (``--layers``,
  default the last) for every token, special tokens included;
* ``token_word`` frames ``()`` int32: the word each token belongs to, -1 for special tokens;
* ``words``   frames ``(D,)``: one row per word = mean of the word's word-pieces in the last layer.
  Words are the utterance's ``words`` list when it has one (so row i lines up with word i's times,
  from forced alignment or ASR), else the whitespace-split transcript. A word the tokenizer turns
  into nothing (an empty string, a lone control character) gets a zero row, so rows still line up;
* ``sentence`` utterance ``(D,)``: mean of the last layer over all tokens, special tokens included.
  Wu et al. (2023) "adopt mean pooling of all token representations" of BERT; all tokens is also
  what sentence-transformers' mean pooling does (its attention mask covers [CLS]/[SEP]), so for
  MiniLM / MPNet this is their sentence embedding before its final normalisation.

Long texts are not truncated: when a text has more word-pieces than fit in ``max_length`` (512)
with the special tokens, it is split at word boundaries into windows that fit, each encoded on its
own with its own special tokens, and the windows' tokens are concatenated (so ``tokens`` then holds
several [CLS]/[SEP]). Every such split is reported as a warning naming the utterance.
Utterances without text are not processed (``needs = "text"``); the pipeline counts them.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from featurize.extractors import Extractor, register
from featurize.extractors.neural import (
    as_int,
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
from featurize.records import Utterance, words_hash
from featurize.store import ArraySpec

log = logging.getLogger("featurize")
WORD_SOURCES = ("words", "text")


def utterance_words(utt: Utterance, source: str = "words") -> list[str]:
    """The words an utterance is encoded as: its timed ``words`` when present (and ``source`` is
    ``words``), else its transcript split on whitespace."""
    if source == "words" and utt.words:
        return [w.word.strip() for w in utt.words]
    return (utt.text or "").split()


@register
class TextEncoder(Extractor):
    name = "bert"
    needs = "text"
    batched = True
    default_model_id: ClassVar[str] = "bert-base-uncased"

    def __init__(self, model_id: str | None = None, model_path: str | None = None, revision: str | None = None,
                 layers: str | None = None, device: str | None = None, autocast: str = "auto",
                 dtype: str = "float16", max_length: int = 512, words: str = "words",
                 max_batch_tokens: int = 8192):
        if model_path is None and is_local(model_id):
            model_id, model_path = None, model_id
        if model_id is None and model_path is None:
            model_id, model_path = self.default_model()
        self.model_id = None if model_path is not None else model_id
        self.model_path = str(model_path) if model_path is not None else None
        self.revision = revision
        self.layer_spec = layers
        self.device_opt = device
        self.autocast_opt = autocast
        self.dtype = dtype
        self.max_length = as_int(max_length, "max_length")
        if words not in WORD_SOURCES:
            raise ValueError(f"words must be one of {', '.join(WORD_SOURCES)}, got {words!r}")
        self.word_source = words
        self.max_batch_tokens = as_int(max_batch_tokens, "max_batch_tokens")
        self._resolved: dict[str, Any] | None = None
        self._model = None
        self._tok = None
        self.n_split = 0  # utterances split into several windows (too long for max_length)

    @classmethod
    def default_model(cls) -> tuple[str | None, str | None]:
        """(hub id, local path) used when neither is given."""
        return cls.default_model_id, None

    # -- what the model is -------------------------------------------------------------------------------
    def _resolve(self) -> dict[str, Any]:
        if self._resolved is not None:
            return self._resolved
        cfg = load_config(location(self.model_id, self.model_path), self.revision, self.model_path is not None)
        n_layers = int(cfg.num_hidden_layers)
        self._resolved = {"n_layers": n_layers, "hidden_size": int(cfg.hidden_size), "model_type": cfg.model_type,
                          "layers": parse_layers(self.layer_spec, n_layers)}
        return self._resolved

    @property
    def layers(self) -> list[int]:
        return self._resolve()["layers"]

    def config(self) -> dict[str, Any]:
        r = self._resolve()
        device = pick_device(self.device_opt, check=False)
        return {
            **model_identity(self.model_id, self.model_path, self.revision),
            "model_type": r["model_type"], "n_hidden_layers": r["n_layers"], "hidden_size": r["hidden_size"],
            "layers": r["layers"], "words_from": "utterance words when present" if self.word_source == "words"
            else "whitespace-split text", "word_vector": "mean of word-pieces, last layer, zeros if none",
            "sentence": "mean over all tokens incl. special tokens, last layer", "max_length": self.max_length,
            "long_text": "split at word boundaries into windows, each encoded alone",
            "compute_dtype": "float32", "autocast": pick_autocast(self.autocast_opt, device), "dtype": self.dtype,
            **torch_versions(), "code_version": 2,
        }

    def arrays(self) -> list[ArraySpec]:
        r = self._resolve()
        dim = r["hidden_size"]
        tail = (dim,) if len(r["layers"]) == 1 else (len(r["layers"]), dim)
        # Rows per utterance for the disk estimate: IEMOCAP's mean is ~15 words / ~20 tokens.
        return [ArraySpec("tokens", "frames", tail, self.dtype, rows_per_utt=24),
                ArraySpec("token_word", "frames", (), "int32", rows_per_utt=24),
                ArraySpec("words", "frames", (dim,), self.dtype, rows_per_utt=16),
                ArraySpec("word_hash", "utterance", (), "int64"),  # of the word list the vectors are for
                ArraySpec("sentence", "utterance", (dim,), self.dtype)]

    def describe(self) -> str:
        r = self._resolve()
        which = "last layer" if r["layers"] == [r["n_layers"]] else f"layers {describe_layers(r['layers'])}"
        return (f"{self.name}: {location(self.model_id, self.model_path)}, tokens ({which}), words and sentence "
                f"(last layer means), {r['hidden_size']}-d {self.dtype}")

    # -- compute -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the pipeline draws its own bar
        where = location(self.model_id, self.model_path)
        local = self.model_path is not None
        # add_prefix_space: byte-level BPE tokenizers (RoBERTa) then give pre-split words the leading
        # space they have in running text; WordPiece tokenizers (BERT, MPNet) are unaffected.
        tok = AutoTokenizer.from_pretrained(where, revision=self.revision, local_files_only=local,
                                            add_prefix_space=True)
        if not tok.is_fast:
            raise ValueError(f"{where}: needs a fast tokenizer (tokenizer.json) for the token-to-word map")
        model = AutoModel.from_pretrained(where, revision=self.revision, local_files_only=local, dtype=torch.float32)
        self._tok = tok
        self._model = model.to(pick_device(self.device_opt)).eval()
        one = tok(["a"], is_split_into_words=True)["input_ids"]
        bare = tok(["a"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
        self._n_special = len(one) - len(bare)

    def _windows(self, words: list[str]) -> list[tuple[int, int]]:
        """Word ranges [a, b) whose word-pieces fit in max_length with the special tokens."""
        if not words:
            raise ValueError("no words to encode (the pipeline skips utterances without text)")
        budget = self.max_length - self._n_special
        enc = self._tok(words, is_split_into_words=True, add_special_tokens=False)
        counts = np.bincount([w for w in enc.word_ids() if w is not None], minlength=len(words))
        windows: list[tuple[int, int]] = []
        start, used = 0, 0
        for j, c in enumerate(counts):
            if used + c > budget and j > start:
                windows.append((start, j))
                start, used = j, 0
            used += int(c)
        windows.append((start, len(words)))
        return windows

    def _encode(self, words: list[str], first_word: int) -> tuple[list[int], list[int]]:
        # truncation only bites on a single word longer than a whole window (no real text has one).
        enc = self._tok(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
        word_map = [-1 if w is None else w + first_word for w in enc.word_ids()]
        return list(enc["input_ids"]), word_map

    def _forward(self, seqs: list[list[int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(selected layers [T, L, D], last layer [T, D]) per sequence, cut to its real tokens."""
        import torch

        device = pick_device(self.device_opt)
        pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[j, :len(s)] = 1
        with torch.inference_mode(), autocast_context(pick_autocast(self.autocast_opt, device), device):
            out = self._model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        states = list(out.hidden_states)
        states[-1] = out.last_hidden_state
        picked = torch.stack([states[i] for i in self.layers], dim=2).float().cpu().numpy()
        last = out.last_hidden_state.float().cpu().numpy()
        return [picked[j, :len(s)] for j, s in enumerate(seqs)], [last[j, :len(s)] for j, s in enumerate(seqs)]

    def process_batch(self, items: list[tuple[Utterance, np.ndarray | None]]) -> list[dict[str, np.ndarray]]:
        self.setup()
        words_of = [utterance_words(u, self.word_source) for u, _ in items]
        seqs: list[list[int]] = []
        maps: list[list[int]] = []
        owner: list[int] = []
        for i, words in enumerate(words_of):
            windows = self._windows(words)
            if len(windows) > 1:
                self.n_split += 1
                log.warning("%s: %d words do not fit in %d tokens; encoded in %d windows split at word boundaries",
                            items[i][0].utt_id, len(words), self.max_length, len(windows))
            for a, b in windows:
                ids, word_map = self._encode(words[a:b], a)
                seqs.append(ids)
                maps.append(word_map)
                owner.append(i)
        picked: list[np.ndarray | None] = [None] * len(seqs)
        last: list[np.ndarray | None] = [None] * len(seqs)
        # Sorted by length with a cap on padded tokens per pass, so short texts are not padded to long ones.
        for group in length_groups([len(s) for s in seqs], self.max_batch_tokens):
            for j, p, h in zip(group, *self._forward([seqs[j] for j in group]), strict=True):
                picked[j], last[j] = p, h
        dim = self._resolve()["hidden_size"]
        out = []
        for i, words in enumerate(words_of):
            mine = [k for k in range(len(seqs)) if owner[k] == i]
            tokens = np.concatenate([picked[k] for k in mine])
            hidden = np.concatenate([last[k] for k in mine])
            token_word = np.concatenate([np.asarray(maps[k], dtype=np.int32) for k in mine])
            word_vecs = np.zeros((len(words), dim), dtype=np.float32)
            for w in np.unique(token_word[token_word >= 0]):
                word_vecs[w] = hidden[token_word == w].mean(axis=0)
            out.append({
                "tokens": tokens[:, 0] if tokens.shape[1] == 1 else tokens,
                "token_word": token_word,
                "words": word_vecs,
                "word_hash": np.int64(words_hash(words)),
                "sentence": hidden.mean(axis=0),
            })
        return [{k: v if k in ("token_word", "word_hash") else v.astype(self.dtype) for k, v in d.items()}
                for d in out]


@register
class MPNetEncoder(TextEncoder):
    name = "mpnet"
    default_model_id = "microsoft/mpnet-base"

    @classmethod
    def default_model(cls) -> tuple[str | None, str | None]:
        from featurize.models import local_model

        path = local_model("mpnet")
        return (None, str(path)) if path is not None else (cls.default_model_id, None)


@register
class MiniLMEncoder(TextEncoder):
    name = "minilm"
    default_model_id = "sentence-transformers/all-MiniLM-L6-v2"

    @classmethod
    def default_model(cls) -> tuple[str | None, str | None]:
        from featurize.models import resolve_model

        where = resolve_model("minilm")
        return (None, where) if is_local(where) else (where, None)
