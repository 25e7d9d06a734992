"""A fixed number of trial-worker slots, each backed by one Ray actor (`RemoteTrialWorker`).

All jobs share the slots (first come, first served), so the cluster's workers are never
over-subscribed. A slot whose actor died, or was interrupted mid-task, gets a fresh actor.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import ray

from service.settings import Settings

__all__ = ["Slot", "WorkerPool"]

log = logging.getLogger(__name__)


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
