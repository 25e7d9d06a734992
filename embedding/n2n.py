"""N2N, the reinforcement-learning baseline of the paper's comparison (Ashok et al., "N2N
Learning: Network to Network Compression via Policy Gradient Reinforcement Learning", ICLR 2018).

Two policies, each a two-layer bidirectional LSTM over the teacher's layer rows:

1. **removal**: reads the teacher's layers and gives each removable layer a probability of being
   replaced by identity (independent Bernoulli decisions);
2. **shrinkage**: reads the layers *after* removal (removed layers encoded as identity) and gives
   each shrinkable channel group a categorical distribution over `BINS` shrink ratios
   (bin k means a ratio in [k / BINS, (k + 1) / BINS): the sampled ratio is uniform in the bin).

Both are trained with REINFORCE on the reward f(x), with an exponential moving-average baseline,
one Adam step per batch of `batch` observations (the job's `per_step`), in trial-number order.
N2N adds no skip connections: its actions have none. The layer rows are the first 16 features of
the paper's encoding (layer-kind one-hot; kernel, stride, padding, groups, in/out channels as
log1p) -- N2N's own layer description, without ESNAC's connection vectors.

**State without weights.** The policies are a pure function of the seed and the observations: a
`suggest` initialises them from the seed and trains them on every full batch of observations (a
process keeps its last trained policies and only adds the new batches). A resumed job, or the
coordinator's fit process rebuilding the searcher from `state_dict()`, therefore continues exactly
where the uninterrupted search would be, with no policy weights to store.

**On a tabulated pool** (`candidate_pool`, the replay studies) the policy picks among the
unevaluated members, sampling without replacement with probability proportional to each member's
probability under the policy (Gumbel top-k on the log-probabilities): the pool analogue of
drawing from the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from embedding.options import SearcherError
from embedding.search import Searcher
from embedding.space import Action, CompressionSpace

__all__ = ["N2NSearcher"]

_KEEP_TRAINED = 8  # searchers whose trained policies a process keeps (jobs, replay seeds)

HIDDEN = 30  # N2N's LSTM hidden size (both policies)
LAYERS = 2  # bidirectional LSTM layers
BINS = 10  # shrink ratios per channel group
LR = 3e-3  # Adam, as in N2N
BASELINE_DECAY = 0.9  # the moving average of rewards
FEATURES = 16  # the first columns of `CompressionSpace.encode`: kind one-hot + 6 numbers


@dataclass
class _Trained:
    """Policies trained on the observations `seen` (action key, reward), in order."""

    seen: list[tuple[str, float]]
    remove: _Policy
    shrink: _Policy
    opt: torch.optim.Optimizer
    baseline: float | None


class _Policy(nn.Module):
    """A bidirectional LSTM over layer rows with a per-layer linear head."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, HIDDEN, num_layers=LAYERS, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * HIDDEN, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])  # type: ignore[no-any-return]


_TRAINED: dict[tuple[str, int, int, float], _Trained] = {}


