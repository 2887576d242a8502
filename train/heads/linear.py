"""`linear`: L2-regularised multinomial logistic regression (or a linear SVM) on z-scored utterance vectors.

The classical reference, solved as the convex problem it is rather than by minibatch SGD: full-batch
L-BFGS (strong Wolfe line search, float64) to convergence on

    C * sum_i loss(x_i, y_i) + 0.5 * ||W||^2        (the bias is not penalised)

which is scikit-learn's ``LogisticRegression(C=...)`` objective (``loss=logistic``), or with the
one-vs-rest squared hinge, ``LinearSVC``'s (``loss=hinge``, the ComParE challenge baseline's classifier).
``C`` is chosen on the validation speakers from ``c_grid`` (or fixed with ``--set C=...``); with the
recipe's ``refit`` the chosen ``C`` is fitted again on training + validation speakers. The data loader
z-scores every input with training-set statistics; the given modalities' vectors are concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.heads import HeadSpec, register
from train.metrics import compute_metrics
from train.recipe import Recipe

LOSSES = ("logistic", "hinge")


@dataclass
class Config:
    C: float | None = None  # inverse L2 strength, as scikit-learn's; None = chosen on validation from c_grid
    c_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    loss: str = "logistic"  # logistic | hinge (one-vs-rest squared hinge: a linear SVM)
    max_iter: int = 1000  # L-BFGS iterations per fit
    tol: float = 1e-7  # stop when the largest gradient entry of the mean objective is below this


# One full-batch fit per C: the epoch fields of the recipe do not apply; refit is on by default because a
# convex fit with C fixed loses nothing by seeing the validation speakers too (+4 UA points on rav4).
RECIPE = Recipe(lr=1.0, epochs=1, batch_size=1_000_000, refit=True)


class LinearHead(nn.Module):
    def __init__(self, cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
                 modalities: list[str]) -> None:
        super().__init__()
        assert cfg.loss in LOSSES, f"loss must be one of {LOSSES}"
        self.cfg = cfg
        self.modalities = [m for m in ("audio", "text") if m in modalities]
        self.layered = {m: layers.get(m, 1) > 1 for m in self.modalities}
        self.out = nn.Linear(sum(dims[m] for m in self.modalities), n_classes)

    def features(self, batch: dict) -> Tensor:
        # a layered vector [B, L, D] is averaged over layers: a fixed mixture keeps this a plain linear model
        xs = [batch[m].mean(dim=-2) if self.layered[m] else batch[m] for m in self.modalities]
        return torch.cat(xs, dim=-1)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        return {"logits": self.out(self.features(batch))}

    def loss(self, out: dict[str, Tensor], batch: dict) -> Tensor:
        return F.cross_entropy(out["logits"], batch["labels"], ignore_index=-100)


def data_loss(scores: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean over utterances of the multinomial cross-entropy, or of the one-vs-rest squared hinge."""
    if loss == "logistic":
        return F.cross_entropy(scores, y)
    sign = torch.where(F.one_hot(y, scores.size(1)).bool(), 1.0, -1.0).to(scores.dtype)
    return F.relu(1.0 - sign * scores).pow(2).sum(dim=1).mean()


def solve(x: Tensor, y: Tensor, n_classes: int, c: float, cfg: Config,
          start: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, dict]:
    """(W [C, D], b [C], info) minimising ``mean loss + ||W||^2 / (2 C n)`` (= scikit-learn's objective / (C n))."""
    x, n = x.double(), len(y)
    w = (start[0].clone() if start else torch.zeros(n_classes, x.size(1), dtype=torch.float64)).requires_grad_()
    b = (start[1].clone() if start else torch.zeros(n_classes, dtype=torch.float64)).requires_grad_()
    penalty = 1.0 / (2.0 * c * n)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=cfg.max_iter, tolerance_grad=cfg.tol, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")
    calls = 0

    def objective() -> Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad()
        value = data_loss(x @ w.T + b, y, cfg.loss) + penalty * (w * w).sum()
        value.backward()
        return value

    opt.step(objective)
    grad = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    state = opt.state[opt._params[0]]
    info = {"C": c, "iterations": int(state.get("n_iter", 0)), "evaluations": calls, "grad_max": grad,
            "converged": grad <= 10 * cfg.tol}
    return w.detach(), b.detach(), info


def fit(model: LinearHead, train: dict, select: dict | None, classes: list[str], select_on: str) -> dict:
    """Fit ``model`` on the ``train`` batch; C from ``select`` (the validation batch) when not fixed.
    Returns {"history": one entry per C tried, "chosen": {"C": ...}}."""
    cfg = model.cfg
    x, y = model.features(train).detach(), train["labels"]
    keep = y >= 0
    x, y = x[keep], y[keep]
    grid = [cfg.C] if cfg.C is not None or select is None else sorted(cfg.c_grid)
    if not grid or grid[0] is None:
        raise ValueError("linear: no C to fit (give --set C=... or a c_grid with a validation split)")
    history, best, start = [], None, None
    xs = model.features(select).detach().double() if select is not None and len(grid) > 1 else None
    for c in grid:
        w, b, info = solve(x, y, len(classes), c, cfg, start)
        start = (w, b)  # warm start: the grid ascends, each C's solution is near the last one's
        if xs is not None:
            pred = (xs @ w.T + b).argmax(-1)
            m = compute_metrics(select["labels"].tolist(), pred.tolist(), classes)
            info.update({f"valid_{k}": m[k] for k in ("wa", "ua", "macro_f1")})
            if best is None or info[f"valid_{select_on}"] > best[0]:  # ties keep the smaller C (more regular)
                best = (info[f"valid_{select_on}"], c, w, b)
        else:
            best = (None, c, w, b)
        history.append(info)
    _, c, w, b = best
    with torch.no_grad():
        model.out.weight.copy_(w.float())
        model.out.bias.copy_(b.float())
    return {"history": history, "chosen": {"C": c}}


def build(cfg: Config, dims: dict[str, int], layers: dict[str, int], n_classes: int,
          modalities: list[str]) -> nn.Module:
    return LinearHead(cfg, dims, layers, n_classes, modalities)


register(HeadSpec(
    name="linear",
    config_cls=Config,
    build=build,
    inputs={"audio": "pooled", "text": "pooled"},
    recipe=RECIPE,
    dialogue=False,
    description="L2 logistic regression / linear SVM on z-scored utterance vectors, L-BFGS to convergence, "
                "C chosen on validation (classical baseline)",
    fit=fit,
    paper="classical reference (scikit-learn's LogisticRegression / LinearSVC objective)",
))
