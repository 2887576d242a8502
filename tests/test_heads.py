"""Fast checks of every fusion head against the contract in train/heads/__init__.py (tiny dims, CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from train.heads import get_head, make_config
from train.heads.cme import word_alignment
from train.heads.dialog import FUSION_AT, FUSIONS, LOSSES
from train.heads.probe import pool_frames

C = 4
DIMS = {"audio": 6, "text": 10}
LAYERS = {"audio": 1, "text": 3}  # text arrives layered [.., L, D], audio does not: both paths get exercised
HEADS = ["linear", "probe", "dialog", "late_concat", "msmser", "cme"]
# small widths so the whole file runs in seconds; everything else stays at the paper defaults
TINY = {
    "linear": {},
    "probe": {},
    "dialog": {"hidden": 8, "n_heads": 2},
    "late_concat": {"cnn_channels": (4, 8), "audio_hidden": 8, "text_hidden": 8, "attn_hidden": 8,
                    "leaky_slope": 0.2},  # a steep slope, so a wrong max over padding shows in the logits
    "msmser": {"d_model": 16, "n_heads": 2, "ff_dim": 32, "n_queries": 4, "scale_hidden": 8, "mlp_hidden": 8},
    "cme": {"conv_channels": (8, 8, 8), "text_dim": 16, "lstm_hidden": 8, "fcn_hidden": 8},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the models are tiny: one thread is as fast and does not slow down under a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, modalities: tuple[str, ...] = ("audio", "text"), **overrides):
    spec = get_head(name)
    cfg = make_config(spec, {**TINY[name], **overrides})
    return spec.build(cfg, DIMS, LAYERS, C, list(modalities))


def feat(shape: tuple[int, ...], m: str, g: torch.Generator) -> torch.Tensor:
    layered = (LAYERS[m],) if LAYERS[m] > 1 else ()
    return torch.randn(*shape, *layered, DIMS[m], generator=g)


def lengths_mask(b: int, t: int, g: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # the batch is exactly as long as its longest item, so padding it is a real change
    return torch.arange(t)[None, :] < lengths[:, None]


def make_batch(name: str, b: int = 5, t: int = 21, n: int = 7, w: int = 5, u: int = 6, seed: int = 0) -> dict:
    """A random batch in the form the head declares; padded positions hold garbage, not zeros."""
    g = torch.Generator().manual_seed(seed)
    spec = get_head(name)
    batch: dict = {"epoch": 0}
    if spec.dialogue:
        mask = lengths_mask(b, u, g)
        for m in spec.inputs:
            batch[m] = feat((b, u), m, g)
        batch["utt_mask"] = mask
        batch["labels"] = torch.randint(0, C, (b, u), generator=g).masked_fill(~mask, -100)
        return batch
    for m, form in spec.inputs.items():
        if form == "pooled":
            batch[m] = feat((b,), m, g)
        elif form == "sequence":
            batch[m] = feat((b, t if m == "audio" else n), m, g)
            batch[m + "_mask"] = lengths_mask(b, t if m == "audio" else n, g)
        else:  # words: consecutive spans inside each item's real audio, some words empty
            batch["words"] = feat((b, w), m, g)
            word_mask = lengths_mask(b, w, g)
            audio_len = batch["audio_mask"].sum(1)
            cuts = torch.sort(torch.rand(b, w + 1, generator=g), dim=1).values
            bounds = (cuts * audio_len[:, None]).long()
            batch["word_frames"] = torch.stack([bounds[:, :-1], bounds[:, 1:]], dim=-1)
            batch["word_mask"] = word_mask
    batch["labels"] = torch.randint(0, C, (b,), generator=g)
    return batch


def pad_batch(name: str, batch: dict, extra: int = 3, seed: int = 1) -> dict:
    """The batch with `extra` more padding positions on every padded axis (garbage values, mask False)."""
    g = torch.Generator().manual_seed(seed)
    spec = get_head(name)
    out = dict(batch)

    def grow(x: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
        shape = (x.shape[0], extra, *x.shape[2:])
        if fill is None:
            if x.is_floating_point():
                fill = torch.randn(shape, generator=g) * 10
            else:
                fill = torch.zeros(shape, dtype=x.dtype)
        return torch.cat([x, fill], dim=1)

    if spec.dialogue:
        for m in spec.inputs:
            out[m] = grow(batch[m])
        out["utt_mask"] = grow(batch["utt_mask"])
        out["labels"] = grow(batch["labels"], torch.full((batch["labels"].shape[0], extra), -100))
        return out
    for m, form in spec.inputs.items():
        if form == "sequence":
            out[m] = grow(batch[m])
            out[m + "_mask"] = grow(batch[m + "_mask"])
        elif form == "words":
            out["words"] = grow(batch["words"])
            out["word_mask"] = grow(batch["word_mask"])
            # garbage spans on padding words: the head must ignore them through word_mask
            garbage = torch.zeros(batch["words"].shape[0], extra, 2, dtype=torch.long)
            garbage[..., 1] = 10_000
            out["word_frames"] = grow(batch["word_frames"], garbage)
    return out


def learnable_batch(name: str, b: int = 64, seed: int = 0) -> dict:
    """~64 items whose label is written into every position of every modality (class prototype + noise)."""
    dialogue = get_head(name).dialogue
    batch = make_batch(name, b=b // 4 if dialogue else b, seed=seed)  # dialogues: 16 x up to 6 utterances
    g = torch.Generator().manual_seed(seed + 100)
    labels = batch["labels"].clamp(min=0)
    for key, m in (("audio", "audio"), ("text", "text"), ("words", "text")):
        if key in batch:
            x = batch[key]
            proto = feat((C,), m, g) * 2
            p = proto[labels]  # [B, (U,) (L,) D]
            while p.dim() < x.dim():  # sequences: the same prototype on every frame / token
                p = p.unsqueeze(1)
            batch[key] = 0.5 * x + p
    return batch


def fit(model: torch.nn.Module, batch: dict, steps: int, lr: float = 3e-3) -> tuple[float, float]:
    """(loss before, loss after) `steps` full-batch Adam steps, both measured in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model.loss(model(batch), batch).item()

    before = eval_loss()
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(model(batch), batch).backward()
        opt.step()
    return before, eval_loss()


