"""The GP on learned architecture embeddings: fitting the embedding, building the BoTorch model.

Fitting (docs/ALGORITHM.md): maximise the mean leave-one-out log predictive likelihood of the
observed rewards, in closed form from one Cholesky factorisation of K = k(X, X) + beta I:

    mu_-i = y_i - [K^-1 y]_i / [K^-1]_ii,    sigma^2_-i = 1 / [K^-1]_ii,

with Adam (lr 1e-3, weight decay 5e-4), at most 100 steps, stopping after step 5 once an
exponential moving average (weight 0.5) of the objective moves by less than 0.001. The exact
marginal likelihood is available as `objective="mll"`. All copies of an `EncoderStack` (the
paper's 8 kernels, each on its own subset of the observations) are fitted together: their
subsets are padded to one length and the padding is masked out of the objective exactly.

The model: BoTorch's stock `SingleTaskGP` with `covar_module=EmbeddingKernel(...)`, over the
embeddings as a feature representation. The embedding is computed outside the GP (rather than
putting the LSTM inside the kernel, GPyTorch's deep-kernel pattern) because the searcher embeds
the candidates of all 8 kernels in one batched pass of the `EncoderStack`; a GP that embedded its
own inputs would re-run its LSTM once per kernel and per posterior call. Rewards are centred on
their mean (zero-mean GP, unit amplitude, fixed noise
beta), so the paper's alpha and beta keep their meaning on the reward scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from botorch.models import SingleTaskGP
from gpytorch.means import ZeroMean

from embedding.encoder import EncoderStack
from embedding.kernel import (
    DEFAULT_ALPHA,
    DEFAULT_NOISE,
    EmbeddingKernel,
    embedding_covariance,
    to_unit_cube,
)

__all__ = [
    "OBJECTIVES",
    "FitReport",
    "FitSettings",
    "build_gp",
    "fit_stack",
    "loo_log_likelihood",
    "marginal_log_likelihood",
]

OBJECTIVES = ("loo", "mll")
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class FitSettings:
    """How the embedding is fitted (defaults: the paper's).

    Attributes:
        lr, weight_decay: Adam's learning rate and (L2) weight decay on the LSTM weights.
        max_steps: at most this many optimiser steps.
        min_steps: the stopping rule is not checked before this many steps.
        ema_weight: weight of the newest value in the moving average of the objective.
        tol: stop once the moving average moves by less than this.
        objective: "loo" (mean leave-one-out log predictive likelihood, the paper's) or "mll"
            (exact marginal log likelihood per point).
        alpha, noise: kernel width and observation noise (variance) beta.
        learn_alpha, learn_noise: also fit alpha / beta (the paper keeps them fixed).
    """

    lr: float = 1e-3
    weight_decay: float = 5e-4
    max_steps: int = 100
    min_steps: int = 5
    ema_weight: float = 0.5
    tol: float = 1e-3
    objective: str = "loo"
    alpha: float = DEFAULT_ALPHA
    noise: float = DEFAULT_NOISE
    learn_alpha: bool = False
    learn_noise: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.alpha <= 0 or self.noise <= 0:
            raise ValueError(f"alpha and noise must be positive, got {self.alpha}, {self.noise}")
        if self.max_steps < 0 or self.lr <= 0:
            raise ValueError("max_steps must be >= 0 and lr > 0")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class FitReport:
    """Outcome of `fit_stack`, one entry per copy: steps taken, final objective, alpha, noise."""

    steps: list[int] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)


def _masked_system(
    k: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Make padded points independent unit-variance points with y = 0 (exactly inert)."""
    if mask is None:
        return k, y, torch.ones_like(y, dtype=torch.bool)
    m = mask.to(k.dtype)
    both = m.unsqueeze(-1) * m.unsqueeze(-2)
    eye = torch.diag_embed(1.0 - m)
    return k * both + eye, y * m, mask


def loo_log_likelihood(
    k: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean leave-one-out log predictive likelihood, in closed form.

    Args:
        k: `batch x n x n` covariance of the observations, noise included.
        y: `batch x n` observations (already centred as the model's mean requires).
        mask: `batch x n` booleans, False for padding (excluded exactly); None: all valid.

    Returns:
        `batch` mean over valid i of log N(y_i; mu_-i, sigma^2_-i).
    """
    k, y, mask = _masked_system(k, y, mask)
    chol = torch.linalg.cholesky(k)
    k_inv = torch.cholesky_inverse(chol)
    a = (k_inv @ y.unsqueeze(-1)).squeeze(-1)
    d = torch.diagonal(k_inv, dim1=-2, dim2=-1)
    # (y_i - mu_-i) = a_i / d_i,  sigma^2_-i = 1 / d_i
    ll = -0.5 * _LOG_2PI + 0.5 * torch.log(d) - 0.5 * a * a / d
    m = mask.to(ll.dtype)
    return (ll * m).sum(-1) / m.sum(-1)


def marginal_log_likelihood(
    k: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact marginal log likelihood divided by the number of valid points.

    Args: as `loo_log_likelihood`.

    Returns:
        `batch` values of log N(y; 0, K) / n.
    """
    k, y, mask = _masked_system(k, y, mask)
    chol = torch.linalg.cholesky(k)
    alpha = torch.cholesky_solve(y.unsqueeze(-1), chol).squeeze(-1)
    m = mask.to(k.dtype)
    n = m.sum(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    mll = -0.5 * (y * alpha).sum(-1) - 0.5 * logdet - 0.5 * n * _LOG_2PI
    return mll / n


def _centre(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(y.dtype)
    mean = (y * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
    return (y - mean) * m


def fit_stack(
    stack: EncoderStack,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
    settings: FitSettings | None = None,
    train_encoder: bool = True,
) -> FitReport:
    """Fit every copy of `stack` on its own observations, all copies in one batched pass.

    Args:
        stack: the encoders (updated in place).
        x: `k x B x T x D` encoded observations of each copy (padded to a common B).
        y: `k x B` rewards (float64 recommended).
        mask: `k x B` valid entries (None: all valid). Each copy needs at least 2.
        settings: optimiser, stopping rule, objective, alpha and noise.
        train_encoder: False keeps the encoder fixed (transfer without training); only alpha and
            noise are then fitted if they are learnable.

    Returns:
        A `FitReport` with the steps taken and the last objective value of each copy.

    Raises:
        ValueError: shapes that do not match, or a copy with fewer than two observations.
    """
    s = settings or FitSettings()
    k = stack.k
    if x.dim() != 4 or x.shape[0] != k or y.shape != x.shape[:2]:
        raise ValueError(
            f"expected x k x B x T x D and y k x B for k={k}, got {x.shape}, {y.shape}"
        )
    dev = x.device  # y, mask and the kernel's parameters follow the encoded observations
    y = y.to(dev, torch.float64)
    mask = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.to(dev, torch.bool)
    if int(mask.sum(-1).min()) < 2:
        raise ValueError("each kernel needs at least two observations to fit")
    y = _centre(y, mask)
    log_alpha = torch.full((k,), math.log(s.alpha), dtype=torch.float64, device=dev)
    log_noise = torch.full((k,), math.log(s.noise), dtype=torch.float64, device=dev)
    extra = []
    if s.learn_alpha:
        extra.append(log_alpha.requires_grad_())
    if s.learn_noise:
        extra.append(log_noise.requires_grad_())
    enc_params = list(stack.parameters()) if train_encoder else []
    report = FitReport(steps=[0] * k, objective=[float("nan")] * k)
    if not enc_params and not extra:
        s = replace(s, max_steps=0)
    groups = []
    if enc_params:
        groups.append({"params": enc_params, "weight_decay": s.weight_decay})
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups, lr=s.lr) if groups else None
    objective = loo_log_likelihood if s.objective == "loo" else marginal_log_likelihood
    saved = [p.detach().clone() for p in enc_params + extra]
    frozen = torch.zeros(k, dtype=torch.bool)
    ema: list[float | None] = [None] * k

    def evaluate(active: list[int], grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            rows = x if len(active) == k else x[active]
            e = stack(rows, copies=active)
            u = to_unit_cube(e).to(torch.float64)
            kmat = embedding_covariance(u, u, log_alpha[active].exp())
            eye = torch.eye(kmat.shape[-1], dtype=kmat.dtype, device=dev)
            kmat = kmat + log_noise[active].exp()[:, None, None] * eye
            return objective(kmat, y[active], mask[active])

    for step in range(s.max_steps if opt is not None else 0):
        active = [j for j in range(k) if not frozen[j]]
        if not active or opt is None:
            break
        opt.zero_grad(set_to_none=True)
        ll = evaluate(active, True)
        (-ll.sum()).backward()
        opt.step()
        with torch.no_grad():
            if bool(frozen.any()):
                done = frozen.to(dev)
                for p, keep in zip(enc_params + extra, saved, strict=True):
                    p[done] = keep[done]
        for pos, j in enumerate(active):
            value = float(ll[pos].detach())
            report.steps[j] = step + 1
            report.objective[j] = value
            prev = ema[j]
            new = value if prev is None else s.ema_weight * value + (1 - s.ema_weight) * prev
            ema[j] = new
            if step + 1 >= s.min_steps and prev is not None and abs(new - prev) < s.tol:
                frozen[j] = True
                with torch.no_grad():
                    for p, keep in zip(enc_params + extra, saved, strict=True):
                        keep[j] = p[j]
    with torch.no_grad():
        final = evaluate(list(range(k)), False)
    report.objective = [float(v) for v in final]
    report.alpha = [float(v) for v in log_alpha.detach().exp()]
    report.noise = [float(v) for v in log_noise.detach().exp()]
    return report


def build_gp(
    u: torch.Tensor,
    y: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    noise: float = DEFAULT_NOISE,
    pending: torch.Tensor | None = None,
) -> tuple[SingleTaskGP, float]:
    """The paper's GP over unit-cube embeddings, as a stock BoTorch `SingleTaskGP`.

    Pending (in-flight) candidates are taken into account by the kriging believer: they join the
    training data with their posterior mean as observation, which shrinks the predictive variance
    (and so the expected improvement) around them without pretending to know their reward.

    Args:
        u: `n x d` unit-cube embeddings of the observations (float64).
        y: `n` rewards.
        alpha, noise: kernel width and observation noise beta.
        pending: `p x d` unit-cube embeddings of pending candidates, or None.

    Returns:
        `(model, best_f)`: the model in eval mode (on centred rewards) and the best centred
        observed reward, the incumbent for Expected Improvement.
    """
    u = u.to(torch.float64)
    y = y.to(torch.float64)
    y_c = y - y.mean()
    model = _single_task_gp(u, y_c, alpha, noise)
    if pending is not None and pending.shape[0] > 0:
        pending = pending.to(torch.float64)
        with torch.no_grad():
            believed = model.posterior(pending).mean.squeeze(-1)
        model = _single_task_gp(torch.cat([u, pending]), torch.cat([y_c, believed]), alpha, noise)
    return model, float(y_c.max())


def _single_task_gp(u: torch.Tensor, y: torch.Tensor, alpha: float, noise: float) -> SingleTaskGP:
    model = SingleTaskGP(
        train_X=u,
        train_Y=y.unsqueeze(-1),
        train_Yvar=torch.full((u.shape[0], 1), noise, dtype=u.dtype),
        covar_module=EmbeddingKernel(alpha=alpha),
        mean_module=ZeroMean(),
        outcome_transform=None,
    )
    model.eval()
    return model
