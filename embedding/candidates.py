"""Where a searcher looks: the candidate actions it draws, and the budget they must meet.

The paper draws every candidate from one distribution (`CompressionSpace.sample`), which removes
30-70 % of the removable layers: nothing near "every layer a bit thinner" -- where the uniform
shrink and Torch-Pruning's students lie -- is ever proposed. The "mixed" sampler keeps half of
each pool from the paper's distribution and adds

    sparse  actions with few or no removals (p1 in `SPARSE_REMOVE_PROBS`) whose shrink ratios
            scatter around one shared ratio (near-uniform shapes);
    local   one small move from one of the best observed actions: its shrink ratios perturbed,
            one removal toggled, or one skip toggled.

A hard budget (`Budget`) drops every candidate over it before it is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedding.options import SAMPLERS
from embedding.space import Action, CompressionSpace

__all__ = ["MIX", "SAMPLERS", "SPARSE_REMOVE_PROBS", "Budget", "CandidateSampler", "local_move",
           "sparse_sample"]  # fmt: skip

#: Shares of a "mixed" pool (local draws need observations; without them paper draws fill in).
MIX = {"paper": 0.5, "sparse": 0.25, "local": 0.25}
#: Layer-removal probabilities of a sparse draw.
SPARSE_REMOVE_PROBS: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1)
#: Local moves start from this many of the best observed actions.
LOCAL_TOP = 4
_SHRINK_NOISE = 0.05  # a local move's perturbation of every ratio (standard deviation)
_SPARSE_SPREAD = 0.1  # a sparse draw's scatter of the ratios around the shared one
_MAX_RATIO = 0.999999


@dataclass(frozen=True)
class Budget:
    """A hard size budget: `measure` ("params" or "flops") at most `value`."""

    measure: str
    value: float

    def fits(self, space: CompressionSpace) -> Callable[[Action], bool]:
        size = space.num_params if self.measure == "params" else space.num_flops
        return lambda a: size(a) <= self.value


def sparse_sample(space: CompressionSpace, rng: np.random.Generator) -> Action:
    """An action with few or no removals and near-uniform shrink ratios."""
    p1 = SPARSE_REMOVE_PROBS[int(rng.integers(len(SPARSE_REMOVE_PROBS)))]
    picks = rng.random(len(space.units)) < p1
    removed = tuple(sorted(i for u, p in zip(space.units, picks, strict=True) if p for i in u))
    base = rng.random() * 0.95
    ratios = np.clip(base + rng.normal(0.0, _SPARSE_SPREAD, len(space.shrinkable)), 0, _MAX_RATIO)
    return Action(removed, tuple(float(r) for r in ratios), (), space.fingerprint)


def local_move(space: CompressionSpace, action: Action, rng: np.random.Generator) -> Action:
    """One small move from `action`: its ratios perturbed, one removal (a layer, or a unit of
    the space's `units`) or one skip toggled."""
    kind = int(rng.integers(3))
    removed, shrink, skips = set(action.removed), list(action.shrink), set(action.skips)
    if kind == 1 and space.units:
        unit = set(space.units[int(rng.integers(len(space.units)))])
        if unit <= removed:
            removed -= unit
        else:
            removed |= unit
            skips = {e for e in skips if e[1] not in unit}  # never into a removed layer
    elif kind == 2 and space.skip_candidates:
        e = space.skip_candidates[int(rng.integers(len(space.skip_candidates)))]
        if e in skips:
            skips.discard(e)
        elif e[1] not in removed:
            skips.add(e)
    else:
        noise = rng.normal(0.0, _SHRINK_NOISE, len(shrink))
        shrink = [float(np.clip(r + d, 0.0, _MAX_RATIO)) for r, d in zip(shrink, noise,
                                                                          strict=True)]  # fmt: skip
    return Action(tuple(sorted(removed)), tuple(shrink), tuple(sorted(skips)), space.fingerprint)


class CandidateSampler:
    """Draws a searcher's candidates: distinct, unseen, within the budget.

    Args:
        space: the teacher's compression space.
        kind: one of `SAMPLERS`.
        budget: candidates over it are dropped before they are scored (None: no budget).
    """

    def __init__(
        self, space: CompressionSpace, kind: str = "paper", budget: Budget | None = None
    ) -> None:
        if kind not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {kind!r}")
        self.space = space
        self.kind = kind
        self.budget = budget
        self._fits = budget.fits(space) if budget is not None else None

    def draw(
        self,
        rng: np.random.Generator,
        n: int,
        exclude: set[str],
        incumbents: Sequence[Action] = (),
    ) -> list[Action]:
        """`n` distinct actions whose keys are not in `exclude`.

        Args:
            rng: the searcher's generator.
            n: how many.
            exclude: keys of observed and pending actions.
            incumbents: the best observed actions, best first (local moves start from them).

        Raises:
            ValueError: not enough distinct actions within the budget after many draws.
        """
        plan = ["paper"] * n
        if self.kind == "mixed":
            n_local = int(round(MIX["local"] * n)) if incumbents else 0
            n_sparse = int(round(MIX["sparse"] * n))
            n_paper = n - n_local - n_sparse
            plan = ["local"] * n_local + ["sparse"] * n_sparse + ["paper"] * n_paper
        top = list(incumbents[:LOCAL_TOP])
        out: list[Action] = []
        seen = set(exclude)
        tries = 0
        for k, source in enumerate(plan):
            while True:
                tries += 1
                if tries > 1000 * (n + 1):
                    raise ValueError(
                        f"could not draw {n} distinct candidates"
                        + (f" within the budget ({self.budget.measure} <= "
                           f"{self.budget.value:,.0f})" if self.budget else "")  # fmt: skip
                    )
                if source == "local":
                    a = local_move(self.space, top[k % len(top)], rng)
                elif source == "sparse":
                    a = sparse_sample(self.space, rng)
                else:
                    a = self.space.sample(rng)
                if a.key in seen or (self._fits is not None and not self._fits(a)):
                    continue
                seen.add(a.key)
                out.append(a)
                break
        return out
