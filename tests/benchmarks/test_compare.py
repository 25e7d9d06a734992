"""`benchmarks/compare.py`'s plumbing on `digits` with tiny budgets: both searches through the
service, all six students built at the matched size and trained, the report. (The real runs are
benchmarks: see docs/RESULTS.md, "Results: against the alternatives".)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _compare():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _run_all(setup: str, tmp_path: Path, ray_session: str, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Every stage of a setup on the tests' Ray; the module and its summary, nothing missing."""
    monkeypatch.setenv("ESNAC_RAY_ADDRESS", ray_session)
    compare = _compare()
    compare.main(["--setup", setup, "--threads", "1", "--cache", str(tmp_path), "all"])
    summary = json.loads((tmp_path / setup / "compare.json").read_text())
    assert summary["missing"] == []
    return compare, summary


@pytest.mark.slow
def test_compare_runs_every_stage_on_digits(
    tmp_path: Path, ray_session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compare, summary = _run_all("quick", tmp_path, ray_session, monkeypatch)
    methods = summary["methods"]
    assert set(methods) == set(compare.METHODS)
    target = summary["target_params"]
    assert methods["esnac"]["params"] == methods["scratch"]["params"] == target
    # matched to the target's size: within TOLERANCE (5 %), except for the digits toy's tiny
    # targets (a search can pick a ~1k-parameter student, where one channel more or less in
    # every group moves the count by ~10 %): there, the nearest size a channel count reaches
    slack = compare.TOLERANCE if target >= 5000 else 0.15
    for m in ("uniform", "torch_pruning"):
        off = abs(methods[m]["params"] - target)
        assert off <= slack * target, (m, methods[m], target)
        assert methods[m]["size_matched"] == (off <= compare.TOLERANCE * target)
    # the compact family's closest width (tiny targets may be below what it can match)
    assert abs(methods["compact"]["params"] - target) <= 0.25 * target
    for m, r in methods.items():
        assert 0.0 <= r["accuracy_mean"] <= 1.0 and r["latency_ms"] > 0, m
    assert summary["searches"]["esnac"]["evaluations"] == 2
    # cached: a second run trains nothing again and reports the same
    again = compare.report(compare.replace(compare.setups()["quick"], cache=tmp_path))

    def trained(ms: dict) -> dict:  # type: ignore[type-arg]
        return {m: {k: v for k, v in r.items() if k != "latency_ms"} for m, r in ms.items()}

    assert trained(again["methods"]) == trained(methods)  # latencies are timed afresh
    assert summary["teacher_latency_ms"] > 0


@pytest.mark.slow
def test_compare_at_a_budget_on_digits(
    tmp_path: Path, ray_session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 32's side-by-side at a budget: a budgeted ESNAC search (seeded with the
    alternatives), every baseline built within the budget, the report says whether ESNAC
    returned a seed and gives the best student that is not one."""
    compare, summary = _run_all("quick_budget", tmp_path, ray_session, monkeypatch)
    methods = summary["methods"]
    assert tuple(methods) == compare.BUDGET_METHODS
    budget = summary["budget"]
    assert budget["times_smaller"] == 4.0
    card = json.loads((tmp_path / "quick_budget" / "final" / "torch_pruning_s0.json").read_text())
    assert budget["params"] == pytest.approx(card["teacher_params"] / 4)
    assert card["budget"]["within"] and card["inheritance"] == "importance"
    for m, r in methods.items():
        # the zoo's ShuffleNetV2 cannot be narrowed to 1/4 of a resnet20: over, and said so
        assert r["size_matched"] == (m != "compact_shufflenet"), (m, r["params"])
        assert r["size_matched"] == (r["params"] <= budget["params"])
    assert methods["esnac"]["params"] == methods["scratch"]["params"]
    # the search's first step held the seeds; whether the returned student is one is stated
    seeds = budget["seeds"]
    assert seeds and all(s["tag"].startswith("seed:") for s in seeds)
    search = json.loads((tmp_path / "quick_budget" / "search_esnac.json").read_text())
    trials = search["trials"]
    best = max(trials, key=lambda t: (t["reward"], -t["number"]))
    assert budget["esnac_best_tag"] == best["tag"]
    assert budget["esnac_returned_a_seed"] == (best["tag"] is not None)
    others = [t for t in trials if t["tag"] is None]
    assert others  # the second step proposed a student of its own
    want = max(others, key=lambda t: (t["reward"], -t["number"]))["number"]
    assert budget["best_non_seed"]["number"] == want
    # the first-k uniform baseline is the largest uniform shrink within the budget
    from embedding import CompressionSpace
    from embedding.budget import uniform_action

    setup = compare.replace(compare.setups()["quick_budget"], cache=tmp_path)
    first = CompressionSpace.for_teacher(compare.teacher_net(setup), inheritance="first")
    want = first.num_params(uniform_action(first, budget["params"]))
    assert methods["uniform_first"]["params"] == want


def test_another_search_seed_is_its_own_search() -> None:
    compare = _compare()
    base = compare.setups()["cifar10_5x_mixed"]
    assert compare.with_search_seed(base, 0) is base
    again = compare.with_search_seed(base, 2)
    assert (again.name, again.search_seed, again.methods) == ("cifar10_5x_mixed_seed2", 2,
                                                              ("esnac",))  # fmt: skip
    assert again.searcher == {"sampler": "mixed"} and again.budget == 5.0
    assert again.search_file("esnac") != base.search_file("esnac")
    assert again.search_file("esnac").name == "compare_cifar10_5x_mixed_seed2_search_esnac.json"
