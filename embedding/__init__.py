"""The architecture domain: teacher graph, compression space, LSTM embedding, GP, searchers.

Public names are loaded on first use (PEP 562), so importing one light module of the package
(e.g. the settings dataclasses) does not load torch, Ray or BoTorch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# GPyTorch (imported by BoTorch) decorates functions with `torch.jit.script` when imported, which
# torch deprecates: one FutureWarning on every import and server start that says nothing about
# this product and hides real warnings. Only that message is silenced.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

_EXPORTS = {
    "ArchitectureEncoder": "embedding.encoder",
    "EncoderError": "embedding.encoder",
    "EncoderStack": "embedding.encoder",
    "KINDS": "embedding.graph",
    "Layer": "embedding.graph",
    "LayerGraph": "embedding.graph",
    "UnsupportedModelError": "embedding.graph",
    "trace": "embedding.fx_trace",
    "EmbeddingKernel": "embedding.kernel",
    "FitReport": "embedding.model",
    "FitSettings": "embedding.model",
    "build_gp": "embedding.model",
    "fit_stack": "embedding.model",
    "loo_log_likelihood": "embedding.model",
    "EsnacOptions": "embedding.options",
    "INHERITANCE": "embedding.options",
    "SearcherError": "embedding.options",
    "compression": "embedding.reward",
    "model_flops": "embedding.reward",
    "reward": "embedding.reward",
    "EsnacSearcher": "embedding.search",
    "N2NSearcher": "embedding.n2n",
    "RandomSearcher": "embedding.search",
    "Searcher": "embedding.search",
    "Action": "embedding.space",
    "CompressionSpace": "embedding.space",
    "InvalidActionError": "embedding.space",
    "StudentNet": "embedding.space",
    "TooManyLayersError": "embedding.space",
    "default_max_layers": "embedding.space",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedding' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module.endswith("." + name) else getattr(loaded, name)
    globals()[name] = value
    return value
