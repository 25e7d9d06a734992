"""Do our students beat what a user would do instead? ESNAC against the alternatives at equal size.

With the strong CIFAR-10 teacher (`benchmarks/data/teachers/cifar10_resnet20.*`, 87.56 %), at one
compression target -- the parameter count of ESNAC's best student -- six students get the *same*
final training (knowledge distillation from the teacher on the 45k training images: the product's
`workers.train.distill`, MSE on logits, Adam 1e-3, augmentation, the best validation epoch kept)
and are evaluated on the 5k validation split:

    esnac          the best student of an ESNAC search run through the service (REST, Ray workers)
    random         the same with `strategy: random` and the same budget
    uniform        every channel group shrunk by one ratio, nothing removed (params matched +-5 %)
    torch_pruning  the teacher's channels pruned by L2 magnitude with Torch-Pruning (+-5 %)
    compact        a narrow MobileNetV2 from the zoo (width chosen to match), fresh weights
    scratch        ESNAC's architecture with fresh weights (the "rethinking pruning" control)

**At a budget** (`--setup cifar10_2.5x | cifar10_5x | cifar10_10x`; issue 32): the target is N
times fewer parameters than the teacher, ESNAC searches with `reward: params_target` (its first
step holds the uniform shrink and global magnitude pruning to the budget, tagged seeds), every
student is within the budget, and the methods are

    esnac                 the budgeted search's best student (is it a seed? the report says)
    uniform_first         the largest uniform shrink within the budget, first-k channels (what
                          slicing a `width_mult` gives)
    torch_pruning         Torch-Pruning per layer (L2 magnitude), stopped within the budget
    torch_pruning_global  Torch-Pruning with one global ranking (mean-normalised per group)
    compact, compact_shufflenet, scratch   (at 5x only) as above, within the budget

with 3 training seeds at 5x and 2 at 2.5x and 10x; results in `results/compare_<setup>.json`,
students in `data/students/<setup>/`. `cifar10_5x_mixed` and `cifar10_5x_unit` run the 5x
search with the mixed sampler or removal by unit (the cheap choice of those defaults: compare
the searches' best scores); `--search-seed N` repeats a setup's search with another seed
(as `<setup>_seed<N>`). The first comparison (`--setup cifar10`, the committed
`results/compare.json`) was made with first-k inheritance, and keeps it.

Stages, one command each; every stage is cached under `benchmarks/cache/compare/<setup>/` and
resumes where it stopped (a search's job lives in its server's database; each finished training
is a file):

    python benchmarks/compare.py search --strategy esnac --strategy random   # side by side
    python benchmarks/compare.py train                        # all methods x seeds (hours)
    python benchmarks/compare.py train --method uniform --seed 1
    python benchmarks/compare.py report                       # results, plot, students' manifest
    python benchmarks/compare.py all --setup quick            # everything on digits in ~2 minutes

On a GPU machine, `train --device cuda` runs the same float32 recipe (~1-2 min a student on an
H200, several at once); `ESNAC_CIFAR_NPZ=<path>` points at `train.npz` where `../shared` is absent.

`--setup quick` runs the same code on scikit-learn's `digits` with tiny budgets (the CI test of
the plumbing); its outputs stay in the cache. The full setup writes
`benchmarks/results/compare.json`, `benchmarks/results/compare.png` and the students (ONNX with the
normalisation folded in, so raw 0..1 images go in, plus safetensors) with
`benchmarks/data/students/manifest.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

METHODS = ("esnac", "random", "uniform", "torch_pruning", "compact", "scratch")
BUDGET_METHODS = ("esnac", "uniform_first", "torch_pruning", "torch_pruning_global", "compact",
                  "compact_shufflenet", "scratch")  # fmt: skip
ALL_METHODS = tuple(dict.fromkeys(METHODS + BUDGET_METHODS))
# the 50k CIFAR-10 images (ESNAC_CIFAR_NPZ: elsewhere, e.g. on a lent GPU machine)
CIFAR_NPZ = Path(os.environ.get("ESNAC_CIFAR_NPZ")
                 or ROOT.parent.parent / "shared" / "data" / "cifar10" / "train.npz")  # fmt: skip
STRONG_TEACHER = ROOT / "data" / "teachers" / "cifar10_resnet20.safetensors"
TOLERANCE = 0.05  # matched parameter counts: within +-5 % of the target


@dataclass(frozen=True)
class Setup:
    """One comparison's settings (everything that changes a result is here)."""

    name: str
    dataset: str
    teacher: str | None  # a teacher's safetensors (with a .json card); None: train one (quick)
    evaluations: int
    per_step: int
    search: dict[str, Any]
    final: dict[str, Any]
    seeds: tuple[int, ...]
    workers: int
    compact_arch: str = "mobilenetv2"
    outputs: bool = False  # write results/, data/students/ (the full setups only)
    cache: Path = field(default=ROOT / "cache" / "compare")
    budget: float | None = None  # N: every student within 1/N of the teacher's parameters
    methods: tuple[str, ...] = METHODS
    inheritance: str = "importance"  # the students' channel rule (the space's default)
    searcher: dict[str, Any] = field(default_factory=dict)  # ESNAC options beyond the defaults
    search_seed: int = 0  # the ESNAC job's seed (its random first step and candidates)

    @property
    def dir(self) -> Path:
        """Scratch space (servers' databases): not committed."""
        return self.cache / self.name

    @property
    def _tag(self) -> str:
        """How a full setup's committed files are named: the first comparison's bare, others'
        by the setup."""
        return "" if self.budget is None else f"_{self.name}"

    @property
    def final_dir(self) -> Path:
        """Finished trainings (json + onnx + safetensors); the full setups' are committed."""
        if not self.outputs:
            return self.dir / "final"
        return ROOT / "data" / "students" / ("" if self.budget is None else self.name)

    def search_file(self, strategy: str) -> Path:
        """A search's state and, once done, its best student; the full setups' are committed."""
        if self.outputs:
            return ROOT / "results" / f"compare{self._tag}_search_{strategy}.json"
        return self.dir / f"search_{strategy}.json"

    def results_file(self, suffix: str) -> Path:
        return ROOT / "results" / f"compare{self._tag}.{suffix}"


