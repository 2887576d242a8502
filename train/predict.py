"""Predictions on new audio with a trained run: `train predict RUN_DIR file.wav ...`.

Each input feature is recomputed for the new files by the same extractor, rebuilt from what its
store group recorded; if the rebuilt configuration does not fingerprint the same (another model,
other library versions) the prediction is refused rather than fed features of another kind.
Utterances without a transcript are transcribed with Whisper when the head needs text, and always
for word-level heads (their audio is pooled by word times, audio-only variants too). The class
probabilities are averaged over every fold × seed checkpoint of the run. A run trained with ``normalize:
speaker`` standardises the files given as one speaker's speech, as it did each speaker in training, and so needs
at least ten of them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featurize.audio import audio_duration, load_audio
from featurize.extractors import build_extractor
from featurize.records import DamagedFile, Utterance
from featurize.store import FeatureStore, StoreError, feature_group_name
from train.data import (
    CorpusData,
    FeatureChoice,
    ModalityInput,
    Normalizer,
    as_item,
    layer_positions,
    speaker_statistics,
    word_frames,
)
from train.heads import get_head, make_config
from train.loop import forward
from train.report import read_json


@dataclass
class Prediction:
    path: str
    prediction: str  # the predicted class (not a truth label)
    probabilities: dict[str, float]
    text: str | None


def _extractor_for(store: FeatureStore, group: str):
    info = store.feature_info(group)
    extractor = build_extractor(info.extractor, info.init_options)  # stored as the strings -o would give
    here = feature_group_name(extractor.feature_name(), extractor.name, extractor.config(), extractor.arrays())
    if here != group or here.rsplit("-", 1)[1] != info.fingerprint:
        raise ValueError(
            f"{group} was extracted with a configuration this machine does not reproduce "
            f"({here} here): install the same model and library versions, or retrain"
        )
    return extractor


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


def audio_files(paths: list[Path]) -> list[Path]:
    """The files to predict on: each file given, and each directory's audio files (any depth, sorted)."""
    out = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file()
                           and not f.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{p}: a directory without audio files ({', '.join(AUDIO_SUFFIXES)})")
            out += found
        elif not p.exists():
            raise FileNotFoundError(f"no audio file {p}")
        else:
            out.append(p)
    return out


def _utterances(paths: list[Path], text: str | None, need_words: bool) -> list[Utterance]:
    utts = []
    for p in audio_files(paths):
        utts.append(
            Utterance(f"new/{p.stem}", "new", "unknown", audio_path=str(p), duration=audio_duration(p), text=text)
        )
    if need_words:
        from featurize.asr import Transcriber

        asr = Transcriber()
        for u in utts:
            asr_text, words = asr.transcribe(load_audio(u.audio_path))
            u.text = u.text or asr_text
            u.words, u.word_source = words, "asr"
    return utts


def needs_asr_words(head_inputs: dict[str, str], run_inputs: dict, text: str | None) -> bool:
    """Whether new audio must be transcribed first: for a text input without ``text`` given, and always
    for word-level heads (``cme``), whose audio is pooled by word times even when they run audio-only,
    and whose word vectors must be the timed words' (the given ``text`` has no times)."""
    return head_inputs.get("text") == "words" or ("text" in run_inputs and text is None)


