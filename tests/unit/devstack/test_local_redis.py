"""The Redis fallback of `make dev` and the test suite: its three branches, for real."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import redis

from devstack.local_redis import answers, ensure_redis
from devstack.ports import free_port


def silent_url() -> str:
    """A Redis URL on a loopback port nobody listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_an_answering_url_is_used_as_it_is_and_left_running(caplog: pytest.LogCaptureFixture) -> None:
    with ensure_redis(silent_url()) as started:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="devstack.local_redis"):
            local = ensure_redis(started.url)
        assert local.url == started.url
        assert local.kind == "external"
        assert not local.started_here
        assert len([r for r in caplog.records if r.name == "devstack.local_redis"]) == 1
        local.stop()
        assert answers(started.url), "stopping an external Redis must leave it running"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_server_is_started_when_the_url_is_silent_and_stopped_without_a_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wanted = silent_url()
    with caplog.at_level(logging.INFO, logger="devstack.local_redis"):
        local = ensure_redis(wanted)
    try:
        assert local.kind == "redis-server"
        assert local.url != wanted
        assert local.url.startswith("redis://127.0.0.1:")
        assert "started redis-server" in caplog.text
        client = redis.Redis.from_url(local.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        client.close()
        process = local.process
        assert process is not None
        pid = process.pid
    finally:
        local.stop()
    assert process.returncode is not None
    assert not pid_alive(pid)
    assert not answers(local.url)
    local.stop()  # a second stop is harmless


def test_fakeredis_serves_when_redis_server_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server here
    with caplog.at_level(logging.INFO, logger="devstack.local_redis"):
        local = ensure_redis(silent_url())
    with local:
        assert local.kind == "fakeredis"
        assert local.process is None
        assert "fakeredis" in caplog.text
        client = redis.Redis.from_url(local.url)
        assert client.set("k", "v", nx=True, px=10_000)
        assert client.getdel("k") == b"v"
        assert client.get("k") is None
        client.close()
    assert not answers(local.url)
