"""The `esnac` command line without a job running: parser, help, errors, rendering."""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys

import pytest

from service.cli import build_parser, job_body, main
from service.cli.render import (
    RESULT_HEADERS,
    ProgressBar,
    format_table,
    has_latency,
    pareto_trials,
    ranked_trials,
    result_headers,
    results_rows,
)


def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every command path of the parser, e.g. ("teacher", "train")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_commands(sub, prefix + (name,))
            return
    yield prefix


EXPECTED = {
    ("serve",), ("db", "upgrade"), ("db", "check"), ("teacher", "train"),
    ("teacher", "register"), ("teacher", "list"), ("teacher", "show"), ("submit",), ("status",),
    ("watch",), ("results",), ("cancel",), ("export",), ("demo",),
}  # fmt: skip


def test_every_command_of_the_issue_exists() -> None:
    assert set(_leaf_commands(build_parser())) == EXPECTED


@pytest.mark.parametrize("path", sorted(EXPECTED), ids=" ".join)
def test_help_on_every_command(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: esnac {' '.join(path)}")
    if path[0] not in ("serve", "db", "demo"):
        assert "--url" in out and "--token" in out


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from importlib.metadata import entry_points; "
         "print([e.value for e in entry_points(group='console_scripts') if e.name == 'esnac'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "['service.cli:main']"


def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESNAC_URL", "http://example.invalid:9")
    monkeypatch.setenv("ESNAC_API_TOKEN", "s3cret")
    args = build_parser().parse_args(["status"])
    assert (args.url, args.token) == ("http://example.invalid:9", "s3cret")
    args = build_parser().parse_args(["status", "--url", "http://h:1", "--token", "t"])
    assert (args.url, args.token) == ("http://h:1", "t")


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["status", "--url", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot reach the ESNAC server at http://127.0.0.1:{port}" in err
    assert "esnac serve" in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["submit", "--teacher", "1", "--steps", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_register_missing_file(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code = main(
        [
            "teacher",
            "register",
            "--arch",
            "resnet20",
            "--num-classes",
            "10",
            "--dataset",
            "digits",
            "--weights",
            str(tmp_path / "nope.safetensors"),
        ]
    )
    assert code == 1
    assert "nope.safetensors does not exist" in capsys.readouterr().err


def test_serve_refuses_public_bind_without_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESNAC_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 1
    assert "ESNAC_API_TOKEN" in capsys.readouterr().err


def test_db_check_names_the_fix(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["db", "check", "--database-url", url]) == 1
    assert "esnac db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert "created the database schema" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert "schema is up to date" in capsys.readouterr().out
    assert main(["db", "check", "--database-url", url]) == 0
    assert "schema is current" in capsys.readouterr().out


def test_submit_body_only_sets_given_options() -> None:
    args = build_parser().parse_args(["submit", "--teacher", "3"])
    assert job_body(args) == {"teacher_id": 3}  # everything else: the server's defaults
    args = build_parser().parse_args(
        ["submit", "--teacher", "3", "--strategy", "random", "--search-epochs", "2",
         "--max-train-samples", "256", "--no-augment", "--full-epochs", "5", "--kernels", "4",
         "--dataset", "digits", "--embedding-from", "7"]
    )  # fmt: skip
    body = job_body(args)
    assert body["strategy"] == "random" and "steps" not in body
    assert body["search"] == {"epochs": 2, "max_train_samples": 256, "augment": False}
    assert body["full_training"] == {"epochs": 5}
    assert body["searcher"] == {"kernels": 4}
    args = build_parser().parse_args(
        ["submit", "--teacher", "3", "--preset", "paper", "--no-train-encoder"])
    assert job_body(args)["searcher"] == {"preset": "paper", "train_encoder": False}
    args = build_parser().parse_args(["submit", "--teacher", "3", "--train-encoder"])
    assert job_body(args)["searcher"] == {"train_encoder": True}
    assert body["dataset"] == "digits" and body["embedding_from"] == 7 and "latency" not in body
    args = build_parser().parse_args(
        ["submit", "--teacher", "3", "--reward", "latency_target", "--latency", "torch-cpu",
         "--latency-threads", "2", "--latency-target", "1.5"]
    )  # fmt: skip
    body = job_body(args)
    assert body["reward"] == "latency_target"
    assert body["latency"] == {"backend": "torch-cpu", "threads": 2, "target_ms": 1.5}


def test_budget_flags_set_the_reward_and_its_target(capsys: pytest.CaptureFixture[str]) -> None:
    def body(*flags: str) -> dict:
        return job_body(build_parser().parse_args(["submit", "--teacher", "3", *flags]))

    assert body("--target-params", "100k") == {
        "teacher_id": 3, "reward": "params_target", "target": {"params": 100_000}}  # fmt: skip
    assert body("--target-params", "1.5M")["target"] == {"params": 1_500_000}
    assert body("--target-flops", "10M") == {
        "teacher_id": 3, "reward": "flops_target", "target": {"flops": 10_000_000}}  # fmt: skip
    assert body("--compression", "5x")["target"] == {"times_smaller": 5.0}
    assert body("--compression", "2.5")["reward"] == "params_target"
    assert body("--compression", "5x", "--reward", "flops_target")["reward"] == "flops_target"
    for flags, needle in ((("--target-params", "100q"), "optional k, M or G suffix"),
                          (("--target-params", "0"), "at least 1"),
                          (("--compression", "fivex"), "e.g. 5x"),
                          (("--compression", "1x"), "more than 1"),
                          (("--compression", "5x", "--target-params", "1k"), "not allowed with")):
        with pytest.raises(SystemExit) as exc:
            body(*flags)
        assert exc.value.code == 2 and needle in capsys.readouterr().err, flags


def test_result_table_shows_the_budget_and_the_seeds() -> None:
    teacher = {"arch": "resnet20", "params": 1000, "accuracy": 0.95}
    trials = [_trial(1, 0.9, 200), _trial(2, 0.8, 300), _trial(3, 0.5, 100)]
    trials[0] |= {"step": 0, "kernel": None, "tag": "seed:uniform",
                  "finish": {"accuracy": 0.93, "reward": 0.95, "epochs": 2, "seconds": 9.0}}
    target = {"measure": "params", "value": 250.0, "times_smaller": 4.0, "teacher": 1000}
    headers = result_headers(False, budget=True)
    rows = results_rows(trials, teacher, top=3, target=target)
    assert headers[-1] == "budget" and all(len(r) == len(headers) for r in rows)
    assert [r[-1] for r in rows] == ["-", "meets", "over", "meets"]
    assert rows[1][2] == "0/seed:uniform"
    # the accuracy floor: a near-chance student ranks last, marked, whatever its reward
    trials[2] |= {"accuracy": 0.11, "reward": 0.99}
    ranked = results_rows(trials, teacher, top=3, target=target, floor=0.18)
    assert [r[1] for r in ranked[1:]] == [1, 2, 3]
    assert ranked[3][headers.index("reward")] == "0.9900 (below floor)"
    assert rows[1][headers.index("reward")] == "0.9000 (finish 0.9500)"


def _trial(i: int, reward: float | None, params: int, status: str = "succeeded") -> dict:
    return {"id": i, "number": i, "status": status, "reward": reward, "params": params,
            "accuracy": 0.9, "compression": 1 - params / 1000, "final": None}  # fmt: skip


def test_result_table_ranks_by_reward_with_times_smaller() -> None:
    trials = [_trial(1, 0.5, 500), _trial(2, 0.9, 250), _trial(3, None, 100, "running"),
              _trial(4, 0.9, 200), _trial(5, None, 10, "failed")]  # fmt: skip
    assert [t["id"] for t in ranked_trials(trials)] == [4, 2, 1]
    teacher = {"arch": "resnet20", "params": 1000, "accuracy": 0.95}
    trials[3] |= {"step": 2, "kernel": 5}  # trial 4: proposed by kernel 5 of step 2
    trials[1] |= {"step": 0, "kernel": None}  # trial 2: a random pick of the first step
    rows = results_rows(trials, teacher, top=3)
    assert rows[0][:6] == ["teacher", "resnet20", "-", "1000", "95.00%", "1.00x"]
    assert [r[1] for r in rows[1:]] == [4, 2, 1]
    assert [r[2] for r in rows[1:]] == ["2/5", "0/-", "-"]
    assert rows[1][5] == "5.00x" and rows[2][5] == "4.00x"
    table = format_table(("a", "b", "c", "d", "e", "f", "g", "h", "i"), rows).splitlines()
    assert len(table) == 2 + 4 and table[1].startswith("-------")


def test_result_table_has_a_latency_column_when_latencies_were_measured() -> None:
    teacher = {"arch": "resnet20", "params": 1000, "accuracy": 0.95}
    trials = [_trial(1, 0.5, 500), _trial(2, 0.9, 250)]
    assert not has_latency(trials) and result_headers(False) == RESULT_HEADERS
    trials[0] |= {"latency_ms": 0.5, "teacher_latency_ms": 2.0}
    trials[1] |= {"latency_ms": 0.25, "teacher_latency_ms": 1.0}  # another worker
    assert has_latency(trials)
    headers = result_headers(True)
    rows = results_rows(trials, teacher, top=2, latency=True)
    col = headers.index("latency")
    assert headers[col - 1] == "params" and all(len(r) == len(headers) for r in rows)
    # the teacher's latency is the median over the workers' measurements
    assert [r[col] for r in rows] == ["1.5 ms", "0.25 ms", "0.5 ms"]


def test_pareto_lists_the_non_dominated_students_smallest_first() -> None:
    def trial(i: int, params: int, acc: float, ms: float | None = None) -> dict:
        return _trial(i, 0.5, params) | {"accuracy": acc, "latency_ms": ms}

    trials = [trial(1, 100, 0.50, 3.0), trial(2, 200, 0.70, 1.0), trial(3, 300, 0.60, 2.0),
              trial(4, 400, 0.90, 4.0), trial(5, 200, 0.65, 5.0), trial(6, 50, 0.95),
              _trial(7, None, 10, "failed")]  # fmt: skip
    trials[5]["status"] = "running"  # not finished: not on the front
    assert [t["id"] for t in pareto_trials(trials, "params")] == [1, 2, 4]
    # on latency: 2 (1 ms) beats 3 (2 ms, less accurate) and 1 (3 ms, less accurate)
    assert [t["id"] for t in pareto_trials(trials, "latency")] == [2, 4]
    teacher = {"arch": "resnet20", "params": 1000, "accuracy": 0.95}
    rows = results_rows(trials, teacher, top=5, pareto="params")
    assert [r[1] for r in rows[1:]] == [1, 2, 4]
    args = build_parser().parse_args(["results", "3", "--pareto", "latency"])
    assert args.pareto == "latency"


def test_progress_bar_prints_one_line_per_change_off_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(stream=out, width=10)
    bar.update(0, 4, "trials")
    bar.update(0, 4, "trials")
    bar.update(2, 4, "trials", "best reward 0.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("trials [..........] 0/4")
    assert lines[1].startswith("trials [#####.....] 2/4  best reward 0.5")
