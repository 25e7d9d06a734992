"""The README against the code and CI: quickstart = what CI runs, examples parse, settings table.

The demo itself runs in CI (`.ci/run`), not here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from service.cli import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def _bash_blocks(text: str) -> list[list[str]]:
    """Commands of the ```bash blocks (continuations joined, comments dropped)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", body)
        lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def test_quickstart_is_exactly_what_ci_runs() -> None:
    quickstart = _bash_blocks(_section("Quickstart"))[0]
    assert "esnac demo" in quickstart
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    positions = []
    for command in quickstart:
        assert command in ci, f"README quickstart runs `{command}` but .ci/run does not"
        positions.append(ci.index(command))
    assert positions == sorted(positions), "README and .ci/run run them in another order"


def test_every_esnac_command_in_the_readme_parses() -> None:
    parser = build_parser()
    commands = [c for block in _bash_blocks(README) for c in block if c.startswith("esnac ")]
    assert len(commands) >= 12
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: {command}")


def test_configuration_table_lists_every_setting() -> None:
    table = _section("Configuration")
    documented = set(re.findall(r"^\| `ESNAC_([A-Z_]+)`", table, re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_readme_describes_the_demo_it_runs() -> None:
    """The Quickstart's account of `esnac demo` (teacher epochs, steps x candidates, search and
    final epochs) is what the command does by default, and stays small enough for CI's 2 cores."""
    text = " ".join(_section("Quickstart").split())
    m = re.search(
        r"([\w-]+) teacher on scikit-learn's bundled `digits` images \((\d+) epochs\), runs a "
        r"short (\w+) search \((\d+) steps × (\d+) candidates, (\d+) distillation epochs? "
        r"each\).*?fully trains the best student for (\d+) epochs?", text)  # fmt: skip
    assert m, "the Quickstart no longer describes the demo's teacher, search and training"
    arch, teacher_epochs, strategy, steps, per_step, search_epochs, full_epochs = m.groups()
    args = build_parser().parse_args(["demo"])
    assert (arch.lower().replace("-", ""), strategy.lower()) == (args.arch, args.strategy)
    stated = tuple(int(x) for x in (teacher_epochs, steps, per_step, search_epochs, full_epochs))
    assert stated == (
        args.teacher_epochs, args.steps, args.per_step, args.search_epochs, args.full_epochs
    )
    assert args.steps * args.per_step <= 8 and args.teacher_epochs <= 8 and args.top_k == 1
