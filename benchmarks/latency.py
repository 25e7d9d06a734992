"""Is latency a different reward from parameters or FLOPs on this machine? Measured, not assumed.

On the CIFAR-10 pool study's teacher (`benchmarks/data/teachers/cifar10_resnet20.safetensors`),
`--students` students are sampled from its compression space (the searcher's random sampler), and
each is timed exactly as a trial times it (`workers.latency.measure_latency`: warm-up runs, then
the median of timed runs) on every `--backends` target at batch 1 with 1 thread. The whole
measurement is repeated `--repeats` times; a student's figure is the median over the repeats,
and the rank correlation between repeats says how much of the ordering is noise.

Reported per backend: Spearman's rho of latency with parameters and with FLOPs (scipy), the
repeat-to-repeat rho, the spread of the timed runs, and the teacher's latency. The machine's load
average before and after is recorded.

    python benchmarks/latency.py                     # 50 students, 3 repeats
    python benchmarks/latency.py --students 10 --repeats 2 --out /tmp/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from embedding.reward import model_flops  # noqa: E402
from service.searchers import build_space  # noqa: E402
from workers import zoo  # noqa: E402
from workers.export import load_state_safetensors  # noqa: E402
from workers.latency import measure_latency  # noqa: E402
from workers.spec import LATENCY_BACKENDS, LatencySpec  # noqa: E402
from workers.train import count_params  # noqa: E402

TEACHER = ROOT / "data" / "teachers" / "cifar10_resnet20.safetensors"
RESULTS = ROOT / "results" / "latency.json"
SHAPE = (3, 32, 32)


def _rho(a: list[float], b: list[float]) -> float:
    return round(float(spearmanr(a, b).statistic), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=30, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--backends",
        nargs="+",
        default=["onnxruntime-cpu", "torch-cpu"],
        choices=[b for b in LATENCY_BACKENDS if b != "torch-cuda" or torch.cuda.is_available()],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    started = time.time()

    space = build_space("resnet20", 10, TEACHER.read_bytes(), SHAPE)
    teacher = zoo.build("resnet20", 10)
    load_state_safetensors(teacher, TEACHER.read_bytes())
    teacher.eval()
    rng = np.random.default_rng(args.seed)
    students = []
    for _ in range(args.students):
        action = space.sample(rng)
        net = space.materialize(action).eval()
        students.append(
            {"action": action.to_dict(), "net": net, "params": count_params(net),
             "flops": model_flops(net, SHAPE)}
        )  # fmt: skip

    backends: dict[str, Any] = {}
    for backend in args.backends:
        spec = LatencySpec(backend=backend, warmup=args.warmup, runs=args.runs)
        # repeats[r][i]: median ms of student i in repeat r (students in a new order each time)
        repeats = np.zeros((args.repeats, len(students)))
        spreads = np.zeros_like(repeats)
        teacher_ms = []
        for r in range(args.repeats):
            teacher_ms.append(measure_latency(teacher, SHAPE, spec).median_ms)
            for i in np.random.default_rng([args.seed, r]).permutation(len(students)):
                m = measure_latency(students[i]["net"], SHAPE, spec)
                repeats[r, i], spreads[r, i] = m.median_ms, m.spread
        latency = np.median(repeats, axis=0)
        pairs = [
            _rho(list(repeats[a]), list(repeats[b]))
            for a in range(args.repeats)
            for b in range(a + 1, args.repeats)
        ]
        params = [float(s["params"]) for s in students]
        flops = [float(s["flops"]) for s in students]
        backends[backend] = {
            "spearman_latency_vs_params": _rho(list(latency), params),
            "spearman_latency_vs_flops": _rho(list(latency), flops),
            "spearman_between_repeats_median": float(np.median(pairs)) if pairs else None,
            "timed_run_spread_median": round(float(np.median(spreads)), 4),
            "teacher_latency_ms_median": round(float(np.median(teacher_ms)), 4),
            "student_latency_ms": [round(float(x), 4) for x in latency],
            "student_latency_ms_range": [
                round(float(latency.min()), 4),
                round(float(latency.max()), 4),
            ],  # fmt: skip
        }
        print(backend, {k: v for k, v in backends[backend].items() if k != "student_latency_ms"},
              flush=True)  # fmt: skip

    out = {
        "what": "measured latency of students sampled from the CIFAR-10 resnet20 teacher's "
        "space, against parameters and FLOPs (Spearman rank correlation)",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "teacher": str(TEACHER.relative_to(ROOT.parent)),
        "students": [{"params": s["params"], "flops": s["flops"]} for s in students],
        "params_vs_flops_spearman": _rho(
            [float(s["params"]) for s in students], [float(s["flops"]) for s in students]
        ),
        "backends": backends,
        "seconds": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
