"""An embedder for tests: the real model, noting who encoded what, with a gate on the
background thread."""

from __future__ import annotations

import threading
from typing import Any

from ef_middleware import SentenceTransformerEmbedder


class RecordingEmbedder:
    """The real model, noting the thread and the texts of each encode; while :attr:`gate` is
    closed (it starts open), the background thread's encodes wait for it."""

    def __init__(self, model: SentenceTransformerEmbedder) -> None:
        self.model, self.name, self.dim = model, model.name, model.dim
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[str, list[str]]] = []  # (thread name, texts) per encode

    def encode(self, texts: Any) -> Any:
        name = threading.current_thread().name
        if name == "ef-embedder":
            self.gate.wait(60)
        self.calls.append((name, list(texts)))
        return self.model.encode(texts)

    @property
    def threads(self) -> list[str]:
        """The thread of each encode so far."""
        return [name for name, _ in self.calls]

    def encoded(self) -> list[str]:
        """Every text encoded so far, in order."""
        return [text for _, texts in self.calls for text in texts]
