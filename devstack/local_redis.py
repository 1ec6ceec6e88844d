"""A Redis for development and tests: the configured one when it answers,
else a private `redis-server`, else fakeredis's TCP server in this process."""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import redis

from devstack.ports import free_port
from shared.config import DEFAULT_REDIS_URL

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether the Redis at this URL answers PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


class LocalRedis:
    """The Redis that was chosen, and how to stop it if it was started here.

    `kind` is "external" (it was already running), "redis-server" or "fakeredis"."""

    def __init__(
        self,
        url: str,
        kind: str,
        process: subprocess.Popen[bytes] | None = None,
        workdir: str | None = None,
        server: object | None = None,
        thread: threading.Thread | None = None,
    ) -> None:
        self.url = url
        self.kind = kind
        self.process = process
        self._workdir = workdir
        self._server = server
        self._thread = thread
        self._lock = threading.Lock()

    @property
    def started_here(self) -> bool:
        """Whether stop() has anything to stop."""
        return self.kind != "external"

    def stop(self) -> None:
        """Stop what was started here; leave an external Redis alone. Safe to call twice."""
        with self._lock:
            if self.process is not None:
                if self.process.poll() is None:
                    self.process.terminate()
                    try:
                        self.process.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        self.process.kill()
                        self.process.wait()
                self.process = None
            if self._server is not None:
                self._server.shutdown()  # type: ignore[attr-defined]
                self._server.server_close()  # type: ignore[attr-defined]
                self._server = None
            if self._thread is not None:
                self._thread.join(timeout=5)
                self._thread = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> LocalRedis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalRedis(url={self.url!r}, kind={self.kind!r})"


def _wait_until_answers(url: str, alive: object = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if answers(url, timeout=0.2):
            return
        if callable(alive) and not alive():
            break
        time.sleep(0.05)
    raise RuntimeError(f"the Redis started at {url} did not answer")


def _start_redis_server(executable: str) -> LocalRedis:
    workdir = tempfile.mkdtemp(prefix="local-redis-")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    command = [
        executable,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir,
        "--logfile", str(Path(workdir) / "redis.log"),
        "--daemonize", "no",
    ]
    # Its own session: a Ctrl-C in the terminal reaches only the program that
    # started it, which stops it last, after the processes that use it.
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    local = LocalRedis(url, "redis-server", process=process, workdir=workdir)
    try:
        _wait_until_answers(url, alive=lambda: process.poll() is None)
    except BaseException:
        local.stop()
        raise
    return local


def _start_fakeredis() -> LocalRedis:
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True  # connection threads must not keep the program alive
    port = server.server_address[1]
    url = f"redis://127.0.0.1:{port}/0"
    thread = threading.Thread(target=server.serve_forever, name="fakeredis-tcp", daemon=True)
    thread.start()
    local = LocalRedis(url, "fakeredis", server=server, thread=thread)
    try:
        _wait_until_answers(url)
    except BaseException:
        local.stop()
        raise
    return local


def ensure_redis(url: str | None = None) -> LocalRedis:
    """A Redis that answers: `url` (or the default) if it does, else one started here."""
    url = url or DEFAULT_REDIS_URL
    if answers(url):
        log.info("redis: using %s", _redact(url))
        return LocalRedis(url, "external")
    executable = shutil.which("redis-server")
    if executable:
        local = _start_redis_server(executable)
        log.info("redis: %s did not answer; started redis-server at %s", _redact(url), local.url)
        return local
    local = _start_fakeredis()
    log.info("redis: %s did not answer and redis-server is not installed; started fakeredis at %s",
             _redact(url), local.url)
    return local


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
