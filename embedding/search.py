"""Searchers: propose compressed architectures, learn from their rewards.

The surface follows Ray Tune's searchers: `suggest`, `observe` (results), `mark_pending` /
`forget_pending` (in-flight and failed candidates), `state_dict` / `load_state_dict`. State is
JSON-able data plus tensors -- never pickled objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedding.space import Action, CompressionSpace

__all__ = ["RandomSearcher", "Searcher", "SearcherError"]


class SearcherError(ValueError):
    """Bad use of a searcher (mismatched lengths, non-finite rewards, foreign state)."""


class Searcher(ABC):
    """Base class: bookkeeping of observations and pending candidates shared by all searchers.

    Subclasses implement `_propose(n, exclude)`, returning `n` actions whose keys are not in
    `exclude`.
    """

    kind: str = "base"

    def __init__(self, space: CompressionSpace, *, seed: int = 0) -> None:
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.actions: list[Action] = []
        self.rewards: list[float] = []
        self.pending: dict[str, Action] = {}

    # ------------------------------------------------------------------ public interface
    def suggest(self, n: int) -> list[Action]:
        """Propose `n` new actions, none observed or pending; they are marked pending."""
        if n < 0:
            raise SearcherError(f"n must be non-negative, got {n}")
        if n == 0:
            return []
        exclude = {a.key for a in self.actions} | set(self.pending)
        out = self._propose(n, exclude)
        self.mark_pending(out)
        return out

    def observe(self, actions: Sequence[Action], rewards: Sequence[float]) -> None:
        """Record finished evaluations (also clears them from the pending set)."""
        if len(actions) != len(rewards):
            raise SearcherError(f"{len(actions)} actions but {len(rewards)} rewards")
        for a, r in zip(actions, rewards, strict=True):
            r = float(r)
            if not np.isfinite(r):
                raise SearcherError(f"reward must be finite, got {r}")
            self.space.validate(a)
            self.pending.pop(a.key, None)
            self.actions.append(a)
            self.rewards.append(r)

    def mark_pending(self, actions: Sequence[Action]) -> None:
        """Declare candidates in flight: never proposed again, taken into account when proposing."""
        for a in actions:
            self.pending[a.key] = a

    def forget_pending(self, actions: Sequence[Action]) -> None:
        """Drop in-flight candidates that will not report (failed or cancelled)."""
        for a in actions:
            self.pending.pop(a.key, None)

    @property
    def best(self) -> tuple[Action, float] | None:
        """The best observation so far, or None."""
        if not self.rewards:
            return None
        k = int(np.argmax(self.rewards))
        return self.actions[k], self.rewards[k]

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (subclasses may add tensors under their own keys)."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "teacher": self.space.fingerprint,
            "rng": _rng_to_json(self.rng),
            "actions": [a.to_dict() for a in self.actions],
            "rewards": list(self.rewards),
            "pending": [a.to_dict() for a in self.pending.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output (of the same kind and teacher)."""
        if state.get("kind") != self.kind:
            raise SearcherError(f"state of a {state.get('kind')!r} searcher given to {self.kind!r}")
        if state.get("teacher") != self.space.fingerprint:
            raise SearcherError("state belongs to a searcher of another teacher's space")
        self.seed = int(state["seed"])
        self.rng = _rng_from_json(state["rng"])
        self.actions = [Action.from_json(a) for a in state["actions"]]
        self.rewards = [float(r) for r in state["rewards"]]
        self.pending = {a.key: a for a in (Action.from_json(p) for p in state["pending"])}

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _propose(self, n: int, exclude: set[str]) -> list[Action]:
        """Return `n` distinct actions whose keys are not in `exclude`."""

    def _sample_unique(self, n: int, exclude: set[str]) -> list[Action]:
        out: list[Action] = []
        seen = set(exclude)
        tries = 0
        while len(out) < n:
            a = self.space.sample(self.rng)
            tries += 1
            if a.key in seen:
                if tries > 1000 * (n + 1):
                    raise SearcherError("could not sample enough distinct actions")
                continue
            seen.add(a.key)
            out.append(a)
        return out


class RandomSearcher(Searcher):
    """The baseline: actions drawn from the paper's sampling distributions."""

    kind = "random"

    def _propose(self, n: int, exclude: set[str]) -> list[Action]:
        return self._sample_unique(n, exclude)


def _rng_to_json(rng: np.random.Generator) -> dict[str, Any]:
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: str(v) for k, v in state["state"].items()},
        "has_uint32": state["has_uint32"],
        "uinteger": state["uinteger"],
    }


def _rng_from_json(data: dict[str, Any]) -> np.random.Generator:
    if data.get("bit_generator") != "PCG64":
        raise SearcherError(f"unsupported random generator state {data.get('bit_generator')!r}")
    bg = np.random.PCG64()
    bg.state = {
        "bit_generator": "PCG64",
        "state": {k: int(v) for k, v in data["state"].items()},
        "has_uint32": data["has_uint32"],
        "uinteger": data["uinteger"],
    }
    return np.random.Generator(bg)
