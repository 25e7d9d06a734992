"""The Ray actor that runs trials: one per GPU on a cluster, one per CPU slot on a laptop.

Usage (the coordinator)::

    worker = RemoteTrialWorker.options(num_cpus=1, num_gpus=1).remote()
    ref = ray.put(teacher_bytes)                    # once per job
    ray.get(worker.prepare.remote(ctx_dict, ref))   # ctx_dict: asdict(JobContext) minus weights
    result = ray.get(worker.evaluate.remote(job_key, spec.to_dict()))

While a trial, a full training or a teacher training runs, `progress()` answers from its own
concurrency group ("progress", one thread) with the attempt's last report (`workers.progress`):
the coordinator's heartbeat. Every other method runs in the default group, one call at a time.

Every method returns plain data (dicts, lists, numbers, bytes). Failures are raised as
`workers.spec.WorkerError` subclasses; Ray re-raises them in the caller as exceptions that are
also instances of the original class, so `except WorkerError` works on the caller's side and the
actor stays alive.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray
import torch

from workers import shipping, zoo
from workers.progress import Progress
from workers.spec import BadSpecError, FullTraining, TeacherTraining
from workers.teacher_check import measure_accuracy
from workers.train import resolve_device, train_teacher
from workers.trial import (
    JobContext,
    PreparedJob,
    finetune_student,
    guard,
    prepare_job,
    run_trial,
    worker_name,
)

__all__ = ["RemoteTrialWorker", "TrialWorker"]

_CTX_FIELDS = {f.name for f in dataclasses.fields(JobContext)}


class TrialWorker:
    """Runs trials, caching each job's teacher and data across its trials.

    Args:
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        threads: torch intra-op threads (None: leave torch's / Ray's setting).
    """

    def __init__(self, device: str | None = None, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self._jobs: dict[str, PreparedJob] = {}
        self._progress: Progress | None = None

    @ray.method(concurrency_group="progress")
    def progress(self) -> dict[str, Any] | None:
        """The running call's report (`Progress.snapshot()`), or None when idle."""
        current = self._progress
        return current.snapshot() if current is not None else None

    def _track(self, phase: str) -> Progress:
        self._progress = Progress(phase)
        return self._progress

    def name(self) -> str:
        """`host:pid` of the worker process."""
        return worker_name()

    def node_id(self) -> str:
        """The Ray node this worker runs on (hex id)."""
        return str(ray.get_runtime_context().get_node_id())

    def prepare(
        self,
        ctx: dict[str, Any],
        teacher_weights: bytes | None = None,
        data: list[Any] | None = None,
    ) -> str:
        """Cache a job's teacher and data (idempotent per `job_key`).

        Args:
            ctx: `dataclasses.asdict(JobContext)`, `teacher_weights` may be left out.
            teacher_weights: the teacher's safetensors bytes (pass the ObjectRef from `ray.put`
                here, as a top-level argument, so Ray resolves it once per worker).
            data: `[ObjectRef]` of the job's dataset shipped by the coordinator
                (`workers.shipping.pack`; fetched only when this host has no copy of its own),
                or None.

        Returns:
            The worker's name.

        Raises:
            BadSpecError: unknown fields, missing weights, or anything `prepare_job` refuses.
            DatasetMissingError: nothing shipped and this host has no copy of the dataset.
        """
        with guard("prepare", wrap_all=True):
            if not isinstance(ctx, dict):
                raise BadSpecError(f"ctx must be a dict, got {type(ctx).__name__}")
            unknown = set(ctx) - _CTX_FIELDS
            if unknown:
                raise BadSpecError(f"unknown job context field(s): {sorted(unknown)}")
            fields = dict(ctx)
            if teacher_weights is not None:
                fields["teacher_weights"] = teacher_weights
            if not fields.get("teacher_weights"):
                raise BadSpecError("no teacher weights: pass them as prepare's second argument")
            key = fields.get("job_key")
            if key in self._jobs:
                return self.name()
            try:
                job = JobContext(**fields)
            except TypeError as exc:
                raise BadSpecError(f"malformed job context: {exc}") from exc
            found, root = shipping.local_copy(job.dataset, job.data_dir)
            splits = None
            if found:  # this host has a copy: nothing is fetched
                job = dataclasses.replace(job, data_dir=root)
            elif data:
                splits = shipping.load_shipped(job.dataset, ray.get(data[0]))
            else:
                shipping.require_local(job.dataset, job.data_dir)  # raises dataset_missing
            self._jobs[job.job_key] = prepare_job(job, device=self.device, splits=splits)
        return self.name()

    def _job(self, job_key: str) -> PreparedJob:
        state = self._jobs.get(job_key)
        if state is None:
            raise BadSpecError(
                f"job {job_key!r} is not prepared on worker {self.name()}; call prepare first"
            )
        return state

    def evaluate(
        self, job_key: str, spec: dict[str, Any], weights: bytes | None = None
    ) -> dict[str, Any]:
        """Run one trial of a prepared job.

        Args:
            job_key: the job's key given to `prepare`.
            spec: `TrialSpec.to_dict()`.
            weights: start from these student weights (safetensors; a finishing evaluation
                continues a trial's search training) instead of the teacher's.

        Returns:
            `dataclasses.asdict(TrialResult)` (weights as bytes or None).

        Raises:
            BadSpecError, WorkerOutOfMemoryError, TrainingFailedError.
        """
        progress = self._track("prepare")
        try:
            with guard("trial", wrap_all=True):
                state = self._job(job_key)
                result = run_trial(
                    state.ctx, spec, cache=state, progress=progress, init_weights=weights
                )
        finally:
            self._progress = None
        return dataclasses.asdict(result)

    def finetune(
        self,
        job_key: str,
        action: dict[str, Any],
        weights: bytes | None,
        training: dict[str, Any],
        seed: int,
    ) -> dict[str, Any]:
        """Fully train one student of a prepared job from its search weights.

        Returns:
            `{"accuracy", "test_accuracy", "history", "weights", "onnx", "params", "flops",
            "seconds"}`.
        """
        progress = self._track("prepare")
        try:
            with guard("full training", wrap_all=True):
                state = self._job(job_key)
                try:
                    full = FullTraining(**training)
                except TypeError as exc:
                    raise BadSpecError(f"malformed full-training settings: {exc}") from exc
                return finetune_student(state, action, weights, full, int(seed), progress)
        finally:
            self._progress = None

    def train_teacher(
        self,
        arch: str,
        num_classes: int,
        dataset: str,
        data_dir: str | None,
        training: dict[str, Any],
    ) -> dict[str, Any]:
        """Train a zoo teacher (`training`: `TeacherTraining.to_dict()`).

        Returns:
            `{"weights": bytes, "accuracy": float, "metadata": dict, "seconds": float}`.
        """
        t0 = time.perf_counter()
        progress = self._track("prepare")
        try:
            with guard("teacher training", wrap_all=True):
                root = shipping.require_local(dataset, data_dir)
                res = train_teacher(
                    arch,
                    num_classes,
                    dataset,
                    TeacherTraining.from_dict(training),
                    root=root,
                    device=self.device,
                    progress=progress,
                )
        finally:
            self._progress = None
        return {
            "weights": res.weights,
            "accuracy": res.accuracy,
            "metadata": res.metadata,
            "seconds": time.perf_counter() - t0,
        }

    def measure_teacher(
        self, arch: str, num_classes: int, weights: bytes, dataset: str, data_dir: str | None
    ) -> float:
        """Validation accuracy of teacher weights on the dataset's validation split (the
        measurement of an upload's checks, `workers.teacher_check`, on this worker's device)."""
        with guard("measure teacher", wrap_all=True):
            root = shipping.require_local(dataset, data_dir)
            model = zoo.load_teacher(arch, int(num_classes), weights)
            return measure_accuracy(model, dataset, root, self.device)

    def release(self, job_key: str) -> None:
        """Drop a job's cached teacher and data."""
        self._jobs.pop(job_key, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def jobs(self) -> list[str]:
        """Keys of the jobs cached here."""
        return sorted(self._jobs)


RemoteTrialWorker = ray.remote(concurrency_groups={"progress": 1})(TrialWorker)  # type: ignore[call-overload]
