"""EmbeddingKernel: the paper's RBF on embeddings, usable as a stock BoTorch covar_module."""

from __future__ import annotations

import torch
from botorch.models import SingleTaskGP

from embedding.encoder import ArchitectureEncoder
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


def test_alpha_is_fixed_by_default_and_learnable_on_request() -> None:
    u = to_unit_cube(_unit(6))
    fixed = EmbeddingKernel()
    assert torch.isclose(fixed.alpha, torch.tensor(0.01, dtype=fixed.alpha.dtype)).all()
    assert not fixed.raw_alpha.requires_grad
    learn = EmbeddingKernel(alpha=0.5, learn_alpha=True).double()
    learn(u, u).to_dense().sum().backward()
    assert learn.raw_alpha.grad is not None and learn.raw_alpha.grad.abs().sum() > 0


def test_plugs_into_single_task_gp() -> None:
    u = to_unit_cube(_unit(8))
    y = torch.sin(3 * u[:, :1])
    gp = SingleTaskGP(u, y, torch.full_like(y, 0.05), covar_module=EmbeddingKernel(alpha=0.5))
    post = gp.posterior(u[:3])
    assert post.mean.shape == (3, 1)
    assert torch.all(post.variance > 0)


def test_deep_kernel_mode_embeds_its_inputs() -> None:
    torch.manual_seed(0)
    enc = ArchitectureEncoder(20, hidden_size=4, num_layers=1)
    rows = torch.rand(5, 7, 20)
    k = EmbeddingKernel(alpha=0.2, encoder=enc, rows=(7, 20))
    flat = rows.reshape(5, -1).double()
    got = k(flat, flat).to_dense()
    u = to_unit_cube(enc(rows)).double()
    torch.testing.assert_close(got, EmbeddingKernel(alpha=0.2)(u, u).to_dense())
