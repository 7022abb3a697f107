"""The bounded memo of the request path: past its limit the oldest entry goes, one at a time
(emptied whole, a full memo freed up to 50,000 arrays inside one rank)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ef_middleware import Engine, SentenceTransformerEmbedder
from ef_middleware.features import FeatureEncoder, NumericSpace
from ef_middleware.memo import Memo


def test_past_its_limit_a_memo_forgets_its_oldest_entry_only() -> None:
    memo: Memo[str, int] = Memo(3)
    for i in range(5):
        memo.put(f"k{i}", i)
    assert list(memo.items()) == [("k2", 2), ("k3", 3), ("k4", 4)]
    memo.put("k3", 30)  # a key it holds: nothing goes
    assert list(memo) == ["k2", "k3", "k4"] and memo["k3"] == 30
    nothing: Memo[str, int] = Memo(0)
    nothing.put("k", 1)
    assert not nothing
    with pytest.raises(ValueError, match="number of entries"):
        Memo(-1)


def test_threads_that_fill_one_memo_keep_it_within_its_limit() -> None:
    memo: Memo[tuple[int, int], int] = Memo(50)

    def fill(t: int) -> None:
        for i in range(20_000):
            memo.put((t, i), i)
            memo.get((t, i - 7))

    threads = [threading.Thread(target=fill, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 < len(memo) <= 50 + 3  # one more per other thread at most, for a moment
    memo.put((-1, -1), 0)
    assert len(memo) == 50


@pytest.fixture
def engine(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Engine]:
    eng = Engine(tmp_path / "ef", embedder=embedder, embed_in_background=False)
    yield eng
    eng.close()


def test_the_pooled_context_memo_keeps_the_newest_combinations(engine: Engine) -> None:
    encoder = FeatureEncoder(engine.embeddings, NumericSpace(16), memo_size=3)
    combos = [(f"device: d{i}", "referrer: google") for i in range(5)]
    pooled = [encoder.pool(texts, block=True)[0] for texts in combos]
    assert list(encoder._memo) == combos[2:]  # was: emptied when full, then one entry
    assert encoder.pool(combos[4], block=True)[0] is pooled[4]
    again = encoder.pool(combos[0], block=True)[0]  # forgotten: pooled again, same vector
    assert again is not pooled[0] and (again == pooled[0]).all()
