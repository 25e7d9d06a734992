"""The LSTM encoder: the batched stack computes exactly what nn.LSTM computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedding.encoder import (
    ArchitectureEncoder,
    EncoderError,
    EncoderStack,
    adapt_encoder_state,
    transform_inputs,
)
from embedding.space import CompressionSpace
from workers import zoo


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    space = CompressionSpace.for_teacher(zoo.build("resnet20", 10))
    rng = np.random.default_rng(0)
    return space.encode([space.sample(rng) for _ in range(9)])


def _stack(rows: torch.Tensor, k: int = 3, transform: str = "log1p") -> EncoderStack:
    return EncoderStack(
        k,
        rows.shape[-1],
        hidden_size=8,
        num_layers=2,
        input_transform=transform,
        generator=torch.Generator().manual_seed(3),
    )


@pytest.mark.parametrize("transform", ["raw", "log1p"])
def test_stack_matches_nn_lstm_outputs_and_gradients(rows: torch.Tensor, transform: str) -> None:
    stack = _stack(rows, transform=transform)
    x = rows.reshape(3, 3, *rows.shape[1:])
    up = torch.randn(3, 3, 16, generator=torch.Generator().manual_seed(0))
    e = stack(x)
    (e * up).sum().backward()
    for j in range(3):
        enc = stack.encoder(j)
        ref = enc(x[j])
        torch.testing.assert_close(e[j], ref, atol=1e-6, rtol=1e-5)
        (ref * up[j]).sum().backward()
        grads = dict(enc.named_parameters())
        for name, p in stack.named_parameters():
            assert p.grad is not None
            for d, suffix in enumerate(("", "_reverse")):
                ref_grad = grads[f"lstm.{name}{suffix}"].grad
                torch.testing.assert_close(p.grad[j, d], ref_grad, atol=1e-5, rtol=1e-4)


def test_stack_subset_of_copies_and_chunking(rows: torch.Tensor) -> None:
    stack = _stack(rows)
    x = rows[:4].unsqueeze(0).expand(3, *rows[:4].shape)
    full = stack(x)
    torch.testing.assert_close(stack(x[[2, 0]], copies=[2, 0]), full[[2, 0]])
    torch.testing.assert_close(stack(x, chunk=3), full, atol=1e-6, rtol=1e-5)


def test_embeddings_are_unit_vectors_and_depend_on_the_architecture(rows: torch.Tensor) -> None:
    enc = ArchitectureEncoder(rows.shape[-1], hidden_size=8, num_layers=2)
    e = enc(rows)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(rows)))
    assert torch.cdist(e, e).triu(1).max() > 1e-3


def test_packing_ignores_padding(rows: torch.Tensor) -> None:
    enc = ArchitectureEncoder(rows.shape[-1], hidden_size=8, num_layers=2)
    short = rows[:2, :50]
    padded = torch.cat([short, torch.full((2, 23, rows.shape[-1]), 7.0)], dim=1)
    out = enc(padded, lengths=torch.tensor([50, 50]))
    torch.testing.assert_close(out, enc(short), atol=1e-6, rtol=1e-5)


def test_log1p_transform_only_touches_the_numbers(rows: torch.Tensor) -> None:
    t = transform_inputs(rows, "log1p")
    torch.testing.assert_close(t[..., 10:16], torch.log1p(rows[..., 10:16]))
    torch.testing.assert_close(t[..., :10], rows[..., :10])
    torch.testing.assert_close(t[..., 16:], rows[..., 16:])
    assert transform_inputs(rows, "raw") is rows
    with pytest.raises(EncoderError, match="use one of"):
        transform_inputs(rows, "sqrt")


def test_weights_round_trip_and_shape_errors(rows: torch.Tensor) -> None:
    stack = _stack(rows)
    state = stack.encoder_state(1)
    other = _stack(rows, k=2)
    other.load_encoder_state(state)
    x = rows[:3].unsqueeze(0).expand(2, *rows[:3].shape)
    torch.testing.assert_close(other(x)[0], stack(x[:1], copies=[1])[0])
    bigger = EncoderStack(1, rows.shape[-1] + 2, hidden_size=8, num_layers=2)
    with pytest.raises(EncoderError, match="another input size"):
        bigger.load_encoder_state(state)
    with pytest.raises(EncoderError, match="lack"):
        other.load_encoder_state({})
    with pytest.raises(EncoderError, match="expected"):
        stack(rows)


def test_an_encoder_maps_to_rows_of_another_width_exactly() -> None:
    """The same architectures encoded with max_layers 128 and 200 embed identically by an
    encoder and its mapped copy, both ways (resnet20's connections are all shorter than 128)."""
    narrow = CompressionSpace.for_teacher(zoo.build("resnet20", 10))
    wide = CompressionSpace(narrow.graph, narrow.teacher, max_layers=200)
    rng = np.random.default_rng(0)
    actions = [narrow.sample(rng) for _ in range(6)]
    cfg = {"hidden_size": 8, "num_layers": 2}
    for src, dst in ((wide, narrow), (narrow, wide)):
        a = EncoderStack(1, src.row_size, **cfg, generator=torch.Generator().manual_seed(1))
        b = EncoderStack(1, dst.row_size, **cfg)
        b.load_encoder_state(adapt_encoder_state(a.encoder_state(0), dst.row_size))
        with torch.no_grad():
            ea = a(src.encode(actions).unsqueeze(0))
            eb = b(dst.encode(actions).unsqueeze(0))
        assert torch.allclose(ea, eb, atol=1e-6)
    with pytest.raises(EncoderError, match="width"):
        adapt_encoder_state(a.encoder_state(0), narrow.row_size + 1)
