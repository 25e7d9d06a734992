"""Size budgets in a compression space: the size of an action on a measure, and the two students
a user would try first under a budget -- the seeds of a budgeted search.

    uniform  one shrink ratio for every channel group, nothing removed: the smallest ratio that
             meets the budget (bisection). With importance inheritance this is Torch-Pruning's
             default per-layer pruning.
    global   channels ranked across the whole network by their group importance (each group's
             L2 magnitudes divided by their mean, Torch-Pruning's default normaliser), the
             least important dropped until the budget is met, expressed as per-group ratios.
"""

from __future__ import annotations

from collections.abc import Callable

from embedding.space import Action, CompressionSpace

__all__ = ["MEASURES", "budget_seeds", "global_magnitude_action", "size_of", "smallest_size",
           "uniform_action"]  # fmt: skip

#: What a budget can bound, counted without building the student.
MEASURES: tuple[str, ...] = ("params", "flops")

_BISECTION_STEPS = 50


def _sizer(space: CompressionSpace, measure: str) -> Callable[[Action], int]:
    if measure == "params":
        return space.num_params
    if measure == "flops":
        return space.num_flops
    raise ValueError(f"unknown size measure {measure!r}; one of {list(MEASURES)}")


def size_of(space: CompressionSpace, action: Action, measure: str) -> int:
    """The student's parameters or FLOPs (`measure`), without building it."""
    return _sizer(space, measure)(action)


def smallest_size(space: CompressionSpace, measure: str) -> int:
    """The smallest student the space can build (every removable layer removed, every group
    down to one channel), on `measure`."""
    return size_of(space, space.most_aggressive_action(), measure)


def _ratio(keep: int, size: int) -> float:
    """The shrink ratio that keeps exactly `keep` of `size` channels (int((1 - r) F) = keep)."""
    return min(max(0.0, 1.0 - (keep + 0.5) / size), 0.999999)


def uniform_action(
    space: CompressionSpace, budget: float, measure: str = "params"
) -> Action | None:
    """The largest uniform shrink within `budget` (None: even the thinnest one exceeds it)."""
    sizer, n = _sizer(space, measure), len(space.shrinkable)

    def action(r: float) -> Action:
        return Action((), tuple(r for _ in range(n)), (), space.fingerprint)

    lo, hi = 0.0, 0.999999
    if sizer(action(hi)) > budget:
        return None
    if sizer(action(lo)) <= budget:
        return action(lo)
    for _ in range(_BISECTION_STEPS):  # size falls as the ratio rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sizer(action(mid)) > budget else (lo, mid)
    # the smallest ratio that keeps the kept-channel counts of `hi`
    sizes = space.graph.group_sizes
    keeps = [max(1, int((1.0 - hi) * sizes[g])) for g in space.shrinkable]
    exact = Action((), tuple(_ratio(k, sizes[g]) for k, g in zip(keeps, space.shrinkable,
                                                                   strict=True)), (),
                   space.fingerprint)  # fmt: skip
    return exact if sizer(exact) <= budget else action(hi)


def global_magnitude_action(
    space: CompressionSpace, budget: float, measure: str = "params"
) -> Action | None:
    """Global magnitude pruning to `budget` as an action of the space (None: the space has no
    teacher weights to rank, or even one channel per group exceeds the budget)."""
    sizer = _sizer(space, measure)
    scores = space.channel_scores()
    sizes = space.graph.group_sizes
    normed = []
    for g in space.shrinkable:
        mean = float(scores[g].mean())
        if not mean > 0:
            return None
        normed.append(scores[g] / mean)

    def action(tau: float) -> Action:
        keeps = [max(1, int((s >= tau).sum())) for s in normed]
        return Action((), tuple(_ratio(k, sizes[g]) for k, g in zip(keeps, space.shrinkable,
                                                                      strict=True)), (),
                      space.fingerprint)  # fmt: skip

    lo, hi = 0.0, float(max(s.max() for s in normed)) * (1 + 1e-9)
    if sizer(action(hi)) > budget:
        return None
    if sizer(action(lo)) <= budget:
        return action(lo)
    for _ in range(_BISECTION_STEPS):  # size falls as the threshold rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sizer(action(mid)) > budget else (lo, mid)
    return action(hi)


def budget_seeds(
    space: CompressionSpace, budget: float, measure: str = "params"
) -> list[tuple[str, Action]]:
    """The seeds of a budgeted search: `("uniform", action)` and `("global", action)`, each
    within `budget`, a duplicate of an earlier one left out."""
    out: list[tuple[str, Action]] = []
    for tag, make in (("uniform", uniform_action), ("global", global_magnitude_action)):
        action = make(space, budget, measure)
        if action is not None and all(action.key != a.key for _, a in out):
            out.append((tag, action))
    return out
