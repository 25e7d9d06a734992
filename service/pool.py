"""Trial-worker slots, each backed by one Ray actor (`RemoteTrialWorker`): a fixed number
(`ESNAC_WORKERS=N`), or as many as the Ray cluster's resources hold (`ESNAC_WORKERS=auto`,
re-sized by `WorkerPool.autoscale` as nodes join and leave).

All jobs share the slots (first come, first served), so the cluster's workers are never
over-subscribed. A slot whose actor died, or was interrupted mid-task, gets a fresh actor;
`WorkerPool.run_with_retries` is the one place that retries a remote call on a fresh actor. An
attempt lost with its node (the node left the cluster, or the pool shrank under it) is recorded
as `node_lost` and does not count toward `ESNAC_MAX_ATTEMPTS` (at most `ESNAC_MAX_NODE_LOSSES`
of them per call): it is the cluster's fault, not the trial's.

`WorkerPool.supervise` awaits a running call while polling its actor's `progress()` (the
heartbeat): an actor silent for `ESNAC_HEARTBEAT_TIMEOUT` seconds (frozen, deadlocked) or past
`ESNAC_TRIAL_TIMEOUT` is killed and the attempt is lost (`stalled` / `timeout`) -- retried like
a worker that died, and its late result, if any, is never read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray

from service.settings import Settings
from workers.spec import WorkerError

__all__ = ["AttemptLostError", "Slot", "WorkerPool", "WorkersDiedError", "error_of"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class AttemptLostError(Exception):
    """The coordinator ended an attempt: its worker went silent (`stalled`) or ran past its
    deadline (`timeout`). The actor has been killed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WorkersDiedError(Exception):
    """Every attempt of a remote call was lost: the worker died, stalled or timed out."""

    def __init__(self, what: str, attempts: int, last: BaseException | None) -> None:
        super().__init__(f"{attempts} attempt(s) lost {what}; the last: {last}")
        self.attempts = attempts
        self.last = last

    @property
    def code(self) -> str:
        """`stalled` / `timeout` when the last attempt was ended so, else `max_attempts`."""
        return self.last.code if isinstance(self.last, AttemptLostError) else "max_attempts"


