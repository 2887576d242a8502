"""Any corpus described by a manifest: a CSV or JSONL file with one row per utterance.

Required columns: `path`, `label`, `speaker`. Optional: `text`, `session`, `dialog`, `turn`,
`start`, `end`, `channel` (0-based, to read one channel of a multi-channel file instead of their mean),
`id`, `split`; any other column is kept in `extra`. Relative paths resolve against the manifest's folder,
so a corpus folder with its manifest can be moved as a whole.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

from featurize.audio import AudioError, audio_duration
from featurize.corpora import first_of_id, register
from featurize.records import CorpusReport, Utterance

REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("text", "session", "dialog", "turn", "start", "end", "channel", "id", "split")


class _BadRow(Exception):
    """A row that is skipped, with the reason it is reported under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@register("manifest")
def read(path: Path, corpus: str | None = None, columns: dict[str, str] | None = None,
         ) -> tuple[list[Utterance], CorpusReport]:
    """Read the manifest at `path`; `corpus` names the corpus and prefixes ids (default: file stem);
    `columns` maps our field names to the manifest's (``{"path": "wav", "label": "emo"}``)."""
    path = Path(path).resolve()
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder; the manifest corpus is a CSV or JSONL file with a row per "
                                "utterance (path, label, speaker, ...)")
    corpus = corpus or path.stem
    report = CorpusReport()
    utterances: list[Utterance] = []
    first_line: dict[str, int] = {}
    bad = sorted(set(columns or {}) - set(REQUIRED) - set(OPTIONAL))
    if bad:
        raise ValueError(f"--columns: no field {', '.join(bad)}; the fields are {', '.join(REQUIRED + OPTIONAL)}")
    for lineno, row in _rows(path, report, columns or {}):
        try:
            utt = _utterance(row, path.parent, corpus)
        except _BadRow as bad:
            audio = _text(row.get("path"))
            detail = bad.detail if audio is None or Path(audio).name in bad.detail else f"{audio}: {bad.detail}"
            report.skip(bad.reason, f"{path.name} line {lineno}: {detail}")
            continue
        if first_of_id(first_line, utt, path.name, lineno, report, hint="; add a unique `id` column"):
            utterances.append(utt)
    return utterances, report


def _rows(path: Path, report: CorpusReport, columns: dict[str, str]) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs under our field names; raises ValueError if a required column is missing."""
    rename = {theirs: ours for ours, theirs in columns.items()}
    for lineno, row in _raw_rows(path, report, columns):
        yield lineno, {rename.get(k, k): v for k, v in row.items()}


def _raw_rows(path: Path, report: CorpusReport, columns: dict[str, str]) -> Iterator[tuple[int, dict]]:
    suffix = path.suffix.lower()
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                         f"save the manifest as UTF-8") from None
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            _check_columns(path, reader.fieldnames or [], columns)
            for row in reader:
                if None in row:  # csv puts cells beyond the header under None: the row is misaligned
                    report.skip("more cells than columns", f"{path.name} line {reader.line_num}: "
                                f"{len(row[None])} surplus cell(s) {row[None]!r}")
                    continue
                yield reader.line_num, row
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    report.skip("malformed line", f"{path.name} line {lineno}")
                    continue
                if not isinstance(row, dict):
                    report.skip("malformed line", f"{path.name} line {lineno}")
                    continue
                _check_columns(path, list(row), columns, lineno)
                yield lineno, row
    else:
        raise ValueError(f"{path}: manifest must be .csv or .jsonl, not {path.suffix!r}")


def _check_columns(path: Path, present: list[str], columns: dict[str, str], lineno: int | None = None) -> None:
    for field_name in REQUIRED:
        column = columns.get(field_name, field_name)
        if column not in present:
            where = f" (line {lineno})" if lineno is not None else ""
            hint = "" if field_name in columns else f"; if it has another name, --columns {field_name}=NAME"
            raise ValueError(f"{path}: missing required column {column!r}{where}{hint}")


def _utterance(row: dict, base: Path, corpus: str) -> Utterance:
    values = {k: _text(v) for k, v in row.items()}
    if values["path"] is None:
        raise _BadRow("missing audio file", "empty path")
    audio = Path(values["path"])
    audio = audio if audio.is_absolute() else base / audio
    if not audio.is_file():
        raise _BadRow("missing audio file", str(audio))
    if values["speaker"] is None:
        raise _BadRow("missing speaker", str(audio))

    start = _number(values.get("start"), float, "start")
    end = _number(values.get("end"), float, "end")
    turn = _number(values.get("turn"), int, "turn")
    channel = _number(values.get("channel"), int, "channel")
    try:
        file_duration = audio_duration(audio, channel)
    except AudioError as e:
        raise _BadRow("unreadable audio", str(e)) from e
    span_end = file_duration if end is None else min(end, file_duration)
    if start is not None and start < 0:
        raise _BadRow("bad number", f"start {start} is negative")
    if end is not None and start is not None and end <= start:
        raise _BadRow("bad number", f"end {end} is not after start {start}")
    if (start or 0.0) >= span_end:
        raise _BadRow("bad number", f"start {start} is past the end of the {file_duration:.3f} s file {audio}")

    known = set(REQUIRED) | set(OPTIONAL)
    return Utterance(
        utt_id=f"{corpus}/{values.get('id') or audio.stem}",
        corpus=corpus,
        speaker=values["speaker"],
        label=values["label"],  # empty means unlabelled (e.g. a set to predict on)
        session=values.get("session"),
        dialog=values.get("dialog"),
        turn=turn,
        audio_path=str(audio),
        start=start,
        end=end,
        channel=channel,
        text=values.get("text"),
        split=values.get("split"),
        duration=round(span_end - (start or 0.0), 6),
        extra={k: v for k, v in values.items() if k not in known and v is not None},
    )


def _text(value: object) -> str | None:
    # CSV gives "" and JSON gives null for an absent value; both mean "not given".
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _number(value: str | None, kind: type, column: str) -> float | int | None:
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise _BadRow("bad number", f"{column} = {value!r}") from None
    if not math.isfinite(number):  # float() accepts "nan" and "inf", which no time can be
        raise _BadRow("bad number", f"{column} = {value!r}")
    return number
