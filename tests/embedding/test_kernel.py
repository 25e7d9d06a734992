"""EmbeddingKernel: the paper's RBF on embeddings, usable as a stock BoTorch covar_module."""

from __future__ import annotations

import torch
from botorch.models import SingleTaskGP

from embedding.kernel import EmbeddingKernel, from_unit_cube, to_unit_cube


def _unit(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    e = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return e / e.norm(dim=-1, keepdim=True)


def test_kernel_is_the_paper_formula() -> None:
    e1, e2 = _unit(5), _unit(4, seed=1)
    k = EmbeddingKernel(alpha=0.3)
    got = k(to_unit_cube(e1), to_unit_cube(e2)).to_dense()
    want = torch.exp(-(torch.cdist(e1, e2) ** 2) / (2 * 0.3))
    torch.testing.assert_close(got, want.to(got.dtype))
    diag = k(to_unit_cube(e1), to_unit_cube(e1), diag=True)
    torch.testing.assert_close(diag, torch.ones(5, dtype=diag.dtype))
    torch.testing.assert_close(from_unit_cube(to_unit_cube(e1)), e1)


def test_alpha_is_fixed() -> None:
    u = to_unit_cube(_unit(6))
    fixed = EmbeddingKernel()
    torch.testing.assert_close(fixed.alpha, torch.full((1,), 0.01))
    assert list(fixed.parameters()) == []  # nothing for an optimiser to move
    k = fixed(u, u).to_dense()
    torch.testing.assert_close(k, torch.exp(-(torch.cdist(u, u) ** 2) * 2 / 0.01).to(k.dtype))


def test_plugs_into_single_task_gp() -> None:
    u = to_unit_cube(_unit(8))
    y = torch.sin(3 * u[:, :1])
    gp = SingleTaskGP(u, y, torch.full_like(y, 0.05), covar_module=EmbeddingKernel(alpha=0.5))
    post = gp.posterior(u[:3])
    assert post.mean.shape == (3, 1)
    assert torch.all(post.variance > 0)
