"""The accuracy benchmark's committed per-cell records: written from a finished sweep cell, shown only
while the sweep file still asks for the settings they were made with."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench import accuracy


def _finished_cell(cell_dir: Path, req, wa: float, extra: dict | None = None) -> None:
    """What `train sweep` leaves in a finished cell directory (the parts the records read)."""
    cell_dir.mkdir(parents=True)
    from train.heads import get_head, make_config, make_recipe

    spec = get_head(req.head)
    config = {"request": dataclasses.asdict(req), "head_config": dataclasses.asdict(make_config(spec, req.options)),
              "recipe": dataclasses.asdict(make_recipe(spec, req.options)),
              "inputs": {"audio": {"feature": "opensmile_compare-0123abcd", "array": "functionals"}},
              "folds": [{"name": f"fold{k}"} for k in range(5)]}
    (cell_dir / "config.json").write_text(json.dumps(config))
    per_fold = [{"fold": f"fold{k}", "seed": s, "best_epoch": 3, "wa": wa, "ua": wa - 0.01, "macro_f1": wa - 0.02}
                for s in req.seeds for k in range(5)]
    summary = {k: {"mean": per_fold[0][k], "std": 0.0, "n": 5} for k in ("wa", "ua", "macro_f1")}
    (cell_dir / "summary.json").write_text(json.dumps({**summary, "per_fold": per_fold, "train_seconds": 60.0,
                                                       **(extra or {})}))


def test_a_summary_of_fewer_seeds_than_the_config_is_not_a_finished_cell(tmp_path, monkeypatch):
    """A sweep adding seeds rewrites config.json before it trains; killed then, the old seeds' summary must not
    pass for the new seeds' results (neither as a finished sweep cell nor as a bench record)."""
    from train.cli import cell_is_current

    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    req = dict(accuracy.sweep_cells("rav4"))["linear-compare"]
    one_seed = dataclasses.replace(req, seeds=[0])
    _finished_cell(tmp_path / "cell", one_seed, 0.6)
    config = json.loads((tmp_path / "cell" / "config.json").read_text())
    config["request"]["seeds"] = req.seeds  # what the killed run that was adding seeds 1 and 2 wrote
    (tmp_path / "cell" / "config.json").write_text(json.dumps(config))
    assert not cell_is_current(tmp_path / "cell", req)
    accuracy.record_finished("rav4", "linear-compare", req, tmp_path / "cell")
    assert accuracy.read_record("rav4", "linear-compare", req) is None
    assert cell_is_current(tmp_path / "cell", one_seed) is False  # its config says 3 seeds now: rerun, not reuse