# ---------------------------------------------------------------- every head

@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("modalities", [("audio", "text"), ("audio",), ("text",)])
def test_output_shapes(name: str, modalities: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = build(name, modalities)
    batch = make_batch(name)
    out = model(batch)
    expected = (5, 6, C) if get_head(name).dialogue else (5, C)
    assert out["logits"].shape == expected
    assert torch.isfinite(out["logits"]).all()
    loss = model.loss(out, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("name", HEADS)
def test_paper_defaults_build_and_run(name: str) -> None:
    torch.manual_seed(0)
    spec = get_head(name)
    cfg = make_config(spec)
    # the optimisation settings are the head's recipe, not its model config
    assert all(hasattr(spec.recipe, k) for k in ("lr", "weight_decay", "epochs", "batch_size", "schedule"))
    assert not any(hasattr(cfg, k) for k in ("lr", "weight_decay", "epochs", "batch_size"))
    assert not hasattr(cfg, "modalities")  # a constructor argument, not an option
    model = spec.build(cfg, DIMS, LAYERS, C, ["audio", "text"]).eval()
    with torch.no_grad():
        assert torch.isfinite(model(make_batch(name, b=2))["logits"]).all()


@pytest.mark.parametrize("name", HEADS)
def test_padding_invariance(name: str) -> None:
    torch.manual_seed(0)
    model = build(name).eval()
    batch = make_batch(name)
    padded = pad_batch(name, batch)
    with torch.no_grad():
        a, b = model(batch)["logits"], model(padded)["logits"]
    if get_head(name).dialogue:
        mask = batch["utt_mask"]
        b = b[:, : mask.shape[1]]
        a, b = a[mask], b[mask]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_loss_falls(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, dropout=0.0) if name not in ("linear",) else build(name)
    before, after = fit(model, learnable_batch(name), steps=200)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", HEADS)
def test_same_seed_same_training(name: str) -> None:
    batch = make_batch(name)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(123)
        model = build(name)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()  # dropout and RMM draw from the seeded generator too
        for _ in range(3):
            opt.zero_grad()
            model.loss(model(batch), batch).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            return model(batch)["logits"], [p.detach().clone() for p in model.parameters()]

    (out1, params1), (out2, params2) = run(), run()
    assert torch.equal(out1, out2)
    assert all(torch.equal(p, q) for p, q in zip(params1, params2, strict=True))


@pytest.mark.parametrize("name", ["probe", "late_concat", "msmser", "cme"])
def test_item_without_text_is_finite(name: str) -> None:
    """An utterance with no tokens / words (empty transcript) must not turn into NaN, forward or backward."""
    torch.manual_seed(0)
    model = build(name)
    batch = make_batch(name)
    batch["word_mask" if name == "cme" else "text_mask"][1] = False
    out = model(batch)
    assert torch.isfinite(out["logits"]).all()
    model.loss(out, batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------- dialog

DIALOG_GRID = [dict(fusion_at=a, fusion=f, loss=lo)
               for a, f, lo in itertools.product(FUSION_AT, FUSIONS, LOSSES)]


@pytest.mark.parametrize("overrides", DIALOG_GRID + [{"modality": "audio"}, {"modality": "text"}],
                         ids=lambda o: "-".join(str(v) for v in o.values()))
def test_dialog_grid(overrides: dict) -> None:
    assert len(DIALOG_GRID) == 24
    overrides = dict(overrides)
    modalities = (overrides.pop("modality"),) if "modality" in overrides else ("audio", "text")
    torch.manual_seed(0)
    model = build("dialog", modalities, **overrides)
    batch = make_batch("dialog")
    out = model(batch)
    assert out["logits"].shape == (5, 6, C)
    if overrides.get("loss") == "perspective":
        assert out["audio_logits"].shape == out["text_logits"].shape == (5, 6, C)
    if overrides.get("fusion") == "attention":
        w = out["fusion_weights"]
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]))
    loss = model.loss(out, batch)
    loss.backward()
    if overrides.get("fusion") == "attention":  # the public code never trains w: here it gets a gradient
        assert model.fusion.score.weight.grad.abs().sum() > 0
    model.eval()  # every fusion point keeps padding utterances away from real ones
    with torch.no_grad():
        a = model(batch)["logits"][batch["utt_mask"]]
        b = model(pad_batch("dialog", batch))["logits"][:, :6][batch["utt_mask"]]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion_at", FUSION_AT)
