"""Run a teacher's checks (`workers.teacher_check`) in a child process and await the answer.

The API process stays free of torch: building the architecture, loading uploaded weights and a
validation pass happen in a child process per request, killed when it runs past
`ESNAC_TEACHER_CHECK_TIMEOUT`. The children are forked from a multiprocessing fork server
(started on the first check, one per API process) that has imported torch and the check's
modules once (`workers.teacher_check.PRELOAD`): a check costs its own work, not a ~3 CPU s
import of torch each time. Nothing of the API process's state reaches the children. The
coordinator's fit process is forked from the same server (`forkserver_context`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.settings import Settings

__all__ = ["CheckedTeacher", "TeacherCheckFailedError", "TeacherRefusedError", "check_teacher"]


class TeacherRefusedError(Exception):
    """The teacher failed a check; `message` says which and how to fix it (a 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TeacherCheckFailedError(RuntimeError):
    """The check itself could not run (crashed or timed out): not the user's fault."""


@dataclass(frozen=True)
class CheckedTeacher:
    params: int
    input_shape: tuple[int, int, int]
    accuracy: float | None
    #: the limits of a size budget: "flops", "min_params", "min_flops" (`Teacher.sizes`)
    sizes: dict[str, int] | None = None


async def check_teacher(
    settings: Settings,
    *,
    arch: str,
    num_classes: int,
    dataset: str,
    weights: bytes | None = None,
    accuracy: float | None = None,
    accept_low_accuracy: bool = False,
) -> CheckedTeacher:
    """Check a teacher in a child process (see `workers.teacher_check.check_teacher`).

    Raises:
        TeacherRefusedError: a check failed (unknown arch, class count, weights, dataset).
        TeacherCheckFailedError: the child crashed or ran past the timeout.
    """
    with tempfile.TemporaryDirectory(prefix="esnac-check-") as tmp:
        request: dict[str, object] = {
            "arch": arch,
            "num_classes": num_classes,
            "dataset": dataset,
            "data_dir": settings.data_dir,
            "accuracy": accuracy,
            "accept_low_accuracy": accept_low_accuracy,
            "threads": settings.threads_per_trial or 1,
        }
        if weights is not None:
            path = Path(tmp) / "weights.safetensors"
            path.write_bytes(weights)
            request["weights_path"] = str(path)
        answer = await asyncio.to_thread(_run_child, request, tmp, settings.teacher_check_timeout)
    if "crashed" in answer:
        raise TeacherCheckFailedError(f"the teacher check failed: {answer['crashed']}")
    if not answer.get("ok"):
        raise TeacherRefusedError(str(answer.get("message")))
    acc = answer.get("accuracy")
    return CheckedTeacher(
        params=int(answer["params"]),
        input_shape=tuple(int(x) for x in answer["input_shape"]),  # type: ignore[arg-type]
        accuracy=None if acc is None else float(acc),
        sizes={k: int(v) for k, v in answer["sizes"].items()} if answer.get("sizes") else None,
    )


_server_lock = threading.Lock()


#: The coordinator's fit process (`service.fitter`) forks from the same server: with these
#: preloaded too, starting it costs a fork, not a fresh interpreter importing torch.
_FIT_PRELOAD = ("service.fitter", "service.searchers")


@functools.cache
def forkserver_context() -> Any:
    """The process's fork-server context, its server told (once, before it starts) to preload
    what the teacher checks and the fit process import. One fork server per process: the
    preload list is global, so every user of it takes the context from here."""
    from workers.teacher_check import PRELOAD  # torch-free at import

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, *_FIT_PRELOAD])
    return ctx


def _run_child(request: dict[str, object], cwd: str, timeout: float) -> dict[str, Any]:
    """One check in a forked child (blocking; run in a thread): its answer, or `{"crashed":
    ...}` when it died without one. Raises TeacherCheckFailedError past `timeout`."""
    from workers.teacher_check import serve_one

    ctx = forkserver_context()
    parent, child = ctx.Pipe(duplex=False)
    with _server_lock:  # the fork server starts once, however many checks arrive together
        proc = ctx.Process(target=serve_one, args=(request, child, cwd), daemon=True)
        proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            raise TeacherCheckFailedError(
                f"checking the teacher took longer than ESNAC_TEACHER_CHECK_TIMEOUT="
                f"{timeout:g} s; pass `accuracy` to skip measuring it, or raise the timeout"
            )
        try:
            answer: dict[str, Any] = json.loads(parent.recv_bytes())  # JSON: nothing unpickled
        except EOFError:  # died without an answer (a crash in native code, a kill)
            proc.join(5)
            answer = {"crashed": f"it exited with status {proc.exitcode} and no answer"}
        return answer
    finally:
        parent.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
