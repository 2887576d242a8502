"""A lhotse CutSet manifest (``cuts.jsonl`` or ``cuts.jsonl.gz``, one cut per line) read as a corpus.

Each MonoCut becomes one utterance: its recording's file source is the audio, ``start`` / ``duration`` the
slice, ``channel`` the channel read (the file source that holds it, when a recording has one file per channel;
a cut over all of a file's channels reads their mean), and its first supervision gives the speaker, the text
and the label. The label is the supervision's ``custom["emotion"]`` by default; ``--columns label=KEY`` reads
``custom[KEY]`` instead (``session=KEY`` likewise; ``speaker`` and ``text`` are the supervision's own fields
unless mapped to a custom key). lhotse itself is not needed to read the file. Cuts that are not plain
file-backed mono cuts are skipped and named.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from featurize.audio import AudioError, audio_duration
from featurize.corpora import first_of_id, register
from featurize.records import CorpusReport, DamagedFile, Utterance

FIELDS = ("label", "speaker", "text", "session")


@register("lhotse")
def read(path: Path, corpus: str | None = None, columns: dict[str, str] | None = None,
         ) -> tuple[list[Utterance], CorpusReport]:
    path = Path(path).resolve()
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    corpus = corpus or stem
    columns = dict(columns or {})
    bad = sorted(set(columns) - set(FIELDS))
    if bad:
        raise ValueError(f"--columns for lhotse cuts: no field {', '.join(bad)}; it maps {', '.join(FIELDS)} "
                         "to keys of a supervision's `custom`")
    report = CorpusReport()
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder; the lhotse corpus is a cuts manifest (cuts.jsonl or .jsonl.gz)")
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            cut = json.loads(line)
            if not isinstance(cut, dict):
                raise ValueError(f"a {type(cut).__name__}, not a cut (a JSON object)")
            utt = _utterance(cut, corpus, columns, path.parent)
        except AudioError as e:  # a ValueError too: caught first
            report.skip("unreadable audio", f"{path.name} line {lineno}: {e}")
            continue
        except (ValueError, KeyError, TypeError, IndexError) as e:
            report.skip("unusable cut", f"{path.name} line {lineno}: {e}")
            continue
        if first_of_id(seen, utt, path.name, lineno, report):
            utts.append(utt)
    return utts, report


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The manifest's lines, numbered from 1, read as they are used (a large corpus's cuts need not fit in
    memory); a file that is not what its name says (gzip, UTF-8) is one error naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except (gzip.BadGzipFile, zlib.error, EOFError, UnicodeDecodeError) as e:  # cut short, or not what its name says
        raise DamagedFile(f"{path}: not a readable cuts manifest ({type(e).__name__}: {e})") from None


def _utterance(cut: dict, corpus: str, columns: dict[str, str], base: Path) -> Utterance:
    if cut.get("type", "MonoCut") != "MonoCut":
        raise ValueError(f"cut {cut.get('id')!r} is a {cut.get('type')}, not a MonoCut")
    sources = [s for s in cut["recording"]["sources"] if s.get("type") == "file"]
    if not sources:
        raise ValueError(f"cut {cut['id']!r}: its recording has no file source")
    source, channel = _source_and_channel(cut, sources)
    audio = Path(source["source"])
    audio = audio if audio.is_absolute() else base / audio
    if not audio.is_file():
        raise ValueError(f"cut {cut['id']!r}: no audio file {audio}")
    file_seconds = audio_duration(audio, channel)
    start = float(cut.get("start", 0.0))
    end = min(start + float(cut["duration"]), file_seconds)
    if not 0 <= start < end:
        raise ValueError(f"cut {cut['id']!r}: slice [{start}, {end}] outside the {file_seconds:.3f} s file")
    sup = (cut.get("supervisions") or [{}])[0]
    custom = sup.get("custom") or {}

    def field(name: str, default_key: str | None) -> str | None:
        key = columns.get(name)
        value = custom.get(key) if key else (sup.get(default_key) if default_key else None)
        if name == "label" and key is None:
            value = custom.get("emotion")
        return None if value in (None, "") else str(value)

    speaker = field("speaker", "speaker")
    if speaker is None:
        raise ValueError(f"cut {cut['id']!r}: no speaker (supervision `speaker`, or --columns speaker=KEY)")
    return Utterance(
        utt_id=f"{corpus}/{cut['id']}",
        corpus=corpus,
        speaker=speaker,
        label=field("label", None),
        session=field("session", None),
        audio_path=str(audio),
        start=start,
        end=end,
        channel=channel,
        text=field("text", "text"),
        duration=round(end - start, 6),
        extra={k: v for k, v in custom.items() if isinstance(v, (str, int, float))},
    )


def _source_and_channel(cut: dict, sources: list[dict]) -> tuple[dict, int | None]:
    """The file source holding the cut's channel(s), and the channel to read from that file: its position in
    the source's ``channels``, or None (the mean) when the cut covers every channel of the file."""
    wanted = cut.get("channel")
    if wanted is None:  # no channel given: the first file, all of it
        return sources[0], None
    wanted = [wanted] if isinstance(wanted, int) else list(wanted)
    for source in sources:
        held = list(source.get("channels") or [0])
        if not set(wanted) <= set(held):
            continue
        if set(wanted) == set(held):
            return source, None
        if len(wanted) == 1:
            return source, held.index(wanted[0])
        raise ValueError(f"cut {cut['id']!r} reads channels {wanted} of the {len(held)} in {source['source']}: "
                         "sercache reads one channel of a file, or the mean of all of them")
    raise ValueError(f"cut {cut['id']!r}: no file source of its recording holds channel(s) {wanted}")
