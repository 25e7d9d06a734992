"""Search efficiency on real CIFAR-10: does the learned embedding find better students sooner?

Three stages, each resumable, run by hand (hours on a 2-core CPU; see benchmarks/README.md):

    python benchmarks/search_efficiency.py teacher   # resnet20 on the 45k/5k split
    python benchmarks/search_efficiency.py pool      # >= 200 actions evaluated once each
    python benchmarks/search_efficiency.py simulate  # ESNAC vs untrained encoder vs random

The teacher's weights are cached outside git (benchmarks/cache/); the pool table is committed
(benchmarks/data/cifar10_resnet20_pool.json) and grows one evaluation at a time, so an interrupted
run continues where it stopped. The simulation replays searches on the pool: a searcher's
proposals are restricted to the pool's not-yet-evaluated members and the "evaluation" is a table
look-up, as in NAS-Bench-style studies.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
DEFAULT_NPZ = ROOT.parent.parent / "shared" / "data" / "cifar10" / "train.npz"
CACHE = ROOT / "cache"
TEACHER_FILE = CACHE / "cifar10_resnet20.safetensors"
TEACHER_META = CACHE / "cifar10_resnet20.json"
POOL_FILE = ROOT / "data" / "cifar10_resnet20_pool.json"
# The strong teacher (87.56 %, issue 16), which the v2 pool of issue 17 is built on.
STRONG_TEACHER = ROOT / "data" / "teachers" / "cifar10_resnet20.safetensors"
RESULTS = ROOT / "results"


def _dataset(npz: Path) -> str:
    # 45,000 / 5,000 train/validation split with the loader's fixed seed.
    return f"npz:{npz}?val=0.1"


# ----------------------------------------------------------------------------------- teacher
def cmd_teacher(args: argparse.Namespace) -> None:
    from workers.spec import TeacherTraining
    from workers.train import train_teacher

    if TEACHER_FILE.exists() and not args.force:
        print(TEACHER_META.read_text())
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = train_teacher(
        "resnet20",
        10,
        _dataset(args.npz),
        TeacherTraining(epochs=args.epochs, lr=0.1, step_every=max(1, args.epochs // 3)),
        device="cpu",
        time_budget_s=args.budget_minutes * 60 if args.budget_minutes else None,
    )
    meta = dict(result.metadata)
    meta.update(
        {
            "accuracy": result.accuracy,
            "max_epochs": args.epochs,
            "budget_minutes": args.budget_minutes,
            "seconds": time.perf_counter() - t0,
            "command": " ".join(sys.argv),
            "dataset": "cifar10 train.npz, 45k/5k fixed-seed split",
        }
    )
    TEACHER_FILE.write_bytes(result.weights)
    TEACHER_META.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


def _teacher(path: Path | None = None) -> tuple[bytes, dict[str, Any]]:
    """The teacher's safetensors and its card (the `.json` beside it; needs `accuracy`).
    Default: the cached 22-minute teacher of the first pool."""
    weights = path or TEACHER_FILE
    if not weights.exists():
        if path is None:
            raise SystemExit(
                "no cached teacher: run `python benchmarks/search_efficiency.py teacher`"
            )
        raise SystemExit(f"no teacher at {path}")
    return weights.read_bytes(), json.loads(weights.with_suffix(".json").read_text())


# -------------------------------------------------------------------------------------- pool
def _load_pool(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _append_entry(path: Path, settings: dict[str, Any], entry: dict[str, Any]) -> int:
    """Add one evaluation to the table under an exclusive lock (several shards may write);
    returns the number of entries now stored."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pool = _load_pool(path) or {"settings": settings, "entries": []}
        entries = pool["entries"]
        if entry["key"] not in {e["key"] for e in entries}:
            entries.append(entry)
            entries.sort(key=lambda e: e["index"])
        _write_json(pool, path)
        return len(entries)


