"""Searcher contract (run against every searcher: random, ESNAC, N2N) and the ESNAC searcher's
own guarantees (N2N's: `test_n2n.py`)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from embedding.encoder import NUMERIC_COLUMNS, transform_inputs
from embedding.model import FitSettings
from embedding.n2n import N2NSearcher
from embedding.search import EsnacSearcher, RandomSearcher, Searcher, SearcherError
from embedding.space import Action, CompressionSpace
from tests.embedding.test_model import synthetic_objective
from workers import zoo

# A bounded ESNAC configuration for tests (the defaults are the paper's: 8 kernels, 1000
# candidates, BiLSTM 4 x 64, up to 100 fit steps); small enough for a 2-core CI machine.
SMALL = {
    "kernels": 4,
    "candidates": 24,
    "hidden_size": 8,
    "num_layers": 1,
    "fit": FitSettings(max_steps=8),
}


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    return CompressionSpace.for_teacher(zoo.build("resnet20", 10))


def _make(kind: str, space: CompressionSpace, seed: int = 0) -> Searcher:
    if kind == "random":
        return RandomSearcher(space, seed=seed)
    if kind == "n2n":
        return N2NSearcher(space, seed=seed, batch=2)
    trained = kind == "esnac_trained"  # the paper's way; "esnac": the default, LSTM untrained
    return EsnacSearcher(space, seed=seed, train_encoder=trained, **SMALL)  # type: ignore[arg-type]


def _reward(space: CompressionSpace, action: Action) -> float:
    return synthetic_objective(space, action)


@pytest.mark.parametrize("kind", ["random", "esnac", "esnac_trained", "n2n"])
class TestSearcherContract:
    def test_suggest_returns_distinct_valid_pending_actions(
        self, kind: str, space: CompressionSpace
    ) -> None:
        s = _make(kind, space)
        first = s.suggest(3)
        s.observe(first, [_reward(space, a) for a in first])
        out = s.suggest(5)
        assert len(out) == 5 and len({a.key for a in out}) == 5
        for a in out:
            space.validate(a)
            assert a.key in s.pending
        assert not {a.key for a in out} & {a.key for a in s.actions}
        assert s.suggest(0) == []
        with pytest.raises(SearcherError):
            s.suggest(-1)

    def test_pending_are_never_proposed_again(self, kind: str, space: CompressionSpace) -> None:
        s = _make(kind, space, seed=1)
        warm = s.suggest(4)
        s.observe(warm, [_reward(space, a) for a in warm])
        seen = {a.key for a in warm}
        for _ in range(2):
            batch = s.suggest(3)  # left pending: never observed
            keys = {a.key for a in batch}
            assert not keys & seen
            seen |= keys
        s.forget_pending(batch)
        assert not {a.key for a in batch} & set(s.pending)

    def test_observe_validates(self, kind: str, space: CompressionSpace) -> None:
        s = _make(kind, space)
        a = s.suggest(1)
        with pytest.raises(SearcherError, match="rewards"):
            s.observe(a, [])
        with pytest.raises(SearcherError, match="finite"):
            s.observe(a, [math.nan])
        s.observe(a, [0.5])
        assert s.best is not None and s.best[1] == 0.5 and not s.pending

    def test_restored_searcher_proposes_the_same(self, kind: str, space: CompressionSpace) -> None:
        s = _make(kind, space, seed=3)
        warm = s.suggest(4)
        s.observe(warm[:3], [_reward(space, a) for a in warm[:3]])  # one stays pending
        state = s.state_dict()
        restored = _make(kind, space, seed=99)
        restored.load_state_dict(json.loads(json.dumps(_jsonable(state))) | _tensors(state))
        assert [a.key for a in restored.suggest(3)] == [a.key for a in s.suggest(3)]

    def test_foreign_state_is_refused(self, kind: str, space: CompressionSpace) -> None:
        other = CompressionSpace.for_teacher(zoo.build("resnet56", 10), max_layers=256)
        with pytest.raises(SearcherError):
            _make(kind, space).load_state_dict(_make(kind, other).state_dict())


def _jsonable(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("encoder_init", "learned_encoder")}


def _tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if k in ("encoder_init", "learned_encoder")}


def test_esnac_falls_back_to_random_below_two_observations(space: CompressionSpace) -> None:
    s = EsnacSearcher(space, seed=5, **SMALL)  # type: ignore[arg-type]
    r = RandomSearcher(space, seed=5)
    assert [a.key for a in s.suggest(3)] == [a.key for a in r.suggest(3)]
    assert s.last_fit is None


def test_esnac_defaults_are_the_papers_but_for_the_untrained_lstm(
    space: CompressionSpace,
) -> None:
    s = EsnacSearcher(space)
    assert (s.kernels, s.subset, s.candidates) == (8, 0.5, 1000)
    # the embedding study's choice (docs/RESULTS.md): the LSTM keeps its initialisation
    assert not s.train_encoder
    assert s.fit_settings == FitSettings()
    assert (s.fit_settings.alpha, s.fit_settings.noise, s.fit_settings.max_steps) == (
        0.01,
        0.05,
        100,
    )
    assert s.encoder_config["hidden_size"] == 64 and s.encoder_config["num_layers"] == 4
    # The one documented difference (docs/ALGORITHM.md, "Input transform"): log1p on the six
    # numeric columns by default; "raw" is the paper's encoder, and it changes the embedding.
    assert s.encoder_config["input_transform"] == "log1p"
    rows = space.encode([space.sample(np.random.default_rng(0)) for _ in range(3)])
    assert transform_inputs(rows, "raw") is rows
    logged = transform_inputs(rows, "log1p")
    rest = [c for c in range(rows.shape[-1]) if c not in range(rows.shape[-1])[NUMERIC_COLUMNS]]
    torch.testing.assert_close(
        logged[..., NUMERIC_COLUMNS], torch.log1p(rows[..., NUMERIC_COLUMNS]), rtol=0, atol=0
    )
    torch.testing.assert_close(logged[..., rest], rows[..., rest], rtol=0, atol=0)
    with pytest.raises(SearcherError):
        EsnacSearcher(space, subset=0.0)


def test_encoder_export_and_transfer(space: CompressionSpace) -> None:
    s = EsnacSearcher(space, seed=2, train_encoder=True, **SMALL)  # type: ignore[arg-type]
    assert s.encoder_state() is None
    warm = s.suggest(4)
    s.observe(warm, [_reward(space, a) for a in warm])
    s.suggest(4)
    weights = s.encoder_state()
    assert weights is not None and all(isinstance(v, torch.Tensor) for v in weights.values())
    # Transfer to a bigger teacher with the same max_layers: no training, same weights used.
    big = CompressionSpace.for_teacher(zoo.build("resnet34", 10))
    t = EsnacSearcher(big, seed=2, encoder_init=weights, train_encoder=False, **SMALL)  # type: ignore[arg-type]
    first = t.suggest(4)
    t.observe(first, [0.1, 0.2, 0.3, 0.4])
    assert len(t.suggest(4)) == 4 and t.last_fit is not None and t.last_fit.steps == [0] * 4
    exported = t.encoder_state()
    assert exported is not None
    for key, value in weights.items():
        torch.testing.assert_close(exported[key], value)
    bad = dict(weights)
    bad["lstm.weight_ih_l0"] = torch.zeros(3, 3)
    with pytest.raises(SearcherError, match="does not fit"):
        EsnacSearcher(big, encoder_init=bad, **SMALL)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("train_encoder", [True, False])
def test_esnac_beats_random_search(space: CompressionSpace, train_encoder: bool) -> None:
    """Best reward after 40 evaluations (5 steps x 8), 10 seeds, on `synthetic_objective`.

    Bounded configuration for CI time: 8 kernels and gamma 0.5 (the paper's), but 32 candidates
    per kernel and a BiLSTM of 1 x 8 fitted for at most 10 steps (the paper: 1000, 4 x 64, 100).
    Measured here with the LSTM trained: ESNAC - random = 0.070 +- 0.035 (s.e.); ~20 CPU
    seconds. Also run with it untrained, the product's default.
    """
    cfg = {
        "train_encoder": train_encoder,
        "kernels": 8,
        "candidates": 32,
        "hidden_size": 8,
        "num_layers": 1,
        "fit": FitSettings(max_steps=10),
    }
    diffs = []
    for seed in range(10):
        best = []
        for searcher in (
            EsnacSearcher(space, seed=seed, **cfg),  # type: ignore[arg-type]
            RandomSearcher(space, seed=seed),
        ):
            for _ in range(5):
                batch = searcher.suggest(8)
                searcher.observe(batch, [_reward(space, a) for a in batch])
            assert searcher.best is not None
            best.append(searcher.best[1])
        diffs.append(best[0] - best[1])
    d = np.asarray(diffs)
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert d.mean() > se, f"ESNAC - random = {d.mean():.3f} +- {se:.3f} (per seed: {d.round(3)})"


def test_two_searchers_in_two_threads_match_sequential_runs(space: CompressionSpace) -> None:
    """The coordinator calls suggest from worker threads: no shared global state in between."""

    def run(seed: int) -> list[str]:  # the trained LSTM: the path with the most state
        s = EsnacSearcher(space, seed=seed, train_encoder=True, **SMALL)  # type: ignore[arg-type]
        warm = s.suggest(4)
        s.observe(warm, [_reward(space, a) for a in warm])
        return [a.key for a in s.suggest(3)]

    sequential = [run(11), run(12)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(run, [11, 12]))
    assert threaded == sequential
