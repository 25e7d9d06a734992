"""Variants of the ESNAC searcher for the embedding study: presets, warm start, a training
threshold, and pretraining the encoder on free labels."""

from __future__ import annotations

import pytest
import torch

from embedding import pretrain
from embedding.encoder import EncoderStack
from embedding.model import FitSettings
from embedding.options import PRESETS, EsnacOptions, SearcherError
from embedding.pretrain import fit_free_labels, pretrained_encoder
from embedding.search import EsnacSearcher
from embedding.space import CompressionSpace
from tests.embedding.test_model import synthetic_objective
from workers import zoo

SMALL = {"kernels": 2, "candidates": 16, "hidden_size": 8, "num_layers": 1,
         "fit": FitSettings(max_steps=5)}  # fmt: skip


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    return CompressionSpace.for_teacher(zoo.build("resnet20", 10))


def _run(s: EsnacSearcher, space: CompressionSpace, steps: int) -> None:
    for _ in range(steps):
        out = s.suggest(3)
        s.observe(out, [synthetic_objective(space, a) for a in out])


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_paper_preset_is_explicit_and_overridable() -> None:
    paper = EsnacOptions.from_dict({"preset": "paper"})
    assert (paper.kernels, paper.subset, paper.candidates) == (8, 0.5, 1000)
    assert paper.train_encoder and not (paper.warm_start or paper.pretrain or paper.train_after)
    assert paper.inheritance == "first" and EsnacOptions().inheritance == "importance"
    assert EsnacOptions.from_dict({"preset": "paper", "subset": 1.0}).subset == 1.0
    assert set(PRESETS["paper"]) == set(EsnacOptions().to_dict())  # every option pinned
    with pytest.raises(SearcherError, match="unknown searcher preset"):
        EsnacOptions.from_dict({"preset": "fast"})
    with pytest.raises(SearcherError, match="train_after"):
        EsnacOptions.from_dict({"train_after": -1})
    with pytest.raises(SearcherError, match="inheritance"):
        EsnacOptions.from_dict({"inheritance": "last"})


def test_warm_start_begins_each_step_from_the_last_learned_lstm(space: CompressionSpace) -> None:
    warm = EsnacSearcher(space, seed=0, warm_start=True, train_encoder=True, **SMALL)  # type: ignore[arg-type]
    assert warm._start_weights() is None  # the first fit starts fresh
    _run(warm, space, 2)
    learned = warm.encoder_state()
    assert learned is not None and _same(warm._start_weights() or {}, learned)
    cold = EsnacSearcher(space, seed=0, train_encoder=True, **SMALL)  # type: ignore[arg-type]
    _run(cold, space, 2)
    assert cold._start_weights() is None


def test_the_encoder_stays_fixed_below_the_threshold(space: CompressionSpace) -> None:
    s = EsnacSearcher(space, seed=1, train_encoder=True, train_after=100, **SMALL)  # type: ignore[arg-type]
    _run(s, space, 2)  # 3 observations x subset 0.5 < 100: the LSTM keeps its initialisation
    init = EncoderStack(
        2, **s.encoder_config, generator=torch.Generator().manual_seed(0)
    ).encoder_state(0)
    fixed = s.encoder_state()
    assert fixed is not None and not _same(fixed, init)  # (another seed's initialisation)
    t = EsnacSearcher(space, seed=1, train_encoder=True, train_after=1, **SMALL)  # type: ignore[arg-type]
    u = EsnacSearcher(space, seed=1, train_encoder=True, train_after=100, **SMALL)  # type: ignore[arg-type]
    _run(t, space, 2)
    _run(u, space, 2)
    assert not _same(t.encoder_state() or {}, u.encoder_state() or {})  # trained vs fixed
    assert s.state_dict()["esnac"]["train_after"] == 100


def test_pretraining_learns_the_free_labels(
    space: CompressionSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {"input_size": space.row_size, "hidden_size": 8, "num_layers": 1,
           "input_transform": "log1p"}  # fmt: skip
    monkeypatch.setattr(pretrain, "LR", 3e-2)  # (the product's 1e-3 suits its 4 x 64 LSTM)
    _, losses = fit_free_labels(space, cfg, samples=300, epochs=4, seed=0)
    assert losses[-1] < 0.7 * losses[0], losses  # standardised labels: 1.0 is knowing nothing
    learned = pretrained_encoder(space, cfg, samples=300, epochs=4)
    assert _same(pretrained_encoder(space, cfg, samples=300, epochs=4), learned)  # cached
    monkeypatch.setattr(pretrain, "SAMPLES", 100)
    monkeypatch.setattr(pretrain, "EPOCHS", 1)
    s = EsnacSearcher(space, seed=0, pretrain=True, **SMALL)  # type: ignore[arg-type]
    start = s._start_weights()
    assert start is not None and _same(start, pretrained_encoder(space, s.encoder_config))
    _run(s, space, 2)