def test_dialog_perspective_adds_terms(fusion_at: str) -> None:
    torch.manual_seed(0)
    persp = build("dialog", fusion_at=fusion_at, loss="perspective")
    single = build("dialog", fusion_at=fusion_at, loss="single")
    batch = make_batch("dialog")
    out = persp(batch)
    lp, ls = persp.loss(out, batch), single.loss(out, batch)
    labels = batch["labels"].reshape(-1)
    aux = sum(F.cross_entropy(out[k].reshape(-1, C), labels, ignore_index=-100)
              for k in ("audio_logits", "text_logits"))
    assert lp > ls
    torch.testing.assert_close(lp, ls + aux)


def test_dialog_loss_ignores_padding_labels() -> None:
    torch.manual_seed(0)
    model = build("dialog", loss="single").eval()
    batch = make_batch("dialog")
    out = model(batch)
    mask = batch["utt_mask"]
    expected = F.cross_entropy(out["logits"][mask], batch["labels"][mask])
    torch.testing.assert_close(model.loss(out, batch), expected)


# ---------------------------------------------------------------- msmser

def test_msmser_audio_pool_is_padding_invariant_and_means_real_frames() -> None:
    from train.heads.probe import pool_frames

    torch.manual_seed(0)
    model = build("msmser", audio_pool=3).eval()
    batch = make_batch("msmser")  # t = 21 audio frames: pads to groups of 3 only where lengths are not multiples
    with torch.no_grad():
        a, b = model(batch)["logits"], model(pad_batch("msmser", batch))["logits"]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)

    x = torch.arange(7, dtype=torch.float32).view(1, 7, 1)
    mask = torch.tensor([[True] * 5 + [False] * 2])
    pooled, pooled_mask = pool_frames(x, mask, 3)
    assert pooled.flatten().tolist() == [1.0, 3.5, 0.0]  # (0+1+2)/3, (3+4)/2 (frame 5 is padding), all padding
    assert pooled_mask.tolist() == [[True, True, False]]


