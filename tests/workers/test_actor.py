"""The Ray actor on a real local Ray (`ray.init(num_cpus=2)`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import ray

from embedding.space import Action
from workers.actor import RemoteTrialWorker
from workers.export import load_state_safetensors
from workers.spec import BadSpecError, SearchTraining, TrialSpec, WorkerError
from workers.trial import JobContext, prepare_job, run_trial

pytestmark = pytest.mark.slow

TINY = SearchTraining(epochs=1, batch_size=32, max_train_samples=64)


def test_two_actors_match_the_in_process_runs(
    ray_session: str, small_npz: str, teacher_bytes: bytes
) -> None:
    ctx = JobContext("job-a", "resnet20", 10, teacher_bytes, 0.8, small_npz)
    state = prepare_job(ctx, device="cpu")
    rng = np.random.default_rng(5)
    specs = [
        TrialSpec(i, state.space.sample(rng).to_dict(), seed=100 + i, training=TINY)
        for i in range(4)
    ]
    workers = [
        RemoteTrialWorker.options(num_cpus=1).remote(device="cpu", threads=1) for _ in range(2)
    ]
    try:
        ctx_dict = {k: v for k, v in dataclasses.asdict(ctx).items() if k != "teacher_weights"}
        ref = ray.put(teacher_bytes)
        names = ray.get([w.prepare.remote(ctx_dict, ref) for w in workers])
        assert len(set(names)) == 2
        # prepare is idempotent; the cached job is reused.
        assert ray.get(workers[0].prepare.remote(ctx_dict, ref)) == names[0]
        futures = [
            workers[i % 2].evaluate.remote("job-a", s.to_dict()) for i, s in enumerate(specs)
        ]
        remote = ray.get(futures)
        assert {r["worker"] for r in remote} == set(names)
        for spec, got in zip(specs, remote, strict=True):
            local = run_trial(ctx, spec, cache=state)
            assert got["trial_id"] == spec.trial_id
            assert abs(got["accuracy"] - local.accuracy) <= 1e-6
            assert got["history"] == pytest.approx(local.history, abs=1e-6)
            assert (got["params"], got["flops"]) == (local.params, local.flops)
            assert got["reward"] == pytest.approx(local.reward, abs=1e-6)
            assert isinstance(got["weights"], bytes)
            student = state.student(Action.from_json(spec.action))
            load_state_safetensors(student, got["weights"])

        # Typed errors cross Ray as the original classes, and the actor survives them.
        with pytest.raises(BadSpecError, match="call prepare first"):
            ray.get(workers[0].evaluate.remote("job-unknown", specs[0].to_dict()))
        nan = dataclasses.replace(specs[0], training=SearchTraining(lr=float("nan")))
        with pytest.raises(WorkerError) as err:
            ray.get(workers[1].evaluate.remote("job-a", nan.to_dict()))
        assert err.value.code == "bad_spec" and "lr must be a finite number" in err.value.message
        with pytest.raises(BadSpecError, match="unknown dataset"):
            ray.get(workers[1].prepare.remote({**ctx_dict, "job_key": "b", "dataset": "x"}, ref))
        assert ray.get(workers[1].name.remote()) == names[1]

        # Full training and teacher measurement through the actor.
        out = ray.get(
            workers[0].finetune.remote(
                "job-a", specs[0].action, remote[0]["weights"], {"epochs": 1, "batch_size": 64}, 0
            )
        )
        assert len(out["history"]) == 1 and out["onnx"] and out["params"] == remote[0]["params"]
        acc = ray.get(
            workers[1].measure_teacher.remote("resnet20", 10, teacher_bytes, small_npz, None)
        )
        # the worker's measurement is evaluate() on the same validation split, exactly
        from workers import zoo
        from workers.data import load_dataset
        from workers.train import evaluate

        teacher = zoo.build("resnet20", 10)
        load_state_safetensors(teacher, teacher_bytes)
        want = evaluate(teacher, load_dataset(small_npz, None, False).val)
        assert acc == pytest.approx(want, abs=1e-9)
        settings = {"epochs": 1, "seed": 0, "lr": 0.05, "batch_size": 32, "max_train_samples": 32}
        trained = ray.get(
            workers[0].train_teacher.remote("resnet20", 10, small_npz, None, settings)
        )
        assert trained["metadata"]["max_train_samples"] == 32
        assert trained["metadata"]["accuracy"] == trained["accuracy"] and trained["seconds"] > 0
        ctx2 = {**ctx_dict, "job_key": "job-b"}
        assert ray.get(workers[1].prepare.remote(ctx2, trained["weights"])) == names[1]
        ray.get(workers[0].release.remote("job-a"))
        assert ray.get(workers[0].jobs.remote()) == []
    finally:
        for w in workers:
            ray.kill(w)


def test_progress_is_answered_while_a_trial_trains(
    ray_session: str, small_npz: str, teacher_bytes: bytes
) -> None:
    import time

    ctx = JobContext("job-p", "resnet20", 10, teacher_bytes, 0.8, small_npz)
    state = prepare_job(ctx, device="cpu")
    action = state.space.sample(np.random.default_rng(0)).to_dict()
    spec = TrialSpec(0, action, seed=1, training=SearchTraining(epochs=6, max_train_samples=64))
    worker = RemoteTrialWorker.options(num_cpus=1).remote(device="cpu", threads=1)
    try:
        ctx_dict = {k: v for k, v in dataclasses.asdict(ctx).items() if k != "teacher_weights"}
        ray.get(worker.prepare.remote(ctx_dict, ray.put(teacher_bytes)))
        assert ray.get(worker.progress.remote()) is None  # idle
        running = worker.evaluate.remote("job-p", spec.to_dict())
        reports = []
        while not ray.wait([running], timeout=0)[0]:
            # answered from its own concurrency group while `evaluate` holds the default one
            report = ray.get(worker.progress.remote(), timeout=30)
            if report is not None:
                reports.append(report)
            time.sleep(0.05)
        result = ray.get(running)
        assert reports and all(r["phase"] in ("prepare", "train") for r in reports)
        trained = [r for r in reports if r["phase"] == "train"]
        assert trained and all(r["epochs"] == 6 for r in trained)
        assert max(r["epoch"] for r in trained) >= 1 and min(r["silent_s"] for r in reports) < 5
        done = [r for r in trained if r["epoch"] >= 1]
        # the reported validation accuracy is the trial's own history
        assert done[-1]["val_accuracy"] == pytest.approx(result["history"][done[-1]["epoch"] - 1])
        assert ray.get(worker.progress.remote()) is None
    finally:
        ray.kill(worker)
