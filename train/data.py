"""Training data from the store: load chosen features for chosen utterances into memory once, as
ragged tensors, then collate batches in the form each head declares (see train/heads/__init__.py).

A feature is named ``NAME[:ARRAY][@LAYERS]``: ``fbank``, ``minilm:sentence``, ``hubert@9,12``.
Which modality a feature feeds (audio or text) comes from its extractor. Every input is
standardised per dimension with statistics of the training fold only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from featurize.extractors import get_extractor
from featurize.records import Utterance, words_hash
from featurize.store import FeatureArray, FeatureStore
from train.heads import HeadSpec
from train.labels import resolve_label_set, soft_target

# Preferred array per input form when the user names none.
PREFERRED = {
    "pooled": ("sentence", "functionals"),
    "sequence": ("tokens", "fbank", "hidden", "lld", "encoder"),
    "words": ("words",),
}
NORM_SAMPLE_ROWS = 200_000  # rows used to estimate frame statistics: plenty for a per-dim mean/std


@dataclass
class FeatureChoice:
    name: str
    array: str | None = None
    layers: list[int] | None = None

    @classmethod
    def parse(cls, text: str) -> FeatureChoice:
        layers = None
        if "@" in text:
            text, spec = text.split("@", 1)
            try:
                layers = parse_layers(spec)
            except ValueError:
                raise ValueError(f"feature {text}@{spec}: the layers after @ are numbers and ranges, e.g. "
                                 f"{text}@9,12 or {text}@6-12") from None
        name, _, array = text.partition(":")
        return cls(name, array or None, layers)


def layer_positions(stored: list[int] | None, wanted: list[int] | None, group: str) -> list[int] | None:
    """Where the layers asked for (``hubert@9,12``: layer numbers) sit on a group's layer axis, which holds the
    layers its config lists (``--layers 6-12`` stores 7, the first being layer 6). None: the whole array (a group
    of one layer has no layer axis)."""
    if wanted is None or not stored:
        return wanted
    missing = [n for n in wanted if n not in stored]
    if missing:
        raise ValueError(f"feature {group} holds layers {stored[0]}-{stored[-1]} ({len(stored)}), not "
                         f"{', '.join(map(str, missing))}: extract them (`featurize extract --layers ...`)")
    return None if len(stored) == 1 else [stored.index(n) for n in wanted]


def parse_layers(spec: str) -> list[int]:
    """``9,12`` or ``0-12`` (inclusive) -> layer indices."""
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


@dataclass
class ModalityInput:
    modality: str
    feature: str  # store group
    array: str
    form: str  # pooled | sequence | words
    items: list[torch.Tensor]  # one per utterance: [*tail] (pooled) or [rows, *tail]
    tail: tuple[int, ...]
    rows_per_second: float | None

    @property
    def dim(self) -> int:
        return self.tail[-1]

    @property
    def layers(self) -> int:
        return self.tail[0] if len(self.tail) == 2 else 1



# a dimension whose training std is below this is constant there: centred, never divided by the tiny std
CONSTANT_STD = 1e-5


def dimension_stats(x: torch.Tensor, gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the rows of ``x`` (of a random ``NORM_SAMPLE_ROWS`` of them when there are
    more), what both the fold's and a speaker's standardisation divide by."""
    if len(x) > NORM_SAMPLE_ROWS:
        x = x[torch.from_numpy(gen.choice(len(x), NORM_SAMPLE_ROWS, replace=False))]
    x = x.float()  # float16 sums overflow: reduce in float32
    mean = x.mean(0)
    std = x.std(0) if len(x) > 1 else torch.ones_like(mean)
    # a dimension constant in these rows is centred, not scaled: dividing by a floor near 0 would turn a small
    # difference elsewhere into a huge value
    return mean, torch.where(std < CONSTANT_STD, torch.ones_like(std), std)