class N2NSearcher(Searcher):
    """N2N's two-stage policy-gradient search (see the module docstring).

    Args:
        space: the teacher's compression space.
        seed: seed of the policies' initialisation and of sampling.
        batch: observations per policy update (the job's `per_step`).
        lr: Adam's learning rate.
        candidate_pool: see `Searcher` (replay on a tabulated pool).
    """

    kind = "n2n"

    def __init__(
        self,
        space: CompressionSpace,
        *,
        seed: int = 0,
        batch: int = 8,
        lr: float = LR,
        candidate_pool: Sequence[Action] | None = None,
    ) -> None:
        super().__init__(space, seed=seed, candidate_pool=candidate_pool)
        if space.removal != "layer":
            raise SearcherError("N2N's policy removes single layers: build its space with "
                                "removal='layer'")  # fmt: skip
        if int(batch) < 1:
            raise SearcherError(f"batch must be >= 1, got {batch}")
        self.batch = int(batch)
        self.lr = float(lr)
        self._removable = torch.tensor(space.removable, dtype=torch.long)
        first: dict[int, int] = {}
        for i, spec in enumerate(space.graph.specs):
            for g, _size in spec:
                first.setdefault(g, i)
        self._group_layer = torch.tensor([first[g] for g in space.shrinkable], dtype=torch.long)
        self._no_shrink = space.empty_action().shrink
        self._teacher_rows = self._rows([space.empty_action()])
        #: policy updates made by the last `suggest` (full batches of observations)
        self.updates = 0
        #: the baseline after the last update (None before any)
        self.baseline: float | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["n2n"] = {"batch": self.batch, "lr": self.lr}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        cfg = state.get("n2n")
        if not isinstance(cfg, dict):
            raise SearcherError("state lacks the 'n2n' settings; pass N2NSearcher.state_dict()")
        self.batch, self.lr = int(cfg["batch"]), float(cfg["lr"])

    # ------------------------------------------------------------------ policies
    def _rows(self, actions: Sequence[Action]) -> torch.Tensor:
        """`batch x layers x 16`: kind one-hot, log1p of the layer numbers."""
        x = self.space.encode(actions)[:, :, :FEATURES].clone()
        kinds = FEATURES - 6
        x[:, :, kinds:] = torch.log1p(x[:, :, kinds:].clamp_min(0))
        return x

    def _log_prob(
        self, remove: _Policy, shrink: _Policy, actions: Sequence[Action]
    ) -> torch.Tensor:
        """Log-probability of each action under the policies (skips ignored: N2N has none)."""
        n = len(actions)
        logits = remove(self._teacher_rows)[0, self._removable, 0]  # R
        mask = torch.zeros(n, len(self._removable))
        pos = {int(j): k for k, j in enumerate(self._removable)}
        for b, a in enumerate(actions):
            for i in a.removed:
                mask[b, pos[i]] = 1.0
        lp_remove = (
            mask * nn.functional.logsigmoid(logits) + (1 - mask) * nn.functional.logsigmoid(-logits)
        ).sum(1)
        shrink_rows = self._rows([self._removal_only(a) for a in actions])
        out = shrink(shrink_rows)[:, self._group_layer, :]  # n x G x BINS
        bins = torch.tensor([list(a.shrink) for a in actions], dtype=torch.float32)
        bins = (bins * BINS).floor().clamp(0, BINS - 1).long()
        lp_shrink = nn.functional.log_softmax(out, -1).gather(-1, bins.unsqueeze(-1)).sum((1, 2))
        return lp_remove + lp_shrink

    def _removal_only(self, a: Action) -> Action:
        return Action(a.removed, tuple(0.0 for _ in a.shrink), (), self.space.fingerprint)

    def _policies(self) -> tuple[_Policy, _Policy]:
        """The policies initialised from the seed and trained on every full batch of
        observations, in order (REINFORCE with a moving-average baseline).

        The last result is kept per process (`_TRAINED`): when the observations so far begin
        with those it was trained on, training continues from it -- the same computation, done
        once instead of at every step."""
        config = (self.space.fingerprint, self.seed, self.batch, self.lr)
        seen = [(a.key, r) for a, r in zip(self.actions, self.rewards, strict=True)]
        cached = _TRAINED.get(config)
        if cached is not None and seen[: len(cached.seen)] == cached.seen:
            remove, shrink, opt, baseline = (
                cached.remove,
                cached.shrink,
                cached.opt,
                cached.baseline,
            )
            done = len(cached.seen)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                remove, shrink = _Policy(FEATURES, 1), _Policy(FEATURES, BINS)
            opt = torch.optim.Adam([*remove.parameters(), *shrink.parameters()], lr=self.lr)
            baseline, done = None, 0
        self.updates = done // self.batch
        for start in range(done, len(self.actions) - self.batch + 1, self.batch):
            rewards = torch.tensor(self.rewards[start : start + self.batch], dtype=torch.float32)
            mean = float(rewards.mean())
            b = mean if baseline is None else baseline
            logp = self._log_prob(remove, shrink, self.actions[start : start + self.batch])
            loss = -((rewards - b) * logp).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            baseline = mean if baseline is None else (
                BASELINE_DECAY * baseline + (1 - BASELINE_DECAY) * mean
            )  # fmt: skip
            self.updates += 1
        self.baseline = baseline
        _TRAINED.pop(config, None)
        _TRAINED[config] = _Trained(
            seen[: self.updates * self.batch], remove, shrink, opt, baseline
        )
        while len(_TRAINED) > _KEEP_TRAINED:
            _TRAINED.pop(next(iter(_TRAINED)))
        return remove, shrink

    # ------------------------------------------------------------------ proposing
    def _propose(self, n: int, exclude: set[str]) -> list[Action]:
        remove, shrink = self._policies()
        with torch.no_grad():
            if self.candidate_pool is not None:
                left = [a for a in self.candidate_pool if a.key not in exclude]
                return self._pick_from_pool(remove, shrink, n, left)
            return self._sample(remove, shrink, n, exclude)

    def _sample(self, remove: _Policy, shrink: _Policy, n: int, exclude: set[str]) -> list[Action]:
        p_remove = torch.sigmoid(remove(self._teacher_rows)[0, self._removable, 0]).numpy()
        out: list[Action] = []
        seen = set(exclude)
        for _ in range(1000 * (n + 1)):
            if len(out) == n:
                break
            picked = self._removable.numpy()[self.rng.random(len(p_remove)) < p_remove]
            removed = tuple(int(i) for i in picked)
            rows = self._rows([self._removal_only(Action(removed, self._no_shrink, (), None))])
            probs = torch.softmax(shrink(rows)[0, self._group_layer, :], -1).double().numpy()
            u = self.rng.random((len(probs), 1))
            bins = (probs.cumsum(1) < u).sum(1).clip(0, BINS - 1)
            ratios = (bins + self.rng.random(len(bins))) / BINS
            a = Action(
                removed,
                tuple(float(min(r, 0.999999)) for r in ratios),
                (),
                self.space.fingerprint,
            )
            if a.key not in seen:
                seen.add(a.key)
                out.append(a)
        if len(out) < n:  # a collapsed policy: fill up at random
            out += self._sample_unique(n - len(out), seen)
        return out

    def _pick_from_pool(
        self, remove: _Policy, shrink: _Policy, n: int, left: list[Action]
    ) -> list[Action]:
        """`n` of the unevaluated pool members `left`, by policy probability (Gumbel top-k)."""
        if not left:
            return []
        logp = torch.cat(
            [self._log_prob(remove, shrink, left[i : i + 256]) for i in range(0, len(left), 256)]
        ).double().numpy()  # fmt: skip
        gumbel = -np.log(-np.log(self.rng.random(len(left)).clip(1e-300, 1 - 1e-16)))
        order = np.argsort(-(logp + gumbel), kind="stable")[: min(n, len(left))]
        return [left[int(i)] for i in order]
