"""One job's run: search (propose, dispatch, observe), then full training of the best students.

A `JobRunner` keeps as many trials in flight as there are free worker slots: whenever slots free
up it asks the searcher for that many new candidates (the in-flight ones are pending in the
searcher), persists them, and dispatches each to a `RemoteTrialWorker`. Each result is stored
before the searcher hears of it. BO fitting runs in the scheduler's `Fitter` process, so the
event loop (and the API) stays responsive. After the search the top-k students are fully
trained and exported. On start-up, an unfinished job resumes from the database: finished trials
are kept and replayed into a fresh searcher, in-flight ones are re-dispatched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import ray

from embedding.search import Searcher
from embedding.space import Action
from service.db import (
    Job,
    JobState,
    NotFoundError,
    StaleTrialError,
    Teacher,
    Trial,
    TrialState,
    UpdateFinishedJobError,
    UpdateFinishedTrialError,
)
from service.pool import Slot, WorkersDiedError, error_of
from service.searchers import build_space, canonical_order, encoder_bytes, make_searcher
from workers.spec import FullTraining, SearchTraining, TrialSpec

if TYPE_CHECKING:
    from service.scheduler import Scheduler

__all__ = ["JobRunner", "in_daemon_thread", "trial_seed"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def trial_seed(job_seed: int, number: int) -> int:
    """The seed of a job's `number`-th trial (stable across restarts)."""
    return (int(job_seed) * 1_000_003 + int(number)) % (2**31 - 1)


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
        self.training = SearchTraining.from_dict(job.search)
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
        current = trial

        async def attempt(held: Slot) -> dict[str, Any]:
            nonlocal current
            current = await s.db(self._update, trial.id, TrialState.RUNNING, new_attempt=True)
            worker = await s.pool.prepare(held, self.ctx, self.teacher_ref)
            current = await s.db(
                self._update, trial.id, TrialState.RUNNING,
                expect_attempts=current.attempts, worker=worker,
            )  # fmt: skip
            return await held.actor.evaluate.remote(self.job_key, spec)  # type: ignore[no-any-return]

        # attempts already made (before a restart) count against ESNAC_MAX_ATTEMPTS
        left = s.settings.max_attempts - trial.attempts
        try:
            if left < 1:
                raise WorkersDiedError(f"on trial {trial.id}", trial.attempts, None)
            result = await s.pool.run_with_retries(
                attempt, attempts=left, what=f"on trial {trial.id}", slot=slot
            )
        except WorkersDiedError:
            await self._finish(
                current, action, None, "max_attempts",
                f"gave up after {current.attempts} attempts (ESNAC_MAX_ATTEMPTS="
                f"{s.settings.max_attempts}); the worker died or was interrupted",
            )  # fmt: skip
            return
        except (StaleTrialError, UpdateFinishedTrialError):
            return
        except Exception as e:  # noqa: BLE001 - a worker error is the trial's result
            code, message = error_of(e)
            await self._finish(current, action, None, code, message, attempt=current.attempts)
            return
        else:
            await self._finish(current, action, result, attempt=current.attempts)
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
        training = FullTraining.from_dict(job.full_training).to_dict()
        seed = trial_seed(job.seed, trial.number)

        async def call(slot: Slot) -> dict[str, Any]:
            await s.pool.prepare(slot, self.ctx, self.teacher_ref)
            return await slot.actor.finetune.remote(  # type: ignore[no-any-return]
                self.job_key, trial.action, start, training, seed
            )

        try:
            out = await s.pool.run_with_retries(
                call, attempts=s.settings.max_attempts, what=f"fully training trial {trial.id}"
            )
        except WorkersDiedError as e:
            return f"full training of trial {trial.id}: {e}"
        except Exception as e:  # noqa: BLE001 - reported on the job
            code, message = error_of(e)
            return f"full training of trial {trial.id} failed ({code}): {message}"

        def store() -> None:
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
