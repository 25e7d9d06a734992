"""Run a teacher's checks (`workers.teacher_check`) in a child process and await the answer.

The API process stays free of torch: building the architecture, loading uploaded weights and a
validation pass happen in `python -m workers.teacher_check`, started per request with the
coordinator's own Python and killed when it runs past `ESNAC_TEACHER_CHECK_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
        env = dict(os.environ, OMP_NUM_THREADS=str(request["threads"]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.teacher_check",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp,  # no relative path reaches ours
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(request).encode()),
                timeout=settings.teacher_check_timeout,
            )
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise TeacherCheckFailedError(
                f"checking the teacher took longer than ESNAC_TEACHER_CHECK_TIMEOUT="
                f"{settings.teacher_check_timeout:g} s; pass `accuracy` to skip measuring it, "
                "or raise the timeout"
            ) from None
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if proc.returncode != 0 or not isinstance(answer, dict):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise TeacherCheckFailedError(
            f"the teacher check exited with status {proc.returncode}: {tail[0]}"
        )
    if not answer.get("ok"):
        raise TeacherRefusedError(str(answer.get("message")))
    acc = answer.get("accuracy")
    return CheckedTeacher(
        params=int(answer["params"]),
        input_shape=tuple(int(x) for x in answer["input_shape"]),  # type: ignore[arg-type]
        accuracy=None if acc is None else float(acc),
        sizes={k: int(v) for k, v in answer["sizes"].items()} if answer.get("sizes") else None,
    )