def predict_files(run_dir: Path, paths: list[Path], text: str | None = None,
                  store_at: str | None = None) -> list[Prediction]:
    """``store_at``: where the store the run trained on is now (default: where its config says it was)."""
    cfg = read_json(run_dir / "config.json", "a run's configuration")
    req = cfg["request"]
    spec = get_head(req["head"])
    config = make_config(spec, req["options"])
    classes = cfg["classes"]
    try:
        # the store's extractor settings rebuild the run's features for new audio
        store = FeatureStore(store_at or req["store"], create=False)
    except StoreError as e:
        if store_at:
            raise
        raise StoreError(f"{e}; {run_dir} trained on the store {req['store']} (its config.json): give --store "
                         "where that store is now") from None
    choices = {FeatureChoice.parse(f).name: FeatureChoice.parse(f) for f in req["features"]}
    utts = _utterances(paths, text, need_words=needs_asr_words(spec.inputs, cfg["inputs"], text))
    if spec.inputs.get("text") == "words":
        silent = [u.audio_path for u in utts if not u.words]
        if silent:
            raise ValueError(f"no words recognised in {', '.join(silent)}: head {spec.name} pools the audio by "
                             "word times, so it cannot score audio without words")
    inputs: dict[str, ModalityInput] = {}
    for modality, inp in cfg["inputs"].items():
        extractor = _extractor_for(store, inp["feature"])
        extractor.setup()
        stored_dtype = next(a for a in extractor.arrays() if a.name == inp["array"]).dtype
        choice = next((c for n, c in choices.items() if inp["feature"].startswith(n) or n == extractor.name), None)
        positions = layer_positions(extractor.config().get("layers"), choice.layers if choice else None,
                                    inp["feature"])
        raw = []
        for u in utts:
            audio = load_audio(u.audio_path, sr=extractor.sample_rate) if extractor.needs == "audio" else None
            values = extractor.process_batch([(u, audio)])[0][inp["array"]]
            # rounded as the store rounds (float16 by default): the heads were trained on the stored values
            rows = torch.from_numpy(np.asarray(values).astype(stored_dtype).astype(np.float32))
            if positions is not None:
                rows = rows[:, positions]
            raw.append(rows)
        spec_arr = next(a for a in extractor.arrays() if a.name == inp["array"])
        is_frames = spec_arr.kind == "frames"
        if cfg["recipe"].get("normalize") == "speaker":
            # as in training (train/data.py): standardised on the speaker's own speech first; the files given are
            # taken as one speaker's
            mean, std = speaker_statistics({"the files given": raw}, is_frames, inp["feature"])["the files given"]
            raw = [(rows - mean) / std for rows in raw]
        items = [as_item(rows, inp["form"], tuple(inp["tail"])) if is_frames else rows for rows in raw]
        inputs[modality] = ModalityInput(
            modality, inp["feature"], inp["array"], inp["form"], items, tuple(inp["tail"]), spec_arr.rows_per_second
        )
    spans = None
    if spec.inputs.get("text") == "words":
        rate = inputs["audio"].rows_per_second if "audio" in inputs else 100.0
        n_words = [len(inputs["text"].items[k]) if "text" in inputs else len(u.words or []) for k, u in enumerate(utts)]
        spans = [word_frames(u, n, rate) for u, n in zip(utts, n_words, strict=True)]
    data = CorpusData(
        "new", utts, torch.full((len(utts),), -100), classes, cfg["label_set"], inputs, None, spans, spec.dialogue
    )
    # the run's own fold x seed models: a directory rerun with fewer seeds keeps the others' folders
    runs = {f"{f['name']}_seed{s}" for f in cfg.get("folds", []) for s in req["seeds"]}
    checkpoints = sorted(p for p in run_dir.glob("folds/*/model.pt") if not runs or p.parent.name in runs)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints under {run_dir}/folds: is this a finished run?")
    if runs and len(checkpoints) < len(runs):
        missing = sorted(runs - {p.parent.name for p in checkpoints})
        raise FileNotFoundError(f"{run_dir}: {len(missing)} of the run's {len(runs)} models are missing "
                                f"(e.g. folds/{missing[0]}/model.pt): is the run finished?")
    probs = torch.zeros(len(utts), len(classes))
    for ckpt in checkpoints:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
        except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError) as e:  # cut short, or not a checkpoint
            raise DamagedFile(f"{ckpt}: a fold's model, damaged ({type(e).__name__}: {e}); delete that fold's "
                             "folder and rerun the run to train it again") from None
        model = spec.build(config, state["dims"], state["layers"], len(classes), state["modalities"])
        model.load_state_dict(state["state_dict"])
        model.eval()
        norm = Normalizer(state["normalizer"])
        with torch.no_grad():
            for batch in data.batches(list(range(len(utts))), 16, shuffle=False, norm=norm):
                # as the test fold was scored: its phase and its recipe's autocast
                logits = forward(model, {**batch, "phase": "test"}, state["recipe"].get("autocast", "none"),
                                 torch.device("cpu"))["logits"]
                rows = batch["rows"]
                if spec.dialogue:  # one utterance per "dialogue" here
                    logits = logits[:, 0]
                    rows = [r[0] for r in rows]
                probs[rows] += torch.softmax(logits, -1)
    probs /= len(checkpoints)
    return [
        Prediction(
            u.audio_path, classes[int(p.argmax())], {c: float(v) for c, v in zip(classes, p, strict=True)}, u.text
        )
        for u, p in zip(utts, probs, strict=True)
    ]
