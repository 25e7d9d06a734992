"""Size budgets in the space: FLOPs counted without building, the budget's seeds."""

from __future__ import annotations

import numpy as np
import pytest

from embedding import CompressionSpace
from embedding.budget import (
    budget_seeds,
    global_magnitude_action,
    size_of,
    smallest_size,
    uniform_action,
)
from embedding.reward import budget_reward, latency_target_reward, model_flops
from tests.embedding.test_space import _space, _uneven_resnet20
from workers import zoo


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "shufflenetv2", "vgg19"])
def test_flops_are_counted_without_building_the_student(name: str) -> None:
    _, space = _space(name)
    rng = np.random.default_rng(0)
    for action in [space.empty_action(), *(space.sample(rng) for _ in range(4))]:
        assert space.num_flops(action) == model_flops(space.materialize(action))


@pytest.mark.parametrize("measure", ["params", "flops"])
@pytest.mark.parametrize("factor", [2.5, 5.0, 10.0])
def test_both_seeds_meet_the_budget_closely(measure: str, factor: float) -> None:
    _, space = _uneven_resnet20()
    budget = size_of(space, space.empty_action(), measure) / factor
    seeds = dict(budget_seeds(space, budget, measure))
    assert set(seeds) == {"uniform", "global"}
    for action in seeds.values():
        assert not action.removed and not action.skips
        assert 0.9 * budget <= size_of(space, action, measure) <= budget
    # uniform: one kept fraction in every group (what one width multiplier gives) ...
    sizes = space.graph.group_sizes
    kept = {round(int((1 - r) * sizes[g]) / sizes[g], 2)
            for r, g in zip(seeds["uniform"].shrink, space.shrinkable, strict=True)}  # fmt: skip
    assert max(kept) - min(kept) <= 0.07
    # ... and the largest such: one more channel per group would exceed the budget
    wider = [max(0.0, r - 1.0 / sizes[g])
             for r, g in zip(seeds["uniform"].shrink, space.shrinkable, strict=True)]  # fmt: skip
    assert size_of(space, type(seeds["uniform"])((), tuple(wider), (), space.fingerprint),
                   measure) > budget  # fmt: skip


def test_global_pruning_keeps_the_channels_of_highest_normalised_importance() -> None:
    _, space = _uneven_resnet20()
    action = global_magnitude_action(space, space.teacher_params / 4)
    assert action is not None
    scores = space.channel_scores()
    sizes = space.graph.group_sizes
    kept, dropped = [], []
    for r, g in zip(action.shrink, space.shrinkable, strict=True):
        k = int((1 - r) * sizes[g])
        s = np.sort(scores[g] / scores[g].mean())[::-1]
        if k > 1:  # a group floored at one channel keeps it whatever its score
            kept.append(s[k - 1])
        if k < sizes[g]:
            dropped.append(s[k])
    # one threshold for the whole network: every kept channel outranks every dropped one
    assert kept and dropped and min(kept) >= max(dropped)
    ratios = {round(r, 2) for r in action.shrink}
    assert len(ratios) > 3  # unlike the uniform shrink, groups lose different fractions


def test_a_budget_below_every_seed_gives_none_and_the_smallest_student_is_counted() -> None:
    _, space = _uneven_resnet20()
    least = smallest_size(space, "params")
    assert least == space.num_params(space.most_aggressive_action()) < 100
    assert uniform_action(space, least) is None  # a uniform shrink removes nothing
    assert budget_seeds(space, least, "params") == []
    teacher = zoo.build("resnet20", 10)
    bare = CompressionSpace.for_teacher(teacher)
    bare._state = {}  # no weights to rank: no global seed
    assert [tag for tag, _ in budget_seeds(bare, bare.teacher_params / 3)] == ["uniform"]
    with pytest.raises(ValueError, match="unknown size measure"):
        size_of(space, space.empty_action(), "latency")


def test_the_budget_reward_is_accuracy_within_the_budget_and_shrinks_beyond() -> None:
    assert budget_reward(0.8, 0.9, 100, 100) == pytest.approx(0.8 / 0.9)
    assert budget_reward(0.8, 0.9, 50, 100) == pytest.approx(0.8 / 0.9)
    assert budget_reward(0.8, 0.9, 200, 100) == pytest.approx(0.4 / 0.9)
    assert budget_reward(0.8, 0.9, 200, 100, w=2) == pytest.approx(0.2 / 0.9)
    assert latency_target_reward(0.8, 0.9, 6.0, 3.0) == budget_reward(0.8, 0.9, 6.0, 3.0)
    with pytest.raises(ValueError, match="positive"):
        budget_reward(0.8, 0.9, 10, 0)
