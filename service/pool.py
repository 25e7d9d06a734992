"""A fixed number of trial-worker slots, each backed by one Ray actor (`RemoteTrialWorker`).

All jobs share the slots (first come, first served), so the cluster's workers are never
over-subscribed. A slot whose actor died, or was interrupted mid-task, gets a fresh actor;
`WorkerPool.run_with_retries` is the one place that retries a remote call on a fresh actor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray

from service.settings import Settings
from workers.spec import WorkerError

__all__ = ["Slot", "WorkerPool", "WorkersDiedError", "error_of"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkersDiedError(Exception):
    """The worker died on every attempt of a remote call."""

    def __init__(self, what: str, attempts: int, last: BaseException | None) -> None:
        super().__init__(f"the worker died {attempts} times {what}: {last}")
        self.attempts = attempts
        self.last = last


def error_of(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a worker error, also when it arrives wrapped by Ray."""
    for e in (exc, getattr(exc, "cause", None)):
        if isinstance(e, WorkerError):
            return e.code, e.message
    return "worker_exception", f"{exc.__class__.__name__}: {exc}"


@dataclass
class Slot:
    """One worker: its actor handle (created lazily), name and the jobs prepared on it."""

    index: int
    actor: Any = None
    name: str | None = None
    prepared: set[str] = field(default_factory=set)
    dirty: bool = False


class WorkerPool:
    """Hands out worker slots; `size` trials run at once over all jobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = settings.workers
        self._slots = [Slot(i) for i in range(self.size)]
        self._free: asyncio.Queue[Slot] = asyncio.Queue()
        for s in self._slots:
            self._free.put_nowait(s)

    # ------------------------------------------------------------------------- slots
    async def acquire(self) -> Slot:
        """Wait for a free slot; its actor exists when this returns."""
        slot = await self._free.get()
        try:
            if slot.actor is None:
                slot.actor = self._new_actor()
        except BaseException:
            self._free.put_nowait(slot)
            raise
        return slot

    def acquire_nowait(self, n: int) -> list[Slot]:
        """Up to `n` more slots that are free right now."""
        out: list[Slot] = []
        while len(out) < n and not self._free.empty():
            slot = self._free.get_nowait()
            if slot.actor is None:
                slot.actor = self._new_actor()
            out.append(slot)
        return out

    def release(self, slot: Slot) -> None:
        """Give a slot back; an interrupted one (`dirty`) gets a fresh actor first."""
        if slot.dirty:
            self._kill(slot)
        self._free.put_nowait(slot)

    def replace(self, slot: Slot) -> None:
        """Swap a dead actor for a fresh one (the slot stays held by the caller)."""
        self._kill(slot)
        slot.actor = self._new_actor()

    async def run_with_retries(
        self,
        call: Callable[[Slot], Awaitable[T]],
        *,
        attempts: int,
        what: str,
        slot: Slot | None = None,
    ) -> T:
        """`await call(slot)`; when the actor dies, replace it and try again, `attempts` times.

        Args:
            call: the remote call(s) of one attempt on a slot.
            attempts: how many tries at most (>= 1).
            what: for the log and the error ("on trial 3", "training teacher 1").
            slot: a slot the caller holds (kept, and not released here); None: acquire one per
                attempt and release it afterwards.

        Raises:
            WorkersDiedError: the actor died on every attempt.
            Exception: whatever `call` raised other than the actor's death (a worker error).
        """
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            held = slot if slot is not None else await self.acquire()
            try:
                return await call(held)
            except ray.exceptions.RayActorError as e:
                log.warning("worker died %s (attempt %d): %s", what, attempt, e)
                self.replace(held)
                last = e
            except asyncio.CancelledError:
                held.dirty = True
                raise
            finally:
                if slot is None:
                    self.release(held)
        raise WorkersDiedError(what, attempts, last)

    @property
    def free(self) -> int:
        return self._free.qsize()

    def shutdown(self) -> None:
        """Kill every actor (their running tasks are abandoned)."""
        for slot in self._slots:
            self._kill(slot)

    # ------------------------------------------------------------------------- jobs
    async def prepare(self, slot: Slot, ctx: dict[str, Any], teacher_ref: Any) -> str:
        """Make sure the slot's actor has the job's teacher and data cached; returns its name."""
        key = ctx["job_key"]
        if key not in slot.prepared:
            slot.name = await slot.actor.prepare.remote(ctx, teacher_ref)
            slot.prepared.add(key)
        elif slot.name is None:
            slot.name = await slot.actor.name.remote()
        return slot.name or ""

    async def release_job(self, job_key: str) -> None:
        """Drop a finished job's caches from every actor that prepared it."""
        for slot in self._slots:
            if job_key in slot.prepared and slot.actor is not None:
                slot.prepared.discard(job_key)
                try:
                    await slot.actor.release.remote(job_key)
                except ray.exceptions.RayError as e:  # best effort: the cache is only memory
                    log.warning("could not release %s on %s: %s", job_key, slot.name, e)

    # ------------------------------------------------------------------------- internals
    def _new_actor(self) -> Any:
        from workers.actor import RemoteTrialWorker

        s = self.settings
        return RemoteTrialWorker.options(
            num_cpus=s.cpus_per_trial, num_gpus=s.gpus_per_trial
        ).remote(threads=s.threads_per_trial)

    def _kill(self, slot: Slot) -> None:
        if slot.actor is not None:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception as e:  # noqa: BLE001 - an already dead actor is fine
                log.debug("kill of slot %d: %s", slot.index, e)
        slot.actor, slot.name, slot.dirty = None, None, False
        slot.prepared.clear()
