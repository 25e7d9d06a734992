"""The paper's GP kernel on architecture embeddings: k(x, x') = exp(-|e(x) - e(x')|^2 / (2a)).

BoTorch models expect inputs in the unit cube, so the kernel's inputs are the embeddings mapped
to it, u = (e + 1) / 2 (the embeddings are unit vectors, so every coordinate lies in [-1, 1]);
the kernel undoes the map: |e - e'|^2 = 4 |u - u'|^2. `to_unit_cube` / `from_unit_cube` do the
mapping. The LSTM that produces the embeddings is fitted by `embedding.model.fit_stack` (all
kernels of a step at once, alpha learnt there when asked), so this kernel only evaluates the
formula for a given alpha.
"""

from __future__ import annotations

import torch
from gpytorch.kernels import Kernel

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_NOISE",
    "EmbeddingKernel",
    "embedding_covariance",
    "from_unit_cube",
    "to_unit_cube",
]

#: The paper's kernel width alpha and observation noise beta (docs/ALGORITHM.md).
DEFAULT_ALPHA = 0.01
DEFAULT_NOISE = 0.05


def to_unit_cube(e: torch.Tensor) -> torch.Tensor:
    """Map unit-vector embeddings (coordinates in [-1, 1]) into [0, 1]: u = (e + 1) / 2."""
    return (e + 1.0) / 2.0


def from_unit_cube(u: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_unit_cube`."""
    return 2.0 * u - 1.0


def embedding_covariance(
    u1: torch.Tensor, u2: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """exp(-|e1 - e2|^2 / (2 alpha)) for unit-cube embeddings (the kernel's formula).

    Args:
        u1: `... x n x d`, u2: `... x m x d` unit-cube embeddings.
        alpha: scalar or `...` widths (broadcast over the batch dimensions).

    Returns:
        `... x n x m` covariance.
    """
    sq1 = (u1 * u1).sum(-1, keepdim=True)
    sq2 = (u2 * u2).sum(-1, keepdim=True).transpose(-1, -2)
    d2 = (sq1 + sq2 - 2.0 * u1 @ u2.transpose(-1, -2)).clamp_min(0.0)
    a = torch.as_tensor(alpha, dtype=d2.dtype, device=d2.device)
    if a.dim() > 0:
        a = a[..., None, None]
    # |e - e'|^2 = 4 |u - u'|^2, so |e - e'|^2 / (2 alpha) = 2 |u - u'|^2 / alpha
    return torch.exp(-2.0 * d2 / a)


class EmbeddingKernel(Kernel):
    """RBF kernel on architecture embeddings with the paper's width alpha.

    k(x, x') = exp(-|e - e'|^2 / (2 alpha)), with unit amplitude (no output scale, as in the
    paper). Inputs are unit-cube embeddings `... x n x d` (see module docstring).

    Args:
        alpha: kernel width (0.01 in the paper), fixed (a buffer, not a parameter).
    """

    has_lengthscale = False

    def __init__(self, alpha: float = DEFAULT_ALPHA, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.register_buffer("alpha", torch.full((*self.batch_shape, 1), float(alpha)))

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        diag: bool = False,
        last_dim_is_batch: bool = False,
        **params: object,
    ) -> torch.Tensor:
        """Covariance between `x1` (`... x n x d`) and `x2` (`... x m x d`).

        Returns:
            `... x n x m` covariance, or `... x n` with `diag=True`.
        """
        if last_dim_is_batch:
            raise NotImplementedError("EmbeddingKernel does not support last_dim_is_batch")
        alpha = self.alpha.squeeze(-1)
        if diag:
            d2 = ((x1 - x2) ** 2).sum(-1)
            return torch.exp(-2.0 * d2 / alpha.unsqueeze(-1))
        return embedding_covariance(x1, x2, alpha)
