"""store-size and store-read: bytes on disk per stored value, and loading a whole feature into
memory vs plain sequential file reads of the same number of bytes, measured in the same run.

    python bench/store_io.py --store cache/rav.zarr --feature fbank
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, ratio_line, timed  # noqa: E402
from featurize.store import FeatureStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", default="cache/features.zarr")
    ap.add_argument("--feature", default="fbank")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--loads", type=int, default=5, help="loads per timing sample (one load takes tens of ms)")
    a = ap.parse_args()
    store = FeatureStore(a.store, create=False)
    name = store.resolve_feature(a.feature)
    info = next(i for i in store.features() if i.name == name)
    arr = store.read(name)
    values = arr.data.size
    print(
        f"store-size / store-read on {name} ({len(arr)} utterances, {values:,} values, {arr.data.dtype}); {machine()}"
    )
    print(
        f"  store-size: {info.nbytes_stored / (values * 4):.3f} of float32 raw "
        f"({info.nbytes_stored / values:.2f} bytes per value; goal <= 0.55)"
    )
    # Round trip: what comes back is exactly what float16 holds (no lossy codec).
    again = store.read(name)
    assert np.array_equal(arr.data, again.data)
    raw = Path(tempfile.mkdtemp()) / "raw.bin"
    arr.data.tofile(raw)  # the same bytes, as one flat file
    nbytes = raw.stat().st_size

    def plain() -> None:
        # The baseline loads the same bytes into memory with one plain sequential read.
        np.fromfile(raw, dtype=arr.data.dtype)

    ratios = []
    for _ in range(a.repeats):
        t_plain = sum(timed(plain, a.loads))
        t_store = sum(timed(lambda: store.read(name), a.loads))
        ratios.append(t_plain / t_store)
    os.remove(raw)
    print(
        f"  store-read: {nbytes / 2**20:.1f} MiB loaded; "
        + ratio_line("speed vs plain sequential read", ratios, ">= 0.5")
    )


if __name__ == "__main__":
    main()
