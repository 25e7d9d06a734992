"""The `esnac` argument parser and the console script's entry point."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from embedding.options import PRESETS
from service.api.schemas import (
    EsnacOptions,
    FullTrainingIn,
    JobCreate,
    SearchTrainingIn,
    TeacherTrain,
)
from service.cli import admin, commands
from service.cli.client import ApiError, CliError, ServerUnreachableError
from service.cli.demo import cmd_demo
from service.cli.render import PARETO_AXES
from workers.spec import LATENCY_BACKENDS, REWARDS

__all__ = ["DEFAULT_URL", "build_parser", "main"]

DEFAULT_URL = "http://127.0.0.1:8000"


# ============================================================================ parser
def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


#: The `--dataset` help of every command that takes one.
DATASET_HELP = (
    "digits (built in), cifar10, cifar100, npz:FILE (arrays x: uint8 N x H x W x C, y: labels; "
    "a fixed-seed 90/10 split unless x_val / y_val are given; relative to ESNAC_DATA_DIR on "
    "the server) or folder:DIR (one subfolder of images per class); README, \"Your data\""
)

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def _count(text: str) -> int:
    """A positive count with an optional k / M / G suffix: 100k, 1.5M, 250000."""
    t = text.strip().replace("_", "").replace(",", "")
    number, unit = (t[:-1], t[-1].lower()) if t and t[-1].isalpha() else (t, "")
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count: a number with an optional k, M or G suffix (100k, 1.5M)"
        ) from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return int(value)


def _factor(text: str) -> float:
    """How many times smaller: 5x, 2.5x or 5."""
    t = text.strip().lower().removesuffix("x")
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a factor: how many times smaller than the teacher, e.g. 5x"
        ) from None
    if not value > 1:
        raise argparse.ArgumentTypeError(f"must be more than 1 (e.g. 5x), got {text!r}")
    return value


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--url",
        default=os.environ.get("ESNAC_URL", DEFAULT_URL),
        help="the ESNAC server (env ESNAC_URL; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("ESNAC_API_TOKEN"),
        help="API token for mutating requests (env ESNAC_API_TOKEN)",
    )


def _default(model: type[BaseModel], name: str) -> Any:
    """A request field's server-side default (which the workers' settings dataclasses define)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def _add_search_options(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    """Search options; outside the demo each defaults to None (not sent: the server default)."""

    def option(flag: str, demo_value: Any, model: type[BaseModel], name: str, text: str,
               **kw: Any) -> None:  # fmt: skip
        if demo and demo_value is not None:
            g.add_argument(flag, default=demo_value, help=f"{text} (default %(default)s)", **kw)
        else:
            server = _default(model, name)
            g.add_argument(flag, default=None, help=f"{text} (server default: {server})", **kw)

    g = parser.add_argument_group("search")
    option("--strategy", "esnac", JobCreate, "strategy", "search strategy",
           choices=("esnac", "random", "n2n"))  # fmt: skip
    option("--steps", 3, JobCreate, "steps", "search steps", type=_positive_int)
    option("--per-step", 2, JobCreate, "per_step", "candidates proposed per step",
           type=_positive_int)  # fmt: skip
    option("--search-epochs", 2, SearchTrainingIn, "epochs",
           "distillation epochs per candidate", type=_positive_int)  # fmt: skip
    option("--search-batch-size", 32, SearchTrainingIn, "batch_size",
           "distillation batch size", type=_positive_int)  # fmt: skip
    option("--max-train-samples", None, SearchTrainingIn, "max_train_samples",
           "train each candidate on at most this many images", type=_positive_int)  # fmt: skip
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip in search")
    option("--top-k", 1, JobCreate, "top_k", "best students fully trained at the end",
           type=_non_negative_int)  # fmt: skip
    option("--full-epochs", 2, FullTrainingIn, "epochs", "full-training epochs of the top-k",
           type=_positive_int)  # fmt: skip
    option("--full-batch-size", 32, FullTrainingIn, "batch_size",
           "full-training batch size", type=_positive_int)  # fmt: skip
    option("--reward", None, JobCreate, "reward", "what C is measured on",
           choices=REWARDS)  # fmt: skip
    g.add_argument("--latency", default=None, choices=LATENCY_BACKENDS,
                   help="measure every student's latency on this target (--reward latency "
                   "alone uses onnxruntime-cpu)")  # fmt: skip
    g.add_argument("--latency-threads", default=None, type=_positive_int,
                   help="CPU threads of the latency measurement (default 1)")  # fmt: skip
    g.add_argument("--latency-batch", default=None, type=_positive_int,
                   help="images per timed forward pass (default 1)")  # fmt: skip
    g.add_argument("--latency-target", default=None, type=float, metavar="MS",
                   help="the latency budget of --reward latency_target")  # fmt: skip
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--target-params", default=None, type=_count, metavar="N",
                        help="the most accurate student with at most N parameters (100k, 1.5M): "
                        "reward params_target")  # fmt: skip
    budget.add_argument("--target-flops", default=None, type=_count, metavar="N",
                        help="the most accurate student with at most N FLOPs per image (10M): "
                        "reward flops_target")  # fmt: skip
    budget.add_argument("--compression", default=None, type=_factor, metavar="Nx",
                        help="the most accurate student N times smaller than the teacher (5x), "
                        "in parameters (or FLOPs with --reward flops_target)")  # fmt: skip
    option("--accuracy-floor", None, JobCreate, "accuracy_floor",
           "students below chance + this fraction of the teacher's margin over chance cannot "
           "rank first or be fully trained (0: off)", type=float)  # fmt: skip
    option("--seed", 0, JobCreate, "seed", "job seed", type=int)
    option("--kernels", None, EsnacOptions, "kernels", "ESNAC: kernels per step",
           type=_positive_int)  # fmt: skip
    option("--candidates", 200, EsnacOptions, "candidates",
           "ESNAC: random candidates scored per kernel", type=_positive_int)  # fmt: skip
    option("--train-encoder", None, EsnacOptions, "train_encoder",
           "ESNAC: train the LSTM encoder on the results, the paper's way (needed for a job "
           "whose encoder --embedding-from will reuse)",
           action=argparse.BooleanOptionalAction)  # fmt: skip
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="ESNAC: a named option set that the flags above override ('paper': the "
                   "paper's exact settings)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full `esnac` parser (also used by tests to check docker-compose commands)."""
    parser = argparse.ArgumentParser(
        prog="esnac",
        description="ESNAC: compress trained networks by Bayesian optimisation over a learned "
        "architecture embedding (ICLR 2019), as a service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="run the API, scheduler and dashboard",
        description="Run the coordinator: REST API, job scheduler and dashboard. "
        "Configured by ESNAC_* environment variables (see README).",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default %(default)s; non-loopback needs ESNAC_API_TOKEN)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.set_defaults(func=admin.cmd_serve)

    db = sub.add_parser("db", help="database schema", description="Manage the database schema.")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    for name, func, text in (
        ("upgrade", admin.cmd_db_upgrade, "apply all migrations (run before `esnac serve`)"),
        ("check", admin.cmd_db_check, "exit non-zero unless the schema is up to date"),
    ):
        p = db_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument(
            "--database-url",
            default=None,
            help="SQLAlchemy URL (default: ESNAC_DATABASE_URL, else ./esnac.db)",
        )
        p.set_defaults(func=func)

    teacher = sub.add_parser(
        "teacher",
        help="register or train teachers",
        description="Teachers: the trained networks to compress.",
    )
    t_sub = teacher.add_subparsers(dest="teacher_command", metavar="COMMAND", required=True)
    p = t_sub.add_parser(
        "train",
        help="train a zoo teacher on a worker",
        description="Train a teacher from the zoo on the server's workers.",
    )
    p.add_argument("--arch", required=True, help="zoo architecture, e.g. resnet20")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--num-classes", type=_positive_int, required=True)
    for flag, name, kind in (
        ("--epochs", "epochs", _positive_int),
        ("--lr", "lr", float),
        ("--batch-size", "batch_size", _positive_int),
        ("--seed", "seed", int),
        ("--max-train-samples", "max_train_samples", _positive_int),
    ):
        p.add_argument(
            flag, type=kind, default=None,
            help=f"server default: {_default(TeacherTrain, name)}",
        )  # fmt: skip
    p.add_argument("--wait", action="store_true", help="wait until training finishes")
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_teacher_train)

    p = t_sub.add_parser(
        "register",
        help="upload a trained network (ONNX, or safetensors weights of a zoo architecture)",
        description="Register a trained teacher: your own network as an ONNX file (--onnx), or "
        "the weights of a zoo or plugin architecture (--arch with --weights).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--onnx", metavar="FILE", help="an ONNX classifier (any network built from the "
        "supported ops; see GET /v1/teachers/archs for the zoo); weights kept in an external "
        "data file beside it are put inside before upload",
    )  # fmt: skip
    src.add_argument("--weights", help="a .safetensors state dict of --arch")
    p.add_argument("--arch", help="zoo or plugin architecture of --weights")
    p.add_argument("--name", help="a name for the teacher (shown in listings)")
    p.add_argument("--num-classes", type=_positive_int, required=True)
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument(
        "--accuracy",
        type=float,
        default=None,
        help="validation accuracy in [0, 1] (default: measured by the server)",
    )
    p.add_argument(
        "--accept-low-accuracy", action="store_true",
        help="register it even below 1.5x chance accuracy (otherwise refused: usually a wrong "
        "dataset or preprocessing)",
    )  # fmt: skip
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_teacher_register)

    p = t_sub.add_parser("list", help="list teachers", description="List the teachers.")
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_teacher_list)

    p = t_sub.add_parser("show", help="show one teacher", description="Show one teacher.")
    p.add_argument("teacher", type=int)
    p.add_argument("--json", action="store_true")
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_teacher_show)

    p = sub.add_parser(
        "submit",
        help="submit a compression search job",
        description="Submit a compression search for a teacher.",
    )
    p.add_argument("--teacher", type=int, required=True, help="teacher id")
    p.add_argument("--dataset", default=None,
                   help="default: the teacher's dataset; otherwise " + DATASET_HELP)  # fmt: skip
    p.add_argument(
        "--embedding-from",
        type=int,
        default=None,
        help="reuse the learned encoder of this finished job",
    )
    _add_search_options(p)
    p.add_argument("--watch", action="store_true", help="then watch it and print the results")
    p.add_argument("--top", type=_positive_int, default=5, help="rows of the result table")
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_submit)

    p = sub.add_parser(
        "status",
        help="list jobs, or show one job",
        description="Without JOB: list jobs. With JOB: its progress and best trial.",
    )
    p.add_argument("job", type=int, nargs="?")
    p.add_argument("--status", default=None, help="list only jobs in this state")
    p.add_argument("--limit", type=_positive_int, default=20)
    p.add_argument("--json", action="store_true")
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_status)

    p = sub.add_parser(
        "watch",
        help="progress bar of a job until it finishes",
        description="Follow a job: trials done, best reward so far; then results.",
    )
    p.add_argument("job", type=int)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p.add_argument("--top", type=_positive_int, default=5)
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_watch)

    p = sub.add_parser(
        "results",
        help="table of a job's best students",
        description="The best students of a job, best reward first.",
    )
    p.add_argument("job", type=int)
    p.add_argument("--top", type=_positive_int, default=10)
    p.add_argument(
        "--json", action="store_true", help="the listed trials (best or --pareto) as JSON"
    )
    p.add_argument(
        "--pareto",
        choices=tuple(PARETO_AXES),
        default=None,
        help="list the students no other beats on both this (smaller) and accuracy (higher), "
        "smallest first, instead of the best rewards",
    )
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_results)

    p = sub.add_parser("cancel", help="cancel a job", description="Cancel a queued/running job.")
    p.add_argument("job", type=int)
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_cancel)

    p = sub.add_parser(
        "export",
        help="download a student's weights or ONNX",
        description="Download a student's weights (safetensors) or ONNX model, "
        "and its architecture (the action JSON) beside it.",
    )
    p.add_argument("trial", type=int, nargs="?", help="trial id (or use --job/--rank)")
    p.add_argument("--job", type=int, default=None, help="export the job's rank-N student")
    p.add_argument("--rank", type=_positive_int, default=1)
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors")
    p.add_argument("-o", "--output", required=True, help="file or directory to write")
    _add_client_options(p)
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser(
        "demo",
        help="train a teacher and compress it, offline, in minutes",
        description="A self-contained demo on this machine: SQLite + local Ray, "
        "a small teacher trained on scikit-learn's digits, a short ESNAC search "
        "with a progress bar, and the result table.",
    )
    p.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="server port (default %(default)s; a free one if taken)",
    )
    p.add_argument("--arch", default="resnet20", help="teacher architecture (default %(default)s)")
    p.add_argument(
        "--teacher-epochs",
        type=_positive_int,
        default=6,
        help="teacher training epochs (SGD lr 0.05, batch 32; default %(default)s)",
    )
    p.add_argument("--workers", type=_positive_int, default=2, help="trials in flight at once")
    p.add_argument("--top", type=_positive_int, default=5, help="rows of the result table")
    p.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the server (and Ray) to start",
    )
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the server and dashboard running until Ctrl-C",
    )
    p.add_argument("--keep-dir", action="store_true", help="keep the temporary directory")
    _add_search_options(p, demo=True)
    p.set_defaults(func=cmd_demo, dataset=None, embedding_from=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `esnac` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ApiError as exc:
        print(f"esnac: error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except (ServerUnreachableError, CliError) as exc:
        print(f"esnac: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esnac: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