def setups() -> dict[str, Setup]:
    full = Setup(
        name="cifar10",
        dataset=f"npz:{CIFAR_NPZ}?val=0.1",  # the fixed 45k / 5k split
        teacher=str(STRONG_TEACHER),
        evaluations=64,
        per_step=8,
        # the pool study's search-time training: KD on 5,000 images x 2 epochs
        search={"epochs": 2, "max_train_samples": 5000, "batch_size": 128, "augment": False,
                "cache_teacher_logits": True},  # fmt: skip
        final={"epochs": 10, "batch_size": 128, "lr": 1e-3, "augment": True},
        seeds=(0, 1),
        workers=2,
        outputs=True,
        inheritance="first",  # as its committed students were made (before issue 31)
    )
    budgeted = {
        f"cifar10_{n:g}x": replace(
            full, name=f"cifar10_{n:g}x", budget=n, inheritance="importance",
            seeds=(0, 1, 2) if n == 5 else (0, 1),
            methods=BUDGET_METHODS if n == 5 else BUDGET_METHODS[:4],
        )  # fmt: skip
        for n in (2.5, 5.0, 10.0)
    }
    quick = Setup(
        name="quick",
        dataset="digits",
        teacher=None,
        evaluations=2,
        per_step=1,
        search={"epochs": 1, "max_train_samples": 64, "batch_size": 64},
        final={"epochs": 1, "batch_size": 64, "lr": 1e-3, "augment": True,
               "max_train_samples": 256},  # fmt: skip
        seeds=(0,),
        workers=1,
    )
    # issue 32's cheap choice of defaults: the 5x search with one option changed (its search
    # stage only; the baselines are the 5x setup's)
    variants = {
        f"cifar10_5x_{k}": replace(budgeted["cifar10_5x"], name=f"cifar10_5x_{k}", searcher=v,
                                   methods=("esnac",))  # fmt: skip
        for k, v in (("mixed", {"sampler": "mixed"}), ("unit", {"removal": "unit"}))
    }
    quick_budget = replace(quick, name="quick_budget", budget=4.0, methods=BUDGET_METHODS)
    return {"cifar10": full, **budgeted, **variants, "quick": quick,
            "quick_budget": quick_budget}  # fmt: skip


