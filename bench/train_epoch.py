"""train-epoch: one epoch of a head from the store vs the same epoch with the encoder in the loop.

    python bench/train_epoch.py --data ../shared/data --limit 64

The encoder is a base-size HuBERT (12 layers, 768-d, random weights from the standard config: no
real weights install here, and the cost is the same). Both sides train the `probe` head on the
same utterances in the same batches; the encoder side decodes audio and runs HuBERT for every
batch, as training without a cache must. Goal: the store epoch >= 100x faster.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, ratio_line, spread  # noqa: E402
from featurize.audio import load_audio  # noqa: E402
from featurize.corpora import read_corpus  # noqa: E402
from featurize.extractors.speech import SpeechEncoder  # noqa: E402
from featurize.pipeline import run_extraction  # noqa: E402
from featurize.store import FeatureStore  # noqa: E402
from train.data import Normalizer, load_data  # noqa: E402
from train.heads import get_head, make_config, make_recipe  # noqa: E402


def save_base_hubert(where: Path) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    HubertModel(HubertConfig()).save_pretrained(where)
    # hubert-base-ls960's preprocessor: no normalisation, no attention mask (group-norm front end).
    Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(where)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model_dir = save_base_hubert(tmp / "hubert-base-random")
    utts, _ = read_corpus("ravdess", Path(a.data) / "ravdess")
    utts = [u for u in utts if u.label in ("neutral", "happy", "sad", "angry")][:: 4][: a.limit]
    seconds = sum(u.duration for u in utts)
    print(f"train-epoch: probe head, {len(utts)} RAVDESS utterances ({seconds:.0f} s), base-size HuBERT; {machine()}")
    encoder = SpeechEncoder(model_path=str(model_dir), layers="12", device="cpu")
    store = FeatureStore(tmp / "s.zarr")
    from rich.console import Console

    run_extraction(store, utts, encoder, workers=1, console=Console(file=open("/dev/null", "w")))  # noqa: SIM115
    spec = get_head("probe")
    cfg, recipe = make_config(spec), make_recipe(spec, {"batch_size": a.batch_size})
    data = load_data(store, "ravdess", ["hubert"], spec)
    rows = list(range(len(data.utts)))
    norm = Normalizer.fit(data, rows)
    by_id = {u.utt_id: u for u in utts}

    def fresh_model():
        torch.manual_seed(0)
        model = spec.build(cfg, {"audio": data.inputs["audio"].dim}, {"audio": data.inputs["audio"].layers},
                           data.n_classes, ["audio"])
        return model, torch.optim.Adam(model.parameters(), lr=recipe.lr)

    def epoch_from_store() -> None:
        model, opt = fresh_model()
        gen = torch.Generator().manual_seed(0)
        for batch in data.batches(rows, recipe.batch_size, shuffle=True, norm=norm, generator=gen):
            loss = model.loss(model(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def epoch_with_encoder() -> None:
        model, opt = fresh_model()
        gen = torch.Generator().manual_seed(0)
        for batch in data.batches(rows, recipe.batch_size, shuffle=True, norm=norm, generator=gen):
            # What a cache-less loop does: decode, run the encoder, then the head.
            items = [(by_id[data.utts[i].utt_id], load_audio(data.utts[i].audio_path)) for i in batch["rows"]]
            with torch.no_grad():
                feats = [torch.from_numpy(v["hidden"]) for v in encoder.process_batch(items)]
            padded = torch.nn.utils.rnn.pad_sequence([norm("audio", f) for f in feats], batch_first=True)
            lengths = torch.tensor([len(f) for f in feats])
            batch = {**batch, "audio": padded, "audio_mask": torch.arange(padded.shape[1])[None] < lengths[:, None]}
            loss = model.loss(model(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

    encoder.setup()
    store_t, enc_t, ratios = [], [], []
    for _ in range(a.repeats):
        t = time.perf_counter()
        epoch_from_store()
        store_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        epoch_with_encoder()
        enc_t.append(time.perf_counter() - t)
        ratios.append(enc_t[-1] / store_t[-1])
    print(f"  epoch from the store: {spread(store_t)} s; with the encoder in the loop: {spread(enc_t)} s")
    print("  " + ratio_line("store epoch speed-up", ratios, ">= 100x"))


if __name__ == "__main__":
    main()
