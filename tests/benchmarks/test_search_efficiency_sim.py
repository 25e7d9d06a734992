"""The simulation stage of `benchmarks/search_efficiency.py` on a tiny synthetic pool.

The real study replays searches on a tabulated CIFAR-10 pool (hours of CPU, run by hand); here the
same code runs on 24 resnet20 actions whose "accuracy" is a made-up smooth function, to check the
replay itself: every proposal is an unevaluated pool member, nothing is evaluated twice, the
curves are best-so-far curves and the JSON / PNG outputs are written with the fields docs/RESULTS.md
quotes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedding import CompressionSpace
from workers import zoo

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # replays of a benchmark (up to a minute each), not unit tests


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "search_efficiency", ROOT / "benchmarks" / "search_efficiency.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["search_efficiency"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    return CompressionSpace.for_teacher(zoo.build("resnet20", 10))


def synthetic_pool(space: CompressionSpace, n: int = 24) -> dict:  # type: ignore[type-arg]
    """`n` sampled actions; accuracy falls smoothly with compression, so the reward
    C(2-C)A/At peaks at an intermediate size (not at an extreme of the space)."""
    rng = np.random.default_rng(3)
    teacher = space.num_params(space.empty_action())
    entries, seen = [], set()
    while len(entries) < n:
        a = space.sample(rng)
        if a.key in seen:
            continue
        seen.add(a.key)
        c = 1 - space.num_params(a) / teacher
        acc = 0.9 * (1 - 0.8 * c**3)
        reward = c * (2 - c) * acc / 0.9
        entries.append(
            {"index": len(entries), "key": a.key, "action": a.to_dict(), "params": 0,
             "flops": 0, "accuracy": acc, "compression": c, "reward": reward, "seconds": 0.0}
        )  # fmt: skip
    return {"settings": {"space_fingerprint": space.fingerprint}, "entries": entries}


def test_replay_draws_unevaluated_pool_members(bench, space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from embedding import pretrain

    monkeypatch.setattr(pretrain, "SAMPLES", 50)  # a short pretraining
    monkeypatch.setattr(pretrain, "EPOCHS", 1)
    pool = synthetic_pool(space)
    rewards_by_key = {e["key"]: e["reward"] for e in pool["entries"]}
    assert set(bench.METHODS) >= {"esnac_paper", "esnac_warm", "n2n", "random"}
    paper = bench._esnac_options("esnac_paper", {"kernels": 2, "subset": 1.0})
    assert (paper["kernels"], paper["subset"], paper["candidates"]) == (8, 0.5, 1000)
    assert bench._esnac_options("esnac_gamma1", {"kernels": 2, "subset": 0.5})["subset"] == 1.0
    for method in ("random", "n2n", "esnac", "esnac_untrained", "esnac_warm", "esnac_pretrain"):
        rewards = bench.simulate_one(
            method, pool, space, seed=1, budget=14, per_step=4,
            esnac_kwargs={"kernels": 2, "subset": 0.5, "candidates": 100},
        )  # fmt: skip
        assert len(rewards) == 14
        # every reward is a pool entry's, and each entry was drawn at most once
        assert set(rewards) <= set(rewards_by_key.values())
        assert len(set(rewards)) == 14
    best = bench._best_so_far([0.1, 0.3, 0.2, 0.5])
    assert best == [0.1, 0.3, 0.3, 0.5]


def test_simulate_writes_json_and_png(bench, space, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pool_file = tmp_path / "pool.json"
    pool_file.write_text(json.dumps(synthetic_pool(space)))
    out = tmp_path / "out"
    for shard in (0, 1):  # two shards, as two processes would run them; the last one merges
        args = argparse.Namespace(
            seeds=2, budget=10, per_step=4, kernels=2, subset=0.5, threads=1,
            pool=pool_file, out=out, shard=shard, shards=2, name="study", encoders=None,
            methods=["esnac", "esnac_untrained", "n2n", "random"],
        )  # fmt: skip
        bench.cmd_simulate(args)
        assert (out / "study.json").exists() == (shard == 1)
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    assert set(summary["methods"]) == {"esnac", "esnac_untrained", "n2n", "random"}
    assert set(summary["evals_to_random_best"]["n2n"]) == {"10"}

    def first_reach(curve: list[float], target: float) -> int | None:
        return next((i + 1 for i, v in enumerate(curve) if v >= target), None)

    random_best = summary["methods"]["random"]["mean"][-1]
    for m, stats in summary["methods"].items():  # evaluations to reach random's mean best
        assert summary["evals_to_random_best"][m]["10"] == first_reach(stats["mean"], random_best)
    for stats in summary["methods"].values():
        mean = stats["mean"]
        assert len(mean) == 10 and len(stats["se"]) == 10
        assert all(b >= a for a, b in zip(mean, mean[1:], strict=False))  # best-so-far
        assert all(math.isfinite(v) for v in stats["se"])
    best = max(e["reward"] for e in synthetic_pool(space)["entries"])
    assert summary["pool_best_reward"] == pytest.approx(best)
    esnac_reach = summary["evals_to_random_best"]["esnac"]["10"]
    assert summary["default_evals_to_random_best_at_budget"] == esnac_reach
    assert summary["product_default"]["method"] == "esnac"
    assert summary["seeds_per_method"] == {m: 2 for m in summary["methods"]}
    assert summary["default_lead"]["random"] == {}  # the budget (10) is below the first mark

    # a variant replayed on fewer seeds joins the summary with its own count
    args = argparse.Namespace(
        seeds=1, budget=16, per_step=4, kernels=2, subset=0.5, threads=1, pool=pool_file,
        out=tmp_path / "out16", shard=0, shards=1, name="study", encoders=None,
        methods=["esnac_untrained", "random"],
    )  # fmt: skip
    bench.cmd_simulate(args)
    args.seeds, args.methods = 2, ["random"]
    bench.cmd_simulate(args)
    summary = json.loads((tmp_path / "out16" / "study.json").read_text())
    assert summary["seeds_per_method"] == {"esnac_untrained": 1, "random": 2}
    # no "esnac" row: the named variant whose options are today's defaults stands for them
    assert summary["product_default"]["method"] == "esnac_untrained"
    assert set(summary["default_lead"]) == {"random"}
    assert summary["methods"]["esnac_untrained"]["options"]["train_encoder"] is False


def test_transfer_replay_starts_from_encoders_learned_on_another_teacher(  # type: ignore[no-untyped-def]
    bench, space, tmp_path: Path
) -> None:
    """Issue 18's replay: encoders learned by ESNAC searches on a resnet20 pool, stored as the
    service stores a job's, start searches on a resnet56 pool (wider rows: more than 128
    layers), kept fixed or trained from."""
    from safetensors.torch import load

    from embedding.encoder import adapt_encoder_state

    src = tmp_path / "pool20.json"
    src.write_text(json.dumps(synthetic_pool(space)))
    enc_dir = tmp_path / "encoders"
    args = argparse.Namespace(
        pool=src, out_dir=enc_dir, method="esnac_gamma1", seeds=2, budget=12, per_step=4,
        kernels=2, subset=0.5, threads=1,
    )  # fmt: skip
    bench.cmd_encoders(args)
    files = sorted(enc_dir.glob("seed*.safetensors"))
    assert [f.name for f in files] == ["seed0.safetensors", "seed1.safetensors"]
    card = json.loads((enc_dir / "encoders.json").read_text())
    assert card["teacher"] == "resnet20" and card["options"]["train_encoder"] is True
    before = [f.stat().st_mtime_ns for f in files]
    bench.cmd_encoders(args)  # resumable: finished seeds are kept
    assert [f.stat().st_mtime_ns for f in files] == before
    with pytest.raises(SystemExit, match="holds encoders made with"):  # not with other settings
        bench.cmd_encoders(argparse.Namespace(**{**vars(args), "budget": 16}))
    with pytest.raises(SystemExit, match="does not train its encoder"):
        bench.cmd_encoders(argparse.Namespace(**{**vars(args), "method": "esnac_untrained"}))

    deep = CompressionSpace.for_teacher(zoo.build("resnet56", 10))
    assert deep.row_size > space.row_size
    pool56 = synthetic_pool(deep)
    pool56["settings"]["teacher"] = "resnet56"
    encoders, digests = bench._load_encoders(enc_dir)
    assert len(encoders) == 2 and all(d.startswith("seed") for d in digests)
    kwargs = {"kernels": 2, "subset": 0.5, "candidates": 100}
    fixed, rewards = bench._replay("transfer_fixed", pool56, deep, 1, 12, 4, kwargs, encoders)
    assert len(set(rewards)) == 12  # unevaluated pool members only
    start = adapt_encoder_state(load(files[1].read_bytes()), deep.row_size)  # seed 1 -> file 1
    learned = fixed.encoder_state()
    assert learned is not None and all(torch.equal(learned[k], start[k]) for k in start)
    trained, _ = bench._replay("transfer_trained", pool56, deep, 1, 12, 4, kwargs, encoders)
    moved = trained.encoder_state()
    assert moved is not None and not all(torch.equal(moved[k], start[k]) for k in start)

    pool_file = tmp_path / "pool56.json"
    pool_file.write_text(json.dumps(pool56))
    args = argparse.Namespace(
        seeds=2, budget=16, per_step=4, kernels=2, subset=0.5, threads=1, pool=pool_file,
        out=tmp_path / "out", shard=0, shards=1, name="transfer", encoders=enc_dir,
        methods=["transfer_fixed", "esnac_untrained", "random"],
    )  # fmt: skip
    bench.cmd_simulate(args)
    summary = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert summary["teacher"] == "resnet56"
    assert set(summary["methods"]) == {"transfer_fixed", "esnac_untrained", "random"}
    # the transferred encoder's lead over the untrained one and random search, at 16
    lead = summary["transfer_lead"]["transfer_fixed"]
    assert set(lead) == {"esnac_untrained", "random"}
    for base in ("esnac_untrained", "random"):
        at16 = lead[base]["at_16"]
        want = summary["methods"]["transfer_fixed"]["at_16"][0]
        want -= summary["methods"][base]["at_16"][0]
        assert at16["diff"] == pytest.approx(want) and at16["paired_seeds"] == 2
    part = json.loads((tmp_path / "out" / "transfer.part0of1.json").read_text())
    assert part["settings"]["encoders"] == digests
    args.encoders = None
    with pytest.raises(SystemExit, match="needs --encoders"):
        bench.cmd_simulate(argparse.Namespace(**{**vars(args), "name": "x"}))

    # the fit-quality diagnosis ranks the deep pool with the transferred encoders too
    bench.cmd_diagnose(
        argparse.Namespace(
            sizes=[8], seeds=2, threads=1, pool=pool_file, out=tmp_path / "out",
            encoders=enc_dir, name="transfer_diagnosis",
        )
    )  # fmt: skip
    diag = json.loads((tmp_path / "out" / "transfer_diagnosis.json").read_text())
    assert diag["encoders"] == digests
    row = diag["by_size"]["8"]
    for name in ("trained", "untrained", "transferred"):
        assert math.isfinite(row[f"{name}_spearman"]["mean"])
    assert row["transferred_fit_steps"]["mean"] == 0  # kept fixed: only the GP is conditioned
