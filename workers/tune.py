"""Ray Tune adapter: run an ESNAC search (any `embedding.search.Searcher`) under `tune.Tuner`.

    space = CompressionSpace.for_teacher(teacher)
    tuner = tune.Tuner(
        trial_trainable(ctx, SearchTraining(epochs=10)),
        tune_config=tune.TuneConfig(
            search_alg=TuneSearcher(RandomSearcher(space)), num_samples=160
        ),
    )
    best = tuner.fit().get_best_result(metric="reward", mode="max")

`TuneSearcher` hands out the wrapped searcher's proposals (asked for `batch` at a time, the paper
proposes 8 per step) as configs `{"action": ..., "seed": ...}` and feeds the reported metric back;
failed trials are forgotten so they are not counted as observations. `trial_trainable` runs one
trial with `workers.trial.run_trial` and reports its metrics; the teacher bytes travel once
through the object store (`tune.with_parameters`). Each Tune trial prepares the job afresh (Tune
owns the trial processes), so the actor pool of `service` stays the faster path for long searches.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.search import Searcher as RayTuneSearcher
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from embedding.search import Searcher
from embedding.space import Action
from workers.spec import BadSpecError, SearchTraining, TrialSpec
from workers.trial import JobContext, run_trial

__all__ = ["METRICS", "TuneSearcher", "trial_trainable"]

#: What every trial reports to Tune.
METRICS = ("reward", "accuracy", "compression", "params", "flops")


class TuneSearcher(RayTuneSearcher):
    """A Ray Tune search algorithm backed by an ESNAC searcher.

    Args:
        searcher: the ESNAC (or random) searcher; it keeps its own observations.
        metric: the reported metric to learn from (default: the compression reward).
        mode: "max" or "min" (for "min" the searcher observes the negated metric).
        batch: how many proposals to ask the searcher for at once.
        seed: base of the per-trial seeds (`seed + trial number`).

    Attributes:
        wrapped: the ESNAC searcher (not named `searcher`: Tune unwraps that attribute chain).
    """

    def __init__(
        self,
        searcher: Searcher,
        metric: str = "reward",
        mode: str = "max",
        *,
        batch: int = 1,
        seed: int = 0,
    ) -> None:
        if mode not in ("max", "min"):
            raise BadSpecError(f"mode must be 'max' or 'min', got {mode!r}")
        if int(batch) < 1:
            raise BadSpecError(f"batch must be >= 1, got {batch}")
        super().__init__(metric=metric, mode=mode)
        self.wrapped = searcher
        self.batch = int(batch)
        self.seed = int(seed)
        self._queue: deque[Action] = deque()
        self._live: dict[str, Action] = {}
        self._count = 0

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        # The metric and mode given here (from TuneConfig) win over the constructor's.
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next candidate as a Tune config: `{"action": Action.to_dict(), "seed": int}`."""
        if not self._queue:
            self._queue.extend(self.wrapped.suggest(self.batch))
        action = self._queue.popleft()
        self._live[trial_id] = action
        seed = self.seed + self._count
        self._count += 1
        return {"action": action.to_dict(), "seed": seed}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Observe the trial's metric, or forget the candidate if the trial failed."""
        action = self._live.pop(trial_id, None)
        if action is None:
            return
        metric = self._metric or "reward"
        if error or not result or result.get(metric) is None:
            self.wrapped.forget_pending([action])
            return
        value = float(result[metric])
        self.wrapped.observe([action], [value if self._mode != "min" else -value])

    def get_state(self) -> dict[str, Any]:
        """JSON-able state (tensors of the searcher as base64 safetensors), never pickle."""
        tensors: dict[str, torch.Tensor] = {}
        return {
            "searcher": _encode(self.wrapped.state_dict(), tensors, "s"),
            "queue": [a.to_dict() for a in self._queue],
            "live": {k: a.to_dict() for k, a in self._live.items()},
            "count": self._count,
            "seed": self.seed,
            "batch": self.batch,
            "metric": self._metric,
            "mode": self._mode,
            "tensors": base64.b64encode(st_save(tensors)).decode() if tensors else "",
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore `get_state()` output (into a searcher of the same kind and teacher)."""
        tensors = st_load(base64.b64decode(state["tensors"])) if state["tensors"] else {}
        self.wrapped.load_state_dict(_decode(state["searcher"], tensors))
        self._queue = deque(Action.from_json(a) for a in state["queue"])
        self._live = {k: Action.from_json(a) for k, a in state["live"].items()}
        self._count = int(state["count"])
        self.seed, self.batch = int(state["seed"]), int(state["batch"])
        self._metric, self._mode = state["metric"], state["mode"]

    def save(self, checkpoint_path: str) -> None:
        """Write `get_state()` as JSON."""
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        """Load the state written by `save`."""
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    return obj


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _run(
    config: dict[str, Any],
    ctx: JobContext,
    training: SearchTraining,
    reward: str,
    device: str | None,
) -> None:
    spec = TrialSpec(
        trial_id=int(config.get("trial_id", 0)),
        action=config["action"],
        seed=int(config.get("seed", 0)),
        training=training,
        reward=reward,
        return_weights=False,
    )
    res = run_trial(ctx, spec, device=device)
    tune.report({"reward": res.reward, "accuracy": res.accuracy, "compression": res.compression,
                 "params": res.params, "flops": res.flops})  # fmt: skip


def trial_trainable(
    ctx: JobContext,
    training: SearchTraining | None = None,
    *,
    reward: str = "params",
    device: str | None = None,
) -> Any:
    """A Tune function trainable that runs one trial per config (`{"action", "seed"}`).

    Args:
        ctx: the job (its teacher bytes go through the object store once).
        training: search-time distillation settings (the paper's by default).
        reward: "params" or "flops".
        device: where trials run (default: CUDA when available).

    Raises:
        BadSpecError: invalid settings (checked here, before any trial starts).
    """
    training = training or SearchTraining()
    TrialSpec(0, {}, training=training, reward=reward).validate()
    ctx.validate()
    return tune.with_parameters(_run, ctx=ctx, training=training, reward=reward, device=device)
