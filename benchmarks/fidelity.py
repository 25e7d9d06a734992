"""Which cheap score predicts a student's final accuracy? The fidelity study of issue 31.

Students: resnet20 students of the CIFAR-10 teacher (`benchmarks/data/teachers/cifar10_resnet20`,
87.56 %) in three size bands -- about 2.5x, 5x and 10x fewer parameters (+-10 %) -- each band
holding the uniform shrink (one ratio for every group), random actions of the space drawn with
the paper's sampler, and members of the v2 pool (`cifar10_resnet20_pool_v2.json`) near that size.

Ground truth ("truth"): the comparison's final recipe -- KD 10 epochs on the 45k training images,
Adam 1e-3, crop + flip, importance inheritance -- which is also the product's default search
training. A second training seed on some students gives the noise ceiling.

Proxies ("proxy"), each a cheap score of the same student:

    params        no training: the parameter count
    zeroshot      no training: accuracy after recomputing BN statistics on 2,000 training images
    kd_2x5k       today's benchmark proxy: KD 2 epochs on the first 5,000 images, no augmentation
    kd_2x5k_bn    the same after BN recalibration on 2,000 images
    kd_1x10k      the same number of images seen, spread over 10,000 distinct images (EcoNAS)
    kd_1x45k      one epoch on all 45,000 images, no augmentation

each with importance inheritance, and those that depend on it also with the paper's first-k
("..._first").

Honest splits: the 5,000 validation images are split once (a fixed permutation) into a half that
chooses -- every proxy's score and the ground truth's best epoch -- and a half that reports, on
which the ground truth's accuracy is measured. Judged within each band (Spearman and Kendall of
proxy score against final accuracy, bootstrap 95 % intervals), and over all students against the
final f(x) = C(2 - C) A.

Stages (each result is one file under `benchmarks/data/fidelity/`, so every stage resumes where
it stopped; run two one-thread shards at once):

    python benchmarks/fidelity.py students                       # the student list (seconds)
    python benchmarks/fidelity.py proxy --shard 0 --shards 2     # ~1 min a student and proxy
    python benchmarks/fidelity.py truth --shard 0 --shards 2     # ~30-70 min a student (1 thread)
    python benchmarks/fidelity.py truth --seed 1 --limit 8       # the noise ceiling
    python benchmarks/fidelity.py report                         # results/fidelity.{json,png}

A ground-truth training also checkpoints after every epoch (`data/fidelity/checkpoints/`, deleted
when its result is written), so a stopped run resumes mid-student; commit that directory when a
session ends during a training and the next machine carries on from it.

`--device cuda` trains on a GPU with the same float32 recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "fidelity"
CACHE = ROOT / "cache" / "fidelity"
CIFAR_NPZ = Path(os.environ.get("ESNAC_CIFAR_NPZ")
                 or ROOT.parent.parent / "shared" / "data" / "cifar10" / "train.npz")  # fmt: skip
TEACHER = ROOT / "data" / "teachers" / "cifar10_resnet20.safetensors"
POOL = ROOT / "data" / "cifar10_resnet20_pool_v2.json"
BANDS = {"2.5x": 2.5, "5x": 5.0, "10x": 10.0}
BAND_TOLERANCE = 0.10
PER_BAND = {"uniform": 1, "random": 5, "pool": 5}
VAL_SPLIT_SEED = 31  # the one permutation of the 5,000 validation images into choose / report
RECAL_IMAGES = 2000

#: The ground truth's recipe (compare.py's final training, importance inheritance).
TRUTH = {"epochs": 10, "batch_size": 128, "lr": 1e-3, "augment": True}
#: Proxies that train: search-training settings. Those not in `NO_FIRST` also run with first-k.
PROXIES: dict[str, dict[str, Any]] = {
    "kd_2x5k": {"epochs": 2, "max_train_samples": 5000, "augment": False,
                "cache_teacher_logits": True},
    "kd_2x5k_bn": {"epochs": 2, "max_train_samples": 5000, "augment": False,
                   "cache_teacher_logits": True, "bn_recalibration": RECAL_IMAGES},
    "kd_1x10k": {"epochs": 1, "max_train_samples": 10000, "augment": False,
                 "cache_teacher_logits": True},
    "kd_1x45k": {"epochs": 1, "augment": False, "cache_teacher_logits": True},
}  # fmt: skip
NO_FIRST = {"kd_2x5k_bn", "kd_1x45k"}
#: Every proxy name, cheapest first (the order in which a shard runs them).
PROXY_NAMES = ["params", "zeroshot", "zeroshot_first", "kd_2x5k", "kd_2x5k_first", "kd_2x5k_bn",
               "kd_1x10k", "kd_1x10k_first", "kd_1x45k"]  # fmt: skip


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


# ------------------------------------------------------------------------------- the setting
class Study:
    """The teacher, its spaces (both inheritance rules), the data with its two validation
    halves, and the cached teacher logits -- loaded once per process."""

    def __init__(self, device: str = "cpu") -> None:
        from embedding import CompressionSpace
        from workers import zoo
        from workers.data import ImageTensors, load_dataset

        self.device = device
        self.teacher = zoo.load_teacher("resnet20", 10, TEACHER.read_bytes()).eval()
        card = json.loads(TEACHER.with_suffix(".json").read_text())
        self.teacher_accuracy = float(card["accuracy"])
        self.spaces = {
            rule: CompressionSpace.for_teacher(self.teacher, inheritance=rule)
            for rule in ("importance", "first")
        }
        self.space = self.spaces["importance"]
        splits = load_dataset(f"npz:{CIFAR_NPZ}?val=0.1", None, False, seed=0)
        perm = torch.from_numpy(np.random.default_rng(VAL_SPLIT_SEED).permutation(len(splits.val)))
        half = len(perm) // 2
        val = splits.val

        def part(idx: torch.Tensor) -> ImageTensors:
            return ImageTensors(val.images[idx], val.labels[idx], val.mean, val.std)

        self.choose, self.report = part(perm[:half]), part(perm[half:])
        self.splits = replace(splits, val=self.choose)  # every best epoch is chosen here
        self._logits: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        """The teacher's logits on the 45k un-augmented training images (cached on disk)."""
        if self._logits is None:
            from safetensors.torch import load_file, save_file

            from workers.train import teacher_logits

            path = CACHE / "teacher_logits.safetensors"
            if path.exists():
                self._logits = load_file(path)["logits"]
            else:
                self._logits = teacher_logits(self.teacher, self.splits.train, device=self.device)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file({"logits": self._logits.contiguous()}, path)
        return self._logits

    def student(self, entry: dict[str, Any], rule: str = "importance") -> torch.nn.Module:
        from embedding import Action

        return self.spaces[rule].materialize(Action.from_json(entry["action"]))


