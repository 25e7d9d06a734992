"""The coordinator's view of a job's search: its compression space, its searcher, its encoder.

Used by the job runner (in the server process) and by the fitter (in the fit process), so both
build the same space and the same searcher from the same validated job options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedding.candidates import Budget, CandidateSampler
from embedding.options import EsnacOptions
from embedding.search import RandomSearcher, Searcher
from embedding.space import CompressionSpace
from service.db import Job

if TYPE_CHECKING:
    import torch

__all__ = [
    "build_space",
    "space_removal",
    "canonical_order",
    "encoder_bytes",
    "encoder_from_bytes",
    "fit_device",
    "make_searcher",
]


def build_space(
    arch: str,
    num_classes: int,
    weights: bytes,
    input_shape: tuple[int, ...],
    removal: str = "layer",
) -> CompressionSpace:
    """The teacher's compression space, exactly as the workers build it
    (`CompressionSpace.for_teacher`: the library's `max_layers` policy), with the job's
    `removal` rule (`space_removal`; the workers need not know it: a unit removal is a set of
    layer removals)."""
    from embedding.fx_trace import TRACE_LOCK
    from workers import zoo

    # held from the load on: an ONNX teacher's import runs its modules (and compares them with
    # ONNX Runtime), which another job's trace in another thread would intercept
    with TRACE_LOCK:
        model = zoo.load_teacher(arch, num_classes, weights)
        space = CompressionSpace.for_teacher(model, tuple(input_shape))
        if removal == space.removal:
            return space
        return CompressionSpace(space.graph, model, space.max_layers, removal=removal)


def space_removal(job: Job) -> str:
    """The removal rule of the job's space: its searcher option, except for N2N, whose policy
    removes single layers."""
    return "layer" if job.strategy == "n2n" else EsnacOptions.from_dict(job.searcher).removal


def canonical_order(searcher: Searcher, numbers: dict[str, int]) -> None:
    """Put a searcher's observations and pending candidates in trial-number order (from
    `numbers`: action key -> trial number) instead of completion order."""
    order = sorted(range(len(searcher.actions)), key=lambda i: numbers[searcher.actions[i].key])
    searcher.actions = [searcher.actions[i] for i in order]
    searcher.rewards = [searcher.rewards[i] for i in order]
    searcher.pending = dict(sorted(searcher.pending.items(), key=lambda kv: numbers[kv[0]]))


def make_searcher(
    job: Job,
    space: CompressionSpace,
    encoder_init: bytes | None = None,
    device: str | None = None,
) -> Searcher:
    """The job's searcher: `RandomSearcher`, `N2NSearcher` (one policy update per `per_step`
    observations), or `EsnacSearcher` with the job's stored options
    (validated by `EsnacOptions`; options the job does not name take its defaults; a reused
    encoder mapped to this teacher's row width, `adapt_encoder_state`) fitting on
    `device` (None: the CPU). A budgeted job's random and ESNAC candidates are drawn within
    its budget."""
    budget = Budget(job.target["measure"], float(job.target["value"])) if job.target else None
    if job.strategy == "random":
        return RandomSearcher(space, seed=job.seed, sampler=CandidateSampler(space, budget=budget))
    if job.strategy == "n2n":
        from embedding.n2n import N2NSearcher

        return N2NSearcher(space, seed=job.seed, batch=job.per_step)
    from embedding.encoder import adapt_encoder_state
    from embedding.search import EsnacSearcher

    opts = EsnacOptions.from_dict(job.searcher)
    return EsnacSearcher(
        space,
        kernels=opts.kernels,
        subset=opts.subset,
        candidates=opts.candidates,
        train_encoder=opts.train_encoder,
        warm_start=opts.warm_start,
        train_after=opts.train_after,
        pretrain=opts.pretrain,
        sampler=CandidateSampler(space, opts.sampler, budget),
        seed=job.seed,
        encoder_init=(
            adapt_encoder_state(encoder_from_bytes(encoder_init), space.row_size)
            if encoder_init is not None
            else None
        ),
        device=device,
    )


def fit_device(setting: str) -> str:
    """The torch device of BO fits for `ESNAC_FIT_DEVICE` (`auto`: CUDA when visible).

    Raises:
        RuntimeError: `cuda` was asked for and no GPU is visible to the coordinator.
    """
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "ESNAC_FIT_DEVICE=cuda but the coordinator sees no GPU; give its container a GPU "
            "(docker-compose.yml, coordinator `deploy.resources`) or use auto / cpu"
        )
    return setting


def encoder_bytes(searcher: Searcher) -> bytes | None:
    """The learned encoder's weights (safetensors) of an ESNAC searcher; None for a searcher
    without an encoder, or an ESNAC searcher that has neither fitted nor been given one (every
    proposal came before two observations, or a resumed job had nothing left to propose)."""
    from safetensors.torch import save

    export = getattr(searcher, "encoder_state", None)
    state = export() if callable(export) else None
    if state is None:
        return None
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def encoder_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """The inverse of `encoder_bytes` (safetensors: no pickle)."""
    from safetensors.torch import load

    return load(data)