@dataclass
class Normalizer:
    """Per-dimension mean and std of each input, fitted on one fold's training rows: an object of its own,
    so a fold's statistics travel with its model (checkpoint, refit) instead of living on the shared data."""

    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def fit(cls, data: CorpusData, rows: list[int]) -> Normalizer:
        gen = np.random.default_rng(0)
        stats = {}
        for m, inp in data.inputs.items():
            parts = [inp.items[i] for i in rows]
            stats[m] = dimension_stats(torch.stack(parts) if inp.form == "pooled" else torch.cat(parts), gen)
        return cls(stats)

    @classmethod
    def identity(cls) -> Normalizer:
        return cls({})

    def __call__(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` standardised, as a new float32 tensor (``x`` itself is never changed)."""
        x = x.to(torch.float32, copy=True)
        if modality not in self.stats:
            return x
        mean, std = self.stats[modality]
        return x.sub_(mean).div_(std)  # in place on the copy: half the time of (x - mean) / std, same values


@dataclass
class CorpusData:
    corpus: str
    utts: list[Utterance]
    labels: torch.Tensor  # [N] long, -100 = outside the label set (dialogue context only)
    classes: list[str]
    label_set: str
    inputs: dict[str, ModalityInput]
    soft: torch.Tensor | None  # [N, C]
    word_frames: list[torch.Tensor] | None  # [W, 2] per utterance, at the audio feature's frame rate
    dialogue: bool
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {u.utt_id: i for i, u in enumerate(self.utts)}
        groups: dict[str, list[int]] = defaultdict(list)
        for i, u in enumerate(self.utts):
            groups[u.dialog or u.utt_id].append(i)  # an utterance without a dialogue is its own
        self.dialogs = {
            d: sorted(ix, key=lambda i: (self.utts[i].turn or 0, self.utts[i].utt_id)) for d, ix in groups.items()
        }

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def labelled(self, ids: list[str]) -> list[int]:
        """Row indices of these utterance ids that carry a label of the set."""
        return [self.index[u] for u in ids if u in self.index and int(self.labels[self.index[u]]) >= 0]

    def units(self, rows: list[int]) -> list:
        """What a batch is made of for these rows: the rows themselves, or for dialogue heads the
        dialogues that contain them (whole dialogues as context)."""
        if not self.dialogue:
            return list(rows)
        wanted = set(rows)
        return [d for d, ix in self.dialogs.items() if wanted.intersection(ix)]

    # -- batches ---------------------------------------------------------------------------------
    def batches(
        self,
        rows: list[int],
        batch_size: int,
        shuffle: bool,
        norm: Normalizer,
        generator: torch.Generator | None = None,
        epoch: int = 0,
        length_window: int = 0,
    ):
        """Utterance batches, or for dialogue heads batches of the dialogues containing ``rows``
        (whole dialogues as context; only ``rows`` carry labels), standardised by ``norm``.
        ``length_window`` k > 0 (with ``shuffle``): each run of k batches' worth of shuffled utterances is
        sorted by length before it is cut into batches, and the batches come in random order, so a batch
        holds utterances of similar length and pads less."""
        units = self.units(rows)
        order = torch.randperm(len(units), generator=generator).tolist() if shuffle else range(len(units))
        units = [units[i] for i in order]
        if shuffle and length_window > 0 and not self.dialogue:
            chunks = self._similar_length_chunks(units, batch_size, length_window, generator)
        else:
            chunks = [units[s : s + batch_size] for s in range(0, len(units), batch_size)]
        for chunk in chunks:
            batch = self._collate_dialogues(chunk, set(rows), norm) if self.dialogue else self._collate(chunk, norm)
            batch["epoch"] = epoch
            yield batch

    def _similar_length_chunks(self, rows: list[int], batch_size: int, window: int,
                               generator: torch.Generator | None) -> list[list[int]]:
        seqs = [inp.items for inp in self.inputs.values() if inp.form != "pooled"]
        length = {r: max((len(items[r]) for items in seqs), default=0) for r in rows}
        chunks = []
        span = window * batch_size
        for s in range(0, len(rows), span):
            ranked = sorted(rows[s : s + span], key=lambda r: length[r])  # stable: ties keep the shuffled order
            chunks += [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
        return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]

    def _collate(self, rows: list[int], norm: Normalizer) -> dict:
        batch: dict = {"labels": self.labels[rows], "rows": rows, "speakers": [self.utts[i].speaker for i in rows]}
        for m, inp in self.inputs.items():
            if inp.form == "pooled":
                batch[m] = norm(m, torch.stack([inp.items[i] for i in rows]))
                continue
            seqs = [inp.items[i] for i in rows]
            lengths = torch.tensor([len(s) for s in seqs])
            # pad, then standardise the whole batch in one op (per sequence it was a sixth of a cme epoch)
            padded = norm(m, pad_sequence(seqs, batch_first=True))
            mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
            padded.mul_(mask.view(*mask.shape, *([1] * (padded.dim() - 2))))  # padding is exactly 0
            key = "words" if inp.form == "words" else m
            batch[key] = padded
            batch["word_mask" if inp.form == "words" else f"{m}_mask"] = mask
            if inp.form == "words":
                spans = [self.word_frames[i] for i in rows]
                batch["word_frames"] = pad_sequence(spans, batch_first=True) if spans else None
        if self.word_frames is not None and "text" not in self.inputs:  # audio-only word-level head
            spans = [self.word_frames[i] for i in rows]
            batch["word_frames"] = pad_sequence(spans, batch_first=True)
            lengths = torch.tensor([len(sp) for sp in spans])
            batch["word_mask"] = torch.arange(batch["word_frames"].shape[1])[None, :] < lengths[:, None]
        if self.soft is not None:
            batch["soft_labels"] = self.soft[rows]
        return batch

    def _collate_dialogues(self, dialogs: list[str], labelled: set[int], norm: Normalizer) -> dict:
        seqs = [self.dialogs[d] for d in dialogs]
        n_u = max(len(s) for s in seqs)
        batch: dict = {
            "utt_mask": torch.zeros(len(seqs), n_u, dtype=torch.bool),
            "labels": torch.full((len(seqs), n_u), -100, dtype=torch.long),
            "rows": seqs,
        }
        for b, s in enumerate(seqs):
            batch["utt_mask"][b, : len(s)] = True
            for j, i in enumerate(s):
                if i in labelled:
                    batch["labels"][b, j] = self.labels[i]
        for m, inp in self.inputs.items():
            if inp.form != "pooled":
                raise ValueError("dialogue heads take one pooled vector per utterance")
            x = torch.zeros(len(seqs), n_u, *inp.tail)
            for b, s in enumerate(seqs):
                x[b, : len(s)] = norm(m, torch.stack([inp.items[i] for i in s]))
            batch[m] = x
        return batch


def _pick_array(arrays: dict, form: str, wanted: str | None, feature: str) -> str:
    if wanted is not None:
        if wanted not in arrays:
            raise ValueError(f"feature {feature} has no array {wanted!r} (has {', '.join(arrays)})")
        return wanted
    kinds = {"pooled": ("utterance", "frames"), "sequence": ("frames",), "words": ("frames",)}[form]
    for kind in kinds:
        names = [n for n, s in arrays.items() if s.kind == kind and s.dtype.startswith("float")]
        for pref in PREFERRED[form]:
            if pref in names:
                return pref
        if names and form != "words":
            return names[0]
    raise ValueError(f"feature {feature} has no array usable as {form} input (arrays: {', '.join(arrays)})")


def load_data(
    store: FeatureStore,
    corpus: str,
    features: list[str],
    head: HeadSpec,
    label_set: str | None = None,
    modalities: list[str] | None = None,
    by_speaker: bool = False,
) -> CorpusData:
    """Read the utterance table and the chosen features of one corpus into memory. ``by_speaker`` (the recipe's
    ``normalize: speaker``): each utterance's inputs standardised with its speaker's own statistics first."""
    utts = [u for u in store.utterances() if u.corpus == corpus]
    corpus_utts = utts  # every utterance of the corpus, whatever its label: what a speaker's statistics pool
    if not utts:
        corpora = sorted({u.corpus for u in store.utterances()})
        raise ValueError(
            f"no utterances of corpus {corpus!r} in {store.where} (it holds: {', '.join(corpora) or 'none'})"
        )
    set_name, mapping, classes = resolve_label_set(corpus, label_set, utts)
    dropped: dict[str, int] = {}
    if not head.dialogue:  # dialogue heads keep out-of-set utterances as unlabelled context
        n0 = len(utts)
        utts = [u for u in utts if u.label in mapping]
        dropped["label outside the set"] = n0 - len(utts)

    chosen: dict[str, tuple[FeatureChoice, str, object]] = {}
    for text in features:
        choice = FeatureChoice.parse(text)
        group = store.resolve_feature(choice.name)
        info = store.feature_info(group)
        if info.stale:
            raise ValueError(f"feature {group} is stale ({info.stale}): re-extract it with `featurize extract "
                             f"--model {info.extractor} ...`, which rebuilds it from the current utterance table")
        modality = get_extractor(info.extractor).needs
        if modality in chosen:
            raise ValueError(
                f"two {modality} features given ({chosen[modality][1]} and {group}); give one per modality"
            )
        if modality not in head.inputs:
            raise ValueError(f"head {head.name} takes {', '.join(head.inputs)}; feature {group} is {modality}")
        chosen[modality] = (choice, group, info)
    if modalities:
        missing = [m for m in modalities if m not in chosen]
        if missing:
            raise ValueError(f"modality {missing} asked for but no feature of it given (--feature)")
        chosen = {m: c for m, c in chosen.items() if m in modalities}
    if not chosen:
        raise ValueError("no features chosen")

    loaded: dict[str, tuple[FeatureArray, str, str]] = {}
    for modality, (choice, group, info) in chosen.items():
        form = head.inputs[modality]
        array = _pick_array(info.arrays, form, choice.array, group)
        layers = layer_positions(info.config.get("layers"), choice.layers, group)
        loaded[modality] = (store.read(group, array, layers=layers), group, form)

    n0 = len(utts)
    utts = [u for u in utts if all(u.utt_id in fa for fa, _, _ in loaded.values())]
    dropped["missing a chosen feature"] = n0 - len(utts)

    speaker_utts: dict[str | None, list[str]] = defaultdict(list)  # the kept speakers' utterances, any label
    if by_speaker:
        wanted = {u.speaker for u in utts}
        for u in corpus_utts:
            if u.speaker in wanted:
                speaker_utts[u.speaker].append(u.utt_id)
    inputs: dict[str, ModalityInput] = {}
    for modality, (fa, group, form) in loaded.items():
        full = torch.from_numpy(np.ascontiguousarray(fa.data))
        per_speaker = None
        if by_speaker:
            values = {s: [torch.from_numpy(fa.get(i)) for i in ids if i in fa] for s, ids in speaker_utts.items()}
            per_speaker = speaker_statistics(values, fa.offsets is not None, group)
        items = []
        for u in utts:
            i = fa.position(u.utt_id)
            rows = full[i] if fa.offsets is None else full[int(fa.offsets[i]) : int(fa.offsets[i + 1])]
            if per_speaker is not None:
                mean, std = per_speaker[u.speaker]
                rows = (rows.float() - mean) / std
            items.append(rows if fa.offsets is None else as_item(rows, form, fa.spec.tail))
        inputs[modality] = ModalityInput(
            modality, group, fa.spec.name, form, items, fa.spec.tail, fa.spec.rows_per_second
        )

    labels = torch.tensor([classes.index(mapping[u.label]) if u.label in mapping else -100 for u in utts])
    softs = [soft_target(u, mapping, classes) for u in utts]
    soft = None
    if any(s is not None for s in softs):
        eye = torch.eye(len(classes))
        soft = torch.stack(
            [
                torch.tensor(s) if s is not None else (eye[int(y)] if y >= 0 else torch.zeros(len(classes)))
                for s, y in zip(softs, labels, strict=True)
            ]
        )
    spans = None
    rate = inputs["audio"].rows_per_second if "audio" in inputs else 100.0
    if any(inp.form == "words" for inp in inputs.values()):
        group = inputs["text"].feature
        hashes = store.read(group, "word_hash") if "word_hash" in store.feature_info(group).arrays else None
        check_words(utts, inputs["text"].items, hashes, group)
        spans = [word_frames(u, len(inputs["text"].items[k]), rate) for k, u in enumerate(utts)]
    elif head.inputs.get("text") == "words" and "audio" in inputs and any(u.words for u in utts):
        # A word-level head run audio-only still pools by the real word alignment (its own
        # audio-only variant), from the utterances' word times.
        spans = [word_frames(u, len(u.words or []), rate) for u in utts]
    return CorpusData(corpus, utts, labels, classes, set_name, inputs, soft, spans, head.dialogue, dropped)