# ---------------------------------------------------------------------------------- students
def _uniform_action(space: Any, target: float) -> Any:
    """One shrink ratio for every group, found by bisection, closest to `target` params."""
    from embedding import Action

    n = len(space.shrinkable)

    def action(r: float) -> Any:
        return Action((), tuple(r for _ in range(n)), (), space.fingerprint)

    lo, hi = 0.0, 0.999
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if space.num_params(action(mid)) > target else (lo, mid)
    return min((action(lo), action(hi)), key=lambda a: abs(space.num_params(a) - target))


def make_students(study: Study) -> list[dict[str, Any]]:
    """The study's students, deterministic: per band the uniform shrink, the first random
    actions of the paper's sampler inside the band (seeded apart from the pool's), and the
    first v2-pool members inside it."""
    space = study.space
    t_params = space.teacher_params
    pool = json.loads(POOL.read_text())["entries"]
    rng = np.random.default_rng(VAL_SPLIT_SEED)  # not the pool's sampling seed (0)
    pool_keys = {e["key"] for e in pool}
    drawn = [a for a in (space.sample(rng) for _ in range(20000)) if a.key not in pool_keys]
    sizes = [space.num_params(a) for a in drawn]
    out: list[dict[str, Any]] = []
    for band, factor in BANDS.items():
        target = t_params / factor

        def inside(params: float, target: float = target) -> bool:
            return abs(params / target - 1) <= BAND_TOLERANCE

        picks: list[tuple[str, Any, dict[str, Any]]] = [
            ("uniform", _uniform_action(space, target), {})
        ]
        random_in = [a for a, p in zip(drawn, sizes, strict=True) if inside(p)]
        picks += [("random", a, {}) for a in random_in[: PER_BAND["random"]]]
        from embedding import Action

        pool_in = [e for e in pool if inside(e["params"])][: PER_BAND["pool"]]
        picks += [("pool", Action.from_json(e["action"]), {"pool_index": e["index"]})
                  for e in pool_in]  # fmt: skip
        counts: dict[str, int] = {}
        for kind, action, extra in picks:
            k = counts[kind] = counts.get(kind, -1) + 1
            out.append({
                "id": f"{band}_{kind}{k}", "band": band, "kind": kind,
                "params": space.num_params(action), "action": action.to_dict(), **extra,
            })  # fmt: skip
    return out


