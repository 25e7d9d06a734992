from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedding.search import RandomSearcher
from embedding.space import Action, CompressionSpace
from workers import zoo
from workers.spec import BadSpecError, SearchTraining
from workers.trial import JobContext
from workers.tune import TuneSearcher, trial_trainable


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    torch.manual_seed(0)
    return CompressionSpace.for_teacher(zoo.build("resnet20", 10))


def test_searcher_adapter_observes_forgets_and_round_trips(
    space: CompressionSpace, tmp_path: Path
) -> None:
    ts = TuneSearcher(RandomSearcher(space, seed=1), batch=2, seed=10)
    configs = [ts.suggest(f"t{i}") for i in range(3)]
    assert [c["seed"] for c in configs] == [10, 11, 12]  # type: ignore[index]
    actions = [Action.from_json(c["action"]) for c in configs]  # type: ignore[index]
    assert len({a.key for a in actions}) == 3
    assert len(ts.wrapped.pending) == 4  # two batches of two proposals
    ts.on_trial_complete("t0", {"reward": 0.7})
    ts.on_trial_complete("t1", None, error=True)
    assert ts.wrapped.rewards == [0.7] and ts.wrapped.actions[0].key == actions[0].key
    assert actions[1].key not in ts.wrapped.pending
    ts.save(str(tmp_path / "state.json"))
    other = TuneSearcher(RandomSearcher(space, seed=99))
    other.restore(str(tmp_path / "state.json"))
    assert other.wrapped.rewards == [0.7] and set(other.wrapped.pending) == set(ts.wrapped.pending)
    assert other.suggest("t3") == ts.suggest("t3")
    mins = TuneSearcher(RandomSearcher(space), mode="min")
    mins.suggest("a")
    mins.on_trial_complete("a", {"reward": 0.25})
    assert mins.wrapped.rewards == [-0.25]
    with pytest.raises(BadSpecError, match="mode"):
        TuneSearcher(RandomSearcher(space), mode="best")


def test_trainable_checks_settings_up_front(teacher_bytes: bytes, small_npz: str) -> None:
    ctx = JobContext("t", "resnet20", 10, teacher_bytes, 0.5, small_npz)
    with pytest.raises(BadSpecError, match="lr"):
        trial_trainable(ctx, SearchTraining(lr=float("nan")))
    with pytest.raises(BadSpecError, match="reward"):
        trial_trainable(ctx, reward="speed")


@pytest.mark.slow
def test_a_tune_run_reports_trial_metrics(
    ray_session: str,
    teacher_bytes: bytes,
    small_npz: str,
    space: CompressionSpace,
    tmp_path: Path,
) -> None:
    from ray import tune

    ctx = JobContext("t", "resnet20", 10, teacher_bytes, 0.5, small_npz)
    training = SearchTraining(epochs=1, batch_size=32, max_train_samples=32)
    tuner = tune.Tuner(
        trial_trainable(ctx, training, device="cpu"),
        tune_config=tune.TuneConfig(
            search_alg=TuneSearcher(RandomSearcher(space, seed=0), batch=2),
            metric="reward",
            mode="max",
            num_samples=2,
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="esnac", verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0 and len(results) == 2
    for i in range(len(results)):
        r = results[i]
        assert 0.0 <= r.metrics["accuracy"] <= 1.0
        a = Action.from_json(r.config["action"])
        assert r.metrics["params"] == space.num_params(a)
        c = 1 - r.metrics["params"] / space.teacher_params
        assert r.metrics["reward"] == pytest.approx(c * (2 - c) * r.metrics["accuracy"] / 0.5)
