"""Search-space speed: sample + encode 1,000 actions and materialize 100 students of resnet34.

Baseline measured in the same run: the original code's way of encoding, one architecture at a
time, building every row of every layer in Python (no shared template).

    python benchmarks/space.py [--teacher resnet34] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from embedding import KINDS, CompressionSpace
from embedding.graph import INPUT
from workers import zoo


def naive_encode(space: CompressionSpace, actions: list) -> torch.Tensor:
    """Row-by-row encoding as the original implementation does it (per layer, per action)."""
    g, L = space.graph, space.max_layers
    out = []
    for action in actions:
        res = space._resolve(action)
        rows = []
        for layer in g.layers:
            row = [0.0] * space.row_size
            removed = layer.index in res.removed
            row[KINDS.index("Identity" if removed else layer.kind)] = 1.0
            if not removed:
                a = layer.attrs
                row[10:14] = [float(a.get(k, 0)) for k in ("kernel", "stride", "padding", "groups")]
                if layer.op in ("conv", "linear"):
                    spec_in = g.spec_of(layer.inputs[0])
                    cin = space._channels(spec_in, res.keep) * a.get("in_spatial", 1)
                    cout = space._channels(g.specs[layer.index], res.keep)
                    row[14], row[15] = cin, cout
                    if a.get("depthwise"):
                        row[13] = cout
            for j in res.inputs[layer.index]:
                if j != INPUT:
                    row[16 + layer.index - j] = 1.0
            for k, ins in enumerate(res.inputs):
                if layer.index in ins:
                    row[16 + L + k - layer.index] = 1.0
            rows.append(row)
        out.append(rows)
    return torch.tensor(out, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/space.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    teacher = zoo.build(args.teacher, 100)
    space = CompressionSpace.for_teacher(teacher, max_layers=128)
    sample_encode, naive, materialize = [], [], []
    for r in range(args.repeats):
        rng = np.random.default_rng(r)
        t0 = time.perf_counter()
        actions = [space.sample(rng) for _ in range(1000)]
        enc = space.encode(actions)
        sample_encode.append(time.perf_counter() - t0)
        if r < 2:  # the baseline is slow; two runs are enough for its median
            t0 = time.perf_counter()
            ref = naive_encode(space, actions[:100])
            naive.append((time.perf_counter() - t0) * 10)
            if not torch.equal(ref, enc[:100]):
                raise SystemExit("naive and fast encodings differ")
        t0 = time.perf_counter()
        for a in actions[:100]:
            space.materialize(a)
        materialize.append(time.perf_counter() - t0)
    result = {
        "teacher": args.teacher,
        "layers": space.num_layers,
        "sample_encode_1000_s": statistics.median(sample_encode),
        "baseline_naive_encode_1000_s": statistics.median(naive),
        "speedup_vs_baseline": statistics.median(naive) / statistics.median(sample_encode),
        "materialize_100_s": statistics.median(materialize),
        "target_sample_encode_1000_s": 1.0,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
