from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from embedding.reward import reward
from embedding.space import Action, CompressionSpace
from workers import zoo
from workers.export import load_state_safetensors, state_to_safetensors
from workers.spec import (
    BadSpecError,
    FullTraining,
    SearchTraining,
    TrialSpec,
    WorkerOutOfMemoryError,
)
from workers.trial import JobContext, PreparedJob, finetune_student, guard, prepare_job, run_trial

TINY = SearchTraining(epochs=1, batch_size=64, max_train_samples=64)


def sampled(state: PreparedJob, seed: int) -> dict:
    return state.space.sample(np.random.default_rng(seed)).to_dict()


def test_trial_result_is_complete_and_consistent(ctx: JobContext, state: PreparedJob) -> None:
    action = sampled(state, 0)
    res = run_trial(ctx, TrialSpec(3, action, seed=1, training=TINY), cache=state)
    assert res.trial_id == 3 and len(res.history) == 1 and res.accuracy == max(res.history)
    assert res.params == state.space.num_params(Action.from_json(action))
    c = 1 - res.params / state.space.teacher_params
    assert res.compression == pytest.approx(c)
    assert res.reward == pytest.approx(
        reward(res.accuracy, 0.8, res.params, state.space.teacher_params)
    )
    assert set(res.seconds) == {"build", "train", "eval", "total"}
    assert res.worker and res.weights is not None
    student = state.student(Action.from_json(action))
    load_state_safetensors(student, res.weights)
    # Same seed, same result; a FLOPs reward measures FLOPs.
    spec = TrialSpec(3, action, seed=1, training=TINY, reward="flops", return_weights=False)
    again = run_trial(ctx, spec.to_dict(), cache=state)
    assert again.accuracy == res.accuracy and again.history == res.history
    assert again.weights is None
    assert again.compression == pytest.approx(1 - res.flops / state.teacher_flops)
    # A size budget: accuracy within it, shrunk by budget / size beyond it.
    for reward_name, size in (("params_target", res.params), ("flops_target", res.flops)):
        for budget in (2.0 * size, size / 2.0):
            spec = TrialSpec(3, action, seed=1, training=TINY, reward=reward_name,
                             return_weights=False, target=budget)  # fmt: skip
            scored = run_trial(ctx, spec.to_dict(), cache=state)
            assert scored.reward == pytest.approx(
                res.accuracy / 0.8 * min(1.0, budget / size)
            ), (reward_name, budget)
    with pytest.raises(BadSpecError, match="needs a positive budget"):
        TrialSpec(3, action, reward="params_target").validate()


def test_logit_cache_is_built_once_per_job(ctx: JobContext, state: PreparedJob) -> None:
    training = dataclasses.replace(TINY, augment=False, cache_teacher_logits=True)
    spec = TrialSpec(1, sampled(state, 1), training=training)
    first = run_trial(ctx, spec, cache=state)
    cached = state.logits(64)
    run_trial(ctx, spec, cache=state)
    assert state.logits(64).data_ptr() == cached.data_ptr()
    plain = run_trial(
        ctx,
        dataclasses.replace(
            spec, training=dataclasses.replace(training, cache_teacher_logits=False)
        ),
        cache=state,
    )
    assert plain.accuracy == pytest.approx(first.accuracy, abs=1 / 24)


