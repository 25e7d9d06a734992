"""The architecture domain: teacher graph, compression space, embedding, GP and searchers."""

from embedding.graph import KINDS, Layer, LayerGraph, UnsupportedModelError, trace
from embedding.reward import compression, reward
from embedding.search import RandomSearcher, Searcher, SearcherError
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
    "CompressionSpace",
    "InvalidActionError",
    "Layer",
    "LayerGraph",
    "RandomSearcher",
    "Searcher",
    "SearcherError",
    "StudentNet",
    "TooManyLayersError",
    "UnsupportedModelError",
    "compression",
    "reward",
    "trace",
]
