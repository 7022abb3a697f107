"""numpy's BLAS: the engine limits it to one thread, after one product on two."""

from __future__ import annotations

from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from ef_middleware import Engine, SentenceTransformerEmbedder, blas


def _blas_threads() -> list[int]:
    return [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]


def test_the_engine_warms_blas_once_then_runs_it_on_one_thread(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "_warmed", [])  # as in a process that never warmed it
    engine = Engine(tmp_path / "ef", embedder=embedder)
    try:
        assert blas.warmed()
        assert _blas_threads() and set(_blas_threads()) == {1}
        assert blas.warm() is False  # once per process
        blas.limit_threads(2)
        assert set(_blas_threads()) == {2}
    finally:
        blas.limit_threads(1)
        engine.close()
    assert set(_blas_threads()) == {1}
