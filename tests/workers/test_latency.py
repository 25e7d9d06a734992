"""Measured latency: the backends time what they should, the spec is checked, and a trial with
the latency reward reports its own and its teacher's latency and the reward of their ratio."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from embedding.reward import latency_reward, latency_target_reward, reward
from workers import zoo
from workers.latency import measure_latency
from workers.spec import BadSpecError, LatencySpec, SearchTraining, TrialSpec
from workers.trial import JobContext, PreparedJob, run_trial


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torch-cpu"])
def test_a_much_smaller_network_is_measured_faster(backend: str) -> None:
    # resnet20 is ~40M multiply-adds per image, the tiny net ~0.03M: a factor of 3 is safe on
    # a loaded machine (measured here: ~30x)
    spec = LatencySpec(backend=backend, warmup=3, runs=15)
    big = measure_latency(zoo.build("resnet20", 10), (3, 32, 32), spec)
    small = measure_latency(_tiny(), (3, 32, 32), spec)
    assert 0 < small.median_ms < big.median_ms / 3, (small, big)
    for m in (big, small):
        assert m.p10_ms <= m.median_ms <= m.p90_ms and m.spread >= 0


def test_bad_latency_specs_are_refused_with_a_message() -> None:
    with pytest.raises(BadSpecError, match="backend must be one of"):
        LatencySpec(backend="tpu").validate()
    with pytest.raises(BadSpecError, match="runs must be an integer in"):
        LatencySpec(runs=1).validate()
    with pytest.raises(BadSpecError, match="unknown latency settings: thread"):
        LatencySpec.from_dict({"thread": 2})
    with pytest.raises(BadSpecError, match="reward must be one of"):
        TrialSpec(0, {}, reward="speed").validate()
    with pytest.raises(BadSpecError, match="needs a latency budget: latency.target_ms"):
        TrialSpec(0, {}, reward="latency_target").validate()
    with pytest.raises(BadSpecError, match="target_ms must be a positive number"):
        LatencySpec(target_ms=0).validate()
    # a latency reward without a target uses the default one; params/flops measure nothing
    assert TrialSpec(0, {}, reward="latency").latency_spec() == LatencySpec()
    assert TrialSpec(0, {}).latency_spec() is None


def test_a_latency_trial_reports_both_latencies_and_rewards_their_ratio(
    ctx: JobContext, state: PreparedJob
) -> None:
    action = state.space.sample(np.random.default_rng(0)).to_dict()
    training = SearchTraining(epochs=1, batch_size=64, max_train_samples=64)
    target = {"backend": "torch-cpu", "runs": 5, "warmup": 1}
    spec = TrialSpec(1, action, training=training, reward="latency", latency=target)
    res = run_trial(ctx, spec, cache=state)
    assert res.latency_ms is not None and res.teacher_latency_ms is not None
    assert res.latency_ms > 0 and res.teacher_latency_ms > 0 and res.latency_spread is not None
    assert res.compression == pytest.approx(1 - res.latency_ms / res.teacher_latency_ms)
    assert res.reward == pytest.approx(
        latency_reward(res.accuracy, 0.8, res.latency_ms, res.teacher_latency_ms)
    )
    assert "latency" in res.seconds
    # the teacher is timed once per job and target on this worker
    assert state.teacher_latency(LatencySpec(**target)).median_ms == res.teacher_latency_ms
    # a params reward can still record latencies when a target is given
    spec = TrialSpec(2, action, training=training, latency=target, return_weights=False)
    other = run_trial(ctx, spec, cache=state)
    assert other.latency_ms is not None and other.teacher_latency_ms == res.teacher_latency_ms
    assert other.compression == pytest.approx(1 - other.params / state.space.teacher_params)


def test_a_student_slower_than_its_teacher_gets_reward_zero() -> None:
    assert latency_reward(0.8, 0.9, 1.0, 2.0) == pytest.approx(reward(0.8, 0.9, 1.0, 2.0))
    # slower than the teacher: 0 whatever the accuracy (C(2 - C)·A would be < 0 and would
    # rank the more accurate of two slow students lower)
    assert latency_reward(0.8, 0.9, 3.0, 2.0) == 0.0 == latency_reward(0.4, 0.9, 3.0, 2.0)


def test_the_latency_target_reward_is_accuracy_within_the_budget() -> None:
    assert latency_target_reward(0.8, 0.9, 2.0, 3.0) == pytest.approx(0.8 / 0.9)
    assert latency_target_reward(0.8, 0.9, 3.0, 3.0) == pytest.approx(0.8 / 0.9)
    # twice as slow as the budget: half the relative accuracy
    assert latency_target_reward(0.8, 0.9, 6.0, 3.0) == pytest.approx(0.4 / 0.9)
    with pytest.raises(ValueError, match="must be positive"):
        latency_target_reward(0.8, 0.9, 1.0, 0.0)


def test_a_latency_target_trial_rewards_accuracy_within_the_budget(
    ctx: JobContext, state: PreparedJob
) -> None:
    training = SearchTraining(epochs=1, batch_size=64, max_train_samples=64)
    base = {"backend": "torch-cpu", "runs": 5, "warmup": 1}
    # the teacher is untrained, so a student's accuracy on the 24 validation images is chance
    # and may be 0, which no budget scales: the first sampled student above 0 is the one used
    for seed in range(1, 9):
        action = state.space.sample(np.random.default_rng(seed)).to_dict()
        spec = TrialSpec(
            1, action, training=training, reward="latency_target", latency=base | {"target_ms": 1e6}
        )  # fmt: skip
        met = run_trial(ctx, spec, cache=state)
        if met.accuracy > 0:
            break
    assert met.accuracy > 0
    assert met.reward == pytest.approx(met.accuracy / 0.8)
    assert met.latency_ms is not None
    budget = met.latency_ms / 4  # far too tight: the reward is scaled down by ~4
    spec = TrialSpec(
        2, action, training=training, reward="latency_target", latency=base | {"target_ms": budget}
    )
    missed = run_trial(ctx, spec, cache=state)
    assert missed.latency_ms is not None and missed.accuracy == met.accuracy
    assert missed.reward == pytest.approx(missed.accuracy / 0.8 * budget / missed.latency_ms)
    assert missed.reward < met.reward