def students() -> list[dict[str, Any]]:
    found = _read_json(DATA / "students.json")
    if found is None:
        raise SystemExit("make the student list first: python benchmarks/fidelity.py students")
    return found["students"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ measurements
def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    out.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
               load_average=[round(x, 2) for x in os.getloadavg()],
               threads=torch.get_num_threads())  # fmt: skip
    return out


def run_proxy(study: Study, entry: dict[str, Any], name: str) -> dict[str, Any]:
    """One proxy score of one student (on the choosing half of the validation images)."""
    from workers.spec import SearchTraining
    from workers.train import distill, evaluate, recalibrate_bn, seed_everything

    rule = "first" if name.endswith("_first") else "importance"
    base = name.removesuffix("_first")

    def measure() -> dict[str, Any]:
        if base == "params":
            return {"score": float(entry["params"])}
        seed_everything(0)
        student = study.student(entry, rule)
        if base == "zeroshot":
            student.to(study.device)
            recalibrate_bn(student, study.splits.train, RECAL_IMAGES, amp=False)
            return {"score": evaluate(student, study.choose, amp=False)}
        settings = SearchTraining(**PROXIES[base])
        logits = study.logits() if settings.cache_teacher_logits else None
        res = distill(student, study.teacher, study.splits, settings, seed=0,
                      device=study.device, teacher_logits=logits, amp=False)  # fmt: skip
        return {"score": res.best_accuracy, "history": res.history}

    return {"student": entry["id"], "proxy": name, "inheritance": rule, **_timed(measure)}


def run_truth(study: Study, entry: dict[str, Any], seed: int) -> dict[str, Any]:
    """The final training of one student: best epoch on the choosing half, accuracy on the
    reporting half."""
    from embedding.reward import reward
    from workers.spec import SearchTraining
    from workers.train import distill, evaluate, seed_everything

    # per-epoch checkpoint: a stopped run (a session's end) resumes the student where it was;
    # commit the directory when stopping mid-training to carry it to another machine
    ckpt = DATA / "checkpoints" / f"{entry['id']}_s{seed}.pt"
    resumed = ckpt.exists()

    def measure() -> dict[str, Any]:
        seed_everything(seed)
        student = study.student(entry)
        res = distill(student, study.teacher, study.splits, SearchTraining(**TRUTH), seed=seed,
                      device=study.device, amp=False, checkpoint=ckpt)  # fmt: skip
        acc = evaluate(student, study.report, amp=False)
        return {
            "accuracy": acc, "choose_accuracy": res.best_accuracy, "best_epoch": res.best_epoch,
            "history_choose": res.history, "params": entry["params"],
            # all epochs' training steps; `seconds` / `cpu_seconds` are this process's only
            "train_seconds": res.seconds, "resumed": resumed,
            "reward": reward(acc, study.teacher_accuracy, entry["params"],
                             study.space.teacher_params),
        }  # fmt: skip

    out = {"student": entry["id"], "seed": seed, "training": TRUTH, "device": study.device}
    return {**out, **_timed(measure)}


def _mine(items: list[Any], shard: int, shards: int) -> list[Any]:
    return [x for i, x in enumerate(items) if i % shards == shard]


