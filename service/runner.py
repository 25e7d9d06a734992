"""One job's run: search (propose, dispatch, observe), then full training of the best students.

The search runs in steps, as the paper's: each step asks the searcher for `per_step` candidates
(ESNAC fits `kernels` GPs for them) and stores them as `pending` trials, tagged with the step and
the kernel that proposed each -- the job's queue of proposals, which survives a restart. Free
worker slots take candidates from the queue. The next step's fit starts as soon as the queue
holds fewer candidates than there are workers, so a worker that frees up finds a candidate
waiting instead of idling through a fit; every result so far is used, and the in-flight and
queued candidates are pending points. (Once per job, the first model-based step waits for two
observations: a fit on fewer would be a random pick. The first step, random, proposes enough
candidates for every worker, `max(per_step, workers)`, so a pool larger than a step does not
idle through the warm-up.) Each result is stored before the
searcher hears of it. BO fitting runs in the scheduler's `Fitter` process, so the event loop
(and the API) stays responsive. Each attempt runs under `WorkerPool.supervise` (heartbeats,
deadlines; progress is stored on the trial). After the search the top-k students are fully
trained and exported. On start-up, an unfinished job resumes from the database: finished trials
are kept and replayed into a fresh searcher, unfinished ones go back to the queue.

Why one module of ~520 lines: the step loop, a trial's attempts and the final training share one
job's state (its searcher and the lock around it, the worker context, the teacher's object ref).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import numpy as np
import ray

from embedding.budget import budget_seeds
from embedding.options import EsnacOptions
from embedding.search import Searcher
from embedding.space import Action
from service.artifacts import ArtifactStore
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
from service.db.storage import Storage, utcnow
from service.fitter import Fitter
from service.pool import Slot, WorkerPool, WorkersDiedError, error_of
from service.searchers import (
    build_space,
    canonical_order,
    encoder_bytes,
    make_searcher,
    space_removal,
)
from service.settings import Settings
from service.targets import floor_accuracy, rank_students
from workers import shipping
from workers.spec import FullTraining, SearchTraining, TrialSpec

__all__ = ["JobRunner", "JobServices", "in_daemon_thread", "trial_seed"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobServices(Protocol):
    """What a job's run uses of the service around it -- the scheduler provides it, and the
    runner never imports the scheduler (no import cycle, type-checking imports included)."""

    settings: Settings
    storage: Storage
    artifacts: ArtifactStore
    pool: WorkerPool
    fitter: Fitter

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A storage call in a thread, transient database errors retried until it is back."""
        ...

    async def best_effort(self, fn: Callable[..., Any], *args: Any) -> None:
        """A storage call whose loss does not matter (failures only logged)."""
        ...


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

    def __init__(self, services: JobServices, job_id: int) -> None:
        self.s = services
        self.job_id = job_id
        self.job_key = f"job-{job_id}"
        self._lock = asyncio.Lock()  # the searcher is used by one thread at a time
        self._observed = asyncio.Event()  # set whenever the searcher hears of a result
        self.searcher: Searcher
        self.ctx: dict[str, Any] = {}
        self.numbers: dict[str, int] = {}  # action key -> trial number
        self.teacher_ref: Any = None
        self.data_ref: Any = None

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
            build_space, teacher.arch, teacher.num_classes, weights, teacher.input_shape,
            space_removal(job),
        )  # fmt: skip
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
        unfinished = [t for t in trials if not t.status.is_finished()]
        self.searcher.mark_pending([Action.from_json(t.action) for t in unfinished])
        self.ctx = {
            "job_key": self.job_key,
            "teacher_arch": teacher.arch,
            "num_classes": teacher.num_classes,
            "teacher_accuracy": float(teacher.accuracy or 0.0),
            "dataset": job.dataset,
            "data_dir": s.settings.data_dir,
            "max_layers": 0,
            "inheritance": EsnacOptions.from_dict(job.searcher).inheritance,
        }
        self.teacher_ref = ray.put(weights)
        # the dataset travels with the job to hosts that lack the coordinator's disk
        payload = await asyncio.to_thread(
            shipping.pack, job.dataset, s.settings.data_dir, s.settings.data_ship_max_mb
        )
        if payload is not None:
            log.info("job %d: shipping dataset %s (%.1f MiB) to workers without a copy", job.id,
                     job.dataset, payload["bytes"] / shipping.MIB)  # fmt: skip
            self.data_ref = await asyncio.to_thread(ray.put, payload)
        del payload  # the object store holds it now, not the coordinator's heap
        self.training = SearchTraining.from_dict(job.search)
        if job.status is JobState.RUNNING:
            await self._search(trials)
        await self._finalize()

    # ------------------------------------------------------------------------ search
    async def _search(self, trials: list[Trial]) -> None:
        """Propose step by step into the queue of pending trials; dispatch them to free slots.

        Args:
            trials: the job's stored trials, by number (finished ones are kept; unfinished ones,
                queued or interrupted by a restart, are the queue).
        """
        s, job = self.s, self.job
        budget = job.budget
        queue: deque[Trial] = deque(t for t in trials if not t.status.is_finished())
        created = len(trials)
        step = 1 + max((t.step for t in trials if t.step is not None), default=-1)
        inflight: set[asyncio.Task[None]] = set()
        proposer: asyncio.Task[list[Trial]] | None = None
        acquiring: asyncio.Task[Slot] | None = None

        def spawn(trial: Trial, slot: Slot) -> None:
            task = asyncio.create_task(self._trial(trial, slot), name=f"trial-{trial.id}")
            inflight.add(task)
            task.add_done_callback(inflight.discard)

        def may_propose() -> bool:
            if proposer is not None or created >= budget or len(queue) >= s.pool.size:
                return False
            if self.searcher.kind == "random" or created == 0:
                return True
            # A model-based step waits for its first two observations (a fit on fewer is a
            # random pick); from then on the next step's fit overlaps the running trials.
            return len(self.searcher.rewards) >= 2 or not inflight

        observed: asyncio.Task[Any] | None = None
        try:
            while queue or created < budget or proposer is not None:
                if may_propose():
                    n = min(job.per_step, budget - created)
                    if created == 0:  # the random first step fills every worker (32 GPUs do
                        n = min(max(n, s.pool.size), budget)  # not wait on 8 candidates)
                    proposer = asyncio.create_task(self._propose(n, created, step))
                    step += 1
                waits: set[asyncio.Future[Any]] = set()
                if queue:
                    if acquiring is None:
                        acquiring = asyncio.create_task(s.pool.acquire())
                    waits.add(acquiring)
                if proposer is not None:
                    waits.add(proposer)
                elif created < budget:  # waiting for results before the next fit
                    if observed is None:
                        self._observed.clear()
                        observed = asyncio.create_task(self._observed.wait())
                    waits.add(observed)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if observed is not None and observed in done:
                    observed = None
                if proposer is not None and proposer in done:
                    new = proposer.result()
                    proposer = None
                    if not new:
                        raise RuntimeError("the searcher proposed no candidate")
                    created += len(new)
                    queue.extend(new)
                if acquiring is not None and acquiring in done:
                    slot = acquiring.result()
                    acquiring = None
                    spawn(queue.popleft(), slot)
            while inflight:
                await asyncio.gather(*list(inflight))
        finally:
            if proposer is not None:
                proposer.cancel()
            if observed is not None:
                observed.cancel()
            if acquiring is not None:
                if acquiring.done() and not acquiring.cancelled() and not acquiring.exception():
                    s.pool.release(acquiring.result())
                else:
                    acquiring.cancel()
            for t in list(inflight):
                t.cancel()
            pending_tasks = [t for t in (proposer, acquiring, observed) if t is not None]
            pending_tasks += list(inflight)
            if pending_tasks:
                await asyncio.gather(*pending_tasks, return_exceptions=True)

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

    async def _propose(self, n: int, first_number: int, step: int) -> list[Trial]:
        """One step: ask the searcher for `n` candidates (in the fit process, or a thread for
        random search) and persist them as pending trials of `step`, with their kernels. A
        budgeted job's first step starts with the budget's seeds (`embedding.budget`)."""
        job = self.job
        seeds: list[tuple[str, Action]] = []
        if first_number == 0 and job.target is not None:
            seeds = await asyncio.to_thread(
                budget_seeds, self.searcher.space, job.target["value"], job.target["measure"]
            )
            seeds = seeds[:n]
        m = n - len(seeds)

        # Deterministic proposals: a per-proposal seed, and observations / pending candidates
        # in trial-number order (not completion order), so a resumed job proposes exactly what
        # the uninterrupted one would from the same results.
        rng_key = [job.seed, first_number]

        def suggest() -> list[Action]:
            self.searcher.rng = np.random.default_rng(rng_key)
            return self.searcher.suggest(m)

        async with self._lock:
            log.info(
                "job %d: proposing %d candidates from %d results (%s)",
                self.job_id, n, len(self.searcher.rewards), self.searcher.kind,
            )  # fmt: skip
            canonical_order(self.searcher, self.numbers)
            self.searcher.mark_pending([a for _, a in seeds])  # never proposed again
            actions: list[Action] = []
            kernels: list[int | None] = []
            if m > 0 and self.searcher.kind == "random":  # cheap: no fit
                actions = await in_daemon_thread(suggest)
            elif m > 0:
                actions = await self.s.fitter.propose(
                    self.searcher, job, self.job_key, self.teacher_args, m, rng_key
                )
            if m > 0:
                kernels = list(self.searcher.last_kernels)
            actions = [a for _, a in seeds] + actions
            kernels = [*(None for _ in seeds), *kernels]
            tags: list[str | None] = [*(f"seed:{tag}" for tag, _ in seeds), *(None,) * m]
            log.info("job %d: step %d proposed trials %d..%d (kernels %s, %d seeds)", self.job_id,
                     step, first_number, first_number + len(actions) - 1, kernels,
                     len(seeds))  # fmt: skip

        def store() -> list[Trial]:
            with self.s.storage.session() as repo:
                return repo.create_trials(
                    self.job_id, [a.to_dict() for a in actions], step=step, kernels=kernels,
                    tags=tags,
                )  # fmt: skip

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
            latency=self.job.latency,
            target=self.job.target["value"] if self.job.target is not None else None,
        ).to_dict()
        current = trial

        async def attempt(held: Slot) -> dict[str, Any]:
            nonlocal current
            current = await s.db(self._update, trial.id, TrialState.RUNNING, new_attempt=True)
            number = current.attempts

            async def beat(report: dict[str, Any]) -> None:
                await s.best_effort(self._progress, trial.id, number, report)

            worker = await s.pool.supervise(
                held, s.pool.prepare(held, self.ctx, self.teacher_ref, self.data_ref),
                on_progress=beat,
            )
            current = await s.db(
                self._update, trial.id, TrialState.RUNNING,
                expect_attempts=number, worker=worker,
            )  # fmt: skip
            ref = held.actor.evaluate.remote(self.job_key, spec)
            return await s.pool.supervise(held, ref, on_progress=beat)  # type: ignore[no-any-return]

        async def lost(error: BaseException) -> None:
            code, message = error_of(error)
            await s.db(self._lost, trial.id, current.attempts, code, message)

        # attempts already made (before a restart) count against ESNAC_MAX_ATTEMPTS, except
        # those lost with their node
        node_lost = sum(1 for e in trial.lost_attempts if e.get("code") == "node_lost")
        left = s.settings.max_attempts - (trial.attempts - node_lost)
        result: dict[str, Any] | None = None
        code: str | None = None
        message: str | None = None
        exhausted = False  # every attempt lost: no attempt number to check the result against
        try:
            if left < 1:
                raise WorkersDiedError(f"on trial {trial.id}", trial.attempts, None)
            result = await s.pool.run_with_retries(
                attempt, attempts=left, what=f"on trial {trial.id}", slot=slot, on_lost=lost,
                node_losses=s.settings.max_node_losses - node_lost,
            )  # fmt: skip
        except WorkersDiedError as e:
            last = error_of(e.last)[1] if e.last is not None else "interrupted"
            exhausted, code = True, e.code
            uncounted = sum(1 for e in current.lost_attempts if e.get("code") == "node_lost")
            message = (
                f"gave up after {current.attempts} attempts (ESNAC_MAX_ATTEMPTS="
                f"{s.settings.max_attempts}"
                + (f"; {uncounted} lost with their node, not counted" if uncounted else "")
                + f"); the last: {last}"
            )
        except (StaleTrialError, UpdateFinishedTrialError):
            return
        except Exception as e:  # noqa: BLE001 - a worker error is the trial's result
            code, message = error_of(e)
        finally:
            # The worker is free as soon as its call returns: the next candidate starts while
            # this result waits for the searcher (which a running fit may hold).
            s.pool.release(slot)
        if exhausted:
            await self._finish(current, action, None, code, message)
        else:
            await self._finish(current, action, result, code, message, attempt=current.attempts)

    def _update(self, trial_id: int, state: TrialState, **kw: Any) -> Trial:
        with self.s.storage.session() as repo:
            return repo.update_trial(trial_id, state, **kw)

    def _progress(self, trial_id: int, attempt: int, report: dict[str, Any]) -> None:
        with self.s.storage.session() as repo:
            repo.record_progress(trial_id, attempt, report, utcnow())

    def _lost(self, trial_id: int, attempt: int, code: str, message: str) -> None:
        with self.s.storage.session() as repo:
            repo.record_lost_attempt(trial_id, attempt, code, message)

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
            with s.artifacts.all_or_nothing() as written, s.storage.session() as repo:
                try:
                    if result is None:
                        repo.update_trial(
                            trial.id, TrialState.FAILED, expect_attempts=attempt,
                            error_code=code, error=message,
                        )  # fmt: skip
                        return True
                    weights_id = None
                    if result.get("weights"):
                        weights_id = s.artifacts.write(
                            repo, "student", result["weights"], written
                        ).id
                    repo.update_trial(
                        trial.id, TrialState.SUCCEEDED, expect_attempts=attempt,
                        params=int(result["params"]), flops=int(result["flops"]),
                        accuracy=float(result["accuracy"]),
                        compression=float(result["compression"]),
                        reward=float(result["reward"]),
                        history=[float(x) for x in result.get("history", [])],
                        seconds={k: float(v) for k, v in result.get("seconds", {}).items()},
                        worker=result.get("worker") or None, weights_id=weights_id,
                        latency_ms=result.get("latency_ms"),
                        teacher_latency_ms=result.get("teacher_latency_ms"),
                        latency_spread=result.get("latency_spread"),
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
        self._observed.set()

    # ------------------------------------------------------------------------ finalize
    async def _finalize(self) -> None:
        """Choose the top-k students -- within the budget first, by search reward, or by a
        finishing evaluation of the best 2 x top_k (`EsnacOptions.finish_epochs`) -- and fully
        train them. Resumable: finished evaluations and trainings are stored on the trials."""
        s, job = self.s, self.job
        finish_epochs = EsnacOptions.from_dict(job.searcher).finish_epochs

        def succeeded() -> list[Trial]:
            with s.storage.session() as repo:
                return [
                    t
                    for t in repo.job_trials(self.job_id)
                    if t.status is TrialState.SUCCEEDED and t.reward is not None
                ]

        floor = floor_accuracy(job.accuracy_floor, self.ctx["teacher_accuracy"],
                               self.ctx["num_classes"])  # fmt: skip
        # a student below the accuracy floor (near chance) is never fully trained
        ranked = [t for t in rank_students(await s.db(succeeded), job.target, floor=floor)
                  if floor is None or (t.accuracy or 0.0) >= floor]  # fmt: skip
        problems: list[str] = []
        if finish_epochs > 0 and job.top_k > 0:
            finalists = ranked[: 2 * job.top_k]
            todo = [t for t in finalists if t.finish is None]
            errors = await asyncio.gather(*(self._finishing(t, finish_epochs) for t in todo))
            problems += [e for e in errors if e]
            numbers = {t.number for t in finalists}
            again = [t for t in await s.db(succeeded) if t.number in numbers]
            ranked = rank_students(again, job.target, by_finish=True)
        if job.top_k > 0 and not ranked:
            problems.append(
                f"no student reached the accuracy floor ({100 * (floor or 0):.1f} %: chance + "
                f"{job.accuracy_floor:g} of the teacher's margin), so none was fully trained; "
                "is the teacher right for this dataset? (accuracy_floor 0 turns the floor off)"
            )
        todo = [t for t in ranked[: job.top_k] if t.final_accuracy is None]
        errors = await asyncio.gather(*(self._full_train(t) for t in todo))
        problems += [e for e in errors if e]

        def finish() -> None:
            with s.storage.session() as repo:
                repo.set_job_state(
                    self.job_id, JobState.SUCCEEDED, error="; ".join(problems) or None
                )

        await s.db(finish)

    async def _finishing(self, trial: Trial, epochs: int) -> str | None:
        """A finalist's finishing evaluation: `epochs` more epochs of the search training on
        every training image, from its search weights; stored on the trial. Returns an error
        or None."""
        s, job = self.s, self.job
        if trial.weights_id is None:
            return f"trial {trial.id} has no search weights to finish"

        def weights() -> bytes:
            with s.storage.session() as repo:
                return s.artifacts.read(repo.get_artifact(trial.weights_id or 0))

        start = await s.db(weights)
        spec = TrialSpec(
            trial_id=trial.id, action=trial.action, seed=trial_seed(job.seed, trial.number),
            training=replace(self.training, epochs=epochs, max_train_samples=None),
            reward=job.reward, return_weights=False, latency=job.latency,
            target=job.target["value"] if job.target is not None else None,
        ).to_dict()  # fmt: skip

        async def call(slot: Slot) -> dict[str, Any]:
            await s.pool.supervise(
                slot, s.pool.prepare(slot, self.ctx, self.teacher_ref, self.data_ref)
            )
            ref = slot.actor.evaluate.remote(self.job_key, spec, start)
            return await s.pool.supervise(slot, ref)  # type: ignore[no-any-return]

        try:
            out = await s.pool.run_with_retries(
                call, attempts=s.settings.max_attempts, what=f"finishing trial {trial.id}"
            )
        except WorkersDiedError as e:
            return f"finishing evaluation of trial {trial.id}: {e}"
        except Exception as e:  # noqa: BLE001 - reported on the job
            code, message = error_of(e)
            return f"finishing evaluation of trial {trial.id} failed ({code}): {message}"
        result = {"accuracy": float(out["accuracy"]), "reward": float(out["reward"]),
                  "epochs": epochs, "seconds": float(out["seconds"].get("total", 0.0))}  # fmt: skip

        def store() -> None:
            with s.storage.session() as repo:
                repo.record_finish(trial.id, result)

        await s.db(store)
        return None

    def _card(self, repo: Any, trial: Trial, out: dict[str, Any]) -> dict[str, Any] | None:
        """The student's model card: the worker's part (architecture, size, accuracies, input,
        normalisation) with the teacher, job and trial it came from."""
        card = out.get("card")
        if not isinstance(card, dict):
            return None
        t = repo.get_teacher(self.job.teacher_id)
        return {
            **card,
            "teacher": {"id": t.id, "arch": t.arch, "name": t.name, "accuracy": t.accuracy,
                        "params": t.params, "dataset": t.dataset},  # fmt: skip
            "job": self.job_id,
            "trial": {"id": trial.id, "number": trial.number, "search_accuracy": trial.accuracy,
                      "reward": trial.reward},  # fmt: skip
        }

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
            await s.pool.supervise(
                slot, s.pool.prepare(slot, self.ctx, self.teacher_ref, self.data_ref)
            )
            ref = slot.actor.finetune.remote(self.job_key, trial.action, start, training, seed)
            return await s.pool.supervise(slot, ref)  # type: ignore[no-any-return]

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
            # both files or neither: a failed ONNX write (disk full) is retried without leaving
            # the weights written before it behind
            with s.artifacts.all_or_nothing() as written, s.storage.session() as repo:
                w = s.artifacts.write(repo, "final", out["weights"], written)
                onnx = (
                    s.artifacts.write(repo, "onnx", out["onnx"], written)
                    if out.get("onnx")
                    else None
                )
                repo.record_final(
                    trial.id, accuracy=float(out["accuracy"]),
                    history=[float(x) for x in out.get("history", [])],
                    seconds=float(out.get("seconds", 0.0)), weights_id=w.id,
                    onnx_id=onnx.id if onnx else None, card=self._card(repo, trial, out),
                )  # fmt: skip

        await s.db(store)
        return None
