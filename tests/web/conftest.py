"""Fixtures for the web layer: a real Engine (real model, diskcache in a tmp folder)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from web_helpers import ACTIONS, DESKTOP, Clock

from ef_middleware import Engine, SentenceTransformerEmbedder

_names = itertools.count()
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the examples/ package lives at the repository root
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """One real embedder for the session (loading the model is the slow part)."""
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def shared_engine(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[Engine]:
    """A real engine shared by the tests that do not close it (each test gets fresh loops)."""
    engine = Engine(tmp_path_factory.mktemp("ef-store"), embedder=embedder)
    yield engine
    engine.close()


@pytest.fixture
def engine(shared_engine: Engine) -> Engine:
    return shared_engine


@pytest.fixture
def new_engine(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> Iterator[Callable[..., Engine]]:
    """A factory of engines of their own (for lifespan tests, which close them)."""
    made: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        engine = Engine(tmp_path / f"store{len(made)}", embedder=embedder, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture
def loop_name(engine: Engine) -> str:
    """A fresh thompson loop with the four hero variants in the shared engine."""
    name = f"hero-{next(_names)}"
    engine.loop(name, actions=ACTIONS)
    return name


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client_for() -> Iterator[Callable[..., TestClient]]:
    """``client_for(app, user_agent=...)``: a TestClient without lifespan (the shared engine
    stays open); use ``with TestClient(app)`` yourself for lifespan tests."""
    clients: list[TestClient] = []

    def make(app: Starlette, user_agent: str = DESKTOP, **kwargs: Any) -> TestClient:
        client = TestClient(app, headers={"user-agent": user_agent}, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