def test_malformed_specs_are_typed_errors(ctx: JobContext, state: PreparedJob) -> None:
    # Unknown dataset.
    with pytest.raises(BadSpecError, match="unknown dataset 'imagenet'.*cifar10"):
        prepare_job(dataclasses.replace(ctx, dataset="imagenet"), device="cpu")
    # An action made for another teacher.
    other = CompressionSpace.for_teacher(zoo.build("resnet56", 10), max_layers=256)
    foreign = other.sample(np.random.default_rng(0)).to_dict()
    with pytest.raises(BadSpecError, match="made for teacher .* not this one"):
        run_trial(ctx, TrialSpec(1, foreign, training=TINY), cache=state)
    # Not even an action.
    with pytest.raises(BadSpecError, match="malformed field"):
        run_trial(ctx, TrialSpec(1, {"removed": ["x"]}, training=TINY), cache=state)
    # NaN learning rate.
    nan = TrialSpec(1, sampled(state, 0), training=SearchTraining(lr=float("nan")))
    with pytest.raises(BadSpecError, match="lr must be a finite number, got nan"):
        run_trial(ctx, nan, cache=state)
    with pytest.raises(BadSpecError, match="cache_teacher_logits needs augment=False"):
        run_trial(
            ctx,
            TrialSpec(1, sampled(state, 0), training=SearchTraining(cache_teacher_logits=True)),
            cache=state,
        )
    with pytest.raises(BadSpecError, match="malformed trial spec"):
        run_trial(ctx, {"trial_id": 1, "action": {}, "colour": "red"}, cache=state)
    with pytest.raises(BadSpecError, match="reward must be"):
        run_trial(ctx, TrialSpec(1, sampled(state, 0), reward="speed"), cache=state)


def test_bad_job_contexts_are_typed_errors(ctx: JobContext) -> None:
    with pytest.raises(BadSpecError, match="divide by 100"):
        prepare_job(dataclasses.replace(ctx, teacher_accuracy=91.0), device="cpu")
    with pytest.raises(BadSpecError, match="unknown teacher architecture"):
        prepare_job(dataclasses.replace(ctx, teacher_arch="alexnet"), device="cpu")
    with pytest.raises(BadSpecError, match="do not fit this architecture"):
        prepare_job(dataclasses.replace(ctx, teacher_arch="resnet56"), device="cpu")
    w100 = state_to_safetensors(zoo.build("resnet20", 100))
    with pytest.raises(BadSpecError, match="has 10 classes but the teacher has 100"):
        prepare_job(dataclasses.replace(ctx, num_classes=100, teacher_weights=w100), device="cpu")
    with pytest.raises(BadSpecError, match="max_layers=64"):
        prepare_job(dataclasses.replace(ctx, max_layers=64), device="cpu")
    with pytest.raises(BadSpecError, match="inheritance must be one of"):
        prepare_job(dataclasses.replace(ctx, inheritance="last"), device="cpu")


def test_the_jobs_inheritance_rule_builds_its_students(ctx: JobContext) -> None:
    states = {r: prepare_job(dataclasses.replace(ctx, inheritance=r), device="cpu")
              for r in ("importance", "first")}  # fmt: skip
    action = Action.from_json(sampled(states["first"], 0))
    students = {r: st.student(action).state_dict() for r, st in states.items()}
    assert states["first"].space.inheritance == "first"
    assert any(not v.equal(students["importance"][k]) for k, v in students["first"].items())


def test_out_of_memory_becomes_a_typed_error() -> None:
    with pytest.raises(WorkerOutOfMemoryError, match="smaller batch_size"):
        with guard("trial 1"):
            torch.empty(2**50, dtype=torch.uint8)
    with pytest.raises(ZeroDivisionError):
        with guard("trial 1"):
            _ = 1 / 0


def test_finetune_student_returns_weights_and_onnx(state: PreparedJob) -> None:
    action = sampled(state, 2)
    out = finetune_student(state, action, None, FullTraining(epochs=1, batch_size=64), seed=0)
    assert set(out) >= {"accuracy", "history", "weights", "onnx", "params", "flops", "seconds"}
    assert len(out["history"]) == 1 and out["accuracy"] == out["history"][0]
    onnx.checker.check_model(onnx.load_from_string(out["onnx"]))
    student = state.student(Action.from_json(action))
    load_state_safetensors(student, out["weights"])
    assert out["params"] == state.space.num_params(Action.from_json(action))
    assert out["card"]["inheritance"] == state.space.inheritance == "importance"