def stage_proxy(args: argparse.Namespace) -> None:
    study = Study(args.device)
    names = args.proxy or PROXY_NAMES
    # cheapest proxies first; a proxy and its first-k twin student by student, so the
    # inheritance comparison is paired at every point of a partial run
    tiers = {n: PROXY_NAMES.index(n.removesuffix("_first")) for n in names}
    todo = sorted(((p, s) for p in names for s in students()),
                  key=lambda ps: (tiers[ps[0]], ps[1]["id"], ps[0]))  # fmt: skip
    for name, entry in _mine(todo, args.shard, args.shards):
        path = DATA / "proxy" / name / f"{entry['id']}.json"
        if path.exists():
            continue
        out = run_proxy(study, entry, name)
        _write_json(out, path)
        print(f"{name:15s} {entry['id']:14s} {out['score']:.4f}  {out['seconds']:.0f} s",
              flush=True)  # fmt: skip


def stage_truth(args: argparse.Namespace) -> None:
    study = Study(args.device)
    kinds = list(PER_BAND)
    # interleaved -- the uniform shrinks, then the first random and pool student of each band,
    # ... -- so that a partial run (or `--limit`, the noise ceiling's) spans every band and kind
    todo = sorted(students(), key=lambda s: (int(s["id"][-1]), kinds.index(s["kind"]),
                                             list(BANDS).index(s["band"])))  # fmt: skip
    if args.only:
        todo = [s for s in todo if s["id"] in set(args.only)]
    if args.limit:
        todo = todo[: args.limit]
    for entry in _mine(todo, args.shard, args.shards):
        path = DATA / "truth" / f"{entry['id']}_s{args.seed}.json"
        if path.exists():
            continue
        out = run_truth(study, entry, args.seed)
        _write_json(out, path)
        (DATA / "checkpoints" / f"{entry['id']}_s{args.seed}.pt").unlink(missing_ok=True)
        print(f"truth {entry['id']:14s} seed {args.seed}: {out['accuracy']:.4f} "
              f"({out['seconds']:.0f} s)", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------ report
def _corr(x: list[float], y: list[float], rng: np.random.Generator, n_boot: int = 2000
          ) -> dict[str, Any]:  # fmt: skip
    """Spearman and Kendall of x against y, with bootstrap 95 % intervals (resampling pairs)."""
    from scipy import stats

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"n": n, "spearman": None, "kendall": None}
    out: dict[str, Any] = {"n": n}
    for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        value = float(fn(xa, ya)[0])
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            if np.ptp(xa[idx]) == 0 or np.ptp(ya[idx]) == 0:
                continue
            boots.append(float(fn(xa[idx], ya[idx])[0]))
        lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
        out[name] = value
        out[f"{name}_ci95"] = [float(lo), float(hi)]
    return out


def report(args: argparse.Namespace) -> dict[str, Any]:
    entries = {s["id"]: s for s in students()}
    truth: dict[int, dict[str, dict[str, Any]]] = {}
    for p in sorted((DATA / "truth").glob("*.json")):
        r = json.loads(p.read_text())
        truth.setdefault(r["seed"], {})[r["student"]] = r
    final = truth.get(0, {})
    proxies: dict[str, dict[str, dict[str, Any]]] = {}
    for name in PROXY_NAMES:
        proxies[name] = {p.stem: json.loads(p.read_text())
                         for p in sorted((DATA / "proxy" / name).glob("*.json"))}  # fmt: skip
    rng = np.random.default_rng(0)
    rows: dict[str, Any] = {}
    for name, scores in proxies.items():
        row: dict[str, Any] = {"students_scored": len(scores)}
        if scores:
            cpu = [r["cpu_seconds"] for r in scores.values()]
            row["cpu_seconds_median"] = float(np.median(cpu))
        for band in [*BANDS, "all"]:
            ids = [i for i in final if i in scores and band in ("all", entries[i]["band"])]
            target = "reward" if band == "all" else "accuracy"
            row[band] = _corr([scores[i]["score"] for i in ids], [final[i][target] for i in ids],
                              rng)  # fmt: skip
        rows[name] = row
    # the noise ceiling: seed 0 against seed 1 of the same students
    second = truth.get(1, {})
    both = [i for i in second if i in final]
    ceiling = {}
    for band in [*BANDS, "all"]:
        ids = [i for i in both if band in ("all", entries[i]["band"])]
        ceiling[band] = _corr([final[i]["accuracy"] for i in ids],
                              [second[i]["accuracy"] for i in ids], rng)  # fmt: skip
    gaps = [abs(final[i]["accuracy"] - second[i]["accuracy"]) for i in both]
    summary = {
        "students": len(entries), "ground_truth": len(final), "second_seed": len(both),
        "truth_recipe": TRUTH, "proxies": rows, "noise_ceiling": ceiling,
        "seed_gap_mean": float(np.mean(gaps)) if gaps else None,
        "inheritance_effect": _inheritance_effect(proxies),
        "splits": {"validation": "5,000 images, permutation seed 31: first 2,500 choose (proxy "
                   "scores, best epochs), last 2,500 report (ground-truth accuracy)"},
        "missing_truth": sorted(set(entries) - set(final)),
    }  # fmt: skip
    _write_json(summary, ROOT / "results" / "fidelity.json")
    _plot(entries, final, proxies, ROOT / "results" / "fidelity.png")
    for name, row in rows.items():
        cells = []
        for b in [*BANDS, "all"]:
            rho = row[b].get("spearman")
            cells.append(f"{b}: " + ("-" if rho is None else f"{rho:+.2f}"))
        print(f"{name:15s} n={row['students_scored']:3d}  " + "  ".join(cells))
    return summary


