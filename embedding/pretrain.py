"""Pretraining the architecture encoder on free labels (a variant of the embedding study).

Before any evaluation, every architecture of a teacher's space has labels that cost nothing to
compute: its parameter count, its depth, the fraction of removable layers it removes, its mean
shrink ratio, its number of added skips. Fitting the encoder to predict them (a linear head on
the embedding, mean squared error on standardised labels) over 1,000 sampled actions
gives the GP kernels an embedding that already orders architectures by size and shape; the
search then fits it on rewards as usual.

The result depends only on the space, the encoder's shape and the settings, so a process computes
it once per teacher (`pretrained_encoder` keeps the last few).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from embedding.encoder import EncoderStack
from embedding.space import Action, CompressionSpace

__all__ = ["FREE_LABELS", "fit_free_labels", "free_labels", "pretrained_encoder"]

FREE_LABELS = ("log_params", "depth", "removed_fraction", "mean_shrink", "skips")
SAMPLES = 1000
EPOCHS = 6
BATCH = 50
LR = 1e-3
_CACHE: dict[str, dict[str, torch.Tensor]] = {}
_KEEP = 4


def free_labels(space: CompressionSpace, actions: list[Action]) -> torch.Tensor:
    """`len(actions) x 5` labels (`FREE_LABELS`), unstandardised."""
    removable = max(1, len(space.removable))
    rows = [
        [
            math.log(max(1, space.num_params(a))),
            float(space.num_layers - len(a.removed)),
            len(a.removed) / removable,
            float(np.mean(a.shrink)) if a.shrink else 0.0,
            float(len(a.skips)),
        ]
        for a in actions
    ]
    return torch.tensor(rows, dtype=torch.float32)


def pretrained_encoder(
    space: CompressionSpace,
    encoder_config: dict[str, Any],
    *,
    samples: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Weights of one `ArchitectureEncoder` (the `encoder_config` shape) fitted to predict the
    free labels of `samples` (`SAMPLES`) actions drawn with the paper's distributions, `epochs`
    (`EPOCHS`) passes; cached per process."""
    samples = SAMPLES if samples is None else int(samples)
    epochs = EPOCHS if epochs is None else int(epochs)
    key = json.dumps([space.fingerprint, encoder_config, samples, epochs, seed], sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = fit_free_labels(space, encoder_config, samples, epochs, seed)[0]
        while len(_CACHE) > _KEEP:
            _CACHE.pop(next(iter(_CACHE)))
    return {k: v.clone() for k, v in _CACHE[key].items()}


def fit_free_labels(
    space: CompressionSpace, encoder_config: dict[str, Any], samples: int, epochs: int, seed: int
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The pretraining itself: the encoder's weights and the mean loss of each epoch."""
    rng = np.random.default_rng(seed)
    actions = [space.sample(rng) for _ in range(samples)]
    y = free_labels(space, actions)
    y = (y - y.mean(0)) / y.std(0).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    stack = EncoderStack(1, **encoder_config, generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(2 * stack.hidden_size, y.shape[1])
    opt = torch.optim.Adam([*stack.parameters(), *head.parameters()], lr=LR)
    order = torch.Generator().manual_seed(seed + 1)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(samples, generator=order)
        total = 0.0
        for start in range(0, samples, BATCH):
            idx = perm[start : start + BATCH]
            rows = space.encode([actions[int(i)] for i in idx]).unsqueeze(0)
            loss = nn.functional.mse_loss(head(stack(rows)[0]), y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / samples)
    return stack.encoder_state(0), history
