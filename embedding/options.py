"""The searcher's user-facing options and their defaults (the paper's, docs/ALGORITHM.md, except
that the LSTM is not trained by default: the embedding study's evidence, docs/RESULTS.md "Results:
does the learned embedding find better students sooner?"; `PRESETS["paper"]` keeps the paper's).

Plain data with no torch import, so the REST layer can take its defaults and rules from here
without loading the model code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "ENCODER_HIDDEN",
    "ENCODER_LAYERS",
    "INHERITANCE",
    "PRESETS",
    "REMOVALS",
    "SAMPLERS",
    "EsnacOptions",
    "SearcherError",
]

#: How a shrunk channel group chooses the teacher channels it keeps (`CompressionSpace`):
#: "importance" -- the channels of largest group L2 magnitude (Torch-Pruning's
#: `GroupMagnitudeImportance`, p = 2: conv filters, the next layers' input slices, BN weights),
#: the product default; "first" -- the first k channels, as the paper's code slices them.
#: Defined here, with no torch import, so the REST layer can name the choices.
INHERITANCE: tuple[str, ...] = ("importance", "first")

#: Where a searcher's candidates come from (`embedding.candidates`; named here, with no torch
#: import, for the REST layer).
SAMPLERS: tuple[str, ...] = ("paper", "mixed")

#: What layer removal removes (`CompressionSpace`): "layer" -- any shape-preserving layer, a lone
#: BatchNorm or ReLU included (the paper's rule) -- or "unit": a shape-preserving conv together
#: with the BatchNorm and activation that directly follow it.
REMOVALS: tuple[str, ...] = ("layer", "unit")

#: The shape of the searcher's LSTM encoder (the paper's: 4 bidirectional layers of 64), which
#: a stored encoder must have to be reused by another job (`embedding_from`).
ENCODER_HIDDEN = 64
ENCODER_LAYERS = 4


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
        train_encoder: fit the LSTM on the observations (the paper's way). Default False: keep
            it fixed -- at its random initialisation, pretrained (`pretrain`) or transferred
            (`embedding_from`) -- and condition the GP on the results in its embedding. In
            replays of 100 evaluations on a 600-member CIFAR-10 pool the fixed random LSTM
            found better students sooner than the trained one, at a third of the CPU
            (docs/RESULTS.md).
        warm_start: each step's kernels start from the previous step's learned LSTM instead
            of a fresh initialisation (variant of the embedding study; that LSTM lives in the
            searcher's state, so after a coordinator restart the next step starts fresh).
        train_after: keep the LSTM fixed until a kernel expects at least this many
            observations (`subset` x observations); 0: train from the first fit (variant).
        pretrain: before any fit, train the LSTM (once per teacher) to predict free labels of
            1,000 sampled architectures -- size, depth, removed fraction, shrink, skips -- and start
            every kernel from it (variant; `embedding.pretrain`).
        inheritance: which teacher channels a shrunk channel group keeps, for every strategy
            (`embedding.space.INHERITANCE`): "importance" -- the largest group L2 magnitude,
            Torch-Pruning's rule, the default -- or "first", the paper's first-k slicing.
        removal: what layer removal removes (`REMOVALS`): "layer", the paper's rule (the
            default until a study says otherwise), or "unit" (a conv with the BatchNorm and
            activation after it), for the random and ESNAC strategies.
        finish_epochs: before full training, the best 2 x top_k students by search score get
            this many more epochs of the search training on all training images, from their
            search weights, and the top_k are chosen by that longer evaluation, for every
            strategy; 0 (the default until a study says otherwise): no finish.
        sampler: where the acquisition's candidates come from (`embedding.candidates`):
            "paper" -- the paper's distribution (the default until a study says otherwise) --
            or "mixed": half of it, a quarter near-uniform actions with few removals, a
            quarter local moves around the best observed actions.
    """

    kernels: int = 8
    subset: float = 0.5
    candidates: int = 1000
    train_encoder: bool = False
    warm_start: bool = False
    train_after: int = 0
    pretrain: bool = False
    inheritance: str = "importance"
    sampler: str = "paper"
    removal: str = "layer"
    finish_epochs: int = 0

    def validate(self) -> None:
        """Raises `SearcherError` naming the first invalid option."""
        for name in ("kernels", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SearcherError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_after", "finish_epochs"):
            t = getattr(self, name)
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise SearcherError(f"{name} must be a non-negative integer, got {t!r}")
        s = self.subset
        if not isinstance(s, int | float) or not math.isfinite(s) or not 0.0 < s <= 1.0:
            raise SearcherError(f"subset must lie in (0, 1], got {s!r}")
        if self.inheritance not in INHERITANCE:
            raise SearcherError(
                f"inheritance must be one of {list(INHERITANCE)}, got {self.inheritance!r}"
            )
        if self.removal not in REMOVALS:
            raise SearcherError(f"removal must be one of {list(REMOVALS)}, got {self.removal!r}")
        if self.sampler not in SAMPLERS:
            raise SearcherError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EsnacOptions:
        """Options from stored JSON (missing keys take the defaults; `preset` names a set of
        values, `PRESETS`, that the other keys override); validated."""
        data = dict(data or {})
        preset = data.pop("preset", None)
        if preset is not None:
            if not isinstance(preset, str) or preset not in PRESETS:
                raise SearcherError(f"unknown searcher preset {preset!r}; known: {sorted(PRESETS)}")
            data = {**PRESETS[preset], **data}
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SearcherError(f"unknown searcher options {unknown}")
        opts = cls(**data)
        opts.validate()
        return opts


#: Named option sets. "paper": the paper's exact settings (8 kernels, gamma = 0.5, 1000 candidates,
#: a freshly initialised LSTM trained at every step, students sliced from the teacher's first
#: channels), kept as they are whatever the defaults become.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"kernels": 8, "subset": 0.5, "candidates": 1000, "train_encoder": True,
              "warm_start": False, "train_after": 0, "pretrain": False,
              "inheritance": "first", "sampler": "paper", "removal": "layer",
              "finish_epochs": 0},  # fmt: skip
}