def test_msmser_eval_mask_hides_modality_at_test_only() -> None:
    for hidden, shown in (("text", "audio"), ("audio", "text")):
        torch.manual_seed(0)
        model = build("msmser", eval_mask=hidden).eval()
        batch = dict(make_batch("msmser"), phase="test")
        changed = dict(batch)
        changed[hidden] = torch.randn_like(batch[hidden]) * 5
        with torch.no_grad():
            torch.testing.assert_close(model(changed)["logits"], model(batch)["logits"], atol=1e-5, rtol=1e-5)
            # validation (which picks the checkpoint) sees both modalities: the paper masks at test only
            for phase in ("valid", None):
                assert not torch.allclose(model({**changed, "phase": phase})["logits"],
                                          model({**batch, "phase": phase})["logits"], atol=1e-4)
            changed[shown] = torch.randn_like(batch[shown])  # the visible modality still matters
            assert not torch.allclose(model(changed)["logits"], model(batch)["logits"], atol=1e-4)


def test_msmser_a_sample_left_with_nothing_to_read_reads_no_audio() -> None:
    """No text and the audio masked (eval_mask=audio at test): the queries must read nothing of the audio, not
    the first audio frame that the all-masked row's attention falls back to."""
    torch.manual_seed(0)
    model = build("msmser", eval_mask="audio").eval()
    batch = dict(make_batch("msmser"), phase="test")
    batch["text_mask"] = batch["text_mask"].clone()
    batch["text_mask"][1] = False  # item 1 has no text
    changed = dict(batch, audio=batch["audio"] + 5.0)
    with torch.no_grad():
        a, b = model(batch)["logits"], model(changed)["logits"]
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


def test_msmser_rmm_forced_in_training() -> None:
    torch.manual_seed(0)
    model = build("msmser", rmm_p0=1.0, rmm_text_prob=1.0, dropout=0.0).train()
    batch = make_batch("msmser")
    changed = dict(batch, text=torch.randn_like(batch["text"]) * 5)
    torch.manual_seed(1)
    out = model(batch)
    torch.manual_seed(1)
    out_changed = model(changed)
    assert not out["text_kept"].any() and out["audio_kept"].all()
    torch.testing.assert_close(out_changed["logits"], out["logits"], atol=1e-5, rtol=1e-5)


def test_msmser_rmm_schedule_and_rates() -> None:
    model = build("msmser").train()
    assert model.rmm_p(0) == pytest.approx(0.8)
    assert model.rmm_p(35) == pytest.approx(0.4)
    assert model.rmm_p(70) == 0.0 and model.rmm_p(99) == 0.0
    torch.manual_seed(0)
    keep = model.keep_masks({"epoch": 0}, 20_000, torch.device("cpu"))
    hit = ~keep["text"] | ~keep["audio"]
    assert not (~keep["text"] & ~keep["audio"]).any()  # a sample never loses both
    assert hit.float().mean().item() == pytest.approx(0.8, abs=0.02)
    assert (~keep["text"]).float().sum().item() / hit.float().sum().item() == pytest.approx(0.6, abs=0.02)
    keep_late = model.keep_masks({"epoch": 80}, 1000, torch.device("cpu"))
    assert keep_late["text"].all() and keep_late["audio"].all()
    model.eval()
    keep_eval = model.keep_masks({"epoch": 0}, 1000, torch.device("cpu"))
    assert keep_eval["text"].all() and keep_eval["audio"].all()


