"""Where a searcher looks: the paper's draws reproduced, the mixed sampler, the hard budget."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from embedding.candidates import Budget, CandidateSampler, local_move, sparse_sample
from embedding.search import EsnacSearcher, RandomSearcher, SearcherError
from tests.embedding.test_space import _space


def _digest(actions: list) -> str:
    h = hashlib.sha256()
    for a in actions:
        h.update(a.key.encode())
    return h.hexdigest()[:16]


def test_the_paper_sampler_reproduces_the_earlier_candidates() -> None:
    # digests of the same calls with commit b5f36ef's searchers (which drew every candidate
    # with `space.sample`): random search, and an ESNAC step whose pools come from the sampler
    _, space = _space("resnet20")
    assert _digest(RandomSearcher(space, seed=3).suggest(40)) == "6dd372059b92e6ce"
    e = EsnacSearcher(space, seed=5, kernels=2, candidates=40, train_encoder=True)
    first = e.suggest(4)
    e.observe(first, [0.1, 0.5, 0.3, 0.2])
    assert _digest(first + e.suggest(3)) == "4b4afc7f1209b80c"


def test_local_moves_change_one_thing_and_stay_valid() -> None:
    _, space = _space("resnet20")
    rng = np.random.default_rng(0)
    base = space.sample(rng)
    kinds = set()
    for _ in range(60):
        move = local_move(space, base, rng)
        space.validate(move)
        removed = set(move.removed) ^ set(base.removed)
        skips = set(move.skips) ^ set(base.skips)
        shrunk = move.shrink != base.shrink
        if removed:
            assert len(removed) == 1 and not shrunk
            kinds.add("removal")
        elif skips:
            assert len(skips) == 1 and not shrunk
            kinds.add("skip")
        elif shrunk:
            assert max(abs(a - b) for a, b in zip(move.shrink, base.shrink, strict=True)) < 0.3
            kinds.add("shrink")
    assert kinds == {"removal", "skip", "shrink"}


def test_sparse_draws_remove_few_layers() -> None:
    _, space = _space("resnet20")
    rng = np.random.default_rng(0)
    draws = [sparse_sample(space, rng) for _ in range(200)]
    for a in draws:
        space.validate(a)
    assert max(len(a.removed) for a in draws) <= 0.25 * len(space.removable)
    assert sum(not a.removed for a in draws) >= 40  # p1 = 0 a quarter of the time
    paper = [space.sample(rng) for _ in range(200)]
    assert min(len(a.removed) for a in paper) > np.mean([len(a.removed) for a in draws])


def test_a_mixed_pool_holds_moves_around_the_incumbents() -> None:
    _, space = _space("resnet20")
    rng = np.random.default_rng(1)
    incumbents = [space.sample(rng) for _ in range(2)]
    pool = CandidateSampler(space, "mixed").draw(rng, 100, set(), incumbents)
    assert len({a.key for a in pool}) == 100

    def near(a, b) -> bool:
        return (len(set(a.removed) ^ set(b.removed)) + len(set(a.skips) ^ set(b.skips))) <= 1

    assert sum(any(near(a, b) for b in incumbents) for a in pool) >= 25
    assert sum(len(a.removed) <= 0.25 * len(space.removable) for a in pool) >= 25


def test_a_searchers_step_includes_moves_around_the_incumbent() -> None:
    _, space = _space("resnet20")
    e = EsnacSearcher(space, seed=0, kernels=2, candidates=60,
                      sampler=CandidateSampler(space, "mixed"))  # fmt: skip
    first = e.suggest(4)
    e.observe(first, [0.1, 0.9, 0.3, 0.2])
    pools: list = []
    draw = e.sampler.draw
    e.sampler.draw = lambda *a, **k: pools.append(draw(*a, **k)) or pools[-1]  # type: ignore
    e.suggest(2)
    best = first[1]
    assert all(any(len(set(a.removed) ^ set(best.removed)) <= 1 and
                   len(set(a.skips) ^ set(best.skips)) <= 1 and a.key != best.key
                   for a in pool) for pool in pools)  # fmt: skip


@pytest.mark.parametrize("measure", ["params", "flops"])
def test_candidates_over_a_hard_budget_are_dropped(measure: str) -> None:
    _, space = _space("resnet20")
    size = space.num_params if measure == "params" else space.num_flops
    budget = Budget(measure, size(space.empty_action()) / 5)
    rng = np.random.default_rng(0)
    for kind in ("paper", "mixed"):
        pool = CandidateSampler(space, kind, budget).draw(rng, 200, set(), [space.sample(rng)])
        assert len(pool) == 200 and all(size(a) <= budget.value for a in pool)
    r = RandomSearcher(space, seed=0, sampler=CandidateSampler(space, budget=Budget(measure, 1)))
    with pytest.raises(SearcherError, match="within the budget"):
        r.suggest(1)
