"""Line coverage per package (`embedding`, `workers`, `service`) from pytest-cov JSON reports.

    python -m pytest --cov=embedding --cov=workers --cov=service \
        --cov-report=json:benchmarks/results/coverage_after.json
    python benchmarks/coverage_packages.py benchmarks/results/coverage_b5f36ef.json \
        benchmarks/results/coverage_after.json --out benchmarks/results/coverage_packages.json

Each report's files are grouped by their top-level package (the path's first part); a package's
figure is covered lines / statements over its files, as coverage.py counts them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PACKAGES = ("embedding", "workers", "service")


def by_package(report: dict) -> dict[str, dict[str, float]]:
    totals = {p: [0, 0] for p in PACKAGES}
    for name, entry in report["files"].items():
        top = Path(name).parts[0]
        if top in totals:
            totals[top][0] += entry["summary"]["covered_lines"]
            totals[top][1] += entry["summary"]["num_statements"]
    return {
        p: {"covered": c, "statements": n, "percent": round(100.0 * c / n, 2) if n else 0.0}
        for p, (c, n) in totals.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {str(r): by_package(json.loads(r.read_text())) for r in args.reports}
    for name, packages in result.items():
        cells = "  ".join(f"{p} {v['percent']:.2f} %" for p, v in packages.items())
        print(f"{name}: {cells}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
