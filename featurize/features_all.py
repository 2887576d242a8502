"""`make features`: every extractor that applies to a corpus, in one go (meant for a GPU box).

Audio corpora get filterbanks, openSMILE (ComParE functionals, eGeMAPS), HuBERT and the Whisper
encoder; corpora with transcripts get the text encoders. A corpus with audio but no word times is
transcribed first (Whisper), so word-level text features line up with word timings. An extractor
whose model is not available is reported and skipped; the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from featurize.corpora import read_corpus

AUDIO = [
    ("fbank", []),
    ("opensmile", ["-o", "set=compare"]),
    ("opensmile", ["-o", "set=egemaps"]),
    ("hubert", []),
    ("whisper", []),
]
TEXT = [("minilm", []), ("mpnet", []), ("bert", [])]


def plan(corpus: str, data: str) -> tuple[list[tuple[str, list[str]]], bool]:
    """(extractors to run, whether to transcribe first)."""
    utts, _ = read_corpus(corpus, data)
    has_audio = any(u.audio_path for u in utts)
    has_text = any(u.text for u in utts)
    lacks_times = has_audio and not any(u.words for u in utts)
    steps = (AUDIO if has_audio else []) + (TEXT if has_text or has_audio else [])
    return steps, lacks_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--store", default="cache/features.zarr")
    ap.add_argument("--workers", default="2")
    a = ap.parse_args()
    steps, transcribe = plan(a.corpus, a.data)
    common = ["--corpus", a.corpus, "--data", a.data, "--store", a.store]
    failed = []
    if transcribe:
        if subprocess.run([sys.executable, "-m", "featurize.cli", "transcribe", *common]).returncode != 0:
            failed.append("transcribe")
    for model, extra in steps:
        cmd = [
            sys.executable,
            "-m",
            "featurize.cli",
            "extract",
            *common,
            "--model",
            model,
            "--workers",
            a.workers,
            *extra,
        ]
        print("$", " ".join(cmd[2:]), flush=True)
        if subprocess.run(cmd).returncode not in (0, 3):  # 3 = finished with some files skipped
            failed.append(" ".join([model, *extra]))
    subprocess.run([sys.executable, "-m", "featurize.cli", "ls", "--store", a.store])
    if failed:
        print(f"not extracted (see the messages above): {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