MIN_SPEAKER_UTTERANCES = 10  # fewer, and a speaker's statistics are mostly those utterances' own content


def speaker_statistics(by_speaker: dict[str | None, list[torch.Tensor]], frames: bool, feature: str
                       ) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
    """Per-dimension mean and std of each speaker's values of one input (``frames``: each item is [rows, *tail]
    and every row counts; otherwise each item is one row), for the recipe's ``normalize: speaker``. The values
    are features only: a test speaker's statistics read that speaker's unlabelled speech, never a label."""
    if None in by_speaker:
        raise ValueError(f"feature {feature}: normalize=speaker needs every utterance's speaker, and "
                         f"{len(by_speaker[None])} have none")
    small = {s: len(items) for s, items in by_speaker.items() if len(items) < MIN_SPEAKER_UTTERANCES}
    if small:
        named = ", ".join(f"{s} ({n})" for s, n in sorted(small.items())[:3])
        raise ValueError(f"feature {feature}: normalize=speaker needs at least {MIN_SPEAKER_UTTERANCES} utterances "
                         f"of each speaker, and {len(small)} of {len(by_speaker)} have fewer: {named}")
    gen = np.random.default_rng(0)
    return {speaker: dimension_stats(torch.cat(items) if frames else torch.stack(items), gen)
            for speaker, items in by_speaker.items()}


