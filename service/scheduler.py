"""The scheduler: finds work in the database and drives it inside the app's lifespan.

Every active job gets a `JobRunner` task (`service.runner`), every teacher in training a
training task. Fits run in the `Fitter`'s process and remote calls on the `WorkerPool`'s actors,
so the event loop (and the API) stays responsive.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from service.artifacts import ArtifactStore
from service.db import Job, Storage, Teacher, TeacherState
from service.db.retry import retry_transient
from service.fitter import Fitter
from service.pool import Slot, WorkerPool, WorkersDiedError, error_of
from service.runner import JobRunner
from service.settings import Settings
from workers.spec import TeacherTraining

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the cluster's resources (`ESNAC_WORKERS=auto`).
AUTOSCALE_EVERY = 2.0
T = TypeVar("T")


def _forget(tasks: dict[int, asyncio.Task[None]], key: int, _done: asyncio.Task[None]) -> None:
    tasks.pop(key, None)


class Scheduler:
    """Finds work in the database (jobs to drive, teachers to train) and runs it."""

    def __init__(
        self, settings: Settings, storage: Storage, artifacts: ArtifactStore, pool: WorkerPool
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.artifacts = artifacts
        self.pool = pool
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._teachers: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # Leave a core to the API: fits get all but one of the machine's CPUs.
        self.fitter = Fitter(
            settings.fit_threads or max(1, (os.cpu_count() or 2) - 1), settings.fit_device
        )

    async def best_effort(self, fn: Callable[..., Any], *args: Any) -> None:
        """A storage call whose loss does not matter (a progress report: the next one follows):
        run in a thread, not retried, a failure only logged."""
        try:
            await asyncio.to_thread(fn, *args)
        except Exception as e:  # noqa: BLE001 - the database may be briefly down
            log.debug("skipped %s: %s", getattr(fn, "__qualname__", fn), e)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a storage call in a thread (the event loop never waits on the database).

        A transient database error (a restart, a lost connection) is retried with backoff
        until the database is back (`service.db.retry`): results are held meanwhile, not lost.
        """
        return await retry_transient(
            lambda: asyncio.to_thread(fn, *args, **kwargs),
            what=getattr(fn, "__qualname__", repr(fn)),
        )

    def notify(self) -> None:
        """Look for new work now (called after a job is submitted)."""
        self._wake.set()

    def waiting(self) -> str | None:
        """Why no trial can start now (the pool has no workers), or None."""
        return self.pool.waiting()

    def usage(self) -> dict[str, Any]:
        """The worker slots, for `/readyz`."""
        return self.pool.usage()

    async def run(self) -> None:
        """The main loop: start a runner for every active job and training teacher (and, with
        `ESNAC_WORKERS=auto`, follow the cluster's size every few seconds)."""
        sized = 0.0
        while True:
            if self.pool.auto and time.monotonic() - sized >= AUTOSCALE_EVERY:
                sized = time.monotonic()
                await self.pool.autoscale()
            try:
                await self._scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler scan failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _scan(self) -> None:
        def work() -> tuple[list[Job], list[Teacher]]:
            with self.storage.session() as repo:
                return repo.active_jobs(), repo.list_teachers(status=TeacherState.TRAINING)

        jobs, teachers = await self.db(work)
        for job in jobs:
            if job.id not in self._jobs:
                runner = JobRunner(self, job.id)
                task = asyncio.create_task(runner.run(), name=f"job-{job.id}")
                self._jobs[job.id] = task
                task.add_done_callback(functools.partial(_forget, self._jobs, job.id))
        for teacher in teachers:
            if teacher.id not in self._teachers:
                task = asyncio.create_task(self._train_teacher(teacher), name=f"t-{teacher.id}")
                self._teachers[teacher.id] = task
                task.add_done_callback(functools.partial(_forget, self._teachers, teacher.id))

    async def cancel(self, job_id: int) -> None:
        """Stop driving a job (its state was already set to cancelled in the database)."""
        task = self._jobs.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every runner (their trials stay running in the database: resumed later)."""
        tasks = [*self._jobs.values(), *self._teachers.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.fitter.shutdown()

    # ------------------------------------------------------------------------ teachers
    async def _train_teacher(self, teacher: Teacher) -> None:
        training = TeacherTraining.from_dict(teacher.train_settings)

        def record(report: dict[str, Any]) -> None:
            with self.storage.session() as repo:
                repo.record_teacher_progress(teacher.id, report)

        async def beat(report: dict[str, Any]) -> None:
            await self.best_effort(record, report)

        async def call(slot: Slot) -> dict[str, Any]:
            slot.name = slot.name or await slot.actor.name.remote()
            ref = slot.actor.train_teacher.remote(
                teacher.arch,
                teacher.num_classes,
                teacher.dataset,
                self.settings.data_dir,
                training.to_dict(),
            )
            return await self.pool.supervise(slot, ref, on_progress=beat)  # type: ignore[no-any-return]

        try:
            out = await self.pool.run_with_retries(
                call, attempts=self.settings.max_attempts, what=f"training teacher {teacher.id}"
            )
        except WorkersDiedError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - stored as the teacher's error
            code, message = error_of(e)
            error = f"{code}: {message}"
        else:

            def store() -> None:
                with self.storage.session() as repo:
                    art = self.artifacts.write(repo, "teacher", out["weights"])
                    repo.finish_teacher(
                        teacher.id, weights_id=art.id, accuracy=float(out["accuracy"])
                    )

            await self.db(store)
            return

        def fail() -> None:
            with self.storage.session() as repo:
                repo.finish_teacher(teacher.id, error=error)

        await self.db(fail)