# ---------------------------------------------------------------- cme

def test_cme_mean_max_equals_masked_max_forward_and_backward() -> None:
    from train.heads.cme import aligned_mean_max

    g = torch.Generator().manual_seed(0)
    b, w, t, d = 3, 5, 40, 6
    bounds = torch.sort(torch.randint(0, t, (b, w + 1), generator=g), dim=1).values
    frames = torch.arange(t)
    # spans that overlap their neighbours by a frame, as receptive-field alignment does; one empty word
    align = (frames >= bounds[:, :-1, None] - 1) & (frames < bounds[:, 1:, None] + 1)
    align[1, 2] = False
    h = torch.randn(b, t, d, generator=g, requires_grad=True)
    h_ref = h.detach().clone().requires_grad_(True)
    got = aligned_mean_max(h, align)
    count = align.sum(-1, keepdim=True)
    mean = (align.float() @ h_ref) / count.clamp(min=1)
    mx = h_ref[:, None].masked_fill(~align[..., None], float("-inf")).amax(dim=2)
    want = torch.cat([mean, torch.where(count > 0, mx, torch.zeros_like(mx))], dim=-1)
    torch.testing.assert_close(got, want)
    assert (got[1, 2] == 0).all()
    weights = torch.randn(got.shape, generator=g)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad)


def test_cme_alignment_follows_receptive_field() -> None:
    # k = 5, 2, 2 valid convs: CNN frame t sees input frames [t, t + 6]
    frames = torch.tensor([[[10, 12], [3, 3], [18, 25]]])
    align = word_alignment(frames, torch.ones(1, 3, dtype=torch.bool), torch.tensor([20]), t_out=14, rf=6)
    assert align[0, 0].nonzero().flatten().tolist() == list(range(4, 12))
    assert not align[0, 1].any()  # an empty span owns no frame
    assert align[0, 2].nonzero().flatten().tolist() == list(range(12, 14))  # cut at the last real CNN frame


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_cme_empty_words_are_zero_and_finite(variant: str) -> None:
    torch.manual_seed(0)
    model = build("cme", variant=variant).eval()
    batch = make_batch("cme")
    batch["word_mask"][:] = True
    batch["word_frames"][0, 1] = torch.tensor([4, 4])  # empty span
    batch["word_frames"][1, 2] = torch.tensor([500, 600])  # beyond the audio
    batch["audio_mask"][3] = False
    batch["audio_mask"][3, :3] = True  # 3 real frames: shorter than one CNN window, every word is empty
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out["logits"]).all()
    z = out["z_audio"]
    assert torch.isfinite(z).all()
    for i, j in ((0, 1), (1, 2)):
        assert z[i, j].abs().sum() == 0
    assert z[3].abs().sum() == 0


