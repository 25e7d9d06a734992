from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from embedding.reward import model_flops
from embedding.space import Action, CompressionSpace
from workers import zoo
from workers.data import DatasetSplits, load_dataset
from workers.progress import Progress
from workers.spec import (
    BadSpecError,
    FullTraining,
    SearchTraining,
    TeacherTraining,
    TrainingFailedError,
)
from workers.train import (
    TeacherResult,
    count_params,
    distill,
    evaluate,
    finetune,
    recalibrate_bn,
    teacher_logits,
    train_teacher,
)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


def half_student(teacher: torch.nn.Module) -> tuple[CompressionSpace, torch.nn.Module]:
    space = CompressionSpace.for_teacher(teacher)
    action = Action((), tuple(0.5 for _ in space.shrinkable), (), space.fingerprint)
    return space, space.materialize(action)


def test_counts_match_the_space_and_shrink_with_the_student() -> None:
    torch.manual_seed(0)
    teacher = zoo.build("resnet20", 10)
    space, student = half_student(teacher)
    assert count_params(teacher) == space.teacher_params
    assert count_params(student) == space.num_params(
        Action((), tuple(0.5 for _ in space.shrinkable), (), space.fingerprint)
    )
    t_flops, s_flops = model_flops(teacher, (3, 32, 32)), model_flops(student, (3, 32, 32))
    # resnet20 is ~41 M multiply-adds per 32x32 image; halving every width leaves ~1/4.
    assert 75e6 < t_flops < 90e6
    assert 0.2 < s_flops / t_flops < 0.3
    assert teacher.training  # counting leaves the mode alone


def test_distill_is_reproducible_and_keeps_the_best_epoch(digits: DatasetSplits) -> None:
    torch.manual_seed(0)
    teacher = zoo.build("resnet20", 10)
    training = SearchTraining(epochs=2, batch_size=32, max_train_samples=96)
    runs = []
    for _ in range(2):
        _, student = half_student(teacher)
        res = distill(student, teacher, digits, training, seed=7, device="cpu")
        runs.append((res, student.state_dict()))
    (a, sa), (b, sb) = runs
    assert a.history == b.history and len(a.history) == 2
    assert a.best_accuracy == max(a.history) and a.images == 2 * 96
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The student holds the best epoch's weights: evaluating it gives the best accuracy.
    _, student = half_student(teacher)
    student.load_state_dict(sa)
    assert evaluate(student, digits.val) == pytest.approx(a.best_accuracy)
    _, other = half_student(teacher)
    c = distill(other, teacher, digits, training, seed=8, device="cpu")
    assert c.history != a.history or not torch.equal(
        other.state_dict()["layers.0.weight"], sa["layers.0.weight"]
    )


def test_logit_cache_gives_the_same_training(digits: DatasetSplits) -> None:
    torch.manual_seed(0)
    teacher = zoo.build("resnet20", 10)
    training = SearchTraining(epochs=1, batch_size=32, max_train_samples=64, augment=False)
    _, s1 = half_student(teacher)
    plain = distill(s1, teacher, digits, training, seed=1, device="cpu")
    logits = teacher_logits(teacher, digits.train.head(64))
    assert logits.shape == (64, 10)
    _, s2 = half_student(teacher)
    cached = distill(s2, teacher, digits, training, seed=1, device="cpu", teacher_logits=logits)
    assert cached.history == pytest.approx(plain.history, abs=2 / len(digits.val))
    for k, v in s1.state_dict().items():
        assert torch.allclose(v.float(), s2.state_dict()[k].float(), atol=1e-4), k
    with pytest.raises(BadSpecError, match="augment=False"):
        distill(s2, teacher, digits, SearchTraining(epochs=1), seed=1, teacher_logits=logits)


def test_non_finite_loss_is_a_training_failure(digits: DatasetSplits) -> None:
    teacher = zoo.build("resnet20", 10)
    _, student = half_student(teacher)
    with torch.no_grad():
        teacher.fc.bias.fill_(float("inf"))
    training = SearchTraining(epochs=1, batch_size=32, max_train_samples=32)
    with pytest.raises(TrainingFailedError, match="non-finite.*lower the learning rate"):
        distill(student, teacher, digits, training, seed=0, device="cpu")


