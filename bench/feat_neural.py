"""feat-neural: end-to-end `featurize extract` of a neural encoder vs a naive loop and the compute limit.

Three ways over the same utterances, interleaved in every repeat so machine noise hits all alike:

* e2e   ``run_extraction`` into a fresh temporary store (decoding in worker processes, batching,
        the writer thread, the utterance table: everything ``featurize extract`` does);
* (a)   a naive loop: one utterance at a time, one process, one ``.npy`` file per utterance;
* (b)   the compute limit: the same forward passes (``process_batch``) on the same batches as e2e,
        audio already decoded in memory, nothing stored, in this process;
* (b')  the same, in e2e's layout where a CPU model computes as one-thread replicas in forked worker
        processes (featurize/pipeline.py: ``_run_replicas``): e2e's own tasks, decoded up front.
        e2e is held to the faster of (b) and (b').

Speed is audio-seconds per second; text encoders are timed on the same utterances' transcripts
(the rate still counts their audio seconds, so the numbers compare). Models: ``hubert`` is a
base-size HuBERT with random weights (12 layers, 768-d, HubertConfig() defaults: no real weights
install offline, and the cost is the same); ``minilm`` / ``mpnet`` / ``whisper`` are the real
offline models (``make models``). Setup (loading the model) is done once, outside the timings.

    python bench/feat_neural.py --data ../shared/data/ravdess --model hubert --limit 96
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from featurize.audio import load_audio
from featurize.corpora import read_corpus
from featurize.extractors import Extractor, get_extractor
from featurize.pipeline import REPLICA_TASK_SECONDS, length_batches, run_extraction, utterance_seconds
from featurize.records import Utterance
from featurize.store import FeatureStore


def build_extractor(model: str, tmp: Path) -> Extractor:
    if model != "hubert":
        return get_extractor(model)()
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    path = tmp / "hubert-base-random"
    HubertModel(HubertConfig()).save_pretrained(path)
    # hubert-base-ls960's preprocessing: group-norm model, so no attention mask.
    Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(path)
    return get_extractor("hubert")(model_path=str(path))


def subset(utts: list[Utterance], extractor: Extractor, limit: int) -> list[Utterance]:
    """Every k-th applicable utterance, so speakers and lengths vary across the subset."""
    ok = [u for u in utts if (u.audio_path if extractor.needs == "audio" else (u.text or "").strip())]
    step = max(1, len(ok) // limit)
    return ok[::step][:limit]


def time_e2e(extractor: Extractor, utts: list[Utterance], tmp: Path, workers: int, batch_seconds: float) -> float:
    store_dir = tmp / "e2e.zarr"
    shutil.rmtree(store_dir, ignore_errors=True)
    t0 = time.perf_counter()
    result = run_extraction(FeatureStore(store_dir), utts, extractor, workers=workers, batch_seconds=batch_seconds,
                            console=Console(quiet=True))
    elapsed = time.perf_counter() - t0
    if result.processed != len(utts):
        raise RuntimeError(f"e2e processed {result.processed} of {len(utts)} (skipped: {result.skipped})")
    return elapsed


def time_naive(extractor: Extractor, utts: list[Utterance], tmp: Path) -> float:
    out_dir = tmp / "naive"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    t0 = time.perf_counter()
    for i, u in enumerate(utts):
        audio = load_audio(u.audio_path, u.start, u.end, channel=u.channel) if extractor.needs == "audio" else None
        values = extractor.process_batch([(u, audio)])[0]
        for name, v in values.items():
            np.save(out_dir / f"{i}_{name}.npy", v)
    return time.perf_counter() - t0


def time_compute(extractor: Extractor, batches: list[list[tuple[Utterance, np.ndarray | None]]]) -> float:
    t0 = time.perf_counter()
    for items in batches:
        extractor.process_batch(items)
    return time.perf_counter() - t0


_replica_tasks: list = []  # (b')'s decoded tasks, inherited by the forked workers


def _compute_replica_task(i: int) -> int:
    from featurize import pipeline

    pipeline._worker_extractor.process_batch(_replica_tasks[i])
    return i


def time_compute_replicas(extractor: Extractor, workers: int) -> float:
    """(b'): e2e's replica tasks over ``workers`` forked one-thread processes, as ``_run_replicas`` runs
    them (same pool, same initializer, same submit-ahead), with nothing to decode or store."""
    from featurize import pipeline

    t0 = time.perf_counter()
    pool = pipeline.replica_pool(extractor, workers)
    try:
        for _ in pipeline._in_order(pool, _compute_replica_task, [(i,) for i in range(len(_replica_tasks))],
                                    ahead=workers * 2):
            pass
    finally:
        pool.shutdown(wait=True)
    return time.perf_counter() - t0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def spread(values: list[float]) -> str:
    return f"min {min(values):7.2f}  median {statistics.median(values):7.2f}  max {max(values):7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ravdess"))
    parser.add_argument("--corpus", default="ravdess")
    parser.add_argument("--model", default="hubert", choices=["hubert", "minilm", "mpnet", "whisper"])
    parser.add_argument("--limit", type=int, default=96, help="utterances in the subset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode workers for e2e")
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, one per core); on a shared machine "
                             "fewer threads than cores avoids stalls when another process holds a core")
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped to a log

    utts, _ = read_corpus(args.corpus, args.data)
    with tempfile.TemporaryDirectory(prefix="feat_neural_") as tmp_name:
        tmp = Path(tmp_name)
        extractor = build_extractor(args.model, tmp)
        utts = subset(utts, extractor, args.limit)
        audio_seconds = sum(utterance_seconds(u) for u in utts)
        extractor.setup()
        extractor.config()  # hashes a local model once (cached), as a real run's plan() does
        # (b)'s batches: the pipeline's own batching of the length-sorted utterances, decoded up front.
        ordered = sorted(utts, key=lambda u: (utterance_seconds(u), u.utt_id))
        needs_audio = extractor.needs == "audio"
        batches = [[(u, load_audio(u.audio_path, u.start, u.end, channel=u.channel) if needs_audio else None)
                    for u in b]
                   for b in length_batches(ordered, args.batch_seconds)]
        time_compute(extractor, batches[:1])  # warm-up: first-call allocations and kernel selection
        replicas = extractor.batched and extractor.cpu_replicas() and args.workers > 1
        if replicas:
            decoded = {u.utt_id: a for b in batches for u, a in b}
            _replica_tasks[:] = [[(u, decoded[u.utt_id]) for u in t] for t in
                                 length_batches(ordered, min(args.batch_seconds, REPLICA_TASK_SECONDS))]
        print(f"feat-neural  {extractor.describe()}")
        print(f"  {len(utts)} utterances of {args.corpus}, {audio_seconds:.1f} s of audio, {len(batches)} batches "
              f"(batch_seconds {args.batch_seconds:g}), e2e decode workers {args.workers}, {args.repeats} repeats")
        if replicas:
            print(f"  e2e computes as {args.workers} one-thread model replicas; (b') is that layout's compute limit")
        rates: dict[str, list[float]] = {"e2e": [], "naive (a)": [], "compute (b)": []}
        if replicas:
            rates["compute (b')"] = []
        for r in range(args.repeats):
            timings = {"compute (b)": time_compute(extractor, batches)}
            if replicas:
                timings["compute (b')"] = time_compute_replicas(extractor, args.workers)
            timings["naive (a)"] = time_naive(extractor, utts, tmp)
            timings["e2e"] = time_e2e(extractor, utts, tmp, args.workers, args.batch_seconds)
            for k, secs in timings.items():
                rates[k].append(audio_seconds / secs)
            print(f"  repeat {r + 1}: " + ", ".join(f"{k} {audio_seconds / s:.2f}" for k, s in timings.items()))
    print("audio-seconds per second:")
    for k, v in rates.items():
        print(f"  {k:12s} {spread(v)}")
    limit = [max(b) for b in zip(*(rates[k] for k in rates if k.startswith("compute")), strict=True)]
    vs_b = [e / b for e, b in zip(rates["e2e"], limit, strict=True)]
    vs_a = [e / a for e, a in zip(rates["e2e"], rates["naive (a)"], strict=True)]
    which = "the faster of (b), (b')" if "compute (b')" in rates else "compute (b)"
    print(f"e2e / {which}: {spread(vs_b)}   (goal >= 0.9)")
    print(f"e2e / naive (a):   {spread(vs_a)}   (goal >= 1.2)")
    if "compute (b')" in rates:
        gain = [r1 / r0 for r1, r0 in zip(rates["compute (b')"], rates["compute (b)"], strict=True)]
        print(f"compute (b') / (b): {spread(gain)}   (replicas vs one process with every thread)")
    import torch

    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), torch threads {torch.get_num_threads()}, "
          f"python {platform.python_version()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
