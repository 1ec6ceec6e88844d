"""A running system for integration tests: real Redis, a real database, the web
under gunicorn and Celery worker processes, all talking over real connections."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from devstack.ports import free_port  # noqa: F401 - re-exported for the fixtures
from shared.models import Connection, Integration, utcnow
from shared.runtime import Runtime
from shared.tenants import create_tenant

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until `check` returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception:  # noqa: BLE001 - not up yet
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


@dataclass
class Stack:
    """Environment, processes and helpers of one running system."""

    env: dict[str, str]
    runtime: Runtime
    logdir: Path
    base_url: str = ""
    processes: list[Process] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Process:
        """Start a child in its own process group, logging to a file."""
        log = self.logdir / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(args, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=handle,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_web(self, workers: int = 2, threads: int = 32) -> Process:
        port = int(urlsplit(self.base_url).port or 80)
        process = self.spawn("web", [str(BIN / "gunicorn"), "web:create_app()", "-b", f"127.0.0.1:{port}",
                                     "-k", "gthread", "-w", str(workers), "--threads", str(threads)])
        wait_for(lambda: requests.get(f"{self.base_url}/healthz", timeout=1).ok, what="web /healthz")
        return process

    def start_worker(self, name: str, concurrency: int = 8, queues: str | None = None,
                     env: dict[str, str] | None = None) -> Process:
        args = [str(BIN / "celery"), "-A", "worker", "worker", "-n", f"{name}@%h", "-c", str(concurrency),
                "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        if queues:
            args += ["-Q", queues]
        process = self.spawn(name, args, env)
        wait_for(lambda: "ready." in process.output() or process.popen.poll() is not None, timeout=30,
                 what=f"worker {name}")
        assert process.popen.poll() is None, process.output()
        return process

    def start_beat(self) -> Process:
        """The beat scheduler (RedBeat): the periodic sweep and webhook re-queue."""
        process = self.spawn("beat", [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO"])
        wait_for(lambda: "beat: Starting" in process.output() or process.popen.poll() is not None, timeout=30,
                 what="beat")
        assert process.popen.poll() is None, process.output()
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    # --- tenants and the API ---------------------------------------------------------

    def tenant(self, name: str = "acme") -> Tenant:
        with self.runtime.db.session() as session:
            tenant, api_key = create_tenant(session, name)
        return Tenant(self, tenant.id, api_key)

    def sandbox_client(self, **body: Any) -> dict[str, Any]:
        response = requests.post(f"{self.base_url}/sandbox/clients", json=body, timeout=5)
        assert response.status_code == 201, response.text
        return response.json()

    def knobs(self, client_id: str, **knobs: Any) -> None:
        response = requests.put(f"{self.base_url}/sandbox/admin/clients/{client_id}/knobs", json=knobs, timeout=5)
        assert response.ok, response.text

    def sandbox_stats(self, client_id: str) -> dict[str, Any]:
        return requests.get(f"{self.base_url}/sandbox/admin/clients/{client_id}/stats", timeout=5).json()

    def provider_refreshes(self, client_id: str) -> int:
        """Refresh-token grants the sandbox received from this client."""
        return self.sandbox_stats(client_id)["token_requests"]["refresh_token"]

    def row(self, connection_id: str) -> Connection:
        """The stored connection, read now."""
        with self.runtime.db.session() as session:
            connection = session.get(Connection, connection_id)
        assert connection is not None
        return connection

    def introspect(self, client: dict[str, Any], token: str) -> dict[str, Any]:
        response = requests.post(f"{self.base_url}/sandbox/oauth/introspect", data={"token": token},
                                 auth=(client["client_id"], client["client_secret"]), timeout=5)
        return response.json()


@dataclass
class Tenant:
    """A tenant and its API key, with a requests session that sends it."""

    stack: Stack
    id: str
    api_key: str

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.stack.base_url}/api/v1{path}", headers=headers,
                                timeout=kwargs.pop("timeout", 30), **kwargs)

    def sandbox_integration(self, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A sandbox OAuth client and an integration of this tenant using it."""
        client = self.stack.sandbox_client(**extra.pop("client", {}))
        body = {"provider": "sandbox", "client_id": client["client_id"], "client_secret": client["client_secret"],
                "scopes": ["contact:read", "message:write"], **extra}
        response = self.call("POST", "/integrations", json=body)
        assert response.status_code == 201, response.text
        return client, response.json()

    def connected(self, **extra: Any) -> tuple[dict[str, Any], str]:
        """A sandbox client and an active connection made through the whole flow."""
        client, integration = self.sandbox_integration(**extra)
        attempt = Browser(self.stack).connect(self.connect_url(integration["id"]))
        assert attempt["status"] == "succeeded", attempt
        return client, attempt["connection_id"]

    def stored_integration(self, token_url: str, provider: str = "oauth2") -> str:
        """An integration written straight to the database, as one created before a rule
        tightened (or under ALLOW_PRIVATE_PROVIDER_URLS) would be: the API may refuse it now."""
        with self.stack.runtime.db.session() as session:
            integration = Integration(tenant_id=self.id, provider=provider, client_id="client-1",
                                      client_secret_enc=self.stack.runtime.cipher.encrypt("client-secret-1"),
                                      scopes=["contact:read"], authorize_url="https://93.184.215.14/authorize",
                                      token_url=token_url)
            session.add(integration)
        return integration.id

    def stored_connection(self, integration_id: str) -> str:
        """An active connection with an hour-long token (`access-token-1`, refresh token
        `refresh-token-1`), written straight to the database."""
        now = utcnow()
        cipher = self.stack.runtime.cipher
        with self.stack.runtime.db.session() as session:
            connection = Connection(tenant_id=self.id, integration_id=integration_id, end_user_id="user-1",
                                    scopes=["contact:read"], access_token_enc=cipher.encrypt("access-token-1"),
                                    refresh_token_enc=cipher.encrypt("refresh-token-1"), lifetime_seconds=3600,
                                    expires_at=now + timedelta(hours=1), last_refreshed_at=now)
            session.add(connection)
        return connection.id

    def events(self, connection_id: str) -> list[str]:
        response = self.call("GET", f"/connections/{connection_id}/events")
        assert response.ok, response.text
        return [event["type"] for event in response.json()["data"]]

    def connect_url(self, integration_id: str, end_user_id: str = "user-1", **extra: Any) -> str:
        response = self.call("POST", "/connect-sessions",
                             json={"integration_id": integration_id, "end_user_id": end_user_id, **extra})
        assert response.status_code == 201, response.text
        return response.json()["connect_url"]