def with_search_seed(setup: Setup, seed: int) -> Setup:
    """The setup's search repeated with another seed (issue 32 asks for >= 3 per option): its
    own name, cache and result files; it trains only its ESNAC student."""
    if seed == 0:
        return setup
    return replace(setup, name=f"{setup.name}_seed{seed}", search_seed=seed, methods=("esnac",))


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------- teacher
def teacher(setup: Setup) -> tuple[bytes, float]:
    """The teacher's safetensors and validation accuracy (quick: a resnet20 trained for a few
    seconds on digits, cached)."""
    if setup.teacher is not None:
        path = Path(setup.teacher)
        card = json.loads(path.with_suffix(".json").read_text())
        return path.read_bytes(), float(card["accuracy"])
    path = setup.dir / "teacher.safetensors"
    if not path.exists():
        from workers.spec import TeacherTraining
        from workers.train import train_teacher

        res = train_teacher(
            "resnet20", 10, setup.dataset,
            TeacherTraining(epochs=2, batch_size=64, max_train_samples=512), device="cpu",
        )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(res.weights)
        _write_json({"accuracy": res.accuracy}, path.with_suffix(".json"))
    return path.read_bytes(), float(json.loads(path.with_suffix(".json").read_text())["accuracy"])


def teacher_net(setup: Setup) -> torch.nn.Module:
    from workers import zoo

    return zoo.load_teacher("resnet20", 10, teacher(setup)[0])


# ------------------------------------------------------------------------------------ search
def search(setup: Setup, strategies: list[str]) -> dict[str, dict[str, Any]]:
    """Run (or resume, or read) searches through one server, side by side; returns each one's
    state with its best student."""
    from service.cli.client import Client
    from service.devserver import local_server

    states = {s: _read_json(setup.search_file(s)) or {} for s in strategies}
    todo = [s for s in strategies if "best" not in states[s]]
    if not todo:
        return states
    weights, accuracy = teacher(setup)
    env = {"ESNAC_WORKERS": str(setup.workers), "ESNAC_THREADS_PER_TRIAL": "1",
           "ESNAC_CPUS_PER_TRIAL": "1", "ESNAC_RAY_NUM_CPUS": str(setup.workers),
           "ESNAC_DATA_ALLOW_ANY_PATH": "1"}  # fmt: skip
    if os.environ.get("ESNAC_RAY_ADDRESS"):  # join a running Ray (the tests') instead
        env["ESNAC_RAY_ADDRESS"] = os.environ["ESNAC_RAY_ADDRESS"]
    t0 = time.time()
    poll = 10.0 if setup.outputs else 0.5
    with (
        local_server(setup.dir / "server", env=env) as server,
        Client(server.url, server.token) as client,
    ):
        known = {j["id"] for j in client.get("/v1/jobs", limit=200)["items"]}
        for strategy in todo:
            state = states[strategy]
            if "job" in state and state["job"] not in known:
                state.clear()  # a new machine: the scratch database is gone; search again
            if "job" in state:
                continue  # the server resumes a job it was running when it stopped
            # the quick setup's few-second teacher is near chance by design (a plumbing check):
            # it passes the service's sanity guards on purpose, as the tests' untrained ones do
            toy = setup.teacher is None
            t = client.post(
                "/v1/teachers",
                data={"arch": "resnet20", "num_classes": "10", "dataset": setup.dataset,
                      "accuracy": str(accuracy), "accept_low_accuracy": str(toy).lower()},
                files={"weights": ("teacher.safetensors", weights)},
            )  # fmt: skip
            job = client.post("/v1/jobs", json={
                "teacher_id": t["id"], "strategy": strategy, "dataset": setup.dataset,
                "steps": setup.evaluations // setup.per_step, "per_step": setup.per_step,
                "search": setup.search, "top_k": 0, "seed": setup.search_seed,
                "searcher": {"inheritance": setup.inheritance, **setup.searcher},
                **({"accuracy_floor": 0.0} if toy else {}),
                **({"reward": "params_target", "target": {"times_smaller": setup.budget}}
                   if setup.budget is not None else {}),
            })  # fmt: skip
            state.update({"job": job["id"], "teacher": t["id"], "started": time.time()})
            _write_json(state, setup.search_file(strategy))
        for strategy in todo:
            state = states[strategy]
            while True:
                job = client.get(f"/v1/jobs/{state['job']}")
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                if setup.outputs:
                    print(f"{strategy}: {job['status']} {job.get('progress')}", flush=True)
                time.sleep(poll)
            if job["status"] != "succeeded":
                raise SystemExit(f"the {strategy} search ended {job['status']}: {job.get('error')}")
            trials = client.trials(state["job"])
            done = [t for t in trials if t["status"] == "succeeded" and t.get("reward") is not None]
            best = max(done, key=lambda t: (t["reward"], -t["number"]))
            seeds = [t for t in done if t.get("tag")]
            others = [t for t in done if not t.get("tag")]
            keys = ("id", "number", "action", "params", "flops", "accuracy", "reward", "tag")
            state.update({
                "best": {k: best.get(k) for k in keys},
                # a budgeted search's seeds (the alternatives, in the first step) and its best
                # student that is not one
                "seeds": [{k: t.get(k) for k in keys} for t in seeds],
                "best_non_seed": ({k: o.get(k) for k in keys} if (o := max(
                    others, key=lambda t: (t["reward"], -t["number"]), default=None)) else None),
                "evaluations": len(done),
                "trials": [{k: t.get(k) for k in ("number", "params", "accuracy", "reward", "tag")}
                           for t in done],
                "teacher_accuracy": accuracy,
                "seconds_this_run": time.time() - t0,
                "load_average": _load(),
            })  # fmt: skip
            _write_json(state, setup.search_file(strategy))
    return states