def test_cme_crop_to_words_is_exact(monkeypatch) -> None:
    import train.heads.cme as cme

    torch.manual_seed(0)
    model = build("cme", cnn_activation=True).eval()
    batch = make_batch("cme", t=80)
    batch["audio_mask"][0] = True
    batch["word_mask"][:] = True
    # item 0: silence, then words (one empty, one running past the audio's end)
    batch["word_frames"][0] = torch.tensor([[40, 43], [43, 49], [49, 49], [60, 70], [76, 130]])
    batch["word_mask"][2] = False  # an item without words
    with torch.no_grad():
        cropped = model(batch)
        monkeypatch.setattr(cme, "crop_to_words", lambda x, n, wf, wm, rf: (x, n, wf))
        whole = model(batch)
    torch.testing.assert_close(cropped["z_audio"], whole["z_audio"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cropped["logits"], whole["logits"], atol=1e-5, rtol=1e-5)


def test_cme_batch_without_any_word() -> None:
    torch.manual_seed(0)
    model = build("cme")
    batch = make_batch("cme")
    batch = dict(batch, words=batch["words"][:, :0], word_mask=batch["word_mask"][:, :0],
                 word_frames=batch["word_frames"][:, :0])
    out = model(batch)
    assert out["logits"].shape == (5, C) and torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("excite", ["both", "audio", "text", "none"])
@pytest.mark.parametrize("variant", ["paper", "code"])
def test_cme_variants_run(excite: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build("cme", excite=excite, variant=variant, cnn_activation=True)
    batch = make_batch("cme")
    model.loss(model(batch), batch).backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pad_batch("cme", batch))["logits"], model(batch)["logits"],
                                   atol=1e-5, rtol=1e-5)
    if variant == "code" and excite in ("both", "audio"):
        with_ids = dict(batch, word_ids=torch.randint(0, 100_000, batch["word_mask"].shape))
        assert torch.isfinite(model(with_ids)["logits"]).all()
        ids = model.word_ids(batch)
        assert ids.min() >= 0 and ids.max() < model.cfg.vocab_size
        same = dict(batch, words=batch["words"][:, :1].expand_as(batch["words"]).clone())
        assert (model.word_ids(same) == model.word_ids(same)[:, :1]).all()  # same vector -> same id


def test_cme_gates_match_paper() -> None:
    torch.manual_seed(0)
    model = build("cme", excite="audio").eval()  # only the audio stream is gated, by sigmoid(W^s Z^s)
    batch = make_batch("cme")
    with torch.no_grad():
        out = model(batch)
        z_a = model.audio_words(batch)  # before excitation
        z_s = model.text_proj(model.mix_s(batch["words"]))
        torch.testing.assert_close(out["z_audio"], z_a * torch.sigmoid(model.excite_a(z_s)))


def test_cme_audio_pool_maps_word_spans_and_is_padding_invariant() -> None:
    from train.heads.cme import pool_words

    spans = torch.tensor([[[0, 3], [3, 4], [5, 5], [6, 12]]])  # the third word is empty
    batch = {"audio": torch.randn(1, 12, 2), "audio_mask": torch.ones(1, 12, dtype=torch.bool), "word_frames": spans}
    pooled = pool_words(batch, 4)
    # a word keeps every pooled frame it touches: [0, 3) -> [0, 1); [3, 4) -> [0, 1); [6, 12) -> [1, 3)
    assert pooled["word_frames"].tolist() == [[[0, 1], [0, 1], [1, 1], [1, 3]]]
    assert pooled["audio"].shape == (1, 3, 2)

    torch.manual_seed(0)
    model = build("cme", audio_pool=3, cnn_activation=True).eval()
    batch = make_batch("cme", t=40)
    with torch.no_grad():
        out = model(batch)
        torch.testing.assert_close(model(pad_batch("cme", batch))["logits"], out["logits"], atol=1e-5, rtol=1e-5)
        # the same head with no pooling, fed frames and spans pooled beforehand, computes the same thing
        unpooled = build("cme", audio_pool=1, cnn_activation=True).eval()
        unpooled.load_state_dict(model.state_dict())
        torch.testing.assert_close(unpooled({**batch, **pool_words(batch, 3)})["logits"], out["logits"])