@dataclass
class Browser:
    """A browser with its own cookie jar, walking the connect flow step by step."""

    stack: Stack
    session: requests.Session = field(default_factory=requests.Session)

    def open_connect(self, connect_url: str) -> str:
        """Open the link; return the provider's authorize URL it redirects to."""
        response = self.session.get(connect_url, allow_redirects=False, timeout=10)
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def decide(self, authorize_url: str, decision: str = "approve") -> str:
        """Answer the sandbox consent page; return the callback URL it redirects to."""
        page = self.session.get(authorize_url, timeout=10)
        assert page.status_code == 200, page.text
        form = dict(parse_qsl(urlsplit(authorize_url).query))
        form["decision"] = decision
        response = self.session.post(f"{self.stack.base_url}/sandbox/oauth/authorize", data=form,
                                     allow_redirects=False, timeout=10)
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def callback(self, callback_url: str) -> requests.Response:
        return self.session.get(callback_url, allow_redirects=False, timeout=10)

    def attempt(self, attempt_path: str, timeout: float = 20) -> dict[str, Any]:
        """Poll the attempt until it ends."""
        url = f"{self.stack.base_url}{attempt_path}"

        def ended() -> dict[str, Any] | None:
            body = self.session.get(url, headers={"Accept": "application/json"}, timeout=5).json()
            return body if body["status"] != "pending" else None

        return wait_for(ended, timeout=timeout, interval=0.1, what="the attempt to end")

    def finish(self, authorize_url: str, decision: str = "approve") -> dict[str, Any]:
        """The flow from the provider's page on; return the ended attempt."""
        response = self.callback(self.decide(authorize_url, decision))
        assert response.status_code == 303, response.text
        return self.attempt(response.headers["Location"])

    def connect(self, connect_url: str, decision: str = "approve") -> dict[str, Any]:
        """The whole flow; return the ended attempt."""
        return self.finish(self.open_connect(connect_url), decision)