def test_records_follow_the_sweep_file(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    cells = dict(accuracy.sweep_cells("rav4"))
    req = cells["linear-compare"]
    _finished_cell(tmp_path / "run" / "linear-compare", req, 0.6)
    accuracy.record_finished("rav4", "linear-compare", req, tmp_path / "run" / "linear-compare")
    record = accuracy.read_record("rav4", "linear-compare", req)
    assert record is not None and record["wa"]["mean"] == 0.6 and len(record["per_fold"]) == 15
    assert record["inputs"] == "audio=opensmile_compare:functionals" and record["machine"]
    lines, defects = accuracy.table("rav4", accuracy.sweep_cells("rav4"), Path("data"))
    row = next(line for line in lines if line.startswith("| linear-compare "))
    assert "60.00 ± 0.00" in row and "1.0" in row
    assert all("not finished" in line for line in lines if line.startswith("| probe-fbank "))
    assert defects == []

    # The sweep file now asks for another setting: the record is not shown, never silently reused.
    changed = dataclasses.replace(req, options={**req.options, "lr": 0.5})
    assert accuracy.read_record("rav4", "linear-compare", changed) is None
    # A run directory made with other settings than the sweep asks does not overwrite the record.
    _finished_cell(tmp_path / "run2" / "linear-compare", changed, 0.9)
    accuracy.record_finished("rav4", "linear-compare", req, tmp_path / "run2" / "linear-compare")
    assert accuracy.read_record("rav4", "linear-compare", req)["wa"]["mean"] == 0.6


def test_a_record_of_a_feature_group_the_store_no_longer_serves_is_not_shown(tmp_path, monkeypatch):
    """Records name the fingerprinted groups they trained on: once the store resolves the feature to another
    group (extracted again with another configuration), the old figures are not its figures."""
    from featurize.extractors.opensmile import OpenSmile
    from featurize.pipeline import run_extraction
    from featurize.store import FeatureStore
    from tests.conftest import write_manifest_corpus

    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    cells = accuracy.sweep_cells("rav4")
    req = dict(cells)["linear-compare"]
    _finished_cell(tmp_path / "run" / "linear-compare", req, 0.6)
    accuracy.record_finished("rav4", "linear-compare", req, tmp_path / "run" / "linear-compare")
    assert accuracy.read_record("rav4", "linear-compare", req)["feature_groups"] == ["opensmile_compare-0123abcd"]
    assert accuracy.read_record("rav4", "linear-compare", req, {"opensmile": "opensmile_compare-0123abcd"})
    assert accuracy.read_record("rav4", "linear-compare", req, {"opensmile": "opensmile_compare-99990000"}) is None
    assert accuracy.read_record("rav4", "linear-compare", req, {"fbank": "fbank-11112222"})  # cannot tell: shown

    # what a real store resolves the sweep's names to
    from featurize.corpora import read_corpus

    utts, _ = read_corpus("manifest", write_manifest_corpus(tmp_path / "c", 3))
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, OpenSmile(), workers=1)
    groups = accuracy.feature_groups_now(str(tmp_path / "s.zarr"), cells)
    assert groups == {"opensmile": store.resolve_feature("opensmile")}
    assert accuracy.read_record("rav4", "linear-compare", req, groups) is None  # 0123abcd is not that group
    assert accuracy.feature_groups_now(str(tmp_path / "none.zarr"), cells) == {}