def test_cme_audio_only_without_word_list() -> None:
    # the loader sends words only with text: audio-only pools fixed spans, still padding-invariant
    torch.manual_seed(0)
    model = build("cme", ("audio",), audio_segment=4).eval()
    batch = {k: v for k, v in make_batch("cme").items() if k not in ("words", "word_mask", "word_frames")}
    padded = dict(batch, audio=torch.cat([batch["audio"], torch.randn(5, 9, DIMS["audio"])], 1),
                  audio_mask=torch.cat([batch["audio_mask"], torch.zeros(5, 9, dtype=torch.bool)], 1))
    with torch.no_grad():
        out = model(batch)
        assert out["z_audio"].shape == (5, 6, 16)  # ceil(21 / 4) spans of [mean; max] of 8 channels
        torch.testing.assert_close(model(padded)["logits"], out["logits"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- late_concat / linear

def test_late_concat_soft_labels() -> None:
    torch.manual_seed(0)
    model = build("late_concat", soft_labels=True)
    batch = make_batch("late_concat")
    out = model(batch)
    hard = F.cross_entropy(out["logits"], batch["labels"])
    onehot = dict(batch, soft_labels=F.one_hot(batch["labels"], C).float() * 2)  # unnormalised shares
    torch.testing.assert_close(model.loss(out, onehot), hard)
    shares = torch.tensor([[2 / 3, 1 / 3, 0, 0]]).expand(5, C)
    expected = -(shares * F.log_softmax(out["logits"], -1)).sum(-1).mean()
    torch.testing.assert_close(model.loss(out, dict(batch, soft_labels=shares)), expected)
    model.cfg.soft_labels = False
    torch.testing.assert_close(model.loss(out, onehot), hard)


def test_late_concat_batch_norm_counts_only_real_frames() -> None:
    """In training the batch statistics (and so the outputs and the running averages) must not see the
    padding."""
    torch.manual_seed(0)
    model = build("late_concat", batch_norm=True, dropout=0.0).train()
    twin = build("late_concat", batch_norm=True, dropout=0.0).train()
    twin.load_state_dict(model.state_dict())
    batch = make_batch("late_concat")
    a, b = model(batch)["logits"], twin(pad_batch("late_concat", batch))["logits"]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for norm, twin_norm in zip(model.audio.norms, twin.audio.norms, strict=True):
        torch.testing.assert_close(twin_norm.running_mean, norm.running_mean)
        torch.testing.assert_close(twin_norm.running_var, norm.running_var)
        assert norm.num_batches_tracked == 1 and not torch.equal(norm.running_var, torch.ones_like(norm.running_var))


def test_late_concat_modality_dropout_drops_one_branch_in_training_only() -> None:
    """modality_dropout = 1: every training utterance loses exactly one branch's representation (the logits are
    those of [0; audio] or [text; 0]), both kinds occur; in eval nothing is dropped."""
    torch.manual_seed(0)
    model = build("late_concat", dropout=0.0, modality_dropout=1.0)
    batch = make_batch("late_concat", b=32)
    model.eval()
    full = model(batch)["logits"]
    text = model.text(model.mix["text"](batch["text"]), batch["text_mask"])
    x, mask = pool_frames(model.mix["audio"](batch["audio"]), batch["audio_mask"], model.cfg.audio_pool)
    audio = model.audio(x, mask)
    torch.testing.assert_close(full, model.out(torch.cat([text, audio], -1)))
    no_text = model.out(torch.cat([torch.zeros_like(text), audio], -1))
    no_audio = model.out(torch.cat([text, torch.zeros_like(audio)], -1))
    dropped = model.train()(batch)["logits"]
    is_no_text = torch.isclose(dropped, no_text, atol=1e-6).all(-1)
    is_no_audio = torch.isclose(dropped, no_audio, atol=1e-6).all(-1)
    assert bool((is_no_text ^ is_no_audio).all()) and is_no_text.any() and is_no_audio.any()


def test_late_concat_text_weight_scales_the_text_representation_around_its_training_mean() -> None:
    """text_weight = validation: training moves the running mean of the text representation and scores with t
    itself; in eval, w = 1 gives the plain model's logits, w = 0 makes the logits ignore the text, and between
    them the logits move linearly in w. Without text (audio-only) there is nothing to weigh."""
    torch.manual_seed(0)
    model = build("late_concat", dropout=0.0, text_weight="validation")
    plain = build("late_concat", dropout=0.0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("text_weight", "text_mean")})
    batch = make_batch("late_concat", b=16)
    torch.testing.assert_close(model.train()(batch)["logits"], plain.train()(batch)["logits"])
    text = model.text(model.mix["text"](batch["text"]), batch["text_mask"])
    torch.testing.assert_close(model.text_mean, 0.1 * text.mean(dim=0).detach())  # one step from zeros
    model.eval(), plain.eval()
    torch.testing.assert_close(model(batch)["logits"], plain(batch)["logits"])  # w = 1: the paper's model
    model.set_text_weight(0.0)
    other_text = make_batch("late_concat", b=16, seed=1)
    swapped = {**batch, "text": other_text["text"], "text_mask": other_text["text_mask"]}
    at0 = model(batch)["logits"]
    torch.testing.assert_close(model(swapped)["logits"], at0)
    assert not torch.allclose(plain(swapped)["logits"], plain(batch)["logits"])
    model.set_text_weight(0.5)
    torch.testing.assert_close(model(batch)["logits"], (at0 + plain(batch)["logits"]) / 2)
    assert build("late_concat", ("audio",), text_weight="validation").text_weight_candidates is None


def test_late_concat_branch_loss_adds_each_branch_own_cross_entropy() -> None:
    """branch_loss = L: the loss is CE(fused) + L (CE(text) + CE(audio)), each branch scored by its own Linear on
    its representation, and the audio branch gets a gradient from its own classifier alone; off (0) or
    unimodal, the model has no branch classifiers and its loss is the fused CE."""
    torch.manual_seed(0)
    model = build("late_concat", dropout=0.0, branch_loss=0.5)
    batch = make_batch("late_concat", b=16)
    out = model.train()(batch)
    text = model.text(model.mix["text"](batch["text"]), batch["text_mask"])
    x, mask = pool_frames(model.mix["audio"](batch["audio"]), batch["audio_mask"], model.cfg.audio_pool)
    audio = model.audio(x, mask)
    torch.testing.assert_close(out["text_logits"], model.branch_out["text"](text))
    torch.testing.assert_close(out["audio_logits"], model.branch_out["audio"](audio))
    y = batch["labels"]
    expected = F.cross_entropy(out["logits"], y) + 0.5 * (F.cross_entropy(out["text_logits"], y)
                                                          + F.cross_entropy(out["audio_logits"], y))
    torch.testing.assert_close(model.loss(out, batch), expected)
    # with annotator shares, every term is the soft-target cross-entropy
    model.cfg.soft_labels = True
    shares = torch.rand(y.shape[0], out["logits"].shape[1])
    soft_batch = {**batch, "soft_labels": shares}
    target = shares / shares.sum(-1, keepdim=True)
    soft = lambda logits: -(target * F.log_softmax(logits, -1)).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(model.loss(out, soft_batch), soft(out["logits"])
                               + 0.5 * (soft(out["text_logits"]) + soft(out["audio_logits"])))
    F.cross_entropy(out["audio_logits"], y).backward()
    assert model.audio.convs[0].weight.grad.abs().sum() > 0 and model.out.weight.grad is None
    for plain in (build("late_concat"), build("late_concat", ("audio",), branch_loss=0.5)):
        assert plain.branch_out is None and set(plain.train()(make_batch("late_concat"))) == {"logits"}


@pytest.mark.parametrize("name", ["dialog", "late_concat"])
def test_text_weight_runs_under_bfloat16_autocast(name: str) -> None:
    """The text mean is a float32 buffer: autocast's bfloat16 representations update it and are scored
    around it without a dtype error, and the scored text keeps the representation's dtype."""
    torch.manual_seed(0)
    model = build(name, text_weight="validation")
    batch = make_batch(name, b=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()(batch)
        assert model.text_mean.dtype == torch.float32 and model.text_mean.abs().sum() > 0
        model.set_text_weight(0.5)
        logits = model.eval()(batch)["logits"]
    assert torch.isfinite(logits.float()).all()


def test_linear_means_layers() -> None:
    torch.manual_seed(0)
    spec = get_head("linear")
    model = spec.build(make_config(spec), {"audio": 4}, {"audio": 3}, C, ["audio"])
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(model({"audio": x})["logits"], model.out(x.mean(1)))
