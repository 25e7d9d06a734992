"""The order in which a job trains its students: within the budget first, by the finish."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from service.db import Trial, TrialState
from service.targets import rank_students, within_target

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


def _trial(number: int, params: int, reward: float, finish: float | None = None) -> Trial:
    return Trial(
        id=100 + number, job_id=1, number=number, status=TrialState.SUCCEEDED, action={},
        params=params, flops=10 * params, accuracy=reward, compression=None, reward=reward,
        attempts=1, worker="w", history=[], seconds={}, error_code=None, error=None,
        weights_id=1, final_accuracy=None, final_history=None, final_seconds=None,
        final_weights_id=None, onnx_id=None, created_at=NOW, started_at=NOW, finished_at=NOW,
        updated_at=NOW,
        finish=None if finish is None else {"accuracy": finish, "reward": finish, "epochs": 2,
                                            "seconds": 1.0},
    )  # fmt: skip


def _numbers(trials: list[Trial]) -> list[int]:
    return [t.number for t in trials]


def test_students_within_the_budget_come_first_then_by_reward() -> None:
    trials = [_trial(0, 300, 0.9), _trial(1, 200, 0.5), _trial(2, 100, 0.7), _trial(3, 100, 0.7)]
    assert _numbers(rank_students(trials, None)) == [0, 2, 3, 1]
    target: dict[str, Any] = {"measure": "params", "value": 250.0}
    assert _numbers(rank_students(trials, target)) == [2, 3, 1, 0]
    assert within_target({"measure": "flops", "value": 2000.0}, 200, 2000)
    assert not within_target({"measure": "flops", "value": 2000.0}, 200, None)


def test_the_finish_re_ranks_where_the_two_scores_disagree() -> None:
    # by search reward 0 > 1 > 2; the longer evaluation says 2 > 1 > 0
    trials = [_trial(0, 100, 0.9, 0.70), _trial(1, 100, 0.8, 0.80), _trial(2, 100, 0.7, 0.85),
              _trial(3, 100, 0.95)]  # 3: a finalist whose finish failed  # fmt: skip
    assert _numbers(rank_students(trials, None)) == [3, 0, 1, 2]
    assert _numbers(rank_students(trials, None, by_finish=True)) == [2, 1, 0, 3]
    over = {"measure": "params", "value": 50.0}  # nobody meets it: the finish still orders
    assert _numbers(rank_students(trials, over, by_finish=True)) == [2, 1, 0, 3]


def test_students_below_the_accuracy_floor_come_last() -> None:
    from service.targets import floor_accuracy

    assert floor_accuracy(0.1, 0.9, 10) == 0.1 + 0.1 * 0.8
    assert floor_accuracy(0.0, 0.9, 10) is None and floor_accuracy(None, 0.9, 10) is None
    # a near-chance tiny student with the highest raw reward, and two real ones
    trials = [_trial(0, 10, 0.95), _trial(1, 200, 0.6), _trial(2, 100, 0.5)]
    object.__setattr__(trials[0], "accuracy", 0.11)
    assert _numbers(rank_students(trials, None)) == [0, 1, 2]
    assert _numbers(rank_students(trials, None, floor=0.18)) == [1, 2, 0]