def cmd_pool(args: argparse.Namespace) -> None:
    from embedding import CompressionSpace
    from workers import zoo
    from workers.export import load_state_safetensors
    from workers.spec import SearchTraining, TrialSpec
    from workers.trial import JobContext, prepare_job, run_trial

    torch.set_num_threads(args.threads)
    weights, meta = _teacher(args.teacher)
    arch = meta.get("arch", "resnet20")
    teacher = zoo.build(arch, 10)
    load_state_safetensors(teacher, weights)
    space = CompressionSpace.for_teacher(teacher)
    settings = {
        "teacher": arch,
        "teacher_accuracy": meta["accuracy"],
        "dataset": "cifar10 train.npz, 45k/5k split; KD on the first "
        f"{args.train_samples} training images",
        "training": {
            "epochs": args.epochs,
            "max_train_samples": args.train_samples,
            "batch_size": 128,
            "lr": 1e-3,
            "weight_decay": 5e-4,
            "augment": args.augment,
            # without augmentation the teacher's logits are computed once and reused (1.6x)
            "cache_teacher_logits": not args.augment,
        },
        "sampling_seed": args.seed,
        "space_fingerprint": space.fingerprint,
    }
    pool = _load_pool(args.pool)
    if pool and pool.get("settings") != settings:
        raise SystemExit(
            f"{args.pool} was made with other settings:\n{json.dumps(pool.get('settings'))}\n"
            "delete it or run with the same settings"
        )
    if not 0 <= args.shard < args.shards:
        raise SystemExit(f"--shard must be in [0, {args.shards})")
    rng = np.random.default_rng(args.seed)
    actions = []
    seen: set[str] = set()
    while len(actions) < args.size:  # the same deterministic sequence on every resume
        a = space.sample(rng)
        if a.key not in seen:
            seen.add(a.key)
            actions.append(a)
    done = {e["key"] for e in pool.get("entries", [])}
    ctx = JobContext(
        job_key="pool",
        teacher_arch=arch,
        num_classes=10,
        teacher_weights=weights,
        teacher_accuracy=float(meta["accuracy"]),
        dataset=_dataset(args.npz),
    )
    state = prepare_job(ctx, device=args.device)
    training = SearchTraining(**settings["training"])  # type: ignore[arg-type]
    deadline = time.monotonic() + args.budget_minutes * 60
    for k, action in enumerate(actions):
        if action.key in done or k % args.shards != args.shard:
            continue
        if time.monotonic() > deadline:
            print(f"time budget reached at action {k}/{args.size}; rerun to resume")
            break
        t0 = time.perf_counter()
        spec = TrialSpec(
            trial_id=k, action=action.to_dict(), seed=k, training=training, return_weights=False
        )
        res = run_trial(ctx, spec, device=args.device, cache=state)
        stored = _append_entry(
            args.pool,
            settings,
            {
                "index": k,
                "key": action.key,
                "action": action.to_dict(),
                "params": res.params,
                "flops": res.flops,
                "accuracy": res.accuracy,
                "compression": res.compression,
                "reward": res.reward,
                "seconds": time.perf_counter() - t0,
            },
        )
        print(
            f"[{stored}/{args.size}] #{k} acc={res.accuracy:.4f} C={res.compression:.3f} "
            f"reward={res.reward:.4f} ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )


# --------------------------------------------------------------------------------- simulate
def _best_so_far(rewards: list[float]) -> list[float]:
    out, best = [], -math.inf
    for r in rewards:
        best = max(best, r)
        out.append(best)
    return out


#: The searchers a replay can compare: ESNAC variants (options over the product's defaults and
#: `--kernels` / `--subset`), N2N and random search.
VARIANTS: dict[str, dict[str, Any]] = {
    "esnac": {},  # the product's defaults
    "esnac_paper": {"preset": "paper"},
    "esnac_untrained": {"train_encoder": False},
    # the variants of a *trained* LSTM name it: the default keeps the LSTM untrained
    "esnac_warm": {"train_encoder": True, "warm_start": True},
    "esnac_pretrain": {"train_encoder": True, "pretrain": True},
    # the LSTM trains once a kernel expects 25 results
    "esnac_threshold": {"train_encoder": True, "train_after": 25},
    "esnac_gamma1": {"train_encoder": True, "subset": 1.0},
}
#: Transfer (issue 18): an encoder learned by an ESNAC search on another pool (`encoders`
#: stage), mapped to this pool's row width, kept fixed (the paper's transfer) or trained from.
TRANSFER = {"transfer_fixed": False, "transfer_trained": True}
METHODS = (*VARIANTS, *TRANSFER, "n2n", "random")


def _esnac_options(method: str, esnac_kwargs: dict[str, Any]) -> dict[str, Any]:
    from embedding.options import PRESETS

    variant = dict(VARIANTS[method])
    preset = variant.pop("preset", None)
    if preset is not None:  # the preset is complete: --kernels / --subset do not apply
        return {**PRESETS[preset], **variant}
    return {**esnac_kwargs, **variant}


def simulate_one(*args: Any, **kwargs: Any) -> list[float]:
    """Run one search on the pool (`_replay`'s arguments); the reward of each evaluation."""
    return _replay(*args, **kwargs)[1]


def _replay(
    method: str,
    pool: dict[str, Any],
    space: Any,
    seed: int,
    budget: int,
    per_step: int,
    esnac_kwargs: dict[str, Any],
    encoders: list[dict[str, torch.Tensor]] | None = None,
) -> tuple[Any, list[float]]:
    """Run one search on the pool: the searcher (its learned encoder, for `encoders`) and the
    reward of each evaluation in order. A transfer method starts from
    `encoders[seed % len(encoders)]`."""
    from embedding import Action, RandomSearcher
    from embedding.n2n import N2NSearcher
    from embedding.search import EsnacSearcher

    by_key = {e["key"]: e for e in pool["entries"]}
    members = [Action.from_json(e["action"]) for e in pool["entries"]]
    # Every sampled action is drawn from the pool's members not yet observed or pending: the
    # acquisition ranks only tabulated architectures (and random search draws from the same
    # pool, which itself follows the paper's sampling distributions). Each `suggest(per_step)`
    # is the service's step: `kernels` GPs fitted, `per_step` candidates.
    searcher: Any
    if method == "random":
        searcher = RandomSearcher(space, seed=seed, candidate_pool=members)
    elif method == "n2n":  # one policy update per step; picks members by policy probability
        searcher = N2NSearcher(space, seed=seed, batch=per_step, candidate_pool=members)
    elif method in TRANSFER:
        from embedding.encoder import adapt_encoder_state

        if not encoders:
            raise SystemExit(f"{method} needs --encoders (a directory the `encoders` stage made)")
        init = adapt_encoder_state(encoders[seed % len(encoders)], space.row_size)
        opts = {**esnac_kwargs, "train_encoder": TRANSFER[method]}
        searcher = EsnacSearcher(
            space, seed=seed, candidate_pool=members, encoder_init=init, **opts
        )
    else:
        opts = _esnac_options(method, esnac_kwargs)
        searcher = EsnacSearcher(space, seed=seed, candidate_pool=members, **opts)
    rewards: list[float] = []
    while len(rewards) < budget:
        picks = searcher.suggest(min(per_step, budget - len(rewards)))
        got = [by_key[a.key]["reward"] for a in picks]
        searcher.observe(picks, got)
        rewards.extend(got)
    return searcher, rewards


def _pool_space(pool: dict[str, Any]) -> Any:
    """The compression space of the pool's teacher (its architecture, from the settings)."""
    from embedding import CompressionSpace
    from workers import zoo

    arch = pool["settings"].get("teacher", "resnet20")
    space = CompressionSpace.for_teacher(zoo.build(arch, 10))
    if space.fingerprint != pool["settings"]["space_fingerprint"]:
        raise SystemExit(f"the pool was made for another {arch} graph")
    return space


def _load_encoders(directory: Path | None) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """The encoders the `encoders` stage stored (as the service stores a job's), in seed order,
    with a short digest of each for the run's settings."""
    import hashlib

    from service.searchers import encoder_from_bytes

    if directory is None:
        return [], []
    files = sorted(directory.glob("seed*.safetensors"), key=lambda f: int(f.stem[4:]))
    if not files:
        raise SystemExit(f"no seed*.safetensors in {directory}: run the `encoders` stage first")
    blobs = [f.read_bytes() for f in files]
    digests = [
        f"{f.name}:{hashlib.sha256(b).hexdigest()[:12]}"
        for f, b in zip(files, blobs, strict=True)
    ]
    return [encoder_from_bytes(b) for b in blobs], digests


def cmd_encoders(args: argparse.Namespace) -> None:
    """Learn encoders to transfer: one ESNAC search per seed on a pool (`--method`, default the
    paper preset: the LSTM trained at every step), each search's last learned encoder (its best
    kernel's, what the service stores for a job) written as `seed<S>.safetensors`; resumable."""
    from service.searchers import encoder_bytes

    torch.set_num_threads(args.threads)
    pool = _load_pool(args.pool)
    if not pool.get("entries"):
        raise SystemExit("the pool is empty: run the `pool` stage first")
    space = _pool_space(pool)
    esnac_kwargs = {"kernels": args.kernels, "subset": args.subset}
    options = _esnac_options(args.method, esnac_kwargs)
    if not (options.get("train_encoder") or options.get("pretrain")):
        raise SystemExit(f"{args.method} does not train its encoder: nothing to transfer")
    card = {
        "pool": str(args.pool.name),
        "teacher": pool["settings"].get("teacher", "resnet20"),
        "method": args.method,
        "options": options,
        "budget": args.budget,
        "per_step": args.per_step,
    }
    card_file = args.out_dir / "encoders.json"
    if card_file.exists():  # resume: only with the settings the stored encoders were made with
        old = {k: v for k, v in json.loads(card_file.read_text()).items() if k != "seeds"}
        if old != card:
            raise SystemExit(f"{args.out_dir} holds encoders made with {old}; use another dir")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    card_file.write_text(json.dumps({**card, "seeds": args.seeds}, indent=1) + "\n")
    for seed in range(args.seeds):
        path = args.out_dir / f"seed{seed}.safetensors"
        if path.exists():
            continue
        searcher, _ = _replay(args.method, pool, space, seed, args.budget, args.per_step,
                              esnac_kwargs)  # fmt: skip
        blob = encoder_bytes(searcher)  # exactly what the service stores for a job
        if blob is None:
            raise SystemExit(f"{args.method} learned no encoder in {args.budget} evaluations")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        print(f"seed {seed}: {args.method} encoder -> {path}", flush=True)


def cmd_simulate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pool = _load_pool(args.pool)
    if not pool.get("entries"):
        raise SystemExit("the pool is empty: run the `pool` stage first")
    space = _pool_space(pool)
    encoders, digests = _load_encoders(args.encoders)
    methods = list(args.methods)
    esnac_kwargs = {"kernels": args.kernels, "subset": args.subset}
    shard, shards = args.shard, args.shards
    if not 0 <= shard < shards:
        raise SystemExit(f"--shard must be in [0, {shards})")
    args.out.mkdir(parents=True, exist_ok=True)
    part_file = args.out / f"{args.name}.part{shard}of{shards}.json"
    run_settings = {
        "budget": args.budget,
        "per_step": args.per_step,
        "esnac": esnac_kwargs,
        "pool_keys": sorted(e["key"] for e in pool["entries"]),
    }
    if digests:  # (absent without --encoders, so that earlier runs' part files still match)
        run_settings["encoders"] = digests
    part: dict[str, Any] = {
        "settings": run_settings,
        "curves": {m: {} for m in methods},
        "seconds": {m: {} for m in methods},
    }
    if part_file.exists():  # resume: seeds this shard already replayed with these settings
        old = json.loads(part_file.read_text())
        if old.get("settings") == run_settings:
            part = old
            for key in ("curves", "seconds"):  # methods added since keep the others' runs
                for m in methods:
                    part[key].setdefault(m, {})
    for seed in range(shard, args.seeds, shards):
        for m in methods:
            if str(seed) in part["curves"][m]:
                continue
            t0 = time.perf_counter()
            rewards = simulate_one(
                m, pool, space, seed, args.budget, args.per_step, esnac_kwargs, encoders
            )
            part["seconds"][m][str(seed)] = time.perf_counter() - t0
            part["curves"][m][str(seed)] = _best_so_far(rewards)
            _write_json(part, part_file)
            print(f"seed {seed} {m}: best {max(rewards):.4f}", flush=True)
    parts = [args.out / f"{args.name}.part{i}of{shards}.json" for i in range(shards)]
    if not all(f.exists() for f in parts):
        print("other shards still running: the last one to finish writes the summary")
        return
    loaded = [json.loads(f.read_text()) for f in parts]
    loaded = [p for p in loaded if p["settings"] == run_settings]
    for m in methods:  # the methods asked for now must be complete; others join as they are
        missing = [s for s in range(args.seeds) if not any(str(s) in p["curves"].get(m, {})
                                                           for p in loaded)]  # fmt: skip
        if missing:
            print(f"seeds {missing} of {m} not replayed yet: summary not written")
            return
    summary = summarize(loaded, pool, esnac_kwargs)
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(summary, args.out / f"{args.name}.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "methods"}, indent=2))
    for m in summary["methods"]:
        print(m, {k: v for k, v in summary["methods"][m].items() if k.startswith("at_")})


def _mean_se(values: Any) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else 0.0
    return float(arr.mean()), se


def summarize(
    parts: list[dict[str, Any]], pool: dict[str, Any], esnac_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Every method and seed the shards' part files hold (replayed with the same settings),
    each method over its own seeds: a variant replayed on fewer seeds than the headline
    methods is reported with its own count and standard errors."""
    from embedding.options import EsnacOptions

    budget = parts[0]["settings"]["budget"]
    curves: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for part in parts:
        for m, by_seed in part["curves"].items():
            curves.setdefault(m, {}).update(by_seed)
            seconds.setdefault(m, {}).update(part["seconds"][m])
    order = [m for m in (*METHODS, *sorted(curves)) if curves.get(m)]
    methods = list(dict.fromkeys(order))
    # the product's default options (what method "esnac" runs) and the row that replayed them:
    # "esnac" itself, or the named variant whose options equal them (the study replays named
    # variants, so that its rows keep their meaning when the defaults change)
    default_opts = EsnacOptions.from_dict(esnac_kwargs).to_dict()
    options = {
        m: EsnacOptions.from_dict(_esnac_options(m, esnac_kwargs)).to_dict()
        for m in methods
        if m in VARIANTS
    }
    default = next((m for m in ("esnac", *options) if options.get(m) == default_opts), None)
    summary: dict[str, Any] = {
        "teacher": pool["settings"].get("teacher", "resnet20"),
        "pool_size": len(pool["entries"]),
        "pool_best_reward": max(e["reward"] for e in pool["entries"]),
        "budget": budget,
        "per_step": parts[0]["settings"]["per_step"],
        "seeds": max(len(curves[m]) for m in methods),
        "seeds_per_method": {m: len(curves[m]) for m in methods},
        "esnac": esnac_kwargs,
        "variants": {m: VARIANTS[m] for m in methods if m in VARIANTS},
        "product_default": {"method": default, "options": default_opts},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "methods": {},
    }
    marks = [k for k in (16, 32, 60, 100) if k <= budget]
    for m in methods:
        seeds = sorted(curves[m], key=int)
        arr = np.asarray([curves[m][s] for s in seeds])
        mean = arr.mean(axis=0)
        se = arr.std(axis=0, ddof=1) / math.sqrt(arr.shape[0]) if arr.shape[0] > 1 else 0 * mean
        summary["methods"][m] = {
            "seeds": len(seeds),
            **({"options": options[m]} if m in options else {}),
            "mean": mean.tolist(),
            "se": se.tolist(),
            "seconds_per_search": float(np.mean([seconds[m][s] for s in seeds])),
            **{f"at_{k}": [float(mean[k - 1]), float(se[k - 1])] for k in marks},
        }
    if "random" in methods:
        # evaluations each method needs to reach random search's mean best at 60 / at the budget
        rnd = summary["methods"]["random"]["mean"]
        ends = sorted({k for k in (60, budget) if k <= budget})
        summary["evals_to_random_best"] = {
            m: {
                str(k): next((i + 1 for i, v in enumerate(summary["methods"][m]["mean"])
                              if v >= rnd[k - 1]), None)  # fmt: skip
                for k in ends
            }
            for m in methods
        }
        if default is not None:
            summary["default_evals_to_random_best_at_budget"] = summary["evals_to_random_best"][
                default
            ][str(budget)]
    def lead(a: str, b: str) -> dict[str, Any]:
        """Method a's lead over b at each mark: the difference of the means with the standard
        error of the difference (independent runs: sqrt(se_a^2 + se_b^2)), and the same paired
        by seed over the seeds both have (a seed fixes the searchers' random streams, not a
        shared draw, so the unpaired figure is the one stated)."""
        out: dict[str, Any] = {}
        sa, sb = summary["methods"][a], summary["methods"][b]
        common = sorted(set(curves[a]) & set(curves[b]), key=int)
        for k in marks:
            diff = sa[f"at_{k}"][0] - sb[f"at_{k}"][0]
            se_diff = math.hypot(sa[f"at_{k}"][1], sb[f"at_{k}"][1])
            paired = [curves[a][s][k - 1] - curves[b][s][k - 1] for s in common]
            p_mean, p_se = _mean_se(paired) if paired else (math.nan, math.nan)
            out[f"at_{k}"] = {
                "diff": diff,
                "se_diff": se_diff,
                "z": diff / se_diff if se_diff > 1e-12 else None,  # (both converged)
                "paired_diff": p_mean,
                "paired_se": p_se,
                "paired_seeds": len(common),
            }
        return out

    if default is not None:  # the product default's lead over each other method
        summary["default_lead"] = {m: lead(default, m) for m in methods if m != default}
    # issue 18: each transferred encoder's lead over the untrained encoder and random search
    baselines = [m for m in ("esnac_untrained", "random") if m in methods]
    transfer_lead = {m: {b: lead(m, b) for b in baselines} for m in methods if m in TRANSFER}
    if transfer_lead:
        summary["transfer_lead"] = transfer_lead
    return summary


def cmd_diagnose(args: argparse.Namespace) -> None:
    """Fit quality on the pool: one kernel fitted on `n` random pool members (all of them, as
    one ESNAC kernel sees about half of the observations), posterior mean on the rest; the
    Spearman correlation with the true rewards and the fitted LOO log-likelihood, for the
    trained and the untrained encoder (and with `--encoders`, for an encoder learned on another
    pool, kept fixed: seed s uses encoder s mod their number), and for reference the correlation
    of the reward with the compression C alone (a one-number "model")."""
    from scipy.stats import spearmanr

    from embedding import Action
    from embedding.encoder import EncoderStack, adapt_encoder_state
    from embedding.kernel import to_unit_cube
    from embedding.model import build_gp, fit_stack

    torch.set_num_threads(args.threads)
    pool = _load_pool(args.pool)
    entries = pool.get("entries", [])
    if len(entries) < max(args.sizes) + 10:
        raise SystemExit(f"the pool holds {len(entries)} entries: too few for --sizes")
    space = _pool_space(pool)
    encoders, digests = _load_encoders(args.encoders)
    starts = [adapt_encoder_state(e, space.row_size) for e in encoders]  # mapped to this width
    rows = space.encode([Action.from_json(e["action"]) for e in entries])
    reward = np.asarray([e["reward"] for e in entries])
    comp = np.asarray([e["compression"] for e in entries])
    out: dict[str, Any] = {"pool_size": len(entries), "seeds": args.seeds, "by_size": {}}
    if digests:
        out["encoders"] = digests
    for n in args.sizes:
        res: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            perm = rng.permutation(len(entries))
            obs, rest = perm[:n], perm[n:]
            res.setdefault("compression_only_spearman", []).append(
                float(spearmanr(comp[rest], reward[rest]).statistic)
            )
            x = rows[torch.as_tensor(obs)].unsqueeze(0)
            y = torch.as_tensor(reward[obs], dtype=torch.float64).unsqueeze(0)
            x_rest = rows[torch.as_tensor(rest)].unsqueeze(0)
            # (name, train the LSTM, start weights: None for a fresh seeded initialisation)
            fits: list[tuple[str, bool, dict[str, torch.Tensor] | None]] = [
                ("trained", True, None),
                ("untrained", False, None),
            ]
            if starts:
                fits.append(("transferred", False, starts[seed % len(starts)]))
            for name, trained, start in fits:
                stack = EncoderStack(
                    1, space.row_size, generator=torch.Generator().manual_seed(seed)
                )
                if start is not None:
                    stack.load_encoder_state(start)
                t0 = time.perf_counter()
                report = fit_stack(stack, x, y, train_encoder=trained)
                with torch.no_grad():
                    u_obs = to_unit_cube(stack(x))[0].double()
                    u_rest = to_unit_cube(stack(x_rest))[0]
                    model, _ = build_gp(u_obs, y[0], report.alpha[0], report.noise[0])
                    mean = model.posterior(u_rest.double()).mean.squeeze(-1).numpy()
                res.setdefault(f"{name}_spearman", []).append(
                    float(spearmanr(mean, reward[rest]).statistic)
                )
                res.setdefault(f"{name}_loo_ll", []).append(report.objective[0])
                res.setdefault(f"{name}_fit_steps", []).append(report.steps[0])
                res.setdefault(f"{name}_fit_s", []).append(time.perf_counter() - t0)
            print(
                f"n={n} seed={seed}: "
                + ", ".join(f"{k}={v[-1]:.3f}" for k, v in res.items() if "spearman" in k),
                flush=True,
            )
        out["by_size"][str(n)] = {
            k: {
                "mean": float(np.mean(v)),
                "se": float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0,
            }
            for k, v in res.items()
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    labels = {
        "esnac": "ESNAC (learned embedding)",
        "esnac_paper": "ESNAC, paper preset",
        "esnac_untrained": "ESNAC, untrained encoder",
        "esnac_warm": "ESNAC, warm-started LSTM",
        "esnac_pretrain": "ESNAC, LSTM pretrained on free labels",
        "esnac_threshold": "ESNAC, LSTM trained from 25 results per kernel",
        "esnac_gamma1": "ESNAC, gamma = 1",
        "transfer_fixed": "ESNAC, transferred encoder (fixed)",
        "transfer_trained": "ESNAC, trained from a transferred encoder",
        "n2n": "N2N (reinforcement learning)",
        "random": "random search",
    }
    default = summary.get("product_default", {}).get("method")
    for m, stats in summary["methods"].items():
        mean, se = np.asarray(stats["mean"]), np.asarray(stats["se"])
        x = np.arange(1, len(mean) + 1)
        label = labels.get(m, m) + (" = default" if m == default and m != "esnac" else "")
        if stats.get("seeds", summary["seeds"]) != summary["seeds"]:
            label += f" ({stats['seeds']} seeds)"
        ax.plot(x, mean, label=label)
        ax.fill_between(x, mean - se, mean + se, alpha=0.25)
    ax.set_xlabel("evaluated architectures")
    ax.set_ylabel("best reward so far (mean ± s.e.)")
    teacher = summary.get("teacher", "resnet20")
    ax.set_title(f"{teacher} / CIFAR-10 pool of {summary['pool_size']}, {summary['seeds']} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("teacher", help="train the resnet20 teacher (cached)")
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="stop early: lr x0.1 at 3/4 of the budget, no epoch past it",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_teacher)
    p = sub.add_parser("pool", help="evaluate sampled actions into the pool table (resumable)")
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random crop + flip during KD (--no-augment caches the teacher's logits)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget-minutes", type=float, default=600)
    p.add_argument("--pool", type=Path, default=POOL_FILE)
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="teacher safetensors with its card (.json) beside it (default: the cached one); "
        f"the v2 pool uses {STRONG_TEACHER.relative_to(ROOT.parent)}",
    )
    p.add_argument(
        "--shard", type=int, default=0, help="evaluate actions with index %% shards == shard"
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="run several processes (e.g. 2 x --threads 1) that share the table under a lock",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (the search-time training)")
    p.set_defaults(func=cmd_pool)
    p = sub.add_parser(
        "encoders", help="learn encoders to transfer: one ESNAC search per seed on a pool"
    )
    p.add_argument("--pool", type=Path, default=POOL_FILE)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--method", default="esnac_paper", choices=sorted(VARIANTS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--per-step", type=int, default=8)
    p.add_argument("--kernels", type=int, default=8)
    p.add_argument("--subset", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_encoders)
    p = sub.add_parser("simulate", help="replay searches on the pool")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budget", type=int, default=60)
    p.add_argument("--per-step", type=int, default=8)
    p.add_argument("--kernels", type=int, default=8)
    p.add_argument("--subset", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=Path, default=POOL_FILE)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--shard", type=int, default=0, help="replay seeds with seed %% shards == shard")
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="processes sharing the seeds; the last to finish merges the parts into the summary",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["esnac_paper", "esnac_untrained", "random"],
        help="searchers to replay (ESNAC variants, transfer_*, n2n, random)",
    )
    p.add_argument(
        "--encoders",
        type=Path,
        default=None,
        help="for transfer_fixed / transfer_trained: a directory of the `encoders` stage",
    )
    p.add_argument(
        "--name",
        default="search_efficiency",
        help="results file stem under --out (the v2 study: embedding_study)",
    )
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("diagnose", help="fit quality on the pool: rank correlation, LOO")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 56])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=Path, default=POOL_FILE)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--encoders",
        type=Path,
        default=None,
        help="also rank with these learned encoders kept fixed (a directory of `encoders`)",
    )
    p.add_argument("--name", default="search_efficiency_diagnosis", help="results file stem")
    p.set_defaults(func=cmd_diagnose)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
