"""BO fits in a separate process, so the API never competes with them for the GIL.

A fit is mostly PyTorch (which releases the GIL) but also long stretches of Python (sampling
candidate pools, encoding them, the LSTM's time loop); in a thread of the server that delays every
request by up to the interpreter's switch interval each time it needs the GIL. Here the
coordinator keeps each job's searcher (the BO state) and sends a snapshot (`state_dict()`) to one
fit process, which rebuilds the searcher, proposes, and sends the new state back. The process
keeps each job's compression space, so the teacher is traced once per job. It is forked from the
coordinator's fork server, which has imported torch: starting it costs a fork, not an import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from embedding.search import Searcher
from embedding.space import Action, CompressionSpace
from service.db import Job
from service.teacher_check import forkserver_context

__all__ = ["Fitter"]

log = logging.getLogger(__name__)

# In the fit process only: job key -> its teacher's compression space (a few recent jobs).
_SPACES: OrderedDict[str, CompressionSpace] = OrderedDict()
_KEEP_SPACES = 8


def _exit_with(coordinator: int) -> None:
    """(In the fit process.) Exit as soon as the coordinator has: a thread waits on a pidfd of
    it (Linux 5.3+; elsewhere it checks every second that the pid still exists)."""
    try:
        fd: int | None = os.pidfd_open(coordinator)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        fd = None

    def wait() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has exited
        else:
            with contextlib.suppress(ProcessLookupError):
                while True:
                    os.kill(coordinator, 0)
                    time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=wait, name="exit-with-coordinator", daemon=True).start()


def _init_fit_process(coordinator: int) -> None:
    """(In the fit process.) Die with the coordinator, and yield the CPU to it.

    A coordinator killed with SIGKILL runs no shutdown code: its fit process would stay behind
    as an idle orphan holding the teacher spaces (~0.7 GB). Its parent is the fork server, which
    lives as long as any process it forked (each holds its "alive" pipe), so the parent's death
    (PR_SET_PDEATHSIG) is no signal: the fit process watches the coordinator itself. Fits are
    batch work: the API process (and its requests) go first when CPUs are short.
    """
    _exit_with(coordinator)
    try:
        os.nice(10)
    except OSError:  # not permitted here: run at normal priority
        pass


class _SpaceMissing(Exception):
    """The fit process has no space for this job yet: send the teacher along."""


def _propose(
    job: Job,
    job_key: str,
    teacher: tuple[str, int, bytes, tuple[int, ...]] | None,
    state: dict[str, Any],
    n: int,
    rng_key: list[int],
    threads: int,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], list[int | None], dict[str, Any]]:
    """(In the fit process.) Rebuild the searcher from `state`, propose `n` actions; returns
    them, the kernel that proposed each, and the searcher's new state."""
    import numpy as np
    import torch

    from service.searchers import build_space, fit_device, make_searcher, space_removal

    torch.set_num_threads(threads)
    space = _SPACES.get(job_key)
    if space is None:
        if teacher is None:
            raise _SpaceMissing(job_key)
        space = build_space(*teacher, removal=space_removal(job))
        _SPACES[job_key] = space
        while len(_SPACES) > _KEEP_SPACES:
            _SPACES.popitem(last=False)
    _SPACES.move_to_end(job_key)
    searcher = make_searcher(job, space, device=fit_device(device))
    searcher.load_state_dict(state)
    searcher.rng = np.random.default_rng(rng_key)
    actions = searcher.suggest(n)
    return [a.to_dict() for a in actions], list(searcher.last_kernels), searcher.state_dict()


class Fitter:
    """Runs `suggest` of the coordinator's searchers in one process, forked from the process's
    fork server (`service.teacher_check.forkserver_context`)."""

    def __init__(self, threads: int, device: str = "auto") -> None:
        self.threads = threads
        self.device = device  # ESNAC_FIT_DEVICE: auto | cpu | cuda
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=forkserver_context(),  # forked: torch is imported there already
                initializer=_init_fit_process,
                initargs=(os.getpid(),),
            )
        return self._executor

    async def propose(
        self,
        searcher: Searcher,
        job: Job,
        job_key: str,
        teacher: tuple[str, int, bytes, tuple[int, ...]],
        n: int,
        rng_key: list[int],
    ) -> list[Action]:
        """`searcher.suggest(n)` (seeded with `rng_key`) computed in the fit process; the
        searcher's state (observations, pending, learned encoder) and `last_kernels` are updated
        in place."""
        state = searcher.state_dict()
        send: tuple[str, int, bytes, tuple[int, ...]] | None = None
        for attempt in range(3):
            try:
                # submitted from a thread: the first submit starts the fit process, and with it
                # the fork server, whose preload (torch, the searchers) takes seconds; the event
                # loop (requests, heartbeats) must not wait for it
                future = await asyncio.to_thread(
                    self._pool().submit, _propose, job, job_key, send, state, n, rng_key,
                    self.threads, self.device,
                )  # fmt: skip
                dicts, kernels, new_state = await asyncio.wrap_future(future)
                break
            except _SpaceMissing:
                send = teacher
            except BrokenProcessPool:
                if attempt == 2:
                    raise
                log.warning("the fit process died; starting a new one")
                self._kill()
                send = teacher
        searcher.load_state_dict(new_state)
        searcher.last_kernels = kernels
        return [Action.from_json(d) for d in dicts]

    def _kill(self) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        # ProcessPoolExecutor cannot interrupt a running call: terminate its process, so that
        # stopping the server never waits for a fit (it is redone after a restart).
        procs = list(getattr(ex, "_processes", {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()

    def shutdown(self) -> None:
        self._kill()
