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

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from train.heads import HeadSpec, register
from train.metrics import compute_metrics
from train.recipe import Recipe

LOSSES = ("logistic", "hinge")


@dataclass
class Config:
    C: float | None = None  # inverse L2 strength, as scikit-learn's; None = chosen on validation from c_grid
    c_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
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


def objective(params: np.ndarray, z: np.ndarray, y: np.ndarray, n_classes: int, penalty: float,
              loss: str) -> tuple[float, np.ndarray]:
    """Value and gradient of ``mean loss + penalty * ||W||^2`` at ``params`` = [W (C x r), b (C)] flattened."""
    r = z.shape[1]
    w, b = params[: n_classes * r].reshape(n_classes, r), params[n_classes * r :]
    scores = z @ w.T + b
    n = len(y)
    if loss == "logistic":
        scores = scores - scores.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scores).sum(axis=1))
        value = float((log_norm - scores[np.arange(n), y]).mean())
        d_scores = np.exp(scores - log_norm[:, None])
        d_scores[np.arange(n), y] -= 1.0
    else:  # one-vs-rest squared hinge
        sign = -np.ones_like(scores)
        sign[np.arange(n), y] = 1.0
        margin = np.maximum(0.0, 1.0 - sign * scores)
        value = float((margin**2).sum(axis=1).mean())
        d_scores = -2.0 * sign * margin
    d_scores /= n
    grad_w = d_scores.T @ z + 2.0 * penalty * w
    return value + penalty * float((w * w).sum()), np.concatenate([grad_w.ravel(), d_scores.sum(axis=0)])


def row_basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis [r, D] of the row space of x [n, D], from the eigendecomposition of the n x n Gram
    matrix (x x^T = U S^2 U^T, so V^T = S^-1 U^T x): far cheaper than an SVD of x when D >> n."""
    evals, u = np.linalg.eigh(x @ x.T)
    keep = evals > max(evals.max(), 0.0) * 1e-12
    return (u[:, keep] / np.sqrt(evals[keep])).T @ x


def solve(z: np.ndarray, y: np.ndarray, n_classes: int, c: float, cfg: Config,
          start: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """params = [W (C x r), b (C)] minimising ``mean loss + ||W||^2 / (2 C n)`` (scikit-learn's objective
    divided by C n) over the rows z [n, r], with scipy's L-BFGS-B."""
    from scipy.optimize import minimize

    params = start if start is not None else np.zeros(n_classes * (z.shape[1] + 1))
    penalty = 1.0 / (2.0 * c * len(y))
    res = minimize(objective, params, args=(z, y, n_classes, penalty, cfg.loss), jac=True, method="L-BFGS-B",
                   options={"maxiter": cfg.max_iter, "gtol": cfg.tol, "ftol": 1e-15, "maxcor": 20})
    grad = float(np.abs(res.jac).max())
    info = {"C": c, "iterations": int(res.nit), "evaluations": int(res.nfev), "grad_max": grad,
            "converged": grad <= 10 * cfg.tol}
    return res.x, info


def fit(model: LinearHead, train: dict, select: dict | None, classes: list[str], select_on: str) -> dict:
    """Fit ``model`` on the ``train`` batch; C from ``select`` (the validation batch) when not fixed.
    Returns {"history": one entry per C tried, "chosen": {"C": ...}}.

    The L2 optimum lies in the row space of the training rows (the loss's gradient always does), so the
    problem is solved exactly in that basis: W = W' V^T with ||W|| = ||W'|| and the same conditioning. With
    6373-d ComParE and a few hundred utterances, each step is then ~15x less work for the same solution."""
    cfg = model.cfg
    x, y = model.features(train).detach().double().cpu().numpy(), train["labels"].cpu().numpy()
    keep = y >= 0
    x, y = x[keep], y[keep]
    grid = [cfg.C] if cfg.C is not None or select is None else sorted(cfg.c_grid)
    if not grid or grid[0] is None:
        raise ValueError("linear: no C to fit (give --set C=... or a c_grid with a validation split)")
    with threadpool_limits(1):  # a few hundred rows: one BLAS thread is fastest, and spinning peers stall
        return _fit(model, x, y, grid, select, classes, select_on)


def _fit(model: LinearHead, x: np.ndarray, y: np.ndarray, grid: list[float], select: dict | None,
         classes: list[str], select_on: str) -> dict:
    cfg = model.cfg
    vt = row_basis(x)
    z, r, k = x @ vt.T, len(vt), len(classes)
    xs = model.features(select).detach().double().cpu().numpy() @ vt.T if select is not None and len(grid) > 1 else None
    history, best, params = [], None, None
    for c in grid:
        params, info = solve(z, y, k, c, cfg, params)  # warm start: the grid ascends, each C near the last
        if xs is not None:
            pred = (xs @ params[: k * r].reshape(k, r).T + params[k * r :]).argmax(-1)
            m = compute_metrics(select["labels"].tolist(), pred.tolist(), classes)
            info.update({f"valid_{key}": m[key] for key in ("wa", "ua", "macro_f1")})
            if best is None or info[f"valid_{select_on}"] > best[0]:  # ties keep the smaller C (more regular)
                best = (info[f"valid_{select_on}"], c, params)
        else:
            best = (None, c, params)
        history.append(info)
    _, c, params = best
    with torch.no_grad():
        model.out.weight.copy_(torch.from_numpy(params[: k * r].reshape(k, r) @ vt))
        model.out.bias.copy_(torch.from_numpy(params[k * r :]))
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
