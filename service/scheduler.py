"""The job scheduler: drives every running job's search inside the app's lifespan.

Per job, a `JobRunner` keeps as many trials in flight as there are free worker slots: whenever
slots free up it asks the searcher for that many new candidates (the in-flight ones are pending
in the searcher), persists them, and dispatches each to a `RemoteTrialWorker`. Each result is
stored before the searcher hears of it. BO fitting (`suggest`) runs in a thread so the event loop
(and the API) stays responsive. After the search the top-k students are fully trained and
exported. On start-up, unfinished jobs resume from the database: finished trials are kept and
replayed into a fresh searcher, in-flight ones are re-dispatched (one more attempt each).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
import ray

from embedding.graph import trace
from embedding.search import RandomSearcher, Searcher
from embedding.space import Action, CompressionSpace
from service.artifacts import ArtifactStore
from service.db import (
    Job,
    JobState,
    NotFoundError,
    StaleTrialError,
    Storage,
    Teacher,
    Trial,
    TrialState,
    UpdateFinishedJobError,
    UpdateFinishedTrialError,
)
from service.db.retry import retry_transient
from service.fitter import Fitter
from service.pool import Slot, WorkerPool
from service.settings import Settings
from workers.spec import FullTraining, SearchTraining, TrialSpec, WorkerError

__all__ = [
    "JobRunner",
    "Scheduler",
    "build_space",
    "canonical_order",
    "make_searcher",
    "trial_seed",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def trial_seed(job_seed: int, number: int) -> int:
    """The seed of a job's `number`-th trial (stable across restarts)."""
    return (int(job_seed) * 1_000_003 + int(number)) % (2**31 - 1)


def build_space(arch: str, num_classes: int, weights: bytes, input_shape: tuple[int, ...]) -> (
    CompressionSpace
):
    """The teacher's compression space, with `max_layers = max(128, teacher layers)` as the
    workers use (JobContext.max_layers = 0)."""
    from workers import zoo
    from workers.export import load_state_safetensors

    model = zoo.build(arch, num_classes)
    load_state_safetensors(model, weights)
    model.eval()
    graph = trace(model, tuple(input_shape))
    return CompressionSpace(graph, model, max(128, len(graph.layers)))


def canonical_order(searcher: Searcher, numbers: dict[str, int]) -> None:
    """Put a searcher's observations and pending candidates in trial-number order (from
    `numbers`: action key -> trial number) instead of completion order."""
    order = sorted(range(len(searcher.actions)), key=lambda i: numbers[searcher.actions[i].key])
    searcher.actions = [searcher.actions[i] for i in order]
    searcher.rewards = [searcher.rewards[i] for i in order]
    searcher.pending = dict(sorted(searcher.pending.items(), key=lambda kv: numbers[kv[0]]))


def make_searcher(
    job: Job, space: CompressionSpace, encoder_init: bytes | None = None
) -> Searcher:
    """The job's searcher: `RandomSearcher`, or `EsnacSearcher` with the job's options."""
    if job.strategy == "random":
        return RandomSearcher(space, seed=job.seed)
    from safetensors.torch import load

    from embedding.search import EsnacSearcher  # type: ignore[attr-defined]

    opts = job.searcher
    return EsnacSearcher(  # type: ignore[no-any-return]
        space,
        kernels=int(opts.get("kernels", 8)),
        subset=float(opts.get("subset", 0.5)),
        candidates=int(opts.get("candidates", 1000)),
        seed=job.seed,
        encoder_init=load(encoder_init) if encoder_init is not None else None,
        train_encoder=bool(opts.get("train_encoder", True)),
    )


def encoder_bytes(searcher: Searcher) -> bytes | None:
    """The learned encoder's weights (safetensors) of an ESNAC searcher, else None."""
    from safetensors.torch import save

    export = getattr(searcher, "encoder_state", None)
    if not callable(export):
        return None
    state = {k: v.detach().cpu().contiguous() for k, v in export().items()}
    return save(state)