# ---------------------------------------------------------------------------------- students
def _best(setup: Setup, strategy: str = "esnac") -> dict[str, Any]:
    found = _read_json(setup.search_file(strategy))
    if not found or "best" not in found:
        raise SystemExit(f"run the search first: compare.py search --strategy {strategy}")
    return found["best"]  # type: ignore[no-any-return]


def target_params(setup: Setup) -> float:
    """The size every student is matched to: the budget (the teacher's parameters / N, as the
    service resolves `times_smaller`), else the parameters of ESNAC's best student."""
    if setup.budget is not None:
        return _params(teacher_net(setup)) / setup.budget
    return int(_best(setup)["params"])


def _space(setup: Setup, inheritance: str | None = None) -> Any:
    from embedding import CompressionSpace

    return CompressionSpace.for_teacher(teacher_net(setup),
                                        inheritance=inheritance or setup.inheritance)  # fmt: skip


def _uniform(space: Any, target: int, inherit: bool) -> torch.nn.Module:
    """Every shrinkable group shrunk by one ratio, chosen by bisection to match `target`."""
    from embedding import Action

    n = len(space.shrinkable)

    def action(r: float) -> Action:
        return Action((), tuple(r for _ in range(n)), (), space.fingerprint)

    lo, hi = 0.0, 0.999  # params fall as the ratio rises
    for _ in range(40):
        mid = (lo + hi) / 2
        if space.num_params(action(mid)) > target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda r: abs(space.num_params(action(r)) - target))
    return space.materialize(action(best), inherit=inherit)


def _torch_pruned(setup: Setup, target: float, global_pruning: bool = False) -> torch.nn.Module:
    """The teacher pruned by L2 magnitude (Torch-Pruning), one small step at a time, stopping at
    the first step within the tolerance of `target` parameters (within `target` itself for a
    budget). `global_pruning`: one ranking across the network (each group's scores divided by
    their mean, Torch-Pruning's default normaliser), instead of the same ratio in every layer."""
    import torch_pruning as tp

    model = teacher_net(setup)
    example = torch.zeros(1, 3, 32, 32)
    pruner = tp.pruner.BasePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.95, iterative_steps=190, ignored_layers=[model.fc],
        global_pruning=global_pruning,
    )  # fmt: skip
    limit = target if setup.budget is not None else target * (1 + TOLERANCE)
    for _ in range(190):
        if _params(model) <= limit:
            break
        pruner.step()
    if _params(model) > limit:
        raise SystemExit(f"Torch-Pruning could not reach {limit:,.0f} params")
    return model


def _params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _compact(setup: Setup, arch: str, target: float) -> torch.nn.Module:
    """A zoo network with fresh weights, narrowed uniformly to the target (within a budget)."""
    from embedding import CompressionSpace
    from embedding.budget import uniform_action
    from workers import zoo

    space = CompressionSpace.for_teacher(zoo.build(arch, 10).eval())
    action = uniform_action(space, target) if setup.budget is not None else None
    if action is None:  # no budget, or none fits it (the zoo's ShuffleNetV2 keeps ~80k params
        # in layers no width setting reaches): the nearest width, over the budget -- the report
        # marks it as not size-matched
        return _uniform(space, int(target), inherit=False)
    return space.materialize(action, inherit=False)


