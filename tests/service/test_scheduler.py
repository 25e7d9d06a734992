"""Scheduler pieces that need no Ray: seeds, the teacher's space, searcher rebuild on resume."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import torch

from embedding.space import Action
from service.db import Job, JobState
from service.scheduler import build_space, make_searcher, trial_seed
from workers import zoo
from workers.export import state_to_safetensors


def _job(strategy: str = "random", seed: int = 7) -> Job:
    now = datetime(2026, 1, 1)
    return Job(
        id=1, teacher_id=1, dataset="digits", strategy=strategy, steps=3, per_step=2, search={},
        top_k=1, full_training={}, reward="params", seed=seed, embedding_from=None,
        searcher={"kernels": 2, "subset": 0.5, "candidates": 30, "train_encoder": True},
        status=JobState.RUNNING, error=None, encoder_id=None, created_at=now, started_at=now,
        finished_at=None, updated_at=now,
    )  # fmt: skip


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return build_space("resnet20", 10, state_to_safetensors(zoo.build("resnet20", 10)), (3, 32, 32))


def test_trial_seeds_are_stable_and_distinct() -> None:
    seeds = [trial_seed(7, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and seeds == [trial_seed(7, n) for n in range(1000)]
    assert trial_seed(8, 0) != trial_seed(7, 0)


def test_space_matches_the_workers_max_layers(space) -> None:
    assert space.max_layers == max(128, space.num_layers)
    big = build_space(
        "resnet56", 10, state_to_safetensors(zoo.build("resnet56", 10)), (3, 32, 32)
    )
    assert big.num_layers > 128 and big.max_layers == big.num_layers


def test_resumed_random_searcher_proposes_what_the_original_would(space) -> None:
    """The scheduler reseeds before each proposal from (job seed, first trial number) and
    replays observations + pending on resume: the proposals after a restart are the same."""
    job = _job()

    def propose(searcher, first_number: int, n: int) -> list[Action]:
        searcher.rng = np.random.default_rng([job.seed, first_number])
        return searcher.suggest(n)

    live = make_searcher(job, space)
    first = propose(live, 0, 2)
    live.observe([first[0]], [0.5])  # first[1] still in flight
    want = propose(live, 2, 2)

    resumed = make_searcher(job, space)
    resumed.observe([first[0]], [0.5])
    resumed.mark_pending([first[1]])
    assert [a.key for a in propose(resumed, 2, 2)] == [a.key for a in want]