def _error_of(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a worker error, also when it arrives wrapped by Ray."""
    for e in (exc, getattr(exc, "cause", None)):
        if isinstance(e, WorkerError):
            return e.code, e.message
    if isinstance(exc, WorkerError):
        return exc.code, str(exc)
    return "worker_exception", f"{exc.__class__.__name__}: {exc}"


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a long CPU-bound call (a BO fit) in a daemon thread and await its result.

    Unlike `asyncio.to_thread`, a daemon thread does not keep the process alive at exit: the
    server stops promptly even in the middle of a fit (the fit is redone after a restart).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the server stopped meanwhile
            pass

    threading.Thread(target=work, name="esnac-fit", daemon=True).start()
    return await future


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
        self.fitter = Fitter(settings.fit_threads or max(1, (os.cpu_count() or 2) - 1))

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

    async def run(self) -> None:
        """The main loop: start a runner for every active job and training teacher."""
        while True:
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
                return repo.active_jobs(), repo.list_teachers(status="training")

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
        opts = dict(teacher.train_settings or {})
        error = "teacher training failed"
        for attempt in range(1, self.settings.max_attempts + 1):
            slot = await self.pool.acquire()
            try:
                out = await slot.actor.train_teacher.remote(
                    teacher.arch,
                    teacher.num_classes,
                    teacher.dataset,
                    self.settings.data_dir,
                    int(opts.get("epochs", 400)),
                    int(opts.get("seed", 0)),
                    float(opts.get("lr", 0.1)),
                    int(opts.get("batch_size", 128)),
                    opts.get("max_train_samples"),
                )
            except ray.exceptions.RayActorError as e:
                log.warning("worker died training teacher %d (attempt %d)", teacher.id, attempt)
                self.pool.replace(slot)
                error = f"the worker died {attempt} times: {e}"
                continue
            except asyncio.CancelledError:
                slot.dirty = True
                raise
            except Exception as e:  # noqa: BLE001 - stored as the teacher's error
                code, message = _error_of(e)
                error = f"{code}: {message}"
                break
            finally:
                self.pool.release(slot)

            def store(out: dict[str, Any] = out) -> None:
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


class JobRunner:
    """Drives one job from its current state to a finished one."""

    def __init__(self, scheduler: Scheduler, job_id: int) -> None:
        self.s = scheduler
        self.job_id = job_id
        self.job_key = f"job-{job_id}"
        self._lock = asyncio.Lock()  # the searcher is used by one thread at a time
        self.searcher: Searcher
        self.ctx: dict[str, Any] = {}
        self.numbers: dict[str, int] = {}  # action key -> trial number
        self.teacher_ref: Any = None

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except (UpdateFinishedJobError, NotFoundError):
            return  # cancelled (or deleted) meanwhile
        except Exception as e:
            log.exception("job %d failed", self.job_id)
            await self._set_state(JobState.FAILED, error=f"{e.__class__.__name__}: {e}")
        finally:
            await self.s.pool.release_job(self.job_key)

    async def _set_state(self, state: JobState, error: str | None = None) -> Job | None:
        def work() -> Job | None:
            with self.s.storage.session() as repo:
                try:
                    return repo.set_job_state(self.job_id, state, error=error)
                except UpdateFinishedJobError:
                    return None

        return await self.s.db(work)

    async def _run(self) -> None:
        s = self.s

        def load() -> tuple[Job, Teacher, bytes, bytes | None, list[Trial]]:
            with s.storage.session() as repo:
                job = repo.get_job(self.job_id)
                teacher = repo.get_teacher(job.teacher_id)
                if teacher.weights_id is None or teacher.accuracy is None:
                    raise ValueError(f"teacher {teacher.id} is {teacher.status}, not ready")
                weights = s.artifacts.read(repo.get_artifact(teacher.weights_id))
                encoder = None
                if job.embedding_from is not None:
                    src = repo.get_job(job.embedding_from)
                    if src.encoder_id is None:
                        raise ValueError(f"job {src.id} has no stored encoder to start from")
                    encoder = s.artifacts.read(repo.get_artifact(src.encoder_id))
                if job.status is JobState.QUEUED:
                    job = repo.set_job_state(job.id, JobState.RUNNING)
                return job, teacher, weights, encoder, repo.job_trials(job.id)

        job, teacher, weights, encoder, trials = await s.db(load)
        self.job = job
        self.teacher_args = (teacher.arch, teacher.num_classes, weights, teacher.input_shape)
        self.numbers = {Action.from_json(t.action).key: t.number for t in trials}
        space = await asyncio.to_thread(
            build_space, teacher.arch, teacher.num_classes, weights, teacher.input_shape
        )
        self.searcher = await asyncio.to_thread(make_searcher, job, space, encoder)
        # Replay in trial-number order: the rebuilt searcher sees the same observations as
        # before the restart (and each proposal is seeded by the job seed + trial number).
        done = [t for t in trials if t.status is TrialState.SUCCEEDED and t.reward is not None]
        if done:
            await asyncio.to_thread(
                self.searcher.observe,
                [Action.from_json(t.action) for t in done],
                [float(t.reward) for t in done if t.reward is not None],
            )
        redo = [t for t in trials if not t.status.is_finished()]
        self.searcher.mark_pending([Action.from_json(t.action) for t in redo])
        self.ctx = {
            "job_key": self.job_key,
            "teacher_arch": teacher.arch,
            "num_classes": teacher.num_classes,
            "teacher_accuracy": float(teacher.accuracy or 0.0),
            "dataset": job.dataset,
            "data_dir": s.settings.data_dir,
            "max_layers": 0,
        }
        self.teacher_ref = ray.put(weights)
        self.training = SearchTraining(**job.search)
        if job.status is JobState.RUNNING:
            await self._search(len(trials), redo)
        await self._finalize()

    # ------------------------------------------------------------------------ search
    async def _search(self, created: int, redo: list[Trial]) -> None:
        s, job = self.s, self.job
        budget = job.budget
        inflight: set[asyncio.Task[None]] = set()

        def spawn(trial: Trial, slot: Slot) -> None:
            task = asyncio.create_task(self._trial(trial, slot), name=f"trial-{trial.id}")
            inflight.add(task)
            task.add_done_callback(inflight.discard)

        try:
            while redo or created < budget:
                slots = [await s.pool.acquire()]
                slots += s.pool.acquire_nowait(len(redo) + budget - created - 1)
                while redo and slots:
                    spawn(redo.pop(0), slots.pop())
                n = min(len(slots), budget - created)
                if n > 0:
                    try:
                        new = await self._propose(n, created)
                    except BaseException:
                        for slot in slots:
                            s.pool.release(slot)
                        raise
                    created += len(new)
                    for trial in new:
                        spawn(trial, slots.pop())
                for slot in slots:
                    s.pool.release(slot)
            while inflight:
                await asyncio.gather(*list(inflight))
        finally:
            for t in list(inflight):
                t.cancel()
            if inflight:
                await asyncio.gather(*list(inflight), return_exceptions=True)

        # The learned encoder is stored with the end of the search (a job resumed while
        # finalizing keeps it; its replayed searcher has not fitted anything).
        data = encoder_bytes(self.searcher)

        def finish_search() -> int:
            with s.storage.session() as repo:
                counts = repo.job_counts(self.job_id)
                if counts[TrialState.SUCCEEDED.value] == 0:
                    raise RuntimeError(
                        f"every trial failed ({counts['failed']}); see the trials' errors"
                    )
                if data is not None:
                    repo.set_job_encoder(self.job_id, s.artifacts.write(repo, "encoder", data).id)
                repo.set_job_state(self.job_id, JobState.FINALIZING)
                return counts[TrialState.SUCCEEDED.value]

        await s.db(finish_search)

    async def _propose(self, n: int, first_number: int) -> list[Trial]:
        """Ask the searcher for `n` candidates (in a thread) and persist them as pending."""
        job = self.job

        # Deterministic proposals: a per-proposal seed, and observations / pending candidates
        # in trial-number order (not completion order), so a resumed job proposes exactly what
        # the uninterrupted one would from the same results.
        rng_key = [job.seed, first_number]

        def suggest() -> list[Action]:
            self.searcher.rng = np.random.default_rng(rng_key)
            return self.searcher.suggest(n)

        async with self._lock:
            log.info(
                "job %d: proposing %d candidates from %d results (%s)",
                self.job_id, n, len(self.searcher.rewards), self.searcher.kind,
            )  # fmt: skip
            canonical_order(self.searcher, self.numbers)
            if self.searcher.kind == "random":  # cheap: no fit
                actions = await in_daemon_thread(suggest)
            else:
                actions = await self.s.fitter.propose(
                    self.searcher, job, self.job_key, self.teacher_args, n, rng_key
                )
            log.info("job %d: proposed trials %d..%d", self.job_id, first_number,
                     first_number + len(actions) - 1)  # fmt: skip

        def store() -> list[Trial]:
            with self.s.storage.session() as repo:
                return repo.create_trials(self.job_id, [a.to_dict() for a in actions])

        trials = await self.s.db(store)
        self.numbers.update((a.key, t.number) for a, t in zip(actions, trials, strict=True))
        return trials

    async def _trial(self, trial: Trial, slot: Slot) -> None:
        """Run one trial to a finished state on `slot` (retrying on fresh actors)."""
        s = self.s
        action = Action.from_json(trial.action)
        spec = TrialSpec(
            trial_id=trial.id,
            action=trial.action,
            seed=trial_seed(self.job.seed, trial.number),
            training=self.training,
            reward=self.job.reward,
            return_weights=True,
        ).to_dict()
        try:
            while True:
                attempt = trial.attempts + 1
                if attempt > s.settings.max_attempts:
                    await self._finish(
                        trial, action, None, "max_attempts",
                        f"gave up after {trial.attempts} attempts (ESNAC_MAX_ATTEMPTS="
                        f"{s.settings.max_attempts}); the worker died or was interrupted",
                    )  # fmt: skip
                    return
                try:
                    trial = await s.db(
                        self._update, trial.id, TrialState.RUNNING, new_attempt=True
                    )
                    worker = await s.pool.prepare(slot, self.ctx, self.teacher_ref)
                    trial = await s.db(
                        self._update, trial.id, TrialState.RUNNING,
                        expect_attempts=attempt, worker=worker,
                    )  # fmt: skip
                    result = await slot.actor.evaluate.remote(self.job_key, spec)
                except ray.exceptions.RayActorError as e:
                    log.warning("worker died on trial %d (attempt %d): %s", trial.id, attempt, e)
                    s.pool.replace(slot)
                    continue
                except (StaleTrialError, UpdateFinishedTrialError):
                    return
                except asyncio.CancelledError:
                    slot.dirty = True
                    raise
                except Exception as e:  # noqa: BLE001 - a worker error is the trial's result
                    code, message = _error_of(e)
                    await self._finish(trial, action, None, code, message, attempt=attempt)
                    return
                await self._finish(trial, action, result, attempt=attempt)
                return
        finally:
            s.pool.release(slot)

    def _update(self, trial_id: int, state: TrialState, **kw: Any) -> Trial:
        with self.s.storage.session() as repo:
            return repo.update_trial(trial_id, state, **kw)

    async def _finish(
        self,
        trial: Trial,
        action: Action,
        result: dict[str, Any] | None,
        code: str | None = None,
        message: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Persist a trial's end, then tell the searcher (a stale or finished one is ignored)."""
        s = self.s

        def store() -> bool:
            with s.storage.session() as repo:
                try:
                    if result is None:
                        repo.update_trial(
                            trial.id, TrialState.FAILED, expect_attempts=attempt,
                            error_code=code, error=message,
                        )  # fmt: skip
                        return True
                    weights_id = None
                    if result.get("weights"):
                        weights_id = s.artifacts.write(repo, "student", result["weights"]).id
                    repo.update_trial(
                        trial.id, TrialState.SUCCEEDED, expect_attempts=attempt,
                        params=int(result["params"]), flops=int(result["flops"]),
                        accuracy=float(result["accuracy"]),
                        compression=float(result["compression"]),
                        reward=float(result["reward"]),
                        history=[float(x) for x in result.get("history", [])],
                        seconds={k: float(v) for k, v in result.get("seconds", {}).items()},
                        worker=result.get("worker") or None, weights_id=weights_id,
                    )  # fmt: skip
                    return True
                except (StaleTrialError, UpdateFinishedTrialError):
                    return False

        if not await s.db(store):
            return
        async with self._lock:
            if result is None:
                self.searcher.forget_pending([action])
            else:
                self.searcher.observe([action], [float(result["reward"])])

    # ------------------------------------------------------------------------ finalize
    async def _finalize(self) -> None:
        s, job = self.s, self.job

        def top() -> list[Trial]:
            with s.storage.session() as repo:
                done = [
                    t
                    for t in repo.job_trials(self.job_id)
                    if t.status is TrialState.SUCCEEDED and t.reward is not None
                ]
            done.sort(key=lambda t: (-(t.reward or 0.0), t.number))
            return done[: job.top_k]

        todo = [t for t in await s.db(top) if t.final_accuracy is None]
        errors = await asyncio.gather(*(self._full_train(t) for t in todo))
        problems = [e for e in errors if e]

        def finish() -> None:
            with s.storage.session() as repo:
                repo.set_job_state(
                    self.job_id, JobState.SUCCEEDED, error="; ".join(problems) or None
                )

        await s.db(finish)

    async def _full_train(self, trial: Trial) -> str | None:
        """Fully train one top-k student and store its weights + ONNX; returns an error or None."""
        s, job = self.s, self.job
        if trial.weights_id is None:
            return f"trial {trial.id} has no search weights to fully train"

        def weights() -> bytes:
            with s.storage.session() as repo:
                return s.artifacts.read(repo.get_artifact(trial.weights_id or 0))

        start = await s.db(weights)
        training = asdict(FullTraining(**job.full_training))
        seed = trial_seed(job.seed, trial.number)
        for attempt in range(1, s.settings.max_attempts + 1):
            slot = await s.pool.acquire()
            try:
                await s.pool.prepare(slot, self.ctx, self.teacher_ref)
                out = await slot.actor.finetune.remote(
                    self.job_key, trial.action, start, training, seed
                )
            except ray.exceptions.RayActorError:
                log.warning("worker died fully training trial %d (attempt %d)", trial.id, attempt)
                s.pool.replace(slot)
                continue
            except asyncio.CancelledError:
                slot.dirty = True
                raise
            except Exception as e:  # noqa: BLE001 - reported on the job
                code, message = _error_of(e)
                return f"full training of trial {trial.id} failed ({code}): {message}"
            finally:
                s.pool.release(slot)

            def store(out: dict[str, Any] = out) -> None:
                with s.storage.session() as repo:
                    w = s.artifacts.write(repo, "final", out["weights"])
                    onnx = s.artifacts.write(repo, "onnx", out["onnx"]) if out.get("onnx") else None
                    repo.record_final(
                        trial.id, accuracy=float(out["accuracy"]),
                        history=[float(x) for x in out.get("history", [])],
                        seconds=float(out.get("seconds", 0.0)), weights_id=w.id,
                        onnx_id=onnx.id if onnx else None,
                    )  # fmt: skip

            await s.db(store)
            return None
        return f"full training of trial {trial.id}: the worker died {s.settings.max_attempts} times"
