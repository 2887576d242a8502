"""estimate: a worked paper estimate of extracting a large corpus (default 10,000 hours) on N GPU workers.

    python bench/estimate.py --hours 10000 --gpus 1,4,8,16

Nothing here is a measurement of a GPU (none was lent to the sessions that wrote it): each input is either
counted on the spot (HuBERT-base FLOPs per audio second, with torch's FlopCounterMode on a random-init
base-size model; bytes per audio hour, from the extractors' own array specs) or taken from a measured
CPU figure of this README (the options' defaults say which), or an assumption given as an option (GPU peak,
the fraction of it sustained, the store's write bandwidth). The estimate is the slowest of the three
stages that overlap in `featurize extract`: GPU compute and audio decoding scale with the workers, the
writes to one shared store do not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from featurize.extractors import EXTRACTORS, estimate_bytes  # noqa: E402
from featurize.store import ArraySpec  # noqa: E402


def hubert_base_flops_per_second() -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import HubertConfig, HubertModel

    model = HubertModel(HubertConfig()).eval()
    seconds = 8
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 16000 * seconds))
    return counter.get_total_flops() / seconds


def stored_bytes(name: str, hours: float, mean_seconds: float, **options) -> int:
    extractor = EXTRACTORS.get(name)(**options)
    return estimate_bytes(extractor.arrays(), hours * 3600, int(hours * 3600 / mean_seconds))


def hubert_arrays_bytes(hours: float, layers: int) -> int:
    # the array SpeechEncoder.arrays() declares for a base model (768-d float16, 50 frames a second); built
    # here because the extractor itself needs the model's config, and no HuBERT is installed offline
    tail = (768,) if layers == 1 else (layers, 768)
    return estimate_bytes([ArraySpec("hidden", "frames", tail, "float16", rows_per_second=50)], hours * 3600, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=10000)
    ap.add_argument("--gpus", default="1,4,8,16")
    ap.add_argument("--mean-seconds", type=float, default=4.0, help="mean utterance length (IEMOCAP ~4.5, RAVDESS 3.7)")
    ap.add_argument("--gpu-tflops", type=float, default=989, help="assumed dense fp16 peak (H100 / H200 SXM)")
    ap.add_argument("--utilization", type=float, default=0.1,
                    help="assumed fraction of the peak sustained (not measured: replace with a measured rate)")
    ap.add_argument("--cores-per-gpu", type=int, default=8, help="CPU cores beside each GPU for decoding")
    ap.add_argument("--decode-x-realtime", type=float, default=2000,
                    help="audio seconds one core decodes a second (16 kHz FLAC: ~2300 on the 2-core dev box)")
    ap.add_argument("--fbank-core-s-per-hour", type=float, default=6.4,
                    help="core-seconds per audio hour (README scaling table: 3.2 s per hour on 2 workers)")
    ap.add_argument("--compare-core-s-per-hour", type=float, default=104,
                    help="core-seconds per audio hour (README scaling table: 52 s per hour on 2 workers)")
    ap.add_argument("--write-mb-s", type=float, default=500, help="assumed write bandwidth of the shared store")
    a = ap.parse_args()
    hours, audio_s = a.hours, a.hours * 3600
    flops = hubert_base_flops_per_second()
    gpu_s = audio_s * flops / (a.gpu_tflops * 1e12 * a.utilization)
    decode_core_s = audio_s / a.decode_x_realtime
    last_layer, all_layers = hubert_arrays_bytes(hours, 1), hubert_arrays_bytes(hours, 13)
    print(f"estimate for {hours:,.0f} hours of 16 kHz audio ({audio_s / a.mean_seconds:,.0f} utterances of "
          f"{a.mean_seconds:g} s)")
    print(f"  HuBERT base: {flops / 1e9:.1f} GFLOP per audio second (counted) -> {audio_s * flops:.2e} FLOP;"
          f" at {a.utilization:.0%} of {a.gpu_tflops:g} TFLOPS: {gpu_s / 3600:.1f} GPU-hours")
    print(f"  decoding: {decode_core_s / 3600:.1f} core-hours at {a.decode_x_realtime:g}x real time per core")
    print(f"  store, before compression: HuBERT last layer {last_layer / 1e12:.2f} TB, all 13 layers "
          f"{all_layers / 1e12:.1f} TB, fbank {stored_bytes('fbank', hours, a.mean_seconds) / 1e9:.0f} GB, "
          f"ComParE functionals {stored_bytes('opensmile', hours, a.mean_seconds) / 1e9:.0f} GB")
    write_s = last_layer / (a.write_mb_s * 1e6)
    print(f"  writing the last layer at {a.write_mb_s:g} MB/s to one shared store: {write_s / 3600:.1f} h whatever N")
    print()
    print("| GPU workers | GPU compute h | decode h (on their cores) | write h (shared) | HuBERT last layer, wall h |"
          " fbank on their cores, h | ComParE on their cores, h |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in a.gpus.split(",")):
        cores = n * a.cores_per_gpu
        gpu_h, dec_h, write_h = gpu_s / n / 3600, decode_core_s / cores / 3600, write_s / 3600
        wall = max(gpu_h, dec_h, write_h)
        print(f"| {n} | {gpu_h:.2f} | {dec_h:.2f} | {write_h:.2f} | {wall:.2f} | "
              f"{hours * a.fbank_core_s_per_hour / cores / 3600:.2f} | "
              f"{hours * a.compare_core_s_per_hour / cores / 3600:.1f} |")


if __name__ == "__main__":
    main()
