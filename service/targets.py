"""Size budgets of a job (`reward: params_target | flops_target`): from what the user asked --
an absolute count, or "N times smaller than the teacher" -- to the absolute budget the workers
score against, checked against what the teacher's space can build.

Plain logic on stored teacher facts (no torch), shared by the REST layer, which refuses a bad
budget with a 422, and the job runner.
"""

from __future__ import annotations

from typing import Any

from service.db import Teacher, Trial
from workers.spec import SIZE_TARGETS

__all__ = ["TargetError", "floor_accuracy", "rank_students", "resolve_target", "within_target"]


class TargetError(ValueError):
    """A budget the search cannot meet or that means nothing (the message says what is allowed)."""


def _fmt(n: float) -> str:
    return f"{int(n):,}"


def resolve_target(reward: str, target: dict[str, Any], teacher: Teacher) -> dict[str, Any]:
    """The job's stored target: `{"measure", "value", "times_smaller"}`.

    Args:
        reward: a `SIZE_TARGETS` reward.
        target: what the user asked: one of `params`, `flops` (absolute) or `times_smaller`.
        teacher: the job's teacher (its `params` and `sizes`).

    Raises:
        TargetError: an unknown reward or unit, a budget that is not positive, not smaller than
            the teacher, or below the smallest student the teacher's space can build.
    """
    if reward not in SIZE_TARGETS:
        raise TargetError(
            f"`target` is the budget of reward {' or '.join(SIZE_TARGETS)}, not of {reward!r}"
        )
    measure = SIZE_TARGETS[reward]
    given = {k: v for k, v in target.items() if v is not None}
    unknown = sorted(set(given) - {*SIZE_TARGETS.values(), "times_smaller"})
    if unknown or len(given) != 1 or (set(given) & set(SIZE_TARGETS.values()) - {measure}):
        raise TargetError(
            f"reward {reward!r} takes a target of {measure} or times_smaller, one of them: "
            f'e.g. {{"{measure}": 100000}} or {{"times_smaller": 5}}; got {target}'
        )
    sizes = teacher.sizes or {}
    teacher_size = teacher.params if measure == "params" else sizes.get("flops")
    smallest = sizes.get(f"min_{measure}")
    if teacher_size is None:
        raise TargetError(
            f"teacher {teacher.id} was registered before FLOPs were counted; register it again "
            "to set a FLOPs budget"
        )
    factor = given.get("times_smaller")
    if factor is not None:
        if not factor > 1:
            raise TargetError(f"times_smaller must be more than 1 (e.g. 5 for 5x), got {factor}")
        value = teacher_size / float(factor)
    else:
        value = float(given[measure])
        if not value > 0:
            raise TargetError(f"a {measure} budget must be positive, got {given[measure]}")
        if value >= teacher_size:
            raise TargetError(
                f"a {measure} budget of {_fmt(value)} does not compress teacher {teacher.id} "
                f"({_fmt(teacher_size)} {measure}); ask for less than that"
            )
    if smallest is not None and value < smallest:
        raise TargetError(
            f"a {measure} budget of {_fmt(value)} is below the smallest student teacher "
            f"{teacher.id}'s space can build ({_fmt(smallest)} {measure}, "
            f"{teacher_size / smallest:.0f}x smaller); ask for at least that"
        )
    return {"measure": measure, "value": value, "times_smaller": factor,
            "teacher": teacher_size}  # fmt: skip


def within_target(target: dict[str, Any] | None, params: int | None, flops: int | None) -> bool:
    """Whether a student of this size meets a job's stored target (True without a target)."""
    if target is None:
        return True
    size = params if target["measure"] == "params" else flops
    return size is not None and size <= float(target["value"])


def floor_accuracy(
    fraction: float | None, teacher_accuracy: float | None, num_classes: int
) -> float | None:
    """The search accuracy a student needs to rank first or be fully trained: chance plus
    `fraction` of the teacher's margin over chance (None: no floor)."""
    if not fraction or teacher_accuracy is None or num_classes < 1:
        return None
    chance = 1.0 / num_classes
    return chance + float(fraction) * max(0.0, float(teacher_accuracy) - chance)


def rank_students(
    trials: list[Trial],
    target: dict[str, Any] | None,
    *,
    by_finish: bool = False,
    floor: float | None = None,
) -> list[Trial]:
    """Succeeded students in the order the job trains them: those at or above the accuracy
    `floor` first, within the budget first, then by reward -- the finishing evaluation's
    (`by_finish`; finalists without one after those with one) or the search's -- ties to the
    lower trial number."""

    def key(t: Trial) -> tuple[bool, bool, bool, float, int]:
        finish = t.finish if by_finish else None
        score = float(finish["reward"]) if finish else float(t.reward or 0.0)
        below = floor is not None and (t.accuracy or 0.0) < floor
        return (below, not within_target(target, t.params, t.flops), by_finish and not finish,
                -score, t.number)  # fmt: skip

    return sorted(trials, key=key)
