"""Running one trial: datasets, teacher zoo, distillation training, the Ray actor.

Public names are loaded on first use (PEP 562), so importing one light module of the package
(e.g. the settings dataclasses) does not load torch, Ray or BoTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "zoo": "workers.zoo",
    "RemoteTrialWorker": "workers.actor",
    "TrialWorker": "workers.actor",
    "DatasetSplits": "workers.data",
    "ImageTensors": "workers.data",
    "dataset_info": "workers.data",
    "load_dataset": "workers.data",
    "load_state_safetensors": "workers.export",
    "state_to_safetensors": "workers.export",
    "to_onnx": "workers.export",
    "BadSpecError": "workers.spec",
    "FullTraining": "workers.spec",
    "SearchTraining": "workers.spec",
    "TeacherTraining": "workers.spec",
    "TrainingFailedError": "workers.spec",
    "TrialResult": "workers.spec",
    "TrialSpec": "workers.spec",
    "WorkerError": "workers.spec",
    "WorkerOutOfMemoryError": "workers.spec",
    "DistillResult": "workers.train",
    "FinetuneResult": "workers.train",
    "TeacherResult": "workers.train",
    "count_params": "workers.train",
    "distill": "workers.train",
    "evaluate": "workers.train",
    "finetune": "workers.train",
    "train_teacher": "workers.train",
    "JobContext": "workers.trial",
    "PreparedJob": "workers.trial",
    "prepare_job": "workers.trial",
    "run_trial": "workers.trial",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module.endswith("." + name) else getattr(loaded, name)
    globals()[name] = value
    return value
