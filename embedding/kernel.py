"""The paper's GP kernel on architecture embeddings: k(x, x') = exp(-|e(x) - e(x')|^2 / (2a)).

BoTorch models expect inputs in the unit cube, so the kernel's inputs are the embeddings mapped
to it, u = (e + 1) / 2 (the embeddings are unit vectors, so every coordinate lies in [-1, 1]);
the kernel undoes the map: |e - e'|^2 = 4 |u - u'|^2. `to_unit_cube` / `from_unit_cube` do the
mapping. With an `encoder`, the kernel is a deep kernel in GPyTorch's sense: its inputs are then
the flattened per-layer rows of `CompressionSpace.encode` and it embeds them itself.
"""

from __future__ import annotations

import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import Kernel
from torch import nn

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_NOISE",
    "EmbeddingKernel",
    "embedding_covariance",
    "from_unit_cube",
    "to_unit_cube",
]

#: The paper's kernel width alpha and observation noise beta (DESIGN.md section 3).
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
    paper). Inputs are unit-cube embeddings `... x n x d` (see module docstring) or, when an
    `encoder` is given, flattened encodings `... x n x (T * D)`.

    Args:
        alpha: kernel width (0.01 in the paper).
        learn_alpha: make alpha a trainable (positive) parameter; otherwise it is fixed.
        encoder: optional `ArchitectureEncoder` applied to the inputs first (deep kernel).
        rows: `(T, D)` shape of one encoding; required with `encoder`.
    """

    has_lengthscale = False

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        learn_alpha: bool = False,
        encoder: nn.Module | None = None,
        rows: tuple[int, int] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if encoder is not None and rows is None:
            raise ValueError("pass rows=(num_layers, row_size) together with an encoder")
        self.register_parameter("raw_alpha", nn.Parameter(torch.zeros(*self.batch_shape, 1)))
        self.register_constraint("raw_alpha", Positive())
        self.alpha = torch.as_tensor(float(alpha))
        self.raw_alpha.requires_grad_(bool(learn_alpha))
        self.encoder = encoder
        self.rows = rows

    @property
    def alpha(self) -> torch.Tensor:
        return self.raw_alpha_constraint.transform(self.raw_alpha)

    @alpha.setter
    def alpha(self, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value, dtype=self.raw_alpha.dtype, device=self.raw_alpha.device)
        with torch.no_grad():
            self.raw_alpha.copy_(
                self.raw_alpha_constraint.inverse_transform(value.expand_as(self.raw_alpha))
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-cube embeddings of the inputs (identity without an encoder)."""
        if self.encoder is None or self.rows is None:
            return x
        batch, n = x.shape[:-2], x.shape[-2]
        rows = x.reshape(-1, *self.rows).to(torch.float32)
        e = self.encoder(rows).to(x.dtype)
        return to_unit_cube(e).reshape(*batch, n, -1)

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
        same = x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2))
        u1 = self.embed(x1)
        u2 = u1 if same else self.embed(x2)
        alpha = self.alpha.squeeze(-1)
        if diag:
            d2 = ((u1 - u2) ** 2).sum(-1)
            return torch.exp(-2.0 * d2 / alpha.unsqueeze(-1))
        return embedding_covariance(u1, u2, alpha)
