"""A lean HTTP/1.1 load generator: asyncio protocols over keep-alive loopback connections.

Two modes:
- closed loop (`saturate`): C connections, each sends its next request as soon as the previous
  answer is in; throughput at saturation, latency as seen at that concurrency;
- open loop (`paced`): requests are started on a fixed schedule (R per second) whatever the
  server does, on an idle connection or a new one; latency counts from the scheduled start, so a
  stalled server is not hidden (no coordinated omission).

It shares the machine's cores with the server under test, so it is kept minimal: requests are
prebuilt bytes, answers are parsed just enough to find their end (Content-Length or chunked),
and only the headers a caller asks for are kept. Its own CPU time is measured and reported.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    """One prebuilt request; `tag` travels to the result (for example the state it carries)."""

    raw: bytes
    tag: object = None


def build_request(host: str, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    """The bytes of a keep-alive HTTP/1.1 request without a body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class Result:
    """The answers of one run."""

    started: float = 0.0
    ended: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    captured: list[tuple[object, int, dict[str, str]]] = field(default_factory=list)
    connections_opened: int = 0
    cpu_seconds: float = 0.0
    late_starts: int = 0  # paced mode: requests started more than 5 ms after their schedule

    @property
    def elapsed(self) -> float:
        return max(self.ended - self.started, 1e-9)

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed

    def ok(self, expected: int) -> int:
        return self.statuses.get(expected, 0)

    def percentile(self, q: float) -> float:
        """Latency percentile in seconds (nearest rank); NaN when nothing completed."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))
        return ordered[rank]

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1


class _Client(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, capture: tuple[bytes, ...]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self.capture = capture
        self.closed = False
        self._head: tuple[int, dict[str, str], int, bool, bool] | None = None  # status, kept, length, chunked, close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed before the answer"))

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, dict[str, str]]]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self._head = None
        assert self.transport is not None
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        if self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            del self.buffer[:end + 4]
            status = int(lines[0].split(b" ", 2)[1])
            length, chunked, close = 0, False, False
            kept: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif lname == b"connection" and b"close" in value.lower():
                    close = True
                if lname in self.capture:
                    key = lname.decode()
                    text = value.strip().decode("latin-1")
                    kept[key] = f"{kept[key]}\n{text}" if key in kept else text
            self._head = (status, kept, length, chunked, close)
        status, kept, length, chunked, close = self._head
        if chunked:
            if not self.buffer.endswith(b"0\r\n\r\n"):
                return
        elif len(self.buffer) < length:
            return
        self.waiter.set_result((status, kept))
        if close and self.transport is not None:
            self.transport.close()
            self.closed = True


class LoadGenerator:
    """Loads one server over loopback."""

    def __init__(self, host: str, port: int, capture: Iterable[str] = ()) -> None:
        self.host, self.port = host, port
        self.capture = tuple(name.lower().encode() for name in capture)

    async def _connect(self, result: Result) -> _Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: _Client(self.capture), self.host, self.port)
        result.connections_opened += 1
        return client

    async def _one(self, client: _Client, request: Request, result: Result, since: float,
                   keep: bool) -> bool:
        """Send one request and record its answer; False if the connection is gone."""
        try:
            status, headers = await client.send(request.raw)
        except ConnectionError:
            result.error("connection_closed")
            return False
        result.latencies.append(time.perf_counter() - since)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if keep:
            result.captured.append((request.tag, status, headers))
        return not client.closed

    # --- closed loop -----------------------------------------------------------------------

    async def _saturate(self, requests: Iterator[Request], connections: int, seconds: float,
                        keep: bool) -> Result:
        result = Result()
        clients = [await self._connect(result) for _ in range(connections)]
        deadline = 0.0

        async def loop(client: _Client) -> None:
            while time.perf_counter() < deadline:
                request = next(requests, None)
                if request is None:
                    return
                if client.closed:
                    try:
                        client = await self._connect(result)
                    except OSError:
                        result.error("connect_failed")
                        return
                await self._one(client, request, result, time.perf_counter(), keep)

        cpu = time.process_time()
        result.started = time.perf_counter()
        deadline = result.started + seconds
        await asyncio.gather(*(loop(client) for client in clients))
        result.ended = time.perf_counter()
        result.cpu_seconds = time.process_time() - cpu
        for client in clients:
            if client.transport is not None:
                client.transport.close()
        return result

    def saturate(self, requests: Iterable[Request], connections: int = 32, seconds: float = 10.0,
                 keep: bool = False) -> Result:
        """Closed loop: `connections` connections as fast as the server answers, until the time
        is up or the requests run out."""
        return asyncio.run(self._saturate(iter(requests), connections, seconds, keep))

    # --- open loop -------------------------------------------------------------------------

    async def _paced(self, requests: list[Request], rate: float, keep: bool, warm: int) -> Result:
        result = Result()
        idle: deque[_Client] = deque([await self._connect(result) for _ in range(warm)])
        tasks: set[asyncio.Task[None]] = set()

        async def fire(request: Request, scheduled: float) -> None:
            client = idle.pop() if idle else None
            if client is None or client.closed:
                try:
                    client = await self._connect(result)
                except OSError:
                    result.error("connect_failed")
                    return
            if await self._one(client, request, result, scheduled, keep):
                idle.append(client)

        cpu = time.process_time()
        start = result.started = time.perf_counter()
        for index, request in enumerate(requests):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                result.late_starts += 1
            task = asyncio.create_task(fire(request, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        result.ended = time.perf_counter()
        result.cpu_seconds = time.process_time() - cpu
        for client in idle:
            if client.transport is not None:
                client.transport.close()
        return result

    def paced(self, requests: list[Request], rate: float, keep: bool = False, warm: int = 8) -> Result:
        """Open loop: request i starts at i / rate seconds; latency counts from that moment."""
        return asyncio.run(self._paced(list(requests), rate, keep, warm))

    # --- a burst ---------------------------------------------------------------------------

    async def _burst(self, requests: list[Request], keep: bool) -> Result:
        """Every request on its own new connection, all started at once; latency from the
        common start (connect included)."""
        result = Result()
        start = 0.0

        async def one(request: Request) -> None:
            try:
                client = await self._connect(result)
            except OSError:
                result.error("connect_failed")
                return
            await self._one(client, request, result, start, keep)
            if client.transport is not None:
                client.transport.close()

        cpu = time.process_time()
        start = result.started = time.perf_counter()
        await asyncio.gather(*(one(request) for request in requests))
        result.ended = time.perf_counter()
        result.cpu_seconds = time.process_time() - cpu
        return result

    def burst(self, requests: list[Request], keep: bool = False) -> Result:
        return asyncio.run(self._burst(list(requests), keep))
