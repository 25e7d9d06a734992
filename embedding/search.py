"""Searchers: propose compressed architectures, learn from their rewards.

The surface follows Ray Tune's searchers: `suggest`, `observe` (results), `mark_pending` /
`forget_pending` (in-flight and failed candidates), `state_dict` / `load_state_dict`. State is
JSON-able data plus tensors -- never pickled objects.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from botorch.acquisition import LogExpectedImprovement

from embedding.candidates import CandidateSampler
from embedding.encoder import DEFAULT_TRANSFORM, EncoderError, EncoderStack
from embedding.kernel import to_unit_cube
from embedding.model import FitReport, FitSettings, build_gp, fit_stack
from embedding.options import ENCODER_HIDDEN, ENCODER_LAYERS, EsnacOptions, SearcherError
from embedding.space import Action, CompressionSpace

__all__ = ["EsnacSearcher", "RandomSearcher", "Searcher", "SearcherError"]


class Searcher(ABC):
    """Base class: bookkeeping of observations and pending candidates shared by all searchers.

    Subclasses implement `_propose(n, exclude)`, returning `n` actions whose keys are not in
    `exclude` (and may set `last_kernels`).

    Args:
        space: the teacher's compression space.
        seed: seed of all randomness.
        candidate_pool: if given, every sampled action is drawn from these (those not yet
            observed or pending) instead of from the space's distributions: a replay on a
            tabulated pool of evaluated architectures (NAS-Bench style) proposes only members.
        sampler: how candidates are drawn from the space otherwise (`CandidateSampler`;
            default: the paper's distribution, no budget).
    """

    kind: str = "base"

    def __init__(
        self,
        space: CompressionSpace,
        *,
        seed: int = 0,
        candidate_pool: Sequence[Action] | None = None,
        sampler: CandidateSampler | None = None,
    ) -> None:
        self.space = space
        self.sampler = sampler if sampler is not None else CandidateSampler(space)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.actions: list[Action] = []
        self.rewards: list[float] = []
        self.pending: dict[str, Action] = {}
        self.candidate_pool = list(candidate_pool) if candidate_pool is not None else None
        #: the kernel that proposed each action of the last `suggest` (None: not model-based)
        self.last_kernels: list[int | None] = []

    # ------------------------------------------------------------------ public interface
    def suggest(self, n: int) -> list[Action]:
        """Propose `n` new actions, none observed or pending; they are marked pending."""
        if n < 0:
            raise SearcherError(f"n must be non-negative, got {n}")
        if n == 0:
            return []
        exclude = {a.key for a in self.actions} | set(self.pending)
        self.last_kernels = []
        out = self._propose(n, exclude)
        if len(self.last_kernels) != len(out):
            self.last_kernels = [None] * len(out)
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
        if self.candidate_pool is not None:
            left = [a for a in self.candidate_pool if a.key not in exclude]
            take = min(n, len(left))
            return [left[i] for i in self.rng.choice(len(left), size=take, replace=False)]
        order = np.argsort(-np.asarray(self.rewards), kind="stable")
        try:
            return self.sampler.draw(self.rng, n, exclude, [self.actions[i] for i in order])
        except ValueError as exc:
            raise SearcherError(str(exc)) from exc


class RandomSearcher(Searcher):
    """The baseline: actions drawn from the paper's sampling distributions."""

    kind = "random"

    def _propose(self, n: int, exclude: set[str]) -> list[Action]:
        return self._sample_unique(n, exclude)


class EsnacSearcher(Searcher):
    """The paper's searcher: Bayesian optimisation on a learned LSTM embedding (docs/ALGORITHM.md).

    Each `suggest` (one step) builds `kernels` GPs, each with a freshly initialised LSTM (or
    `encoder_init`) fitted on a random subset of the observations (each kept with probability
    `subset`); each kernel proposes the argmax of BoTorch's (log) Expected Improvement over its
    own pool of `candidates` random actions. Candidates are taken round-robin over the kernels in
    order of their fitted objective: `suggest(kernels)` is the paper's step (one candidate per
    kernel), fewer take the best-fitting kernels' picks, more take each kernel's next-best too;
    `last_kernels` says which kernel proposed each. All kernels are fitted together and all
    pools embedded in batched passes of one `EncoderStack`. Pending candidates are never
    proposed again and enter every GP by the kriging believer (see `build_gp`). With fewer than
    two observations it proposes random actions.

    Args:
        space: the teacher's compression space.
        kernels: GPs fitted per step (8), whatever `n` a `suggest(n)` asks for.
        subset: probability gamma of keeping each observation in a kernel's subset (0.5).
        candidates: random actions scored per kernel (1000).
        seed: seed of all randomness (subsets, candidate pools, LSTM initialisation).
        encoder_init: weights of one `ArchitectureEncoder` (`encoder_state()` of an earlier
            search) to start every kernel from -- with `train_encoder=False` this is the
            paper's transfer of a learned embedding to a new teacher.
        train_encoder: fit the LSTM on the observations (True) or keep it fixed.
        warm_start, train_after, pretrain: variants of the embedding study (`EsnacOptions`).
        device: torch device for the LSTM (default CPU).
        fit: optimiser, stopping rule, objective, alpha, beta (`FitSettings()`: the paper's).
        hidden_size, num_layers, input_transform: the encoder's shape and input transform.
        chunk: candidates per kernel embedded at once (bounds memory; not a tuning knob).
        candidate_pool, sampler: see `Searcher`.
    """

    kind = "esnac"

    def __init__(
        self,
        space: CompressionSpace,
        *,
        kernels: int = EsnacOptions.kernels,
        subset: float = EsnacOptions.subset,
        candidates: int = EsnacOptions.candidates,
        seed: int = 0,
        encoder_init: dict[str, torch.Tensor] | None = None,
        train_encoder: bool = EsnacOptions.train_encoder,
        warm_start: bool = EsnacOptions.warm_start,
        train_after: int = EsnacOptions.train_after,
        pretrain: bool = EsnacOptions.pretrain,
        device: str | torch.device | None = None,
        fit: FitSettings | None = None,
        hidden_size: int = ENCODER_HIDDEN,
        num_layers: int = ENCODER_LAYERS,
        input_transform: str = DEFAULT_TRANSFORM,
        chunk: int = 125,
        candidate_pool: Sequence[Action] | None = None,
        sampler: CandidateSampler | None = None,
    ) -> None:
        super().__init__(space, seed=seed, candidate_pool=candidate_pool, sampler=sampler)
        EsnacOptions(
            int(kernels), float(subset), int(candidates), bool(train_encoder),
            bool(warm_start), int(train_after), bool(pretrain),
        ).validate()  # fmt: skip
        if chunk < 1:
            raise SearcherError("chunk must be positive")
        self.kernels = int(kernels)
        self.subset = float(subset)
        self.candidates = int(candidates)
        self.train_encoder = bool(train_encoder)
        self.warm_start = bool(warm_start)
        self.train_after = int(train_after)
        self.pretrain = bool(pretrain)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.fit_settings = fit or FitSettings()
        self.encoder_config: dict[str, Any] = {
            "input_size": space.row_size,
            "hidden_size": int(hidden_size),
            "num_layers": int(num_layers),
            "input_transform": input_transform,
        }
        self.chunk = int(chunk)
        self.encoder_init = _clone_weights(encoder_init) if encoder_init is not None else None
        if self.encoder_init is not None:
            # fail now, not at the first suggest, on weights of another shape
            try:
                EncoderStack(1, **self.encoder_config).load_encoder_state(self.encoder_init)
            except EncoderError as exc:
                raise SearcherError(f"encoder_init does not fit this space: {exc}") from exc
        self.last_fit: FitReport | None = None
        #: wall seconds of the last model-based proposal: "fit", "candidates", "acquisition"
        self.last_timings: dict[str, float] = {}
        self._learned: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ learned embedding
    def encoder_state(self) -> dict[str, torch.Tensor] | None:
        """Weights (`ArchitectureEncoder` state-dict format) of the best-fitting kernel's LSTM of
        the last step, else `encoder_init`, else None. Store them (e.g. as safetensors) and pass
        them as `encoder_init` to reuse the embedding in another search."""
        src = self._learned if self._learned is not None else self.encoder_init
        return _clone_weights(src) if src is not None else None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["esnac"] = {
            "kernels": self.kernels,
            "subset": self.subset,
            "candidates": self.candidates,
            "train_encoder": self.train_encoder,
            "warm_start": self.warm_start,
            "train_after": self.train_after,
            "pretrain": self.pretrain,
            "fit": self.fit_settings.to_dict(),
            "encoder_config": dict(self.encoder_config),
            "chunk": self.chunk,
        }
        state["encoder_init"] = self.encoder_init and _clone_weights(self.encoder_init)
        state["learned_encoder"] = self._learned and _clone_weights(self._learned)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        cfg = state.get("esnac")
        if not isinstance(cfg, dict):
            raise SearcherError("state lacks the 'esnac' settings; pass EsnacSearcher.state_dict()")
        if cfg["encoder_config"]["input_size"] != self.space.row_size:
            raise SearcherError("state was saved for a space with another max_layers")
        self.kernels = int(cfg["kernels"])
        self.subset = float(cfg["subset"])
        self.candidates = int(cfg["candidates"])
        self.train_encoder = bool(cfg["train_encoder"])
        self.warm_start = bool(cfg.get("warm_start", False))
        self.train_after = int(cfg.get("train_after", 0))
        self.pretrain = bool(cfg.get("pretrain", False))
        self.fit_settings = FitSettings(**cfg["fit"])
        self.encoder_config = dict(cfg["encoder_config"])
        self.chunk = int(cfg["chunk"])
        init, learned = state.get("encoder_init"), state.get("learned_encoder")
        self.encoder_init = _clone_weights(init) if init else None
        self._learned = _clone_weights(learned) if learned else None

    # ------------------------------------------------------------------ proposing
    def _propose(self, n: int, exclude: set[str]) -> list[Action]:
        if len(self.actions) < 2:
            return self._sample_unique(n, exclude)
        m = self.kernels
        n_obs = len(self.actions)
        subsets = []
        for _ in range(m):
            keep = np.flatnonzero(self.rng.random(n_obs) < self.subset)
            if len(keep) < 2:
                keep = np.sort(self.rng.choice(n_obs, size=2, replace=False))
            subsets.append(keep)
        init_seed = int(self.rng.integers(2**62))
        t0 = time.perf_counter()
        pools = [self._sample_unique(self.candidates, exclude) for _ in range(m)]
        t1 = time.perf_counter()

        dev = self.device
        stack = EncoderStack(
            m, **self.encoder_config, generator=torch.Generator().manual_seed(init_seed)
        )
        start = self._start_weights()
        if start is not None:
            stack.load_encoder_state(start)
        stack.to(dev)
        rows = self.space.encode(self.actions).to(dev)  # n_obs x T x D
        width = max(len(s) for s in subsets)
        index = torch.zeros(m, width, dtype=torch.long)
        mask = torch.zeros(m, width, dtype=torch.bool)
        for j, keep in enumerate(subsets):
            index[j, : len(keep)] = torch.from_numpy(keep)
            mask[j, : len(keep)] = True
        rewards = torch.tensor(self.rewards, dtype=torch.float64)
        y = rewards[index]
        x = rows[index.to(dev)]
        train = self.train_encoder and n_obs * self.subset >= self.train_after
        report = fit_stack(stack, x, y, mask.to(dev), self.fit_settings, train)
        self.last_fit = report
        self._learned = stack.encoder_state(int(np.argmax(report.objective)))
        t2 = time.perf_counter()
        ranked = self._rank_candidates(stack, x, y, mask, pools, report)
        self.last_timings = {
            "candidates": t1 - t0,
            "fit": t2 - t1,
            "acquisition": time.perf_counter() - t2,
        }
        out: list[Action] = []
        kernels: list[int | None] = []
        taken = set(exclude)
        cursors = [0] * m
        # best-fitting kernel first (stable: ties keep kernel order)
        by_fit = [int(j) for j in np.argsort(-np.asarray(report.objective), kind="stable")]
        while len(out) < n:
            j = by_fit[len(out) % m]
            order, pool = ranked[j], pools[j]
            while cursors[j] < len(order) and pool[order[cursors[j]]].key in taken:
                cursors[j] += 1
            if cursors[j] >= len(order):
                extra = self._sample_unique(n - len(out), taken)
                out.extend(extra)
                kernels.extend([None] * len(extra))
                break
            pick = pool[order[cursors[j]]]
            taken.add(pick.key)
            out.append(pick)
            kernels.append(j)
        self.last_kernels = kernels
        return out

    def _start_weights(self) -> dict[str, torch.Tensor] | None:
        """Where every kernel's LSTM starts: the previous step's learned one (`warm_start`),
        else `encoder_init`, else the free-label pretraining (`pretrain`), else None (a fresh
        initialisation)."""
        if self.warm_start and self._learned is not None:
            return self._learned
        if self.encoder_init is not None:
            return self.encoder_init
        if self.pretrain:
            from embedding.pretrain import pretrained_encoder

            return pretrained_encoder(self.space, self.encoder_config)
        return None

    @torch.no_grad()
    def _rank_candidates(
        self,
        stack: EncoderStack,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        pools: list[list[Action]],
        report: FitReport,
    ) -> list[list[int]]:
        """Each kernel's pool indices by decreasing expected improvement."""
        m = stack.k
        dev = self.device
        u_obs = to_unit_cube(stack(x, chunk=self.chunk)).to(torch.float64).cpu()
        pending = list(self.pending.values())
        u_pend = None
        if pending:
            rows = self.space.encode(pending).to(dev)
            u_pend = (
                to_unit_cube(stack(rows.unsqueeze(0).expand(m, *rows.shape), chunk=self.chunk))
                .to(torch.float64)
                .cpu()
            )
        size = len(pools[0])
        u_cand = torch.empty(m, size, u_obs.shape[-1], dtype=torch.float64)
        for start in range(0, size, self.chunk):
            stop = min(size, start + self.chunk)
            batch = [a for pool in pools for a in pool[start:stop]]
            rows = self.space.encode(batch).to(dev).view(m, stop - start, *x.shape[2:])
            u_cand[:, start:stop] = to_unit_cube(stack(rows)).to(torch.float64).cpu()
        ranked = []
        for j in range(m):
            valid = mask[j]
            model, best_f = build_gp(
                u_obs[j][valid],
                y[j][valid],
                alpha=report.alpha[j],
                noise=report.noise[j],
                pending=None if u_pend is None else u_pend[j],
            )
            acq = LogExpectedImprovement(model, best_f=best_f)
            scores = acq(u_cand[j].unsqueeze(-2))
            # stable sort: ties keep pool order, so proposals are reproducible
            ranked.append(torch.argsort(scores, descending=True, stable=True).tolist())
        return ranked


def _clone_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {str(k): torch.as_tensor(v).detach().cpu().clone() for k, v in weights.items()}


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
        "state": {k: int(v) for k, v in data["state"].items()},  # type: ignore[typeddict-item]
        "has_uint32": data["has_uint32"],
        "uinteger": data["uinteger"],
    }
    return np.random.Generator(bg)