def build_student(setup: Setup, method: str) -> torch.nn.Module:
    from embedding import Action
    from embedding.budget import uniform_action

    if method not in setup.methods:
        raise SystemExit(f"setup {setup.name} compares {', '.join(setup.methods)}, not {method!r}")
    target = target_params(setup)
    space = _space(setup)
    if method in ("esnac", "scratch", "random"):
        best = _best(setup, "random" if method == "random" else "esnac")
        return space.materialize(Action.from_json(best["action"]), inherit=method != "scratch")
    if method == "uniform":
        return _uniform(space, int(target), inherit=True)
    if method == "uniform_first":
        first = _space(setup, "first")
        action = uniform_action(first, target)
        if action is None:
            raise SystemExit(f"no uniform shrink fits {target:,.0f} params")
        return first.materialize(action)
    if method in ("torch_pruning", "torch_pruning_global"):
        return _torch_pruned(setup, target, global_pruning=method == "torch_pruning_global")
    if method == "compact":
        return _compact(setup, setup.compact_arch, target)
    if method == "compact_shufflenet":
        return _compact(setup, "shufflenetv2", target)
    raise SystemExit(f"unknown method {method!r}; one of {', '.join(ALL_METHODS)}")


# ------------------------------------------------------------------------------------- train
def train(setup: Setup, method: str, seed: int, device: str = "cpu") -> dict[str, Any]:
    """The final training of one student (cached): KD from the teacher, evaluation, export.

    The recipe is float32 on every device (no autocast), so a GPU run is the same training.
    """
    from embedding.reward import model_flops, reward
    from workers.data import load_dataset
    from workers.export import state_to_safetensors, to_onnx
    from workers.latency import measure_latency
    from workers.spec import SearchTraining
    from workers.train import distill, seed_everything

    out = setup.final_dir / f"{method}_s{seed}"
    done = _read_json(out.with_suffix(".json"))
    if done is not None:
        return done  # type: ignore[no-any-return]
    seed_everything(seed)
    student = build_student(setup, method)
    t_net = teacher_net(setup)
    _, t_acc = teacher(setup)
    splits = load_dataset(setup.dataset, None, False, seed=0)
    settings = dict(setup.final)
    settings.setdefault("max_train_samples", None)
    t0 = time.perf_counter()
    load0 = _load()
    # per-epoch checkpoint beside the results: a stopped training resumes where it was (commit
    # it when a session ends mid-training, to carry on on another machine); gone when done
    ckpt = setup.final_dir / "checkpoints" / f"{method}_s{seed}.pt"
    res = distill(student, t_net, splits, SearchTraining(**settings), seed=seed, device=device,
                  amp=False, checkpoint=ckpt)  # fmt: skip
    student.cpu()
    student.eval()
    params, t_params = _params(student), _params(t_net)
    mean, std = splits.train.mean.tolist(), splits.train.std.tolist()
    onnx = to_onnx(student, splits.input_shape, normalize=(mean, std))
    latency = measure_latency(student, splits.input_shape)  # ONNX Runtime, 1 thread, batch 1
    result = {
        "method": method, "seed": seed, "accuracy": res.best_accuracy, "history": res.history,
        "best_epoch": res.best_epoch, "params": params, "flops": model_flops(student),
        "teacher_params": t_params, "teacher_accuracy": t_acc,
        "reward": reward(res.best_accuracy, t_acc, params, t_params),
        "latency_ms": latency.median_ms, "latency_p10_ms": latency.p10_ms,
        "latency_p90_ms": latency.p90_ms, "seconds": time.perf_counter() - t0,
        "train_seconds": res.seconds,  # every epoch's steps, also those before a resume
        "load_average": [load0, _load()], "normalization": {"mean": mean, "std": std},
        "input_shape": list(splits.input_shape), "training": settings, "device": device,
        "inheritance": setup.inheritance,
        "budget": None if setup.budget is None else {
            "times_smaller": setup.budget, "params": (budget := target_params(setup)),
            "within": params <= budget},
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".onnx").write_bytes(onnx)
    out.with_suffix(".safetensors").write_bytes(state_to_safetensors(student))
    _write_json(result, out.with_suffix(".json"))  # last: its presence means "done"
    ckpt.unlink(missing_ok=True)
    print(f"{method} seed {seed}: accuracy {res.best_accuracy:.4f}, {params:,} params, "
          f"{result['seconds']:.0f} s", flush=True)  # fmt: skip
    return result


