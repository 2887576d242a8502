"""Other tools read a store: xarray opens every group, zarr-python alone reads an utterance (the README's
example, run as written)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from featurize.corpora import read_corpus
from featurize.extractors.fbank import Fbank
from featurize.extractors.opensmile import OpenSmile
from featurize.pipeline import run_extraction
from featurize.store import FeatureStore
from tests.conftest import write_manifest_corpus

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interop")
    utts, _ = read_corpus("manifest", write_manifest_corpus(root / "c", 8))
    fs = FeatureStore(root / "s.zarr")
    run_extraction(fs, utts, Fbank(), workers=1)
    run_extraction(fs, utts, OpenSmile("egemaps"), workers=1)
    return root / "s.zarr"


def test_xarray_opens_every_group_and_the_table(store):
    xr = pytest.importorskip("xarray")
    fs = FeatureStore(store, create=False)
    fb = fs.resolve_feature("fbank")
    ds = xr.open_zarr(store, group=f"features/{fb}/fbank", consolidated=False)
    assert ds["data"].dims == ("row", "dim") and ds["offsets"].dims == ("utterance_edge",)
    ref = fs.read(fb)
    np.testing.assert_array_equal(ds["data"].values[: len(ref.data)], ref.data)
    eg = fs.resolve_feature("opensmile_egemaps")
    assert xr.open_zarr(store, group=f"features/{eg}/functionals", consolidated=False)["data"].dims == (
        "utterance", "dim")
    ids = xr.open_zarr(store, group=f"features/{fb}", consolidated=False)["utt_ids"]
    assert list(ids.values) == ref.utt_ids
    table = xr.open_zarr(store, group="utterances", consolidated=False)
    assert table["utt_id"].dims == ("utterance",) and sorted(table["utt_id"].values) == sorted(ref.utt_ids)


def test_the_readmes_zarr_only_example_reads_an_utterance(store):
    text = README.read_text()
    code = re.search(r"<!-- interop-example -->\n```python\n(.*?)```", text, re.S).group(1)
    fs = FeatureStore(store, create=False)
    feature = fs.resolve_feature("fbank")
    ref = fs.read(feature)
    scope = {"STORE": str(store), "FEATURE": feature, "UTT_ID": ref.utt_ids[3]}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented example, as a user runs it
    np.testing.assert_array_equal(scope["frames"], ref.get(ref.utt_ids[3]))