def test_bad_settings_are_refused(digits: DatasetSplits) -> None:
    teacher = zoo.build("resnet20", 10)
    _, student = half_student(teacher)
    with pytest.raises(BadSpecError, match="lr must be a finite number"):
        distill(student, teacher, digits, SearchTraining(lr=float("nan")), seed=0)
    with pytest.raises(BadSpecError, match="lr"):
        finetune(student, digits, FullTraining(lr=-1.0), seed=0)
    with pytest.raises(BadSpecError, match="unknown teacher architecture 'resnet7'"):
        train_teacher("resnet7", 10, "digits", TeacherTraining(epochs=1), splits=digits)
    with pytest.raises(BadSpecError, match="has 10 classes but num_classes=100"):
        train_teacher("resnet20", 100, "digits", TeacherTraining(epochs=1), splits=digits)
    with pytest.raises(BadSpecError, match="lr must be a finite number"):
        train_teacher("resnet20", 10, "digits", TeacherTraining(lr=float("nan")), splits=digits)
    with pytest.raises(BadSpecError, match="CUDA is not available"):
        distill(student, teacher, digits, SearchTraining(), seed=0, device="cuda:3")


def test_finetune_trains_with_labels_and_reports_each_epoch(digits: DatasetSplits) -> None:
    torch.manual_seed(0)
    teacher = zoo.build("resnet20", 10)
    _, student = half_student(teacher)
    small = DatasetSplits(
        digits.train.head(64), digits.val.head(50), digits.val.head(20), 10, (3, 32, 32), "d"
    )
    before = student.state_dict()["layers.0.weight"].clone()
    res = finetune(student, small, FullTraining(epochs=2, batch_size=32, step_every=1), seed=0)
    assert len(res.history) == 2 and res.accuracy == res.history[-1]
    assert res.test_accuracy is not None and 0 <= res.test_accuracy <= 1
    assert not torch.equal(before, student.state_dict()["layers.0.weight"])


def test_teacher_time_budget_bounds_the_training(digits: DatasetSplits) -> None:
    small = DatasetSplits(digits.train.head(32), digits.val.head(32), None, 10, (3, 32, 32), "d")
    res = train_teacher(
        "resnet20",
        10,
        "d",
        TeacherTraining(epochs=1000, batch_size=32),
        splits=small,
        time_budget_s=1.0,
    )
    assert 1 <= len(res.history) < 1000 and res.metadata["epochs_run"] == len(res.history)
    with pytest.raises(BadSpecError, match="time_budget_s"):
        train_teacher("resnet20", 10, "d", splits=small, time_budget_s=float("inf"))


@pytest.fixture(scope="module")
def digits_teacher(digits: DatasetSplits) -> tuple[TeacherResult, float]:
    """A resnet20 trained on digits for 5 epochs (~35 s on one thread), and its seconds."""
    t0 = time.perf_counter()
    teacher = train_teacher(
        "resnet20",
        10,
        "digits",
        TeacherTraining(epochs=5, batch_size=32, lr=0.05, step_every=4),
        splits=digits,
        device="cpu",
    )
    return teacher, time.perf_counter() - t0


@pytest.mark.slow
def test_digits_teacher_and_half_width_student_reach_the_targets(
    digits: DatasetSplits, digits_teacher: tuple[TeacherResult, float]
) -> None:
    """Done-when: resnet20 >= 90% on digits, a half-width student >= 85% after KD, each fast."""
    teacher, t_teacher = digits_teacher
    assert teacher.accuracy >= 0.90, teacher.history
    assert teacher.metadata["accuracy"] == teacher.accuracy
    assert teacher.metadata["arch"] == "resnet20" and teacher.metadata["dataset"] == "digits"
    _, student = half_student(teacher.model)
    t1 = time.perf_counter()
    res = distill(
        student,
        teacher.model,
        digits,
        SearchTraining(epochs=3, batch_size=32),
        seed=0,
        device="cpu",
    )
    t_student = time.perf_counter() - t1
    print(
        f"teacher {teacher.accuracy:.4f} in {t_teacher:.1f}s; "
        f"student {res.best_accuracy:.4f} in {t_student:.1f}s"
    )
    assert res.best_accuracy >= 0.85, res.history