# ------------------------------------------------------------------------------------ report
def report(setup: Setup) -> dict[str, Any]:
    """Aggregate the finished trainings: per method, the accuracy's mean and spread over seeds."""
    runs = [_read_json(p) for p in sorted(setup.final_dir.glob("*_s*.json"))]
    latency = _latencies(setup, runs)
    methods: dict[str, Any] = {}
    for m in setup.methods:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            continue
        accs = [r["accuracy"] for r in mine]
        methods[m] = {
            "seeds": [r["seed"] for r in mine],
            "accuracy_mean": statistics.fmean(accs),
            "accuracy_spread": (max(accs) - min(accs)) if len(accs) > 1 else None,
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "accuracy": accs,
            "devices": [r.get("device", "cpu") for r in mine],  # same float32 recipe on each
            "params": mine[0]["params"],
            "size_matched": None,
            "flops": mine[0]["flops"],
            "reward_mean": statistics.fmean(r["reward"] for r in mine),
            # single-image ONNX Runtime latency, all students timed in this process, rounds
            # interleaved (the figure measured right after each training is kept beside it)
            "latency_ms": statistics.median(
                [v for r in mine if (v := latency.get(f"{m}_s{r['seed']}")) is not None] or [0.0]
            ),
            "latency_ms_at_training": statistics.median(r["latency_ms"] for r in mine),
            # every epoch's steps (a resumed training's "seconds" are its last process's only)
            "train_seconds": statistics.fmean(r.get("train_seconds", r["seconds"]) for r in mine),
        }
    strategies = ("esnac", "random") if "random" in setup.methods else ("esnac",)
    searches = {s: _read_json(setup.search_file(s)) for s in strategies}
    target = target_params(setup) if searches["esnac"] or setup.budget is not None else None
    esnac = searches["esnac"] or {}
    for r in methods.values():  # within the budget, or the tolerance of ESNAC's best's size
        if target is not None:
            r["size_matched"] = (r["params"] <= target if setup.budget is not None
                                 else abs(r["params"] - target) <= TOLERANCE * target)  # fmt: skip
    if "esnac" in methods:  # does ESNAC's mean beat each alternative's by more than the spread?
        ours = methods["esnac"]
        for m, r in methods.items():
            if m == "esnac":
                continue
            gap = ours["accuracy_mean"] - r["accuracy_mean"]
            spread = max(ours["accuracy_spread"] or 0.0, r["accuracy_spread"] or 0.0)
            r["esnac_minus_this"] = gap
            verdict = "esnac better" if gap > spread else "esnac worse" if -gap > spread else None
            r["esnac_verdict"] = verdict or "within spread"
    summary = {
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(setup).items()},
        "target_params": target,
        "budget": None if setup.budget is None else {
            "times_smaller": setup.budget, "params": target,
            # is ESNAC's returned student one of the alternatives it was seeded with?
            "esnac_returned_a_seed": bool(esnac.get("best", {}).get("tag")),
            "esnac_best_tag": esnac.get("best", {}).get("tag"),
            "best_non_seed": esnac.get("best_non_seed"),
            "seeds": esnac.get("seeds"),
        },  # fmt: skip
        "searches": {s: {k: v for k, v in (d or {}).items() if k != "trials"}
                     for s, d in searches.items()},  # fmt: skip
        "methods": methods,
        "teacher_latency_ms": latency.get("teacher"),
        "missing": [f"{m}_s{s}" for m in setup.methods for s in setup.seeds
                    if not (setup.final_dir / f"{m}_s{s}.json").exists()],  # fmt: skip
        "load_average_now": _load(),
        "torch_threads": torch.get_num_threads(),
    }
    _write_json(summary, setup.dir / "compare.json")
    if setup.outputs:
        _write_json(summary, setup.results_file("json"))
        _students(setup, runs)
        _plot(summary, setup.results_file("png"))
    for m, r in methods.items():
        spread = "" if r["accuracy_spread"] is None else f" +- {100 * r['accuracy_spread'] / 2:.2f}"
        print(f"{m:14s} {r['params']:>9,} params  {100 * r['accuracy_mean']:.2f}%{spread}  "
              f"f(x) {r['reward_mean']:.4f}  {r['latency_ms']:.3f} ms")  # fmt: skip
    return summary


