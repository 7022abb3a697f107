"""The throttle that keeps a repeated warning to one line a minute."""

from __future__ import annotations

from ef_middleware import throttle
from ef_middleware.throttle import Throttle, held_back


def test_one_warning_per_key_and_window_counting_the_rest() -> None:
    now = [100.0]
    gate = Throttle(60, clock=lambda: now[0])
    assert gate.allow("a") == 0
    assert [gate.allow("a") for _ in range(3)] == [None] * 3
    assert gate.allow("b") == 0  # keys are independent
    now[0] += 59.9
    assert gate.allow("a") is None
    now[0] += 0.1
    assert gate.allow("a") == 4  # the four held back since the last one let through
    assert gate.allow("a") is None
    now[0] += 60
    assert gate.allow("a") == 1
    assert gate.allow("b") == 0


def test_a_clock_set_back_lets_the_warning_through() -> None:
    now = [1_000.0]
    gate = Throttle(60, clock=lambda: now[0])
    assert gate.allow() == 0
    now[0] -= 3_600  # a wall clock set back an hour must not silence it for an hour
    assert gate.allow() == 0


def test_a_clock_read_late_by_another_thread_still_holds_the_warning_back() -> None:
    """Two threads at once: the one that reads the clock first may take the lock second; its
    slightly earlier time is within the window, not a clock set back (a review found both
    let through when the clock was read before the lock)."""
    now = [100.0]
    gate = Throttle(60, clock=lambda: now[0])
    assert gate.allow() == 0
    now[0] = 99.999
    assert gate.allow() is None


def test_keys_are_bounded() -> None:
    gate = Throttle(60, clock=lambda: 0.0)
    for key in range(throttle.KEYS_KEPT):
        assert gate.allow(key) == 0
    assert gate.allow(0) is None
    assert gate.allow("one more") == 0  # past the bound every key starts over
    assert len(gate._last) == 1
    assert gate.allow(0) == 0


def test_held_back_text() -> None:
    assert held_back(0) == ""
    assert held_back(3) == " (3 more like it since the last one logged)"
