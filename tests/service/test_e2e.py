"""End to end through HTTP only: a real server process, real Ray workers, real training.

The server runs as `python -m service.server` connected to the session's local Ray; everything
is tiny (digits, few samples, 1 epoch) to fit the CPU budget.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db.migrate import upgrade
from tests.reliability.harness import Server

pytestmark = pytest.mark.slow

TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server_env(ray_session: str, tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'esnac.db'}"
    upgrade(url)
    env = dict(os.environ)
    env.update(
        ESNAC_DATABASE_URL=url, ESNAC_ARTIFACT_DIR=str(tmp_path / "artifacts"),
        ESNAC_API_TOKEN=TOKEN, ESNAC_RAY_ADDRESS=ray_session, ESNAC_WORKERS="2",
        ESNAC_CPUS_PER_TRIAL="1", ESNAC_THREADS_PER_TRIAL="1", ESNAC_POLL_INTERVAL="0.2",
        OMP_NUM_THREADS="1", ESNAC_DATA_DIR=str(tmp_path),  # npz: files must lie under it
    )  # fmt: skip
    return env


@pytest.fixture
def servers(server_env: dict[str, str], tmp_path: Path) -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.stop()


def _wait(client: httpx.Client, path: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(path).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} still {body}")
        time.sleep(0.5)


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def _all_trials(client: httpx.Client, job_id: int) -> list[dict[str, Any]]:
    page = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 1000}).json()
    return sorted(page["items"], key=lambda t: t["number"])


def test_esnac_job_end_to_end(servers: list[Server], server_env, tmp_path: Path) -> None:
    import torch

    from embedding.space import Action
    from service.searchers import build_space
    from workers import zoo
    from workers.data import load_dataset
    from workers.export import load_state_safetensors, state_to_safetensors
    from workers.train import evaluate

    server = Server(server_env, tmp_path / "server.log")
    servers.append(server)
    server.start()
    c = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
    r = c.post("/v1/teachers/train", json={
        "arch": "resnet20", "num_classes": 10, "dataset": "digits", "epochs": 2,
        "max_train_samples": 512, "batch_size": 32, "lr": 0.02,
    })  # fmt: skip
    assert r.status_code == 202, r.text
    teacher = _wait(c, f"/v1/teachers/{r.json()['id']}", lambda t: t["status"] != "training", 180)
    assert teacher["status"] == "ready", teacher
    assert 0.0 < teacher["accuracy"] <= 1.0  # 2 short epochs: a weak teacher, fine here

    r = c.post("/v1/jobs", json={
        "teacher_id": teacher["id"], "strategy": "esnac", "steps": 2, "per_step": 2,
        "search": {"epochs": 1, "max_train_samples": 256, "batch_size": 64},
        "top_k": 1, "full_training": {"epochs": 1, "batch_size": 64}, "seed": 0,
        "accuracy_floor": 0,  # a 2-epoch teacher: its students may sit near chance
        "searcher": {"kernels": 2, "candidates": 50, "train_encoder": True},
    })  # fmt: skip
    assert r.status_code == 201, r.text
    job = _wait(c, f"/v1/jobs/{r.json()['id']}", _finished, 300)
    assert job["status"] == "succeeded", (job, server.log.read_text()[-3000:])
    # Regression: with 2 workers both proposals of `steps=1, per_step=2` come before any
    # observation, so nothing is fitted; the job must still succeed (it once failed storing the
    # encoder after every trial had succeeded). Its reward is the measured latency (default
    # target: ONNX Runtime, 1 thread, batch 1), the teacher timed on the same worker.
    r = c.post("/v1/jobs", json={
        "teacher_id": teacher["id"], "strategy": "esnac", "steps": 1, "per_step": 2,
        "search": {"epochs": 1, "max_train_samples": 128, "batch_size": 64}, "top_k": 0,
        "searcher": {"kernels": 2, "candidates": 50}, "reward": "latency",
    })  # fmt: skip
    small = _wait(c, f"/v1/jobs/{r.json()['id']}", _finished, 300)
    assert small["status"] == "succeeded", (small, server.log.read_text()[-3000:])
    assert small["progress"]["succeeded"] == 2 and small["has_encoder"] is False
    assert small["reward"] == "latency" and small["latency"]["backend"] == "onnxruntime-cpu"
    for t in _all_trials(c, small["id"]):
        assert t["latency_ms"] > 0 and t["teacher_latency_ms"] > 0 and t["latency_spread"] >= 0
        assert t["compression"] == pytest.approx(1 - t["latency_ms"] / t["teacher_latency_ms"])
    # a budget job (4x fewer parameters): its first step starts with the budget's two seeds,
    # tagged, and its top-k students, fully trained, are all within the budget. Steps of 2
    # random-search candidates: the seeds fill the first step, so this is the smallest job
    # that also shows a searcher's step after them.
    r = c.post("/v1/jobs", json={
        "teacher_id": teacher["id"], "strategy": "random", "steps": 2, "per_step": 2,
        "search": {"epochs": 1, "max_train_samples": 128, "batch_size": 64}, "top_k": 2,
        "full_training": {"epochs": 1, "batch_size": 64}, "reward": "params_target",
        "target": {"times_smaller": 4}, "searcher": {"finish_epochs": 1}, "accuracy_floor": 0,
    })  # fmt: skip
    budget = _wait(c, f"/v1/jobs/{r.json()['id']}", _finished, 300)
    assert budget["status"] == "succeeded", (budget, server.log.read_text()[-3000:])
    limit = budget["target"]["value"]
    assert limit == pytest.approx(teacher["params"] / 4)
    btrials = _all_trials(c, budget["id"])
    assert [t["tag"] for t in btrials[:2]] == ["seed:uniform", "seed:global"]
    assert all(t["tag"] is None for t in btrials[2:]) and len(btrials) == 4
    finals = [t for t in btrials if t["final"] is not None]
    assert len(finals) == 2 and all(t["params"] <= limit for t in finals)
    # the finish: the 2 x top_k best by search reward (here all 4) got a second, longer score
    # (1 more epoch on every image), and the top_k within the budget by it were trained
    assert all(t["finish"]["epochs"] == 1 and t["finish"]["seconds"] > 0 for t in btrials)
    by_finish = sorted(btrials, key=lambda t: (t["params"] > limit, -t["finish"]["reward"],
                                               t["number"]))  # fmt: skip
    assert {t["id"] for t in finals} == {t["id"] for t in by_finish[:2]}
    for t in btrials:  # f = A within the budget, A * budget / params beyond
        a = t["accuracy"] / teacher["accuracy"]
        want = a if t["params"] <= limit else a * limit / t["params"]
        assert t["reward"] == pytest.approx(want)

    assert job["progress"]["succeeded"] == 4 and job["progress"]["finalized"] == 1
    assert job["has_encoder"]
    trials = _all_trials(c, job["id"])
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert all(t["status"] == "succeeded" and t["reward"] is not None for t in trials)
    assert all(t["attempts"] == 1 and t["worker"] for t in trials)

    best = job["best_trial"]
    assert best["reward"] == max(t["reward"] for t in trials)
    assert best["final"] is not None and best["final"]["has_onnx"]
    w = c.get(f"/v1/trials/{best['id']}/weights")
    assert w.status_code == 200 and w.headers["x-esnac-weights"] == "final"
    onnx = c.get(f"/v1/trials/{best['id']}/onnx")
    assert onnx.status_code == 200 and len(onnx.content) > 1000
    teacher_w = c.get(f"/v1/teachers/{teacher['id']}/weights").content
    space = build_space("resnet20", 10, teacher_w, (3, 32, 32))
    student = space.materialize(Action.from_json(best["action"]))
    load_state_safetensors(student, w.content)
    torch.set_num_threads(1)
    acc = evaluate(student, load_dataset("digits").val)
    assert acc == pytest.approx(best["final"]["accuracy"], abs=1e-6)
    assert sum(p.numel() for p in student.parameters()) == best["params"]

    # a job on a deeper teacher (resnet56: more than 128 layers, so wider rows) starts from the
    # learned encoder, fixed (the paper's transfer), mapped to its row width; its second step fits
    r = c.post(
        "/v1/teachers", files={"weights": ("t", state_to_safetensors(zoo.build("resnet56", 10)))},
        data={"arch": "resnet56", "num_classes": "10", "dataset": "digits", "accuracy": "0.5"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    deep = r.json()["id"]
    r = c.post("/v1/jobs", json={
        "teacher_id": deep, "embedding_from": job["id"], "steps": 2, "per_step": 2,
        "top_k": 0, "search": {"epochs": 1, "max_train_samples": 64},
        "searcher": {"kernels": 1, "candidates": 20, "train_encoder": False},
    })  # fmt: skip
    assert r.status_code == 201, r.text
    job2 = _wait(c, f"/v1/jobs/{r.json()['id']}", _finished, 240)
    assert job2["status"] == "succeeded", (job2, server.log.read_text()[-3000:])
    assert job2["embedding_source"] == {
        "job": job["id"], "teacher_id": teacher["id"], "teacher_arch": "resnet20",
        "teacher_name": None, "other_teacher": True,
    }  # fmt: skip
    assert job2["progress"]["succeeded"] == 4 and job2["has_encoder"]  # a fit ran on it


def test_restart_and_dead_worker_keep_every_finished_trial(
    servers: list[Server], server_env, tmp_path: Path
) -> None:
    from workers import zoo
    from workers.export import state_to_safetensors

    server = Server(server_env, tmp_path / "server1.log")
    servers.append(server)
    server.start()
    c = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
    r = c.post(
        "/v1/teachers", files={"weights": ("t", state_to_safetensors(zoo.build("resnet20", 10)))},
        data={"arch": "resnet20", "num_classes": "10", "dataset": "digits", "accuracy": "0.5"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    r = c.post("/v1/jobs", json={
        # N2N (its policy rebuilt from the stored results after the restart)
        "teacher_id": r.json()["id"], "strategy": "n2n", "steps": 3, "per_step": 2,
        "search": {"epochs": 1, "max_train_samples": 192, "batch_size": 64, "augment": False},
        "top_k": 1, "full_training": {"epochs": 1, "batch_size": 64}, "seed": 3,
        "accuracy_floor": 0,  # an untrained teacher: its students sit near chance
    })  # fmt: skip
    job_id = r.json()["id"]
    _wait(c, f"/v1/jobs/{job_id}", lambda j: j["progress"]["succeeded"] >= 2, 180)
    server.kill()
    from service.db import Storage  # the server is down: read its database directly

    storage = Storage(server_env["ESNAC_DATABASE_URL"])
    with storage.session() as repo:
        at_kill = {t.id: t for t in repo.job_trials(job_id)}
    storage.dispose()
    finished = {k: t for k, t in at_kill.items() if t.status.is_finished()}
    in_flight = {k: t for k, t in at_kill.items() if t.status.value == "running"}
    assert len(finished) >= 2

    server2 = Server(server_env, tmp_path / "server2.log")
    servers.append(server2)
    server2.start()
    c = httpx.Client(base_url=server2.url, headers=AUTH, timeout=30)

    # kill the worker process of a running trial: it is retried on a fresh actor
    def live(t: dict[str, Any]) -> bool:  # dispatched by this server (not a stale row)
        old = at_kill.get(t["id"])
        return bool(t["worker"]) and (old is None or t["attempts"] > old.attempts)

    running = _wait(
        c, f"/v1/jobs/{job_id}/trials?status=running",
        lambda p: any(live(t) for t in p["items"]), 120,
    )["items"]  # fmt: skip
    victim = next(t for t in running if live(t))
    os.kill(int(victim["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    killed_at = time.time()

    job = _wait(c, f"/v1/jobs/{job_id}", _finished, 300)
    assert job["status"] == "succeeded", (job, server2.log.read_text()[-3000:])
    trials = {t["id"]: t for t in _all_trials(c, job_id)}
    assert sorted(t["number"] for t in trials.values()) == list(range(6))
    assert all(t["status"] == "succeeded" for t in trials.values())
    for tid, old in finished.items():  # kept exactly, not evaluated again
        now = trials[tid]
        assert now["attempts"] == old.attempts and now["reward"] == old.reward
        assert now["finished_at"].startswith(old.finished_at.isoformat()[:19])
    for tid, old in in_flight.items():  # re-dispatched: one more attempt
        if tid != victim["id"]:
            assert trials[tid]["attempts"] == old.attempts + 1
    v = trials[victim["id"]]
    finished_late = v["finished_at"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed_at))
    if finished_late:  # (else it finished just before the kill: the race is lost, fine)
        assert v["attempts"] >= victim["attempts"] + 1
        assert f"on trial {victim['id']} lost" in server2.log.read_text()
        lost = [e for e in v["lost_attempts"] if e["attempt"] == victim["attempts"]]
        assert [e["code"] for e in lost] == ["worker_died"], v["lost_attempts"]
    assert max(t["attempts"] for t in trials.values()) <= 3

    # cancel a running job: unfinished trials fail as cancelled, nothing changes afterwards
    r = c.post("/v1/jobs", json={
        "teacher_id": job["teacher_id"], "strategy": "random", "steps": 10, "per_step": 2,
        "search": {"epochs": 5, "max_train_samples": 256, "batch_size": 64}, "top_k": 0,
    })  # fmt: skip
    job3 = r.json()["id"]
    _wait(c, f"/v1/jobs/{job3}/trials?status=running", lambda p: bool(p["items"]), 60)
    r = c.post(f"/v1/jobs/{job3}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    page = c.get(f"/v1/jobs/{job3}/trials").json()
    assert page["items"] and all(t["status"] in ("succeeded", "failed") for t in page["items"])
    assert any(t["error_code"] == "cancelled" for t in page["items"])
    # a job whose trials all fail (its dataset vanished) fails with a message, no retries
    import numpy as np

    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=np.zeros((20, 32, 32, 3), np.uint8), y=np.arange(20) % 10)
    r = c.post(
        "/v1/teachers", files={"weights": ("t", state_to_safetensors(zoo.build("resnet20", 10)))},
        data={"arch": "resnet20", "num_classes": "10", "dataset": f"npz:{npz}", "accuracy": "0.5"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    npz.unlink()
    r = c.post("/v1/jobs", json={"teacher_id": r.json()["id"], "strategy": "random", "steps": 1,
                                 "per_step": 2, "search": {"epochs": 1}})  # fmt: skip
    failed = _wait(c, f"/v1/jobs/{r.json()['id']}", _finished, 120)
    assert failed["status"] == "failed" and "every trial failed" in failed["error"]
    for t in _all_trials(c, failed["id"]):
        assert (t["status"], t["error_code"], t["attempts"]) == ("failed", "dataset_missing", 1)
        assert "does not exist" in t["error"] and "worker host" in t["error"]
    # The failed job ran on the workers after the cancelled job's trials: an actor runs one call
    # at a time, so any late result of job 3 has arrived by now. Nothing of job 3 changed.
    later = c.get(f"/v1/jobs/{job3}/trials", params={"cursor": page["next_cursor"]}).json()
    assert later["items"] == []
    assert c.get(f"/v1/jobs/{job3}").json()["status"] == "cancelled"
