"""The architecture domain: teacher graph, compression space, embedding, GP and searchers."""

from embedding.encoder import ArchitectureEncoder, EncoderError, EncoderStack
from embedding.graph import KINDS, Layer, LayerGraph, UnsupportedModelError, trace
from embedding.kernel import EmbeddingKernel
from embedding.model import FitReport, FitSettings, build_gp, fit_stack, loo_log_likelihood
from embedding.reward import compression, model_flops, reward
from embedding.search import EsnacSearcher, RandomSearcher, Searcher, SearcherError
from embedding.space import (
    Action,
    CompressionSpace,
    InvalidActionError,
    StudentNet,
    TooManyLayersError,
)

__all__ = [
    "KINDS",
    "Action",
    "ArchitectureEncoder",
    "CompressionSpace",
    "EmbeddingKernel",
    "EncoderError",
    "EncoderStack",
    "EsnacSearcher",
    "FitReport",
    "FitSettings",
    "InvalidActionError",
    "Layer",
    "LayerGraph",
    "RandomSearcher",
    "Searcher",
    "SearcherError",
    "StudentNet",
    "TooManyLayersError",
    "UnsupportedModelError",
    "build_gp",
    "compression",
    "fit_stack",
    "loo_log_likelihood",
    "model_flops",
    "reward",
    "trace",
]
