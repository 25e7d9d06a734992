"""The client commands: teachers, jobs, results and exports, all through the REST API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from service.cli.client import Client, CliError
from service.cli.render import (
    TERMINAL_JOB_STATES,
    ProgressBar,
    format_count,
    format_duration,
    format_table,
    has_latency,
    pareto_trials,
    ranked_trials,
    result_headers,
    results_rows,
    within_target,
)

__all__ = [
    "cmd_cancel",
    "cmd_export",
    "cmd_results",
    "cmd_status",
    "cmd_submit",
    "cmd_teacher_list",
    "cmd_teacher_register",
    "cmd_teacher_show",
    "cmd_teacher_train",
    "cmd_watch",
    "job_body",
    "print_results",
    "teacher_line",
    "wait_for_teacher",
    "watch_job",
]


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


def cmd_teacher_train(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "arch": args.arch,
        "num_classes": args.num_classes,
        "dataset": args.dataset,
    }
    for opt in ("epochs", "lr", "batch_size", "seed", "max_train_samples"):
        if getattr(args, opt) is not None:  # unset: the server's default
            body[opt] = getattr(args, opt)
    with _client(args) as client:
        teacher = client.post("/v1/teachers/train", json=body)
        print(f"teacher {teacher['id']}: training {teacher['arch']} on {teacher['dataset']}")
        if args.wait:
            teacher = wait_for_teacher(client, teacher["id"])
            print(teacher_line(teacher))
    return 0


def wait_for_teacher(client: Client, teacher_id: int, poll: float = 1.0) -> dict[str, Any]:
    """Poll a training teacher until it is ready; raise `CliError` if its training failed."""
    bar = ProgressBar()
    try:
        while True:
            teacher = client.teacher(teacher_id)
            if teacher["status"] != "training":
                break
            p = teacher.get("progress")
            if p and p.get("epochs"):  # the worker's heartbeat: epochs done, last accuracy
                acc = p.get("val_accuracy")
                extra = "" if acc is None else f"validation accuracy {100 * acc:.2f}%"
                bar.update(p["epoch"], p["epochs"], f"teacher {teacher_id} epochs", extra)
            else:
                bar.note(f"teacher {teacher_id}: starting")
            time.sleep(poll)
    finally:
        bar.close()
    if teacher["status"] == "failed":
        raise CliError(f"teacher {teacher_id} failed to train: {teacher.get('error')}")
    return teacher


def teacher_line(t: dict[str, Any]) -> str:
    acc = "-" if t.get("accuracy") is None else f"{100 * t['accuracy']:.2f}%"
    arch = f"{t['arch']} ({t['name']})" if t.get("name") else t["arch"]
    return (
        f"teacher {t['id']}: {arch} on {t['dataset']}, {t['status']}, "
        f"{format_count(t['params'])} params, accuracy {acc}"
    )


def cmd_teacher_register(args: argparse.Namespace) -> int:
    onnx = args.onnx is not None
    if not onnx and not args.arch:
        raise CliError("--weights needs --arch (or upload your network with --onnx FILE)")
    if onnx and args.arch:
        raise CliError("an ONNX file carries its architecture: leave out --arch")
    path = Path(args.onnx if onnx else args.weights)
    if not path.is_file():
        raise CliError(f"{'ONNX' if onnx else 'weights'} file {path} does not exist")
    data: dict[str, str] = {"num_classes": str(args.num_classes), "dataset": args.dataset}
    if not onnx:
        data["arch"] = args.arch
    for field in ("accuracy", "name"):
        if getattr(args, field) is not None:
            data[field] = str(getattr(args, field))
    if getattr(args, "accept_low_accuracy", False):
        data["accept_low_accuracy"] = "true"
    payload = onnx_single_file(path) if onnx else path.read_bytes()
    with _client(args) as client:
        files = {"model" if onnx else "weights": (path.name, payload, "application/octet-stream")}
        teacher = client.post("/v1/teachers", data=data, files=files)
    print(teacher_line(teacher))
    return 0


#: Largest ONNX model the CLI puts into one file (protobuf's limit for one message).
ONNX_SINGLE_FILE_LIMIT = 2**31 - 1


def onnx_single_file(path: Path) -> bytes:
    """The ONNX file's bytes, with weights kept in external data files beside it (what
    `torch.onnx.export` writes by default: `model.onnx` + `model.onnx.data`) put inside."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse error: let the server say what is wrong
        del e
        return path.read_bytes()
    tensors = [*model.graph.initializer,
               *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    if not any(uses_external_data(t) for t in tensors):
        return path.read_bytes()
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as e:
        raise CliError(
            f"{path} keeps its weights in external data files that could not be read ({e}); "
            "keep them beside it, or export one file: torch.onnx.export(..., "
            "external_data=False)"
        ) from e
    for t in tensors:
        if uses_external_data(t):
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    if model.ByteSize() > ONNX_SINGLE_FILE_LIMIT:
        raise CliError(f"{path} with its external data is over 2 GB, too large for one upload")
    print(f"{path.name}: weights from its external data file(s) put inside for upload")
    return model.SerializeToString()  # type: ignore[no-any-return]


def cmd_teacher_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        teachers = client.get("/v1/teachers")
    rows = [
        [
            t["id"],
            t.get("name") or "-",
            t["arch"],
            t["dataset"],
            t["status"],
            format_count(t["params"]),
            "-" if t.get("accuracy") is None else f"{100 * t['accuracy']:.2f}%",
        ]
        for t in teachers
    ]
    print(format_table(("id", "name", "arch", "dataset", "status", "params", "accuracy"), rows))
    return 0


def cmd_teacher_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        teacher = client.teacher(args.teacher)
    print(json.dumps(teacher, indent=2) if args.json else teacher_line(teacher))
    return 0


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `POST /v1/jobs` body from `submit` / `demo` options (unset options: server default)."""
    body: dict[str, Any] = {"teacher_id": args.teacher}
    for opt in ("strategy", "steps", "per_step", "top_k", "reward", "seed", "accuracy_floor"):
        if getattr(args, opt, None) is not None:
            body[opt] = getattr(args, opt)
    if getattr(args, "dataset", None):
        body["dataset"] = args.dataset
    if getattr(args, "embedding_from", None) is not None:
        body["embedding_from"] = args.embedding_from
    latency = {
        key: getattr(args, opt)
        for opt, key in (
            ("latency", "backend"),
            ("latency_threads", "threads"),
            ("latency_batch", "batch"),
            ("latency_target", "target_ms"),
        )
        if getattr(args, opt, None) is not None
    }
    if latency:
        body["latency"] = latency
    for opt, measure in (("target_params", "params"), ("target_flops", "flops")):
        if getattr(args, opt, None) is not None:
            body.setdefault("reward", f"{measure}_target")
            body["target"] = {measure: getattr(args, opt)}
    if getattr(args, "compression", None) is not None:
        body.setdefault("reward", "params_target")
        body["target"] = {"times_smaller": args.compression}
    search: dict[str, Any] = {}
    for opt, key in (
        ("search_epochs", "epochs"),
        ("search_batch_size", "batch_size"),
        ("max_train_samples", "max_train_samples"),
    ):
        if getattr(args, opt, None) is not None:
            search[key] = getattr(args, opt)
    if getattr(args, "no_augment", False):
        search["augment"] = False
    if search:
        body["search"] = search
    full: dict[str, Any] = {}
    for opt, key in (("full_epochs", "epochs"), ("full_batch_size", "batch_size")):
        if getattr(args, opt, None) is not None:
            full[key] = getattr(args, opt)
    if full:
        body["full_training"] = full
    searcher: dict[str, Any] = {}
    for opt in ("preset", "kernels", "candidates", "train_encoder"):
        if getattr(args, opt, None) is not None:
            searcher[opt] = getattr(args, opt)
    if searcher:
        body["searcher"] = searcher
    return body


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.post("/v1/jobs", json=job_body(args))
        print(
            f"job {job['id']}: {job['strategy']} search of teacher {job['teacher_id']}, "
            f"{job['steps']} steps x {job['per_step']} candidates, top {job['top_k']} fully trained"
        )
        if args.watch:
            job = watch_job(client, job["id"])
            print_results(client, job, top=args.top)
            return 0 if job["status"] == "succeeded" else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.job is None:
            jobs = client.jobs(status=args.status, limit=args.limit)
            rows = [_job_row(j) for j in jobs]
            print(
                format_table(
                    ("job", "status", "teacher", "strategy", "trials", "best reward", "age"), rows
                )
            )
            return 0
        job = client.job(args.job)
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    p = job["progress"]
    best = job.get("best_trial")
    print(f"job {job['id']}: {job['status']}  ({job['strategy']}, teacher {job['teacher_id']})")
    print(
        f"  trials: {p['succeeded']} succeeded, {p['failed']} failed, {p['running']} running, "
        f"{p['pending']} pending of {p['total']}; {p['finalized']}/{job['top_k']} fully trained"
    )
    if best:
        print(
            f"  best: trial {best['id']}  reward {best['reward']:.4f}  accuracy "
            f"{100 * best['accuracy']:.2f}%  params {format_count(best['params'])}"
        )
    if job.get("error"):
        print(f"  error: {job['error']}")
    return 0


def _job_row(job: dict[str, Any]) -> list[Any]:
    p = job["progress"]
    best = job.get("best_trial")
    return [
        job["id"],
        job["status"],
        job["teacher_id"],
        job["strategy"],
        f"{p['succeeded'] + p['failed']}/{p['total']}",
        f"{best['reward']:.4f}" if best and best.get("reward") is not None else "-",
        _age(job["created_at"]),
    ]


def _age(timestamp: str) -> str:
    from datetime import datetime, timezone

    created = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return format_duration((datetime.now(timezone.utc) - created).total_seconds())


def watch_job(client: Client, job_id: int, poll: float = 1.0) -> dict[str, Any]:
    """Show a progress bar of a job's trials (then of its full training) until it finishes.

    Returns:
        The finished job (`JobPublic` as a dict).
    """
    bar = ProgressBar()
    phase = ""
    try:
        while True:
            job = client.job(job_id)
            p = job["progress"]
            best = job.get("best_trial")
            best_text = (
                f"best reward {best['reward']:.4f} (trial {best['id']}, "
                f"{format_count(best['params'])} params, {100 * best['accuracy']:.1f}%)"
                if best and best.get("reward") is not None
                else "best reward -"
            )
            # A short full training can start and end between two polls: a succeeded job with
            # finalized students still gets its full-training bar.
            final_phase = (
                job["status"] == "finalizing"
                or (job["status"] == "succeeded" and p["finalized"] > 0)
                or (phase == "final" and job["status"] in TERMINAL_JOB_STATES)
            )
            extra = f"running {p['running']}  failed {p['failed']}  {best_text}"
            if final_phase and job["top_k"] > 0:
                if phase != "final":
                    bar.update(p["succeeded"] + p["failed"], p["total"], "trials", extra)
                    bar.close()
                    bar = ProgressBar()
                    phase = "final"
                bar.update(p["finalized"], job["top_k"], "full training", best_text)
            else:
                bar.update(p["succeeded"] + p["failed"], p["total"], "trials", extra)
            if job["status"] in TERMINAL_JOB_STATES:
                break
            time.sleep(poll)
    finally:
        bar.close()
    if job["status"] != "succeeded":
        print(f"job {job_id} {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
    return job


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = watch_job(client, args.job, poll=args.interval)
        print_results(client, job, top=args.top)
    return 0 if job["status"] == "succeeded" else 1


def print_results(
    client: Client, job: dict[str, Any], top: int = 5, pareto: str | None = None
) -> None:
    """Print the result table of a job: the teacher, then its best students (or, with
    `pareto`, its students on the Pareto front of that axis and accuracy)."""
    teacher = client.teacher(job["teacher_id"])
    trials = client.trials(job["id"])
    _check_pareto(job, trials, pareto)
    floor = job.get("floor_accuracy")
    evaluated = len(ranked_trials(trials))
    if pareto:
        front = len(pareto_trials(trials, pareto))
        shown = f", {front} on the Pareto front of {pareto} and accuracy, smallest first"
        if front > top:
            shown += f" ({top} shown)"
    else:
        shown = f", the best {top} shown" if evaluated > top else ""
    name = f"{teacher['name']} ({teacher['arch']})" if teacher.get("name") else teacher["arch"]
    print(
        f"job {job['id']} ({job['status']}): {evaluated} students evaluated{shown}, "
        f"teacher {name} on {job['dataset']}"
    )
    target = job.get("target")
    if target:
        meets = sum(within_target(target, t) for t in ranked_trials(trials))
        asked = f" ({target['times_smaller']:g}x smaller)" if target.get("times_smaller") else ""
        print(f"budget: at most {format_count(int(target['value']))} {target['measure']}{asked};"
              f" {meets} of {evaluated} students meet it")  # fmt: skip
    below = sum((t.get("accuracy") or 0.0) < floor for t in ranked_trials(trials)) if floor else 0
    if below and floor is not None:
        print(f"{below} student(s) below the accuracy floor ({100 * floor:.1f} %: chance + "
              f"{job['accuracy_floor']:g} of the teacher's margin) are ranked last and not fully "
              "trained: near chance, whatever their size")  # fmt: skip
    latency = has_latency(trials)
    rows = results_rows(trials, teacher, top, latency, pareto, target, floor)
    print(format_table(result_headers(latency, target is not None), rows))


def _check_pareto(job: dict[str, Any], trials: list[dict[str, Any]], pareto: str | None) -> None:
    if pareto == "latency" and not has_latency(trials):
        raise CliError(
            f"job {job['id']} measured no latency; submit with --latency or --reward latency"
        )


def cmd_results(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job)
        if args.json:
            trials = client.trials(args.job)
            _check_pareto(job, trials, args.pareto)
            chosen = pareto_trials(trials, args.pareto) if args.pareto else ranked_trials(trials)
            print(json.dumps(chosen[: args.top], indent=2))
        else:
            print_results(client, job, top=args.top, pareto=args.pareto)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.post(f"/v1/jobs/{args.job}/cancel")
    print(f"job {job['id']}: {job['status']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.trial is None:
            if args.job is None:
                raise CliError("give a trial id, or --job JOB (with --rank N) to export a student")
            ranked = ranked_trials(client.trials(args.job))
            if len(ranked) < args.rank:
                raise CliError(
                    f"job {args.job} has {len(ranked)} succeeded trials, no rank {args.rank}"
                )
            trial = ranked[args.rank - 1]
        else:
            trial = client.get(f"/v1/trials/{args.trial}")
        kind = "onnx" if args.format == "onnx" else "weights"
        response = client.request("GET", f"/v1/trials/{trial['id']}/{kind}")
        card = client.get(f"/v1/trials/{trial['id']}/card") if trial.get("has_card") else None
    out = Path(args.output)
    if out.is_dir():
        out = out / f"trial-{trial['id']}.{'onnx' if kind == 'onnx' else 'safetensors'}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(response.content)
    action_path = out.with_name(out.name + ".action.json")
    action_path.write_text(json.dumps(trial["action"], indent=2) + "\n")
    card_path = None
    if card is not None:  # a fully trained student: self-contained with its model card
        card_path = out.with_name(out.name + ".card.json")
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    if kind == "onnx":
        which = "the ONNX model"
        if card is None:  # exported before students carried cards (and raw-input ONNX)
            print(
                f"note: trial {trial['id']} has no model card: its ONNX expects normalised "
                "images, not raw 0..1 ones",
                file=sys.stderr,
            )
    else:  # "final" after full training, else the search-time weights
        which = f"the {response.headers.get('X-ESNAC-Weights', 'search')} weights"
    print(
        f"trial {trial['id']}: wrote {which} ({len(response.content):,} bytes) to {out}, "
        f"its architecture (action) to {action_path}"
        + (f", its model card to {card_path}" if card_path else "")
    )
    return 0