def test_fused_head_below_its_audio_only_variant_is_flagged(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    cells = dict(accuracy.sweep_cells("rav4"))
    for name, wa in (("dialog", 0.40), ("dialog-audio", 0.60)):
        _finished_cell(tmp_path / "run" / name, cells[name], wa)
        accuracy.record_finished("rav4", name, cells[name], tmp_path / "run" / name)
    lines, defects = accuracy.table("rav4", accuracy.sweep_cells("rav4"), Path("data"))
    assert defects == ["rav4/dialog"] and any("DEFECT" in line for line in lines)


def test_fusion_verdict_pairs_runs_by_fold_and_seed():
    def cell(uas):
        runs = [{"fold": f"fold{i % 5}", "seed": i // 5, "ua": u} for i, u in enumerate(uas)]
        mean = sum(uas) / len(uas)
        return {"ua": {"mean": mean, "std": 0.05}, "per_fold": runs}

    audio = cell([0.50, 0.60, 0.55, 0.45, 0.65, 0.52, 0.58, 0.50, 0.62, 0.48])
    # Fused a little below on average, but the runs disagree in sign: noise.
    noisy = cell([u + d for u, d in zip([r["ua"] for r in audio["per_fold"]],
                                        [0.02, -0.03, 0.01, -0.02, 0.01, -0.03, 0.02, -0.01, 0.01, -0.02],
                                        strict=True)])
    line, defect = accuracy.fusion_verdict(noisy, audio)
    assert not defect and "paired over 10 runs" in line and "noise" in line
    # Below in every run, by a margin far smaller than either cell's std: still a defect.
    worse = cell([r["ua"] - 0.015 for r in audio["per_fold"]])
    line, defect = accuracy.fusion_verdict(worse, audio)
    assert defect and "DEFECT" in line
    # Without per-fold figures: the gap against one std.
    line, defect = accuracy.fusion_verdict({**worse, "per_fold": None}, audio)
    assert not defect and "no per-fold figures" in line


def test_modalities_chosen_on_validation_are_recorded_and_shown(tmp_path, monkeypatch):
    """A fused cell trained with choose_modalities keeps the count of each choice in its record, and the
    fused-versus-audio-only verdict says it."""
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    cells = dict(accuracy.sweep_cells("rav4"))
    chosen = {"audio": 12, "audio+text": 3}
    _finished_cell(tmp_path / "run" / "dialog", cells["dialog"], 0.6, {"modalities_chosen": chosen})
    _finished_cell(tmp_path / "run" / "dialog-audio", cells["dialog-audio"], 0.6)
    _finished_cell(tmp_path / "run" / "dialog-paper", cells["dialog-paper"], 0.7)
    for name in ("dialog", "dialog-audio", "dialog-paper"):
        accuracy.record_finished("rav4", name, cells[name], tmp_path / "run" / name)
    assert accuracy.read_record("rav4", "dialog", cells["dialog"])["modalities_chosen"] == chosen
    assert "modalities_chosen" not in accuracy.read_record("rav4", "dialog-audio", cells["dialog-audio"])
    lines, _ = accuracy.table("rav4", accuracy.sweep_cells("rav4"), Path("data"))
    verdict = next(line for line in lines if line.startswith("\ndialog:"))
    assert "inputs chosen on validation: audio in 12, audio+text in 3 of 15 runs" in verdict
    # the paper-evaluation gap says its honest twin is not always the paper's (fused) model
    gap = next(line for line in lines if line.startswith("| (vs honest dialog"))
    assert "audio in 12, audio+text in 3 of 15 runs, the paper's model is always fused" in gap


def test_a_run_on_uncommitted_code_is_not_credited_to_its_commit():
    from bench.common import code_version

    clean = {"provenance": {"git_commit": "0123456789abcdef", "git_changed": []}}
    dirty = {"provenance": {"git_commit": "0123456789abcdef", "git_changed": ["train/loop.py"]}}
    assert code_version(clean) == "0123456" and code_version(dirty) == "0123456+changes"


def test_a_speaker_normalised_bench_marks_every_row_and_its_reference(tmp_path, monkeypatch):
    """rav4-speaker's cells read features standardised per speaker (transductive): every row and the reference
    computed the same way say so, and the table explains it, so its figures are never read as rav4's."""
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    cells = dict(accuracy.sweep_cells("rav4-speaker"))
    assert all(req.options.get("normalize") == "speaker" and req.protocol == "rav4" for req in cells.values())
    req, cell_dir = cells["linear-compare"], tmp_path / "run" / "linear-compare"
    _finished_cell(cell_dir, req, 0.77)
    accuracy.record_finished("rav4-speaker", "linear-compare", req, cell_dir)
    # rav4's own linear-compare cell (fold standardisation only) does not pass for this one
    rav4_cell = dict(accuracy.sweep_cells("rav4"))["linear-compare"]
    assert accuracy.read_record("rav4-speaker", "linear-compare", rav4_cell) is None
    reference = {k: {"mean": 0.75, "std": 0.01} for k in ("wa", "ua", "macro_f1")}
    lines, _ = accuracy.table("rav4-speaker", accuracy.sweep_cells("rav4-speaker"), Path("data"),
                              {k: {"mean": 0.68, "std": 0.02} for k in ("wa", "ua", "macro_f1")}, None, reference)
    row = next(line for line in lines if line.startswith("| linear-compare "))
    assert "audio=opensmile_compare:functionals, standardised per speaker |" in row and "77.00" in row
    refs = [line for line in lines if line.startswith("| scikit-learn reference")]
    assert len(refs) == 2 and "per speaker" not in refs[0] and "per speaker | 75.00" in refs[1]
    assert any("transductive" in line for line in lines)
