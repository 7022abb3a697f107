"""ef_middleware: contextual-bandit personalization for Starlette and FastAPI sites.

Public names are re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from .decision import Decision, RankedAction
from .embedding import Embedder, EmbeddingCache, SentenceTransformerEmbedder
from .engine import Engine
from .errors import (
    ConfigurationError,
    DuplicateRewardError,
    EFError,
    EmbedderError,
    EngineClosedError,
    InvalidInputError,
    RewardError,
    RewardOutOfRangeError,
    StoreError,
    UnknownEventError,
    UnknownLoopError,
)
from .features import Action
from .loop import Loop
from .model import ModelConfig
from .settings import LoopSettings
from .store import DiskcacheStore, Store

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ConfigurationError",
    "Decision",
    "DiskcacheStore",
    "DuplicateRewardError",
    "EFError",
    "Embedder",
    "EmbedderError",
    "EmbeddingCache",
    "Engine",
    "EngineClosedError",
    "InvalidInputError",
    "Loop",
    "LoopSettings",
    "ModelConfig",
    "RankedAction",
    "RewardError",
    "RewardOutOfRangeError",
    "SentenceTransformerEmbedder",
    "Store",
    "StoreError",
    "UnknownEventError",
    "UnknownLoopError",
    "__version__",
]