@pytest.mark.slow
def test_bn_recalibration_raises_a_shrunk_students_zero_shot_accuracy(
    digits: DatasetSplits, digits_teacher: tuple[TeacherResult, float]
) -> None:
    teacher = digits_teacher[0].model.cpu()
    space = CompressionSpace.for_teacher(teacher)
    action = Action((), tuple(0.75 for _ in space.shrinkable), (), space.fingerprint)
    student = space.materialize(action)
    before = evaluate(student, digits.val)
    stats = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    weights = {k: v.clone() for k, v in student.named_parameters()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())
    assert recalibrate_bn(student, digits.train, 500) == n_bn
    after = evaluate(student, digits.val)
    # Seen: 0.11 -> 0.19 in the suite, 0.30 alone (a quarter of the teacher's channels, chance
    # with the teacher's statistics; the gain depends on the teacher, which thread counts vary)
    assert after > before + 0.05, (before, after)
    changed = [k for k, v in student.state_dict().items() if k in stats and not v.equal(stats[k])]
    assert len(changed) == len(stats)
    assert all(v.equal(weights[k]) for k, v in student.named_parameters())
    assert student.training  # the mode is restored
    bn = next(m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.momentum == 0.1


@pytest.mark.parametrize("augment", [False, True])
def test_distill_recalibrates_in_both_data_modes(digits: DatasetSplits, augment: bool) -> None:
    torch.manual_seed(0)
    _, student = half_student(zoo.build("resnet20", 10))
    bn = next(m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    training = SearchTraining(
        epochs=1, batch_size=32, augment=augment, max_train_samples=64, bn_recalibration=64,
        cache_teacher_logits=not augment,
    )  # fmt: skip
    teacher = zoo.build("resnet20", 10)
    logits = None if augment else teacher_logits(teacher, digits.train.head(64), device="cpu")
    bn.num_batches_tracked.fill_(100)
    seen: list[int] = []
    bn.register_forward_pre_hook(lambda m, _: seen.append(int(m.num_batches_tracked)))
    distill(student, teacher, digits, training, seed=0, device="cpu", teacher_logits=logits)
    # the statistics are reset, two recalibration batches, then two training batches
    assert seen[:4] == [0, 1, 2, 3]
    with pytest.raises(BadSpecError, match="bn_recalibration"):
        SearchTraining(bn_recalibration=-1).validate()


class _StopAt(Progress):
    """Interrupts a training when its `epoch`-th epoch ends, before that epoch's checkpoint is
    written (as a process stopped anywhere in that epoch would leave it)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.stop = epoch

    def epoch_done(self, epoch: int, val_accuracy: float | None) -> None:
        if epoch == self.stop:
            raise KeyboardInterrupt
        super().epoch_done(epoch, val_accuracy)


class _Epochs(Progress):
    """Records which epochs a training finished."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def epoch_done(self, epoch: int, val_accuracy: float | None) -> None:
        self.epochs.append(epoch)
        super().epoch_done(epoch, val_accuracy)


def test_distill_resumes_from_its_checkpoint_as_if_never_stopped(
    digits: DatasetSplits, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    teacher = zoo.build("resnet20", 10)
    training = SearchTraining(epochs=3, batch_size=32, max_train_samples=96, augment=True,
                              bn_recalibration=32)  # fmt: skip
    _, whole = half_student(teacher)
    plain = distill(whole, teacher, digits, training, seed=3, device="cpu")
    ckpt = tmp_path / "s.ckpt"
    _, first = half_student(teacher)
    with pytest.raises(KeyboardInterrupt):  # stopped in the 2nd epoch
        distill(first, teacher, digits, training, seed=3, device="cpu", checkpoint=ckpt,
                progress=_StopAt(2))  # fmt: skip
    assert ckpt.exists() and not ckpt.with_name("s.ckpt.tmp").exists()
    _, second = half_student(teacher)  # a new process: fresh inherited weights
    seen = _Epochs()
    resumed = distill(second, teacher, digits, training, seed=3, device="cpu", checkpoint=ckpt,
                      progress=seen)  # fmt: skip
    assert seen.epochs == [2, 3]  # resumed after the 1st epoch, not started afresh
    assert resumed.history == plain.history and resumed.best_epoch == plain.best_epoch
    assert resumed.images == plain.images == 3 * 96
    sa, sb = whole.state_dict(), second.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(BadSpecError, match="checkpoint of another training"):
        distill(second, teacher, digits, training, seed=4, device="cpu", checkpoint=ckpt)
    other_teacher = zoo.build("resnet20", 10)  # another teacher of the same shape
    with pytest.raises(BadSpecError, match="checkpoint of another training"):
        distill(second, other_teacher, digits, training, seed=3, device="cpu", checkpoint=ckpt)
