"""A tiny fake IEMOCAP_full_release tree in the release's exact formats, with its expected reading.

Two sessions, two dialogues, ten utterance lines, and one of each kind of breakage the reader must
survive. The expected facts are written out by hand (not derived from the files) so the tests
check the reader against an independent account.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000

D1 = "Ses01F_impro01"
D2 = "Ses02M_script01_1"

EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

EVAL_1 = (
    EVAL_HEADER + "[1.0000 - 1.8000]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
    "C-E2:\tNeutral;\t()\n"
    "C-E3:\tNeutral;\t()\n"
    "C-E4:\tFrustration; Neutral;\t()\n"
    "C-F1:\tNeutral;\t()\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\n"
    "A-F1:\tval 2; act 2; dom  2;\t()\n"
    "\n"
    "[1.5000 - 2.4000]\tSes01F_impro01_M000\tfru\t[2.0000, 3.5000, 3.0000]\n"
    "C-E1:\tFrustration; Anger;\t(annoyed; short)\n"
    "C-E2:\tFrustration;\t()\n"
    "C-E3:\tAnger;\t()\n"
    "A-E1:\tval 2; act 4; dom  3;\t(tense, belligerent)\n"
    "\n"
    "[2.5000 - 3.1000]\tSes01F_impro01_F001\texc\t[4.0000, 4.0000, 3.0000]\n"
    "C-E2:\tExcited;\t()\n"
    "C-E3:\tHappiness; Excited;\t()\n"
    "C-E4:\tExcited;\t()\n"
    "C-F1:\tHappiness;\t()\n"
    "\n"
    # No wav is written for M001.
    "[3.2000 - 4.0000]\tSes01F_impro01_M001\tsad\t[1.5000, 2.0000, 2.0000]\n"
    "C-E2:\tSadness;\t()\n"
    "C-E3:\tSadness;\t()\n"
    "\n"
    # No majority; no .wdseg is written for F002.
    "[4.1000 - 4.9000]\tSes01F_impro01_F002\txxx\t[3.0000, 3.0000, 3.0000]\n"
    "C-E2:\tSadness;\t()\n"
    "C-E3:\tOther;\t(amused)\n"
    "C-E4:\tNeutral;\t()\n"
    "C-F1:\tSurprise;\t()\n"
    "\n"
    # Malformed header (no end time): the block is skipped, its C- line ignored.
    "[5.0000 - ]\tSes01F_impro01_M002\tang\t[1.0000, 4.5000, 4.0000]\n"
    "C-E2:\tAnger;\t()\n"
    "\n"
)
MALFORMED_EVAL_LINE = next(n for n, line in enumerate(EVAL_1.splitlines(), 1) if line.startswith("[5.0000 - ]"))

EVAL_2 = (
    EVAL_HEADER + "[0.5000 - 1.3000]\tSes02M_script01_1_F000\tang\t[1.5000, 4.0000, 4.5000]\n"
    "C-E1:\tAnger;\t()\n"
    "C-E2:\tAnger;\t()\n"
    "C-F1:\tAnger;\t()\n"
    "\n"
    # Starts before F000 although listed after it: turn order follows start time.
    "[0.2000 - 0.9000]\tSes02M_script01_1_M000\thap\t[4.0000, 3.5000, 3.0000]\n"
    "C-E1:\tHappiness;\t()\n"
    "C-E2:\tHappiness; Excited;\t()\n"
    "C-E3:\tHappiness;\t()\n"
    "C-M1:\tNeutral;\t()\n"
    "\n"
    "[1.5000 - 2.2000]\tSes02M_script01_1_M001\tsad\t[1.5000, 2.0000, 2.0000]\n"
    "C-E1:\tSadness;\t()\n"
    "C-E2:\tSadness;\t()\n"
    "\n"
)

TRANSCRIPT_1 = (
    b"Ses01F_impro01_F000 [001.0000-001.8000]: Excuse me.\n"
    b"Ses01F_impro01_M000 [001.5000-002.4000]: Do you have your forms?\n"
    b"Ses01F_impro01_F001 [002.5000-003.1000]: Yeah, great!\n"
    b"Ses01F_impro01_MXX0 [002.9000-003.0000]: [GARBAGE]\n"
    b"Ses01F_impro01_M001 [003.2000-004.0000]: I lost them.\n"
    b"Ses01F_impro01_F002 [004.1000-004.9000]: [LAUGHTER] Caf\xe9 again?\n"  # latin-1 e-acute
    b"Ses01F_impro01_F003: Hmm.\n"  # no timing
    b"Ses01F_impro01_M002 [005.0000-005.8000]: Whatever.\n"
)

TRANSCRIPT_2 = (
    b"Ses02M_script01_1_F000 [000.5000-001.3000]: Get out.\n"
    b"Ses02M_script01_1_M000 [000.2000-000.9000]: Surprise!\n"
    b"Ses02M_script01_1_M001 [001.5000-002.2000]: Oh no.\n"
    b"Ses02M_script01_1_F001 [002.3000-002.8000]: Right.\n"  # no EmoEvaluation block
    b"this line is garbage\n"
)
MALFORMED_TRANSCRIPT_LINE = 5

# (SFrm, EFrm, word) rows of each .wdseg; `None` means no .wdseg file is written.
WDSEG = {
    "Ses01F_impro01_F000": [(0, 32, "<s>"), (33, 48, "EXCUSE"), (49, 74, "ME(2)"), (75, 79, "</s>")],
    "Ses01F_impro01_M000": [
        (0, 9, "<s>"),
        (10, 24, "DO"),
        (25, 30, "<sil>"),
        (31, 44, "YOU(2)"),
        (45, 80, "FORMS"),
        (81, 89, "</s>"),
    ],
    # ++LAUGHTER++ is one of the aligner's noise tokens: not a word, dropped.
    "Ses01F_impro01_F001": [
        (0, 4, "<s>"),
        (5, 40, "YEAH"),
        (41, 44, "++LAUGHTER++"),
        (45, 52, "GREAT"),
        (53, 59, "</s>"),
    ],
    "Ses02M_script01_1_F000": [(0, 19, "<s>"), (20, 39, "GET"), (40, 69, "OUT"), (70, 79, "</s>")],
    "Ses02M_script01_1_M000": [(0, 9, "<s>"), (10, 59, "SURPRISE"), (60, 69, "</s>")],
}
# M001 of session 2 gets a .wdseg with a broken row (EFrm not a number): alignment dropped.
BROKEN_WDSEG = "Ses02M_script01_1_M001"

# utterance -> (session dir, dialogue, seconds of audio); every utterance with a wav.
WAVS = {
    "Ses01F_impro01_F000": (1, D1, 0.8),
    "Ses01F_impro01_M000": (1, D1, 0.9),
    "Ses01F_impro01_F001": (1, D1, 0.6),
    "Ses01F_impro01_F002": (1, D1, 0.8),
    "Ses01F_impro01_M002": (1, D1, 0.8),  # has a wav, but its EmoEvaluation header is malformed
    "Ses02M_script01_1_F000": (2, D2, 0.8),
    "Ses02M_script01_1_M000": (2, D2, 0.7),
    "Ses02M_script01_1_M001": (2, D2, 0.7),
}


def make_iemocap_fixture(root: Path) -> dict:
    """Write `root/IEMOCAP_full_release/...` and return what a correct reader must produce."""
    release = root / "IEMOCAP_full_release"
    dialogs = ((1, D1, EVAL_1, TRANSCRIPT_1), (2, D2, EVAL_2, TRANSCRIPT_2))
    for session, dialog, evaluation, transcript in dialogs:
        dialog_dir = release / f"Session{session}" / "dialog"
        _write(dialog_dir / "EmoEvaluation" / f"{dialog}.txt", evaluation.encode("ascii"))
        _write(dialog_dir / "transcriptions" / f"{dialog}.txt", transcript)
    # A per-annotator file in the format the reader must not mistake for a dialogue file.
    _write(
        release / "Session1/dialog/EmoEvaluation/Categorical" / f"{D1}_e2_cat.txt",
        b"Ses01F_impro01_F000 :Neutral state; ()\n",
    )

    rng = np.random.default_rng(0)
    for utt, (session, dialog, seconds) in WAVS.items():
        t = np.arange(round(seconds * SR)) / SR
        audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
        wav = release / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, audio, SR, subtype="PCM_16")

    for utt, rows in WDSEG.items():
        session, dialog, _ = WAVS[utt]
        body = "".join(f"{s:5d} {e:6d} {-1000 * (e - s + 1):10d} {w}\n" for s, e, w in rows)
        _write_wdseg(release, session, dialog, utt, body)
    broken = "    0      9      -9000 <s>\n   10     xx     -50000 OH\n   30     69     -40000 NO\n"
    _write_wdseg(release, 2, D2, BROKEN_WDSEG, broken)

    i = "iemocap/"
    return {
        "root": release,
        "ids": sorted(
            i + u
            for u in (
                "Ses01F_impro01_F000",
                "Ses01F_impro01_M000",
                "Ses01F_impro01_F001",
                "Ses01F_impro01_F002",
                "Ses02M_script01_1_F000",
                "Ses02M_script01_1_M000",
                "Ses02M_script01_1_M001",
            )
        ),
        "labels": {
            i + "Ses01F_impro01_F000": "neu",
            i + "Ses01F_impro01_M000": "fru",
            i + "Ses01F_impro01_F001": "exc",
            i + "Ses01F_impro01_F002": "xxx",
            i + "Ses02M_script01_1_F000": "ang",
            i + "Ses02M_script01_1_M000": "hap",
            i + "Ses02M_script01_1_M001": "sad",
        },
        # Each annotator has one vote, split equally over its labels; shares sum to 1.
        "soft": {
            i + "Ses01F_impro01_F000": {"neu": 3.5 / 4, "fru": 0.5 / 4},
            i + "Ses01F_impro01_M000": {"fru": 1.5 / 3, "ang": 1.5 / 3},
            i + "Ses01F_impro01_F001": {"exc": 2.5 / 4, "hap": 1.5 / 4},
            i + "Ses01F_impro01_F002": {"sad": 0.25, "oth": 0.25, "neu": 0.25, "sur": 0.25},
            i + "Ses02M_script01_1_F000": {"ang": 1.0},
            i + "Ses02M_script01_1_M000": {"hap": 2.5 / 4, "exc": 0.5 / 4, "neu": 1 / 4},
            i + "Ses02M_script01_1_M001": {"sad": 1.0},
        },
        # start = SFrm * 0.01 s, end = (EFrm + 1) * 0.01 s; None = no usable alignment.
        "words": {
            i + "Ses01F_impro01_F000": [("excuse", 0.33, 0.49), ("me", 0.49, 0.75)],
            i + "Ses01F_impro01_M000": [("do", 0.10, 0.25), ("you", 0.31, 0.45), ("forms", 0.45, 0.81)],
            i + "Ses01F_impro01_F001": [("yeah", 0.05, 0.41), ("great", 0.45, 0.53)],
            i + "Ses01F_impro01_F002": None,
            i + "Ses02M_script01_1_F000": [("get", 0.20, 0.40), ("out", 0.40, 0.70)],
            i + "Ses02M_script01_1_M000": [("surprise", 0.10, 0.60)],
            i + "Ses02M_script01_1_M001": None,
        },
        "speakers": {
            i + "Ses01F_impro01_F000": "Ses01_F",
            i + "Ses01F_impro01_M000": "Ses01_M",
            i + "Ses01F_impro01_F001": "Ses01_F",
            i + "Ses01F_impro01_F002": "Ses01_F",
            i + "Ses02M_script01_1_F000": "Ses02_F",
            i + "Ses02M_script01_1_M000": "Ses02_M",
            i + "Ses02M_script01_1_M001": "Ses02_M",
        },
        "turns": {
            i + "Ses01F_impro01_F000": 0,
            i + "Ses01F_impro01_M000": 1,
            i + "Ses01F_impro01_F001": 2,
            i + "Ses01F_impro01_F002": 3,
            i + "Ses02M_script01_1_M000": 0,
            i + "Ses02M_script01_1_F000": 1,
            i + "Ses02M_script01_1_M001": 2,
        },
        "texts": {
            i + "Ses01F_impro01_F000": "Excuse me.",
            i + "Ses01F_impro01_F002": "[LAUGHTER] Caf\u00e9 again?",
            i + "Ses02M_script01_1_M000": "Surprise!",
        },
        "durations": {i + "Ses01F_impro01_F000": 0.8, i + "Ses02M_script01_1_M001": 0.7},
        "skipped": {
            "no wav file": ["Ses01F_impro01_M001"],
            "malformed EmoEvaluation line": [f"Session1/dialog/EmoEvaluation/{D1}.txt:{MALFORMED_EVAL_LINE}"],
            "transcription id with XX": ["Ses01F_impro01_MXX0"],
            "transcription line without timing": ["Ses01F_impro01_F003"],
            "malformed transcription line": [f"Session2/dialog/transcriptions/{D2}.txt:{MALFORMED_TRANSCRIPT_LINE}"],
            "no EmoEvaluation entry": ["Ses02M_script01_1_F001"],
            "malformed wdseg line": [f"Session2/sentences/ForcedAlignment/{D2}/{BROKEN_WDSEG}.wdseg:3"],
        },
    }


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_wdseg(release: Path, session: int, dialog: str, utt: str, body: str) -> None:
    text = " SFrm  EFrm    SegAScr Word\n" + body + " Total Score: -706963\n"
    path = release / f"Session{session}" / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg"
    _write(path, text.encode("ascii"))
