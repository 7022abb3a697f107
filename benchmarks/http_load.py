"""A small HTTP/1.1 load generator for loopback benchmarks: open loop (a fixed request rate,
latency measured from each request's *scheduled* time) and closed loop (N connections, each
sending its next request when the previous answer is in).

Open loop is how latency has to be measured: a closed-loop client that waits for a slow answer
sends nothing meanwhile, so the requests that would have queued behind the stall are never
timed ("coordinated omission"); its percentiles describe the client, not the server. Here a
scheduler thread releases request ``i`` at ``start + i / rate`` (``time.sleep`` is precise to
about 0.1 ms, the event loop's timers only to 1 ms); the request waits for a free keep-alive
connection if all are busy (that wait counts), and its latency runs from the scheduled time to
the last byte of the answer. ``lag`` reports how late the client itself released requests, so
a reader can tell the client's share of a percentile from the server's.

Responses must carry ``Content-Length`` or chunked encoding (Starlette's and uvicorn's do).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["LoadResult", "Response", "closed_loop", "open_loop", "percentile", "request_bytes"]


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """Serialise one HTTP/1.1 request (keep-alive; ``Host`` must be in ``headers``)."""
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    """Status and headers of one answer (lower-case names; the body is read and dropped)."""

    status: int
    headers: list[tuple[str, str]]

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class LoadResult:
    """Latencies (seconds), statuses and timing of one load run."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    elapsed: float = 0.0
    lag: list[float] = field(default_factory=list)  # open loop: release time - scheduled time
    responses: list[Response] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    def summary(self) -> dict[str, float]:
        """``rps``, ``requests``, ``p50``/``p90``/``p99``/``max`` in ms, ``non_2xx``, ``errors``
        and, for open loop, ``lag_p99`` (ms the client itself released requests late)."""
        ordered = sorted(self.latencies)
        out = {"rps": self.rps, "requests": float(self.requests),
               "p50": percentile(ordered, 50) * 1000, "p90": percentile(ordered, 90) * 1000,
               "p99": percentile(ordered, 99) * 1000,
               "max": (ordered[-1] if ordered else math.nan) * 1000,
               "non_2xx": float(self.non_2xx), "errors": float(self.errors)}
        if self.lag:
            out["lag_p99"] = percentile(sorted(self.lag), 99) * 1000
        return out


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of sorted values (nearest rank; NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes, keep_headers: bool) -> Response:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        length, chunked = None, False
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            if keep_headers:
                headers.append((name, value))
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return Response(status, headers)

    def close(self) -> None:
        self.writer.close()


async def _connect(host: str, port: int) -> _Connection:
    reader, writer = await asyncio.open_connection(host, port)
    return _Connection(reader, writer)


RequestSource = Sequence[bytes] | Callable[[int], bytes]


def _request(source: RequestSource, i: int) -> bytes:
    return source(i) if callable(source) else source[i % len(source)]


async def _open_loop(host: str, port: int, source: RequestSource, rate: float, count: int,
                     max_connections: int, keep_headers: bool) -> LoadResult:
    result = LoadResult()
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    opened = 0
    freed = asyncio.Condition()
    tasks: set[asyncio.Task[None]] = set()
    for _ in range(min(8, max_connections)):  # a few warm connections; more open on demand
        idle.append(await _connect(host, port))
        opened += 1

    async def fire(i: int, due: float) -> None:
        nonlocal opened
        conn: _Connection | None = None
        try:
            async with freed:
                while not idle and opened >= max_connections:
                    await freed.wait()
                if idle:
                    conn = idle.pop()
                else:
                    opened += 1
            if conn is None:
                conn = await _connect(host, port)
            response = await conn.exchange(_request(source, i), keep_headers)
            result.latencies.append(time.perf_counter() - due)
            result.statuses[response.status] = result.statuses.get(response.status, 0) + 1
            if keep_headers:
                result.responses.append(response)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if conn is not None:
                conn.close()
                conn = None
            opened -= 1
        finally:
            async with freed:
                if conn is not None:
                    idle.append(conn)
                freed.notify()

    released = 0

    def release(i: int, due: float) -> None:
        nonlocal released
        released += 1
        result.lag.append(time.perf_counter() - due)
        task = loop.create_task(fire(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    start = time.perf_counter() + 0.05
    stop = threading.Event()

    def schedule() -> None:  # a thread: time.sleep is precise, the event loop's timers are not
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                return
            loop.call_soon_threadsafe(release, i, due)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # the scheduler thread gets the GIL within 0.2 ms
    thread = threading.Thread(target=schedule, name="open-loop-scheduler", daemon=True)
    thread.start()
    try:
        while released < count or tasks:
            await asyncio.sleep(0.01)
        result.elapsed = time.perf_counter() - start
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
        for conn in idle:
            conn.close()
    return result


def open_loop(host: str, port: int, source: RequestSource, *, rate: float, duration: float,
              max_connections: int = 64, keep_headers: bool = False) -> LoadResult:
    """Send ``rate`` requests per second for ``duration`` seconds, whatever the answers' pace.

    Parameters
    ----------
    host, port
        The server (loopback).
    source
        Raw requests (request ``i`` is ``source[i % len]``) or a function of ``i``.
    rate, duration
        Requests per second and seconds: ``round(rate * duration)`` requests in all.
    max_connections
        Keep-alive connections opened at most; a request waits for a free one (and that wait
        is part of its latency).
    keep_headers
        Keep each response's headers in ``LoadResult.responses``.
    """
    count = max(1, round(rate * duration))
    return asyncio.run(_open_loop(host, port, source, rate, count, max_connections,
                                  keep_headers))


async def _closed_loop(host: str, port: int, source: RequestSource, connections: int,
                       duration: float | None, count: int | None,
                       keep_headers: bool) -> LoadResult:
    result = LoadResult()
    conns = [await _connect(host, port) for _ in range(connections)]
    issued = 0
    start = time.perf_counter()
    deadline = None if duration is None else start + duration

    async def worker(conn: _Connection) -> None:
        nonlocal issued
        while True:
            if (count is not None and issued >= count) or (
                    deadline is not None and time.perf_counter() >= deadline):
                return
            i = issued
            issued += 1
            began = time.perf_counter()
            try:
                response = await conn.exchange(_request(source, i), keep_headers)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                conn.close()
                conn = await _connect(host, port)
                continue
            result.latencies.append(time.perf_counter() - began)
            result.statuses[response.status] = result.statuses.get(response.status, 0) + 1
            if keep_headers:
                result.responses.append(response)

    try:
        await asyncio.gather(*(worker(c) for c in conns))
        result.elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()
    return result


def closed_loop(host: str, port: int, source: RequestSource, *, connections: int,
                duration: float | None = None, count: int | None = None,
                keep_headers: bool = False) -> LoadResult:
    """``connections`` clients, each sending its next request as soon as its answer is in,
    for ``duration`` seconds or ``count`` requests in all (saturation throughput)."""
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    return asyncio.run(_closed_loop(host, port, source, connections, duration, count,
                                    keep_headers))
