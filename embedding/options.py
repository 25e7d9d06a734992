"""The searcher's user-facing options and their defaults (the paper's, docs/ALGORITHM.md).

Plain data with no torch import, so the REST layer can take its defaults and rules from here
without loading the model code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["EsnacOptions", "SearcherError"]


class SearcherError(ValueError):
    """Bad use of a searcher (mismatched lengths, non-finite rewards, foreign state, bad
    options)."""


@dataclass(frozen=True)
class EsnacOptions:
    """The multiple-kernel strategy of the paper (docs/ALGORITHM.md, "Multiple kernels").

    Attributes:
        kernels: GPs fitted per step, each on its own random subset of the observations.
        subset: probability gamma of keeping each observation in a kernel's subset.
        candidates: random actions scored by Expected Improvement per kernel.
        train_encoder: fit the LSTM on the observations (False: keep it fixed, e.g. a
            transferred embedding).
    """

    kernels: int = 8
    subset: float = 0.5
    candidates: int = 1000
    train_encoder: bool = True

    def validate(self) -> None:
        """Raises `SearcherError` naming the first invalid option."""
        for name in ("kernels", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SearcherError(f"{name} must be a positive integer, got {value!r}")
        s = self.subset
        if not isinstance(s, int | float) or not math.isfinite(s) or not 0.0 < s <= 1.0:
            raise SearcherError(f"subset must lie in (0, 1], got {s!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EsnacOptions:
        """Options from stored JSON (missing keys take the defaults); validated."""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SearcherError(f"unknown searcher options {unknown}")
        opts = cls(**data)
        opts.validate()
        return opts
