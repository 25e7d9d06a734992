"""Running one trial: datasets, teacher zoo, distillation training, the Ray actor."""

from workers import zoo
from workers.actor import RemoteTrialWorker, TrialWorker
from workers.data import DatasetSplits, ImageTensors, dataset_info, load_dataset
from workers.export import load_state_safetensors, state_to_safetensors, to_onnx
from workers.spec import (
    BadSpecError,
    FullTraining,
    SearchTraining,
    TrainingFailedError,
    TrialResult,
    TrialSpec,
    WorkerError,
    WorkerOutOfMemoryError,
)
from workers.train import (
    DistillResult,
    FinetuneResult,
    TeacherResult,
    count_flops,
    count_params,
    distill,
    evaluate,
    finetune,
    train_teacher,
)
from workers.trial import JobContext, JobState, prepare_job, run_trial

__all__ = [
    "BadSpecError",
    "DatasetSplits",
    "DistillResult",
    "FinetuneResult",
    "FullTraining",
    "ImageTensors",
    "JobContext",
    "JobState",
    "RemoteTrialWorker",
    "SearchTraining",
    "TeacherResult",
    "TrainingFailedError",
    "TrialResult",
    "TrialSpec",
    "TrialWorker",
    "WorkerError",
    "WorkerOutOfMemoryError",
    "count_flops",
    "count_params",
    "dataset_info",
    "distill",
    "evaluate",
    "finetune",
    "load_dataset",
    "load_state_safetensors",
    "prepare_job",
    "run_trial",
    "state_to_safetensors",
    "to_onnx",
    "train_teacher",
    "zoo",
]