def as_item(rows: torch.Tensor, form: str, tail: tuple[int, ...]) -> torch.Tensor:
    """One utterance's frames as the head wants them: pooled heads get the mean frame (computed
    in float32: float16 sums overflow), the others the frames themselves."""
    if form != "pooled":
        return rows
    return rows.float().mean(0) if len(rows) else torch.zeros(tail)


def check_words(utts: list[Utterance], vectors: list[torch.Tensor], hashes: FeatureArray | None, feature: str) -> None:
    """Word vectors and word times are joined by position: refuse any utterance whose timed words are not
    the words its vectors were computed from (a later `featurize transcribe --force`, another aligner),
    which would otherwise pool the wrong audio, or none, into every word."""
    bad = []
    for u, vecs in zip(utts, vectors, strict=True):
        if not u.words:  # none, or an empty list (an alignment of noise only): the text encoder then read the
            continue      # transcript, and its words get no audio, as documented: nothing to misalign
        words = [w.word.strip() for w in u.words]
        if len(words) != len(vecs) or (hashes is not None and int(hashes.get(u.utt_id)) != words_hash(words)):
            bad.append(u.utt_id)
    if bad:
        raise ValueError(
            f"feature {feature}: the word vectors of {len(bad)} utterances (e.g. {', '.join(bad[:3])}) were computed "
            "from other words than the utterance table's timed words (transcribed again since?): re-extract the "
            "text feature so that words and times come from the same word list"
        )


def word_frames(u: Utterance, n: int, rate: float) -> torch.Tensor:
    """[first, last+1) frame of each of the ``n`` stored words. The text extractor stores one
    vector per entry of the utterance's word list when it has one, so word i and time i are the
    same word; without times every span is empty (the word gets no audio)."""
    spans = torch.zeros(n, 2, dtype=torch.long)
    if u.words is not None and len(u.words) == n:
        for j, w in enumerate(u.words):
            # rounded first: 0.29 s * 100 is 28.999..., which floor would take one frame early
            first = int(np.floor(round(w.start * rate, 6)))
            spans[j, 0] = first
            spans[j, 1] = max(first, int(np.ceil(round(w.end * rate, 6))))
    return spans
