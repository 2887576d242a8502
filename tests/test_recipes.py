"""Recipes, the loop's selection / refit / paper evaluation, the convex `linear`, and the under-training flags,
on small synthetic problems built here (no store needed)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from featurize.records import Utterance
from train.data import CorpusData, ModalityInput, Normalizer
from train.heads import get_head, make_config, make_recipe
from train.loop import Fitted, LoopOptions, fit_head, forward, prior_loss, train_fold, training_flags
from train.protocols import Fold
from train.recipe import EpochSelector, Recipe, class_weights, lr_factor
from train.report import build_summary

CLASSES = ["a", "b", "c"]


def synthetic(n: int = 90, signal: float = 1.5, seed: int = 0, text: bool = True, pooled: bool = False) -> CorpusData:
    """Utterances whose audio frames (and text tokens) carry their label in the mean of a few dimensions;
    ``pooled``: one mean vector per utterance instead of frames (audio only)."""
    gen = torch.Generator().manual_seed(seed)
    utts, audio, tokens, labels = [], [], [], []
    for i in range(n):
        y = i % len(CLASSES)
        utts.append(Utterance(f"s/{i:03d}", "s", f"spk{i % 9}", CLASSES[y]))
        t = 6 + i % 5
        frames = torch.randn(t, 8, generator=gen)
        frames[:, y] += signal
        audio.append(frames)
        toks = torch.randn(4, 6, generator=gen)
        toks[:, y] += signal / 3
        tokens.append(toks)
        labels.append(y)
    if pooled:
        means = [a.mean(0) for a in audio]
        inputs = {"audio": ModalityInput("audio", "fake-audio", "mean", "pooled", means, (8,), None)}
        return CorpusData("s", utts, torch.tensor(labels), CLASSES, "all", inputs, None, None, False)
    inputs = {"audio": ModalityInput("audio", "fake-audio", "frames", "sequence", audio, (8,), 100.0)}
    if text:
        inputs["text"] = ModalityInput("text", "fake-text", "tokens", "sequence", tokens, (6,), None)
    return CorpusData("s", utts, torch.tensor(labels), CLASSES, "all", inputs, None, None, False)


def fold_of(data: CorpusData) -> Fold:
    ids = [u.utt_id for u in data.utts]
    spk = {u.utt_id: int(u.speaker[3:]) for u in data.utts}
    return Fold("f0", [i for i in ids if spk[i] < 5], [i for i in ids if spk[i] in (5, 6)],
                [i for i in ids if spk[i] > 6])


def test_schedule_warms_up_then_decays_to_zero():
    r = Recipe(warmup=0.1, schedule="cosine")
    assert lr_factor(r, 0.0) == 0.0 and lr_factor(r, 0.05) == pytest.approx(0.5)
    assert lr_factor(r, 0.1) == pytest.approx(1.0) and lr_factor(r, 0.999) < 1e-4
    step = Recipe(schedule="step", step_at=(0.5,), step_gamma=0.1)
    assert lr_factor(step, 0.4) == 1.0 and lr_factor(step, 0.6) == pytest.approx(0.1)
    assert lr_factor(Recipe(schedule="constant"), 0.9) == 1.0


def test_budget_has_a_floor_in_steps_and_patience_a_floor_in_epochs():
    r = Recipe(epochs=20, min_steps=1500, stop_after=0.5)
    assert r.budget(13) == math.ceil(1500 / 13) and r.budget(200) == 20
    assert r.earliest_stop(116) == 58


def test_overrides_go_to_the_recipe_or_the_head_and_unknown_ones_are_refused():
    spec = get_head("cme")
    over = {"lr": "0.002", "epochs": "7", "excite": "audio", "clip_norm": "1"}
    assert make_recipe(spec, over).lr == 0.002 and make_recipe(spec, over).epochs == 7
    assert make_recipe(spec, over).clip_norm == 1.0 and make_config(spec, over).excite == "audio"
    with pytest.raises(ValueError, match="no option 'nope'.*recipe options"):
        make_recipe(spec, {"nope": 1})
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_recipe(spec, {"schedule": "linear"})


@pytest.mark.parametrize("class_weight", ["none", "balanced"])
def test_linear_agrees_with_scikit_learn_logistic_regression(class_weight):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 40))
    y = rng.choice(3, size=150, p=[0.2, 0.3, 0.5])  # unbalanced, so the class weights matter
    x[np.arange(150), y] += 1.0  # informative but not separable
    spec = get_head("linear")
    recipe = make_recipe(spec, {"class_weight": class_weight})
    for c in (0.01, 1.0):
        cfg = make_config(spec, {"C": c})
        model = spec.build(cfg, {"audio": 40}, {"audio": 1}, 3, ["audio"])
        batch = {"audio": torch.tensor(x, dtype=torch.float32), "labels": torch.tensor(y)}
        spec.fit(model, batch, None, CLASSES, recipe)
        ours = torch.softmax(model(batch)["logits"], -1).detach().numpy()
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000, class_weight=None if class_weight == "none"
                                 else "balanced").fit(x.astype(np.float32), y)
        theirs = ref.predict_proba(x.astype(np.float32))
        assert np.abs(ours - theirs).max() < 1e-3, c


def test_linear_svm_agrees_with_scikit_learn_linear_svc_and_converges():
    # the squared hinge is solved by Newton steps on its active set: at every C, even where the data are
    # nearly separable (C = 100), it reaches the optimum; LinearSVC's intercept is penalised, so a large
    # intercept_scaling stands in for our unpenalised bias
    from sklearn.svm import LinearSVC

    x, y = _three_class_problem()
    spec = get_head("linear")
    for c in (0.01, 1.0, 100.0):
        cfg = make_config(spec, {"C": c, "loss": "hinge"})
        model = spec.build(cfg, {"audio": 40}, {"audio": 1}, 3, ["audio"])
        batch = {"audio": torch.tensor(x), "labels": torch.tensor(y)}
        out = spec.fit(model, batch, None, CLASSES, make_recipe(spec, {"class_weight": "none"}))
        info = out["history"][0]
        assert info["converged"] and info["iterations"] < 50, info
        ours = model.out(torch.tensor(x, dtype=torch.float32)).detach().numpy()
        ref = LinearSVC(C=c, tol=1e-12, max_iter=200_000, intercept_scaling=1e3).fit(x, y)
        theirs = ref.decision_function(x)
        assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max(), c


def test_linear_svm_with_class_weights_reaches_the_weighted_optimum():
    # balanced weights weigh each row by its class in every one-vs-rest problem (liblinear weighs only the
    # positives, so LinearSVC is not the reference here): the optimum of our own objective is
    from scipy.optimize import minimize

    from train.heads.linear import Config, objective, solve
    from train.recipe import class_weights

    x, y = _three_class_problem()
    c = 1.0
    params, info = solve(x, y, 3, c, Config(loss="hinge"), class_weight="balanced")
    penalty, weights = 1.0 / (2 * c * len(y)), class_weights("balanced", y, 3)
    ref = minimize(objective, np.zeros_like(params), args=(x, y, 3, penalty, "hinge", weights), jac=True,
                   method="L-BFGS-B", options={"maxiter": 100_000, "gtol": 1e-10, "ftol": 1e-16})
    assert info["converged"]
    assert objective(params, x, y, 3, penalty, "hinge", weights)[0] <= ref.fun + 1e-12
    assert np.abs(params - ref.x).max() < 1e-3 * np.abs(ref.x).max()


def test_a_convex_fit_is_flagged_when_c_sits_at_either_edge_of_its_grid():
    history = [{"C": c, "converged": True} for c in (1e-4, 1e-3, 1e-2)]
    fitted = lambda c: Fitted({}, history, -1, 0, {"C": c})  # noqa: E731
    assert training_flags(fitted(1e-3), 0.5, 1.3) == []
    assert "bottom of the grid" in training_flags(fitted(1e-4), 0.5, 1.3)[0]
    assert "top of the grid" in training_flags(fitted(1e-2), 0.5, 1.3)[0]



def test_only_the_fits_that_make_the_model_or_choose_its_c_are_flagged_unconverged():
    # rav8 fold 3 (2026-12-02): the C = 10 cross-validation fits stalled, C = 1e-3 was chosen, and the
    # flag said "raise max_iter" though 4000 iterations changed nothing
    history = [{"C": c, "converged": True} for c in (1e-4, 1e-3, 1e-2)]
    done = {"converged": True, "iterations": 30, "grad_max": 1e-9, "max_iter_reached": False}
    far_c_stalled = Fitted({}, [*history[:2], {"C": 1e-2, "converged": False}], -1, 0, {"C": 1e-3}, done)
    assert training_flags(far_c_stalled, 0.5, 1.3) == []
    chosen_c_stalled = Fitted({}, [history[0], {"C": 1e-3, "converged": False, "iterations": 99, "grad_max": 2e-5,
                                                "max_iter_reached": False}, history[2]], -1, 0, {"C": 1e-3}, done)
    (flag,) = training_flags(chosen_c_stalled, 0.5, 1.3)
    assert "C=0.001 (cross-validation fit" in flag and "line search stalled" in flag
    # the model's own fit: a real solve cut off after 3 iterations
    x, y = _three_class_problem()
    spec = get_head("linear")
    model = spec.build(make_config(spec, {"C": 1.0, "max_iter": 3}), {"audio": 40}, {"audio": 1}, 3, ["audio"])
    out = spec.fit(model, {"audio": torch.tensor(x), "labels": torch.tensor(y)}, None, CLASSES,
                   make_recipe(spec, {}))
    (flag,) = training_flags(Fitted({}, out["history"], -1, 0, out["chosen"], out["solver"]), 0.5, 1.3)
    assert "final fit" in flag and "after 3 iterations: raise max_iter" in flag


def _three_class_problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 40))
    y = rng.choice(3, size=150, p=[0.2, 0.3, 0.5])  # unbalanced, so class weights matter
    x[np.arange(150), y] += 1.0  # informative, not separable at small C
    return x, y


def test_cross_validation_scores_each_held_out_group_on_a_fit_standardised_without_it():
    """The loader z-scores a fold with all its training rows, held-out groups included; each cross-validation
    fit must see only its own rows' statistics, as the final fit does. One speaker group here speaks 10x louder
    in half the dimensions, which would otherwise shrink those dimensions (and their weights' penalty) in the
    fits it is held out from."""
    from train.heads.linear import Config, cross_validate, objective, solve_rows

    x, y = _three_class_problem()
    groups = np.repeat([0, 1, 2], 50)
    x[groups == 2, :20] *= 10.0
    loaded = (x - x.mean(0)) / x.std(0, ddof=1)  # what the loader hands the head
    cfg, c = Config(cv=3), 0.3
    (scored,) = cross_validate(loaded, y, groups, [c], cfg, CLASSES)
    losses = []
    for g in range(3):
        fit, held = x[groups != g], x[groups == g]
        mean, std = fit.mean(0), fit.std(0, ddof=1)
        params, vt, _ = solve_rows((fit - mean) / std, y[groups != g], 3, c, cfg)
        losses.append(objective(params, ((held - mean) / std) @ vt.T, y[groups == g], 3, 0.0, cfg.loss)[0])
    assert scored["cv_loss"] == pytest.approx(np.mean(losses), rel=1e-6)


def test_balanced_class_weights_count_every_class_alike():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, -100])  # -100: unlabelled context, not counted
    w = class_weights("balanced", y, 4)
    assert w.tolist() == pytest.approx([8 / 16, 8 / 8, 8 / 8, 0.0])  # n / (k n_c); class 3 has no row
    assert class_weights("none", y, 4) is None
    with pytest.raises(ValueError, match="class_weight must be one of"):
        make_recipe(get_head("probe"), {"class_weight": "inverse"})


def test_neural_heads_train_on_the_weighted_loss():
    data = synthetic()
    spec = get_head("probe")
    fold = fold_of(data)
    rows = [r for r in data.labelled(fold.train) if int(data.labels[r]) != 0 or r % 4 == 0]  # class 0 rare
    recipe = make_recipe(spec, {"class_weight": "balanced", "epochs": 1, "min_steps": 0})
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return self.inner(batch)

        def loss(self, out, batch):
            seen.append(batch.get("class_weights"))
            return self.inner.loss(out, batch)

    model = Spy(spec.build(make_config(spec), {"audio": 8}, {"audio": 1}, data.n_classes, ["audio"]))
    from train.loop import run_epochs

    run_epochs(model, recipe, data, Normalizer.fit(data, rows), rows, None, 1, 1, torch.Generator(),
               torch.device("cpu"))
    want = class_weights("balanced", data.labels[rows].numpy(), data.n_classes)
    assert want[0] > 2 * want[1]
    assert seen and all(torch.allclose(w, torch.tensor(want, dtype=torch.float32)) for w in seen)


def test_linear_chooses_c_on_validation_and_refits_on_train_plus_validation():
    data = synthetic(pooled=True)
    spec = get_head("linear")
    recipe = make_recipe(spec)
    assert recipe.refit
    cfg = make_config(spec, {"c_grid": (0.001, 0.1, 10.0)})
    m = train_fold(spec, cfg, recipe, data, fold_of(data), 0, LoopOptions())
    assert m["chosen"]["C"] in (0.001, 0.1, 10.0) and m["refit"]["n_train"] == m["n_train"] + m["n_valid"]
    assert m["evaluation"] == "honest" and not m["optimistic"] and m["ua"] > 0.6


def _probe(data: CorpusData, recipe_over: dict, seed: int = 0) -> tuple[Fitted, float, float]:
    spec = get_head("probe")
    cfg, recipe = make_config(spec), make_recipe(spec, recipe_over)
    fold = fold_of(data)
    train_rows, valid_rows = data.labelled(fold.train), data.labelled(fold.valid)
    norm = Normalizer.fit(data, train_rows)
    model, fitted = fit_head(spec, cfg, recipe, data, norm, train_rows, ("valid", valid_rows), seed, LoopOptions())
    from train.loop import evaluate

    train_ce = evaluate(model, data, train_rows, norm, 32, torch.device("cpu"), "train").ce
    return fitted, train_ce, prior_loss(data.labels[train_rows].numpy(), data.n_classes)


def test_under_training_flag_fires_on_a_starved_head_and_not_on_a_converged_one():
    data = synthetic()
    starved, ce, prior = _probe(data, {"lr": 1e-6, "epochs": 10, "warmup": 0.0, "min_steps": 0})
    flags = training_flags(starved, ce, prior)
    assert any("prior-only" in f for f in flags), flags
    converged, ce, prior = _probe(data, {"lr": 3e-2, "epochs": 60, "min_steps": 0, "patience": 10,
                                         "stop_after": 0.2})
    assert training_flags(converged, ce, prior) == [], (converged.best_epoch, ce, prior)
    late = dataclasses.replace(converged, best_epoch=converged.budget - 1)
    assert any("still improving" in f for f in training_flags(late, ce, prior))
    # msmser's masking schedule in epochs (rmm_end_epoch 70) against a 60-epoch budget
    assert any("modality masking to the end" in f for f in training_flags(converged, ce, prior, min_epochs=70))
    assert training_flags(converged, ce, prior, min_epochs=40) == []


def test_msmser_never_stops_while_modality_masking_is_on():
    data = synthetic(n=45)
    spec = get_head("msmser")
    over = {"d_model": 16, "ff_dim": 32, "n_heads": 2, "n_queries": 3, "scale_hidden": 8, "mlp_hidden": 8,
            "enc_layers": 1, "rmm_end_epoch": 5, "epochs": 8, "patience": 0, "stop_after": 0.0, "lr": 1e-9,
            "batch_size": 16}
    fold = fold_of(data)
    train_rows, valid_rows = data.labelled(fold.train), data.labelled(fold.valid)
    norm = Normalizer.fit(data, train_rows)
    cfg, recipe = make_config(spec, over), make_recipe(spec, over)
    _, fused = fit_head(spec, cfg, recipe, data, norm, train_rows, ("valid", valid_rows), 0, LoopOptions())
    assert len(fused.history) >= 5  # lr ~0: nothing improves after epoch 0, but masking lasts to epoch 5
    audio_only = dataclasses.replace(data, inputs={"audio": data.inputs["audio"]})
    _, alone = fit_head(spec, cfg, recipe, audio_only, norm, train_rows, ("valid", valid_rows), 0, LoopOptions())
    assert len(alone.history) < 5  # no masking without a second modality: patience 0 stops at once


def test_paper_evaluation_selects_on_test_and_is_stamped_optimistic():
    data = synthetic()
    spec = get_head("probe")
    over = {"epochs": 6, "min_steps": 0}
    honest = train_fold(spec, make_config(spec), make_recipe(spec, over), data, fold_of(data), 0, LoopOptions())
    paper = train_fold(spec, make_config(spec), make_recipe(spec, over), data, fold_of(data), 0,
                       LoopOptions(evaluation="paper"))
    assert paper["optimistic"] and paper["evaluation"] == "paper" and not honest["optimistic"]
    assert paper["ua"] >= honest["ua"] - 1e-9  # the best test epoch can only match or beat the chosen one


def test_dialog_attention_fusion_at_logits_can_exceed_one():
    spec = get_head("dialog")
    cfg = make_config(spec, {"fusion_at": "logits", "fusion": "attention"})
    model = spec.build(cfg, {"audio": 8, "text": 6}, {"audio": 1, "text": 1}, 3, ["audio", "text"]).eval()
    with torch.no_grad():
        for m in ("audio", "text"):
            model.branch[m][-1].out.weight.mul_(100.0)  # confident branches: logits far beyond 1
    batch = {"audio": torch.randn(2, 4, 8), "text": torch.randn(2, 4, 6),
             "utt_mask": torch.ones(2, 4, dtype=torch.bool)}
    with torch.no_grad():
        out = model(batch)
    assert out["logits"].abs().max() > 1.0
    # and the fused logits are a convex mix of the branches' own logits
    alpha = out["fusion_weights"][..., None]
    torch.testing.assert_close(out["logits"], alpha[..., 0, :] * out["audio_logits"] + alpha[..., 1, :]
                               * out["text_logits"])


def test_a_field_added_since_a_run_was_recorded_keeps_the_old_run_current():
    from train.heads import fill_new_fields
    from train.loop import changed_settings

    for head, still_current in (("probe", True), ("linear", False)):  # linear's recipe weighs classes now
        spec = get_head(head)
        recipe = dataclasses.asdict(make_recipe(spec))
        config = dataclasses.asdict(make_config(spec))
        old_recipe = {k: v for k, v in recipe.items() if k != "class_weight"}  # written before the field existed
        filled = fill_new_fields(head, config, old_recipe)[1]
        assert (filled == recipe) is still_current, head
        # as read back from a config.json
        old = json.loads(json.dumps({"request": {"head": head}, "head_config": config, "recipe": old_recipe}))
        new = {"request": {"head": head}, "head_config": config, "recipe": recipe}
        assert (changed_settings(old, new) == []) is still_current


def test_an_option_set_as_text_and_as_yaml_is_one_setting():
    """``--set choose_modalities=true`` stores the string "true", a sweep file the bool: the same run, so a
    `train run` directory resumes as a sweep cell; a value that types differently is a change."""
    from train.loop import changed_settings

    spec = get_head("dialog")

    def run_config(options: dict) -> dict:
        return json.loads(json.dumps({"request": {"head": "dialog", "options": options},
                                      "head_config": dataclasses.asdict(make_config(spec, options)),
                                      "recipe": dataclasses.asdict(make_recipe(spec, options))}))

    as_text = run_config({"choose_modalities": "true", "lr": "1e-3"})
    assert changed_settings(as_text, run_config({"choose_modalities": True, "lr": 0.001})) == []
    assert changed_settings(as_text, run_config({"choose_modalities": False, "lr": 0.001})) == [
        "recipe.choose_modalities"]
    assert changed_settings(as_text, run_config({"lr": 0.001})) == ["recipe.choose_modalities"]
    # without the typed parts, the request's options are all there is to compare
    assert changed_settings(as_text, {"request": {"head": "dialog", "options": {"lr": 0.001}}}) == [
        "request.options"]


@pytest.mark.parametrize("head", ["cme", "late_concat"])
def test_bfloat16_autocast_trains_in_bfloat16_and_scores_in_float32(head):
    """``autocast: bfloat16`` runs the convolutions in bfloat16 while the weights stay float32 and the
    logits, loss and metrics are float32; a fold trained so learns the synthetic problem."""
    data = synthetic(n=90, signal=2.0)
    if head == "cme":  # word-level: each utterance's frames split into two timed words
        data.inputs["text"] = dataclasses.replace(data.inputs["text"], form="words")
        data.word_frames = [torch.tensor([[0, len(a) // 2], [len(a) // 2, len(a)]]) for a in data.inputs["audio"].items]
        data.inputs["text"].items = [t[:2] for t in data.inputs["text"].items]
    spec = get_head(head)
    cfg = make_config(spec, {"lstm_hidden": 32} if head == "cme" else {})
    recipe = make_recipe(spec, {"autocast": "bfloat16", "epochs": 20, "min_steps": 0, "refit": False,
                                "lr": 3e-3, "batch_size": 16})
    metrics = train_fold(spec, cfg, recipe, data, fold_of(data), 0, LoopOptions(device="cpu"))
    prior = prior_loss(data.labels.numpy(), data.n_classes)
    assert metrics["train_loss_final"] < 0.5 * prior and metrics["ua"] > 0.5, metrics

    model = spec.build(cfg, {m: i.dim for m, i in data.inputs.items()}, {"audio": 1, "text": 1}, 3,
                       sorted(data.inputs)).eval()
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batch = next(data.batches(list(range(16)), 16, shuffle=False, norm=Normalizer.identity()))
    out = forward(model, batch, "bfloat16", torch.device("cpu"))
    assert seen == [torch.bfloat16] and out["logits"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    exact = forward(model, batch, "none", torch.device("cpu"))["logits"]
    assert seen[-1] == torch.float32 and torch.allclose(out["logits"], exact, atol=0.05)
    with pytest.raises(ValueError, match="autocast must be one of"):
        make_recipe(spec, {"autocast": "float8"}).check()


def test_a_selection_window_passes_over_an_early_spike_to_the_better_run_after_it():
    # UA per epoch: one lucky early epoch, then a steady climb that stays above the noise
    scores = [0.30, 0.70, 0.40, 0.50, 0.60, 0.62, 0.63, 0.60]
    alone, windowed = EpochSelector(1), EpochSelector(3)
    for s in scores:
        alone.update(s)
        windowed.update(s)
    assert alone.best_epoch == 1
    assert windowed.best_epoch == 6 and windowed.best_score == pytest.approx((0.60 + 0.62 + 0.63) / 3)


def test_the_loop_chooses_and_refits_on_the_windowed_validation_score():
    data = synthetic()
    spec = get_head("probe")
    over = {"epochs": 12, "min_steps": 0, "patience": 12, "select_window": 3, "refit": True}
    fold = fold_of(data)
    train_rows, valid_rows = data.labelled(fold.train), data.labelled(fold.valid)
    recipe = make_recipe(spec, over)
    _, fitted = fit_head(spec, make_config(spec), recipe, data, Normalizer.fit(data, train_rows), train_rows,
                         ("valid", valid_rows), 0, LoopOptions())
    ua = [h["valid_ua"] for h in fitted.history]
    trailing = [np.mean(ua[max(0, e - 2):e + 1]) for e in range(len(ua))]
    assert [h["valid_windowed"] for h in fitted.history] == pytest.approx(trailing)
    assert fitted.best_epoch == int(np.argmax(trailing))
    m = train_fold(spec, make_config(spec), recipe, data, fold, 0, LoopOptions())
    assert m["best_epoch"] == fitted.best_epoch and m["refit"]["epochs"] == fitted.best_epoch + 1
    with pytest.raises(ValueError, match="select_window"):
        make_recipe(spec, {"select_window": 0})


def pooled_pair(text_signal_in: set[int], n: int = 180, seed: int = 0) -> CorpusData:
    """Dialogue-head data (each utterance its own dialogue): a pooled audio vector that carries the label for
    every speaker, and a pooled text vector that carries it only for the speakers in ``text_signal_in``
    (noise elsewhere)."""
    gen = torch.Generator().manual_seed(seed)
    utts, audio, text, labels = [], [], [], []
    for i in range(n):
        y, spk = i % len(CLASSES), (i // len(CLASSES)) % 9  # every speaker has every class
        utts.append(Utterance(f"s/{i:03d}", "s", f"spk{spk}", CLASSES[y]))
        a = torch.randn(8, generator=gen)
        a[y] += 2.0
        t = torch.randn(6, generator=gen)
        if spk in text_signal_in:
            t[y] += 3.0
        audio.append(a), text.append(t), labels.append(y)
    inputs = {"audio": ModalityInput("audio", "fake-audio", "mean", "pooled", audio, (8,), None),
              "text": ModalityInput("text", "fake-text", "sentence", "pooled", text, (6,), None)}
    return CorpusData("s", utts, torch.tensor(labels), CLASSES, "all", inputs, None, None, True)


@pytest.mark.parametrize("text_everywhere", [False, True])
def test_dialog_text_weight_is_chosen_on_validation_and_kept_by_the_refit(text_everywhere, tmp_path):
    """Text that carried the label for the training speakers only (fold_of: speakers 0-4 train, 5-6
    validation, 7-8 test) is weighed 0 at test; text that carries it for everyone keeps the paper's 1."""
    data = pooled_pair(set(range(9)) if text_everywhere else set(range(5)))
    spec = get_head("dialog")
    cfg = make_config(spec, {"text_weight": "validation"})
    recipe = make_recipe(spec, {"epochs": 40, "patience": 10})
    m = train_fold(spec, cfg, recipe, data, fold_of(data), 0, LoopOptions(), out_dir=tmp_path)
    expected = 1.0 if text_everywhere else 0.0
    assert m["chosen"]["text_weight"] == expected and m["refit"]["text_weight"] == expected
    assert set(m["chosen"]["text_weight_ce"]) == {"1.0", "0.75", "0.5", "0.25", "0.0"}
    # the scored model (the refit's) carries the weight and the text logits' training mean m in its checkpoint,
    # and its fused logits are a + m + w (t - m)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=False)
    assert float(ckpt["state_dict"]["text_weight"]) == expected
    model = spec.build(cfg, {"audio": 8, "text": 6}, {"audio": 1, "text": 1}, 3, ["audio", "text"])
    model.load_state_dict(ckpt["state_dict"])
    batch = next(data.batches(data.labelled(fold_of(data).test), 8, shuffle=False,
                              norm=Normalizer(ckpt["normalizer"])))
    with torch.no_grad():
        out = model.eval()(batch)
    mean = ckpt["state_dict"]["text_mean"]
    assert mean.abs().sum() > 0  # training moved it
    torch.testing.assert_close(out["logits"], out["audio_logits"] + mean + expected * (out["text_logits"] - mean))


@pytest.mark.parametrize("text_everywhere", [False, True])
def test_choose_modalities_drops_a_modality_that_fails_on_validation(text_everywhere, tmp_path):
    """choose_modalities: the fused model and each one-modality variant are fitted on the training speakers; text
    that carried the label for the training speakers only is left out by validation (the scored model, its
    checkpoint and its refit read audio alone), text that carries it for everyone is kept."""
    data = pooled_pair(set(range(9)) if text_everywhere else set(range(5)))
    spec = get_head("dialog")
    recipe = make_recipe(spec, {"epochs": 15, "patience": 10, "choose_modalities": True})
    m = train_fold(spec, make_config(spec), recipe, data, fold_of(data), 0, LoopOptions(), out_dir=tmp_path)
    scores = m["modality_scores"]
    assert set(scores) == {"audio+text", "audio", "text"}
    expected = ["audio", "text"] if text_everywhere else ["audio"]
    assert m["modalities"] == expected
    assert (scores["audio"] > scores["audio+text"]) != text_everywhere
    ckpt = torch.load(tmp_path / "model.pt", weights_only=False)
    assert ckpt["modalities"] == expected and set(ckpt["dims"]) == set(expected)
    assert m["refit"] is not None and m["refit"]["n_train"] == m["n_train"] + m["n_valid"]
    # off (the default), the fused model is scored whatever validation says
    plain = train_fold(spec, make_config(spec), make_recipe(spec, {"epochs": 15, "patience": 10}), data,
                       fold_of(data), 0, LoopOptions())
    assert plain["modalities"] == ["audio", "text"] and plain["modality_scores"] is None
    # the run's summary (and so `train run`'s table and the bench record) counts the choices
    assert build_summary([m])["modalities_chosen"] == {"+".join(expected): 1}
    assert "modalities_chosen" not in build_summary([plain])


def test_dialog_text_weight_needs_logit_level_addition():
    spec = get_head("dialog")
    with pytest.raises(ValueError, match="text_weight=validation needs fusion_at=logits and fusion=add"):
        spec.build(make_config(spec, {"text_weight": "validation", "fusion": "attention"}),
                   {"audio": 8, "text": 6}, {"audio": 1, "text": 1}, 3, ["audio", "text"])
    # a unimodal variant has no text to weigh: the option is ignored there
    model = spec.build(make_config(spec, {"text_weight": "validation"}), {"audio": 8}, {"audio": 1}, 3, ["audio"])
    assert model.text_weight_candidates is None


def test_a_directory_rerun_with_fewer_seeds_reports_only_those(tmp_path):
    """Seeds 0-2 trained into a directory, then seed 0 alone: the summary, the report's count, predictions.csv
    and `train compare` all speak of seed 0 only (the other seeds' folders stay, for a later rerun with them)."""
    from train.compare import fold_metrics
    from train.loop import run_folds
    from train.report import load_run, write_run_report

    data = synthetic(text=False)
    spec = get_head("probe")
    config, recipe = make_config(spec), make_recipe(spec, {"epochs": 2, "min_steps": 0})
    run_config = {"protocol": "x", "request": {"head": "probe", "seeds": [0, 1, 2]},
                  "recipe": dataclasses.asdict(recipe), "head_config": dataclasses.asdict(config)}
    out = tmp_path / "run"
    run_folds(spec, config, recipe, data, [fold_of(data)], [0, 1, 2], LoopOptions(device="cpu"), out, run_config)
    run_config["request"]["seeds"] = [0]
    summary = run_folds(spec, config, recipe, data, [fold_of(data)], [0], LoopOptions(device="cpu"), out, run_config)
    assert summary["ua"]["n"] == 1 and len(list((out / "folds").iterdir())) == 3
    assert [r["seed"] for r in load_run(out)["runs"]] == [0]
    assert "over 1 fold × seed runs" in write_run_report(out).read_text()
    assert {line.split(",")[3] for line in (out / "predictions.csv").read_text().splitlines()[1:]} == {"0"}
    assert [seed for _, seed in fold_metrics(out)] == [0]


def test_a_dimension_constant_in_training_is_centred_not_blown_up():
    data = synthetic(pooled=True)
    for item in data.inputs["audio"].items:
        item[0] = 2.0
    rows = list(range(len(data.utts)))
    norm = Normalizer.fit(data, rows)
    x = torch.zeros(1, 8)
    x[0, 0] = 2.3
    assert norm("audio", x)[0, 0].item() == pytest.approx(0.3)


def test_options_take_the_type_their_field_declares():
    """--set strings, YAML's own types and stored JSON all become the dataclass field's declared type; a value that
    cannot be one is refused naming the option (before, a field defaulting to None took any string, and `C=abc`
    failed deep inside the fit)."""
    spec = get_head("linear")
    assert make_config(spec, {"C": "0.01"}).C == 0.01 and make_config(spec, {"C": "none"}).C is None
    assert make_config(spec, {"c_grid": "1e-3,1e-2"}).c_grid == (0.001, 0.01)
    assert make_config(spec, {"c_grid": [0.1, 1]}).c_grid == (0.1, 1.0)
    assert make_config(spec, {"c_grid": 0.001}).c_grid == (0.001,)  # one value in a sweep, where a list is an axis
    recipe = make_recipe(spec, {"epochs": "3", "refit": 0, "lr": 1, "weight_decay": "1e-4"})
    assert (recipe.epochs, recipe.refit, recipe.lr, recipe.weight_decay) == (3, False, 1.0, 1e-4)
    assert isinstance(recipe.lr, float)
    for bad, words in (({"C": "abc"}, "option 'C' wants a number"), ({"C": True}, "option 'C' wants a number"),
                       ({"epochs": 2.5}, "option 'epochs' wants a whole number"),
                       ({"lr": [1, 2]}, "option 'lr' wants a number"), ({"refit": "maybe"}, "wants true/false"),
                       ({"c_grid": {"a": 1}}, "option 'c_grid' wants a comma-separated list"),
                       ({"loss": "nope"}, "linear: loss must be one of logistic, hinge")):
        with pytest.raises(ValueError, match=words):
            make_config(spec, bad)
            make_recipe(spec, bad)