def error_of(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a worker error, also when it arrives wrapped by Ray."""
    if isinstance(exc, AttemptLostError):
        return exc.code, exc.message
    for e in (exc, getattr(exc, "cause", None)):
        if isinstance(e, WorkerError):
            return e.code, e.message
    if isinstance(exc, ray.exceptions.RayActorError):
        return "worker_died", f"the worker died: {exc.__class__.__name__}"
    return "worker_exception", f"{exc.__class__.__name__}: {exc}"


@dataclass
class Slot:
    """One worker: its actor handle (created lazily), name and the jobs prepared on it."""

    index: int
    actor: Any = None
    name: str | None = None
    prepared: set[str] = field(default_factory=set)
    dirty: bool = False
    #: the pool shrank: the slot goes away when released instead of being handed out again
    retired: bool = False
    #: its actor answered once (it was placed on a node); a fresh one may wait for resources
    placed: bool = False
    #: the Ray node its actor runs on (hex id), once placed
    node: str | None = None


class WorkerPool:
    """Hands out worker slots; `size` trials run at once over all jobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auto = settings.workers == "auto"
        self._slots: list[Slot] = []
        self._next_index = 0
        self._free: asyncio.Queue[Slot] = asyncio.Queue()
        self.resize(self.capacity() if self.auto else int(settings.workers))

    @property
    def size(self) -> int:
        """Trials that can run at once now (slots not retired)."""
        return sum(1 for s in self._slots if not s.retired)

    def capacity(self) -> int:
        """Workers the Ray cluster's alive nodes hold: their GPUs over `ESNAC_GPUS_PER_TRIAL`
        when trials take GPUs, else their CPUs over `ESNAC_CPUS_PER_TRIAL`."""
        s = self.settings
        total = ray.cluster_resources()
        key, per = ("GPU", s.gpus_per_trial) if s.gpus_per_trial > 0 else ("CPU", s.cpus_per_trial)
        return int(float(total.get(key, 0.0)) / per + 1e-9)

    async def autoscale(self) -> int:
        """(`ESNAC_WORKERS=auto`) Follow the cluster: add slots when nodes joined, retire some
        when nodes left. Returns the new size."""
        if self.auto:
            try:
                want = await asyncio.to_thread(self.capacity)
            except Exception as e:  # noqa: BLE001 - the GCS may be briefly unreachable
                log.warning("could not read the cluster's resources: %s", e)
                return self.size
            if want != self.size:
                log.info("the cluster holds %d workers now (was %d)", want, self.size)
                self.resize(want)
        return self.size

    def resize(self, n: int) -> None:
        """Grow to `n` slots (new ones are free at once) or shrink: free surplus slots go now,
        busy ones when they are released (their trials finish)."""
        live = [s for s in self._slots if not s.retired]
        for _ in range(n - len(live)):
            slot = Slot(self._next_index)
            self._next_index += 1
            self._slots.append(slot)
            self._free.put_nowait(slot)
        if n >= len(live):
            return
        surplus = len(live) - n
        free: list[Slot] = []
        while not self._free.empty():
            free.append(self._free.get_nowait())
        for slot in free:  # retire free slots first, the newest first
            if surplus and not slot.retired:
                self._retire(slot)
                surplus -= 1
            elif not slot.retired:
                self._free.put_nowait(slot)
        # Then busy ones: first those whose actor was never placed (a fresh actor after its node
        # died waits for resources that the remaining slots hold: killed now, its attempt is
        # retried on a slot that stays), then running ones, which go when released.
        busy = [s for s in reversed(live) if not s.retired and s in self._slots]
        for slot in sorted(busy, key=lambda s: s.placed):
            if surplus == 0:
                break
            slot.retired = True
            if not slot.placed:
                self._kill(slot)
            surplus -= 1

    def _retire(self, slot: Slot) -> None:
        self._kill(slot)
        slot.retired = True
        self._slots.remove(slot)

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
        """Give a slot back; an interrupted one (`dirty`) gets a fresh actor first; one the pool
        no longer has room for (`retired`) goes away."""
        if slot.retired:
            if slot in self._slots:
                self._retire(slot)
            return
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
        on_lost: Callable[[BaseException], Awaitable[None]] | None = None,
        node_losses: int | None = None,
    ) -> T:
        """`await call(slot)`; when the attempt is lost (the actor died, stalled or timed out),
        replace the actor and try again, `attempts` times in all.

        Args:
            call: the remote call(s) of one attempt on a slot.
            attempts: how many tries at most (>= 1).
            what: for the log and the error ("on trial 3", "training teacher 1").
            slot: a slot the caller holds (kept, and not released here); None: acquire one per
                attempt and release it afterwards (also done once the caller's slot is retired
                because the cluster shrank).
            on_lost: awaited with each lost attempt's error (to record it) before the next.
            node_losses: attempts lost with their node that may go uncounted (default
                `ESNAC_MAX_NODE_LOSSES`; a resumed trial passes what it has left).

        Raises:
            WorkersDiedError: every attempt was lost.
            Exception: whatever `call` raised other than a lost attempt (a worker error).
        """
        last: BaseException | None = None
        allowed = self.settings.max_node_losses if node_losses is None else max(0, node_losses)
        attempt = counted = lost_with_node = 0
        while counted < attempts:
            attempt += 1
            # The caller's slot, unless the pool shrank under it (a node left): then another one
            if slot is None or slot.retired:
                held, mine = await self.acquire(), True
            else:
                held, mine = slot, False
            try:
                return await call(held)
            except (ray.exceptions.RayActorError, AttemptLostError) as e:
                log.warning("attempt %d %s lost: %s", attempt, what, e)
                lost: BaseException = e
                why = await self._lost_with_node(held, e)
                if why is not None and lost_with_node < allowed:
                    lost_with_node += 1
                    lost = AttemptLostError(
                        "node_lost", f"{why}; this attempt does not count toward "
                        f"ESNAC_MAX_ATTEMPTS (ESNAC_MAX_NODE_LOSSES="
                        f"{self.settings.max_node_losses} such attempts per trial)",
                    )  # fmt: skip
                else:
                    counted += 1
                if held.retired:
                    self._kill(held)  # no fresh actor for a slot the pool no longer has
                else:
                    self.replace(held)
                last = lost
                if on_lost is not None:
                    await on_lost(lost)
            except asyncio.CancelledError:
                held.dirty = True
                raise
            finally:
                if mine:
                    self.release(held)
        raise WorkersDiedError(what, attempt, last)

    async def _lost_with_node(self, slot: Slot, error: BaseException) -> str | None:
        """Why a lost attempt is the cluster's fault -- its node left, or the pool shrank under
        the slot because one did -- or None (the worker itself died, stalled or timed out)."""
        if slot.retired:
            return f"the cluster shrank under worker {slot.name or '?'} (a node left)"
        if "its node has died" in str(error):  # Ray's own words for an actor lost with its node
            return f"worker {slot.name or '?'}'s node left the cluster"
        node = slot.node
        if node is None:
            return None
        try:
            nodes = await asyncio.to_thread(ray.nodes)
        except Exception as e:  # noqa: BLE001 - the GCS may be unreachable: count the attempt
            log.warning("could not read the cluster's nodes: %s", e)
            return None
        if any(n.get("NodeID") == node and n.get("Alive") for n in nodes):
            return None
        return f"worker {slot.name or '?'}'s node {node[:12]} left the cluster"

    async def supervise(
        self,
        slot: Slot,
        ref: Any,
        *,
        on_progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> Any:
        """Await `ref`, a call running on `slot`'s actor, polling the actor's `progress()`.

        Every `heartbeat_interval` the actor is asked for its report. An answer is a heartbeat
        while the call prepares (or before it started); while it trains, the report must also
        show a recent beat (a batch or an epoch), so a worker whose training hangs while the
        process still answers is caught too. Silence counts from the actor's first answer (a
        fresh actor's start-up is Ray's to report). Reports are passed to `on_progress`.

        Raises:
            AttemptLostError: no heartbeat for `ESNAC_HEARTBEAT_TIMEOUT` s (`stalled`) or the
                call ran past `ESNAC_TRIAL_TIMEOUT` s (`timeout`); the slot's actor is killed.
            Exception: whatever the call raised.
        """
        s = self.settings
        interval = s.heartbeat_interval
        started = time.monotonic()
        heard: float | None = None  # silence counts from the actor's first answer
        task: asyncio.Future[Any] = asyncio.ensure_future(_awaited(ref))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    return task.result()
                try:
                    report = await asyncio.wait_for(
                        _awaited(slot.actor.progress.remote()), timeout=interval
                    )
                except (asyncio.TimeoutError, ray.exceptions.RayError):
                    pass  # a frozen worker does not answer; a dead one fails `task`
                else:
                    now = time.monotonic()
                    # Preparing (loading data, building) has no batches to beat on: an answer is
                    # the heartbeat. Training must also show recent batches.
                    training = report is not None and report.get("phase") != "prepare"
                    beat = now - float(report.get("silent_s", 0.0)) if training else now
                    heard = beat if heard is None else max(heard, beat)
                    if report is not None and on_progress is not None:
                        await on_progress(report)
                now = time.monotonic()
                if heard is not None and now - heard > s.heartbeat_timeout:
                    lost = AttemptLostError(
                        "stalled",
                        f"no heartbeat from worker {slot.name or '?'} for {now - heard:.0f} s "
                        f"(ESNAC_HEARTBEAT_TIMEOUT={s.heartbeat_timeout:g}); it was stopped",
                    )
                elif s.trial_timeout is not None and now - started > s.trial_timeout:
                    lost = AttemptLostError(
                        "timeout",
                        f"the attempt ran past ESNAC_TRIAL_TIMEOUT={s.trial_timeout:g} s on "
                        f"worker {slot.name or '?'}; it was stopped",
                    )
                else:
                    continue
                self._kill(slot)  # the late result of this attempt is never read
                raise lost
        finally:
            if not task.done():
                task.cancel()

    @property
    def free(self) -> int:
        return self._free.qsize()

    def usage(self) -> dict[str, Any]:
        """What `/readyz` shows: the mode, the slots and how many run a task now."""
        return {"mode": "auto" if self.auto else "fixed", "workers": self.size,
                "busy": max(0, self.size - self.free), "waiting": self.waiting()}  # fmt: skip

    def waiting(self) -> str | None:
        """Why no trial can start, when the pool has no workers (every node able to run one
        left the cluster): jobs wait instead of failing, and go on when capacity returns."""
        if self.size > 0:
            return None
        s = self.settings
        need = f"{s.gpus_per_trial:g} GPU" if s.gpus_per_trial > 0 else f"{s.cpus_per_trial:g} CPU"
        return (
            f"no trial workers: the Ray cluster's nodes hold too little for a trial ({need} "
            "each, ESNAC_GPUS_PER_TRIAL / ESNAC_CPUS_PER_TRIAL); jobs wait and continue when a "
            "node joins"
        )

    def shutdown(self) -> None:
        """Kill every actor (their running tasks are abandoned)."""
        for slot in self._slots:
            self._kill(slot)

    # ------------------------------------------------------------------------- jobs
    async def prepare(
        self, slot: Slot, ctx: dict[str, Any], teacher_ref: Any, data_ref: Any = None
    ) -> str:
        """Make sure the slot's actor has the job's teacher and data cached; returns its name.

        `data_ref`: the job's dataset shipped through the object store (`workers.shipping`),
        or None. It travels inside a list, so Ray does not fetch it for a worker whose host has
        its own copy (the worker fetches it only when it has none)."""
        key = ctx["job_key"]
        if slot.node is None:
            slot.node = await slot.actor.node_id.remote()
            slot.placed = True
        if key not in slot.prepared:
            shipped = [data_ref] if data_ref is not None else None
            slot.name = await slot.actor.prepare.remote(ctx, teacher_ref, shipped)
            slot.prepared.add(key)
        elif slot.name is None:
            slot.name = await slot.actor.name.remote()
        slot.placed = True
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
        slot.actor, slot.name, slot.dirty, slot.placed, slot.node = None, None, False, False, None
        slot.prepared.clear()


async def _awaited(ref: Any) -> Any:
    """An awaitable Ray ObjectRef as a coroutine (for `asyncio.ensure_future` / `wait_for`)."""
    return await ref