def _inheritance_effect(proxies: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per proxy with both rules: mean score with importance minus first-k, paired by student."""
    out: dict[str, Any] = {}
    for name in PROXY_NAMES:
        if not name.endswith("_first"):
            continue
        imp, first = proxies[name.removesuffix("_first")], proxies[name]
        common = sorted(set(imp) & set(first))
        if not common:
            continue
        band_of = {s["id"]: s["band"] for s in students()}
        out[name.removesuffix("_first")] = {
            **_paired(imp, first, common),
            "by_band": {b: _paired(imp, first, [i for i in common if band_of[i] == b])
                        for b in BANDS},
            "by_kind": {k: _paired(imp, first, [i for i in common if k in i]) for k in PER_BAND},
        }  # fmt: skip
    return out


def _paired(imp: dict[str, Any], first: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """Importance minus first-k over the students `ids`: mean, standard error, how many gain."""
    d = np.array([imp[i]["score"] - first[i]["score"] for i in ids])
    return {
        "n": len(ids), "importance_minus_first_mean": float(d.mean()) if len(d) else None,
        "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
        "importance_better": int((d > 0).sum()),
    }  # fmt: skip


def _plot(entries: dict[str, Any], final: dict[str, Any], proxies: dict[str, Any], path: Path
          ) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PROXY_NAMES if n != "params" and proxies[n]]
    if not names or not final:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for band in BANDS:
            ids = [i for i in final if i in proxies[name] and entries[i]["band"] == band]
            ax.scatter([100 * proxies[name][i]["score"] for i in ids],
                       [100 * final[i]["accuracy"] for i in ids], s=12, label=band)  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("proxy score (%)", fontsize=8)
    axes[0][0].set_ylabel("final accuracy (%)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda; float32 either way")
    sub = parser.add_subparsers(dest="stage", required=True)
    sub.add_parser("students", help="write the student list")
    for name in ("proxy", "truth"):
        p = sub.add_parser(name)
        p.add_argument("--shard", type=int, default=0)
        p.add_argument("--shards", type=int, default=1)
    sub.choices["proxy"].add_argument("--proxy", action="append", choices=PROXY_NAMES)
    sub.choices["truth"].add_argument("--seed", type=int, default=0)
    sub.choices["truth"].add_argument("--limit", type=int, default=0)
    sub.choices["truth"].add_argument("--only", action="append")
    sub.add_parser("report", help="correlations, the noise ceiling, the plot")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stage == "students":
        found = make_students(Study(args.device))
        _write_json({"teacher": str(TEACHER.relative_to(ROOT.parent)), "bands": BANDS,
                     "band_tolerance": BAND_TOLERANCE, "students": found},
                    DATA / "students.json")  # fmt: skip
        for s in found:
            print(f"{s['id']:14s} {s['params']:>8,}")
    elif args.stage == "proxy":
        stage_proxy(args)
    elif args.stage == "truth":
        stage_truth(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