def _latencies(
    setup: Setup, runs: list[dict[str, Any]], rounds: int = 15, per_round: int = 20
) -> dict[str, float]:
    """Median single-image latency (ms) of every student's ONNX file and of the teacher, with
    ONNX Runtime on one thread, measured in this process: `rounds` rounds, each timing
    `per_round` runs of every network in turn, so load changes hit all of them alike."""
    import numpy as np
    import onnxruntime as ort

    from workers.export import to_onnx

    files = {f"{r['method']}_s{r['seed']}": setup.final_dir / f"{r['method']}_s{r['seed']}.onnx"
             for r in runs}  # fmt: skip
    models = {k: f.read_bytes() for k, f in files.items() if f.exists()}
    if not models:
        return {}
    shape = tuple(runs[0]["input_shape"])
    norm = runs[0]["normalization"]  # folded in as in the students' files
    models["teacher"] = to_onnx(
        teacher_net(setup).eval(), shape, normalize=(norm["mean"], norm["std"])
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(b, opts, providers=["CPUExecutionProvider"])
                for k, b in models.items()}  # fmt: skip
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, sess in sessions.items():
            name = sess.get_inputs()[0].name
            sess.run(None, {name: x})  # warm
            for _ in range(per_round):
                t0 = time.perf_counter()
                sess.run(None, {name: x})
                times[k].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _students(setup: Setup, runs: list[dict[str, Any]]) -> None:
    """List every final student (in `benchmarks/data/students/`) in its manifest."""
    manifest = []
    for r in runs:
        stem = f"{r['method']}_s{r['seed']}"
        manifest.append({
            "method": r["method"], "seed": r["seed"], "onnx": f"{stem}.onnx",
            "safetensors": f"{stem}.safetensors", "params": r["params"], "flops": r["flops"],
            "validation_accuracy": r["accuracy"], "normalization": r["normalization"],
            "normalization_folded_into_onnx": True, "input_shape": r["input_shape"],
            "input_range": [0.0, 1.0], "trained_on": r.get("device", "cpu"),
            "budget": r.get("budget"),
        })  # fmt: skip
    _write_json({"dataset": setup.dataset, "students": manifest},
                setup.final_dir / "manifest.json")  # fmt: skip


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, r in summary["methods"].items():
        ax.scatter([r["params"]] * len(r["accuracy"]), [100 * a for a in r["accuracy"]], label=m)
    if summary.get("budget"):
        ax.axvline(summary["budget"]["params"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    budget = summary.get("budget")
    ax.set_title(f"students within {budget['times_smaller']:g}x fewer params, same KD training"
                 if budget else "students at equal size, same KD training")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=sorted(setups()), default="cifar10")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: "
                        "benchmarks/cache/compare)")  # fmt: skip
    parser.add_argument("--search-seed", type=int, default=0, help="another search seed of the "
                        "setup: its search only, as setup <name>_seed<N>")  # fmt: skip
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("search", help="run or resume searches through the service")
    p.add_argument("--strategy", choices=("esnac", "random"), action="append", required=True)
    p = sub.add_parser("train", help="the final training of the students (cached)")
    p.add_argument("--method", choices=ALL_METHODS, action="append")
    p.add_argument("--seed", type=int, action="append")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda; float32 either way")
    sub.add_parser("report", help="aggregate the finished trainings")
    sub.add_parser("all", help="every stage in order")
    args = parser.parse_args(argv)
    setup = with_search_seed(setups()[args.setup], args.search_seed)
    if args.cache is not None:
        setup = replace(setup, cache=args.cache)
    torch.set_num_threads(args.threads)
    if args.stage in ("search", "all"):
        strategies = (args.strategy if args.stage == "search"
                      else [m for m in ("esnac", "random") if m in setup.methods])  # fmt: skip
        for strategy, state in search(setup, strategies).items():
            best = state["best"]
            print(f"{strategy}: best trial {best['number']}, {best['params']:,} params, "
                  f"accuracy {best['accuracy']:.4f}, reward {best['reward']:.4f}")  # fmt: skip
    if args.stage in ("train", "all"):
        methods = getattr(args, "method", None) or list(setup.methods)
        seeds = getattr(args, "seed", None) or list(setup.seeds)
        for seed in seeds:
            for method in methods:
                train(setup, method, seed, getattr(args, "device", "cpu"))
    if args.stage in ("report", "all"):
        report(setup)


if __name__ == "__main__":
    main()
