"""The N2N baseline (`embedding.n2n`): its policy gradient points the right way, it is a pure
function of seed and observations, and on a tabulated pool it picks only unevaluated members."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedding import n2n
from embedding.n2n import N2NSearcher
from embedding.space import Action, CompressionSpace
from workers import zoo


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    return CompressionSpace.for_teacher(zoo.build("resnet20", 10))


def _p_remove(s: N2NSearcher) -> float:
    remove, _ = s._policies()
    with torch.no_grad():
        logits = remove(s._teacher_rows)[0, s._removable, 0]
    return float(torch.sigmoid(logits).mean())


def test_reinforce_moves_the_policy_toward_rewarded_actions(space: CompressionSpace) -> None:
    """Rewarding removal raises the removal probability; rewarding keeping lowers it."""
    rng = np.random.default_rng(0)
    acts = [space.sample(rng) for _ in range(32)]
    frac = [len(a.removed) / len(space.removable) for a in acts]
    start = _p_remove(N2NSearcher(space, seed=0, batch=8))
    up, down = N2NSearcher(space, seed=0, batch=8), N2NSearcher(space, seed=0, batch=8)
    up.observe(acts, frac)
    down.observe(acts, [1 - f for f in frac])
    assert _p_remove(up) > start + 0.01 > start - 0.01 > _p_remove(down)
    assert up.updates == 4 and up.baseline is not None


def test_proposals_depend_only_on_seed_and_observations(space: CompressionSpace) -> None:
    s = N2NSearcher(space, seed=5, batch=3)
    for step in range(3):
        s.rng = np.random.default_rng([5, step])
        out = s.suggest(3)
        s.observe(out, [len(a.removed) / 10 for a in out])
        assert all(a.skips == () for a in out)  # N2N adds no skip connections
    s.rng = np.random.default_rng([5, 9])
    cached = [a.key for a in s.suggest(3)]  # continues from the process's trained policies
    s.pending.clear()
    n2n._TRAINED.clear()
    s.rng = np.random.default_rng([5, 9])
    assert [a.key for a in s.suggest(3)] == cached  # retrained from scratch: the same
    assert s.updates == 3


def test_on_a_pool_it_picks_unevaluated_members_by_policy_probability(
    space: CompressionSpace,
) -> None:
    rng = np.random.default_rng(1)
    pool = [space.sample(rng) for _ in range(40)]
    s = N2NSearcher(space, seed=2, batch=4, candidate_pool=pool)
    for _ in range(5):
        out = s.suggest(4)
        s.observe(out, [len(a.removed) / 10 for a in out])
    keys = [a.key for a in s.actions]
    assert len(set(keys)) == 20 and set(keys) <= {a.key for a in pool}
    # a policy trained to love removal prefers the members that remove the most
    lover = N2NSearcher(space, seed=2, batch=8, candidate_pool=pool)
    many = [space.sample(rng) for _ in range(64)]
    lover.observe(many, [10.0 * len(a.removed) / len(space.removable) for a in many])
    picked = lover.suggest(10)
    removed = sorted(len(a.removed) for a in pool)
    assert np.mean([len(a.removed) for a in picked]) > np.median(removed)


def test_bad_batch_is_refused(space: CompressionSpace) -> None:
    with pytest.raises(ValueError, match="batch"):
        N2NSearcher(space, batch=0)
    assert isinstance(N2NSearcher(space).suggest(1)[0], Action)
