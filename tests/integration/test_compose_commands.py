"""The compose file's commands, proven without a Docker engine: each service's command
runs as a plain process, with the environment compose would give it, against this
machine's Redis and PostgreSQL: the migration, gunicorn, two workers, beat and Flower."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from devstack.ports import free_port
from shared.config import load_settings
from shared.crypto import new_fernet_key
from shared.runtime import build_runtime
from tests.integration.stack import BIN, ROOT, Browser, Stack, Tenant, wait_for
from tests.unit.web.test_metrics import samples

pytestmark = pytest.mark.integration

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
FLOWER_AUTH = ("operator", "flower-password")


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`."""
    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        if shell.get(name):
            return shell[name]
        if "?" in operator:
            raise AssertionError(f"compose needs {name}: {argument}")
        return argument if "-" in operator else ""
    return _VARIABLE.sub(one, value)


def service_env(service: str, shell: dict[str, str]) -> dict[str, str]:
    """A service's environment as compose builds it: values interpolated, bare names
    passed through when the shell sets them."""
    env: dict[str, str] = {}
    for key, value in (COMPOSE["services"][service].get("environment") or {}).items():
        if value is None:
            if shell.get(key):
                env[key] = shell[key]
        else:
            env[key] = interpolate(str(value), shell)
    return env


def command(service: str) -> list[str]:
    """A service's command, its program taken from this virtual environment."""
    args = [str(arg) for arg in COMPOSE["services"][service]["command"]]
    return [str(BIN / args[0]), *args[1:]]


class RedisServer:
    """A redis-server of this test's own, which it may stop and start again."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("needs redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(folder)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_for(lambda: redis.Redis(port=self.port).ping(), timeout=10, what="redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class ComposeRun:
    """The services' processes, and how compose would have set each one up."""

    stack: Stack
    shell: dict[str, str]
    local: dict[str, str]
    redis_server: RedisServer
    flower_url: str = ""
    worker_ports: list[int] = field(default_factory=list)

    def env(self, service: str, **extra: str) -> dict[str, str]:
        return {**service_env(service, self.shell), **self.local, **extra}

    def run(self, service: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        """A one-off command in a service's environment (`docker compose run SERVICE …`)."""
        return subprocess.run(args, cwd=ROOT, env={**self.stack.env, **self.env(service)}, capture_output=True,
                              text=True, timeout=60)


@pytest.fixture(scope="module")
def compose(new_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeRun]:
    """Every service of the compose file but the stores, started from its command."""
    redis_server = RedisServer(tmp_path_factory.mktemp("redis"))
    redis_server.start()
    port = free_port()
    shell = {"SECRET_KEY": "compose-secret-key-0123456789", "TOKEN_ENCRYPTION_KEYS": new_fernet_key(),
             "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
             "SANDBOX_PROVIDER": "1"}
    # What differs from a compose host: the stores are this machine's, and all processes
    # share one network, so each listens on a port of its own.
    local = {"DATABASE_URL": new_database(), "REDIS_URL": redis_server.url}
    settings = load_settings(**{k.lower(): v for k, v in {**shell, **local}.items() if k != "FLOWER_BASIC_AUTH"})
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY",
                                                             "TOKEN_ENCRYPTION_KEYS", "PUBLIC_BASE_URL"}}
    stack = Stack(env={**base, "PYTHONUNBUFFERED": "1", "PATH": f"{BIN}:{os.environ['PATH']}"},
                  runtime=build_runtime(settings), logdir=Path(tmp_path_factory.mktemp("compose-logs")),
                  base_url=shell["PUBLIC_BASE_URL"])
    run = ComposeRun(stack, shell, local, redis_server)

    migration = stack.spawn("migrate", command("migrate"), run.env("migrate"))
    assert migration.popen.wait(60) == 0, migration.output()
    stack.spawn("web", command("web"), run.env("web", PORT=str(port)))
    workers = []
    for n in (1, 2):
        run.worker_ports.append(free_port())
        # Compose gives each container a host name of its own; here the node names differ.
        workers.append(stack.spawn(f"worker{n}", [*command("worker"), "-n", f"worker{n}@%h"],
                                   run.env("worker", WORKER_METRICS_PORT=str(run.worker_ports[-1]))))
    stack.spawn("beat", command("beat"), run.env("beat"))
    flower_port = free_port()
    stack.spawn("flower", [f"--port={flower_port}" if arg.startswith("--port=") else arg for arg in command("flower")],
                run.env("flower"))
    run.flower_url = f"http://127.0.0.1:{flower_port}"
    try:
        wait_for(lambda: requests.get(f"{stack.base_url}/readyz", timeout=2).ok, timeout=30, what="web /readyz")
        for worker in workers:
            wait_for(lambda worker=worker: "ready." in worker.output(), timeout=30, what=worker.name)
        yield run
    finally:
        stack.stop_all()
        stack.runtime.db.dispose()
        redis_server.stop()


def test_a_connect_a_refresh_and_a_revoke_run_through_the_compose_services(compose: ComposeRun) -> None:
    created = compose.run("web", [str(BIN / "flask"), "--app", "web", "tenants", "create", "compose"])
    assert created.returncode == 0, created.stderr
    tenant = Tenant(compose.stack, **{k: v for k, v in json.loads(created.stdout).items() if k != "name"})
    client, integration = tenant.sandbox_integration()
    attempt = Browser(compose.stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "succeeded", attempt
    connection_id = attempt["connection_id"]

    version = compose.stack.row(connection_id).version
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 200
    assert compose.stack.row(connection_id).version == version + 1

    def refreshes_counted() -> float:
        return sum(samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
                   .get(("oauth_refreshes_total", (("outcome", "refreshed"),)), 0) for port in compose.worker_ports)

    assert wait_for(refreshes_counted, timeout=10, what="a worker to count the refresh") == 1

    token = tenant.call("GET", f"/connections/{connection_id}/token").json()["access_token"]
    assert tenant.call("DELETE", f"/connections/{connection_id}").status_code == 202
    wait_for(lambda: compose.stack.row(connection_id).access_token_enc is None, timeout=30,
             what="a worker to revoke and erase the tokens")
    assert compose.stack.introspect(client, token)["active"] is False


def test_the_worker_healthcheck_passes(compose: ComposeRun) -> None:
    test = COMPOSE["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    script = test[1].replace("$$HOSTNAME", "$HOSTNAME").replace("celery@", "worker1@")
    result = subprocess.run(["sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**compose.stack.env, **compose.env("worker"), "HOSTNAME": host})
    assert result.returncode == 0, result.stdout + result.stderr


def test_flower_wants_its_credentials(compose: ComposeRun) -> None:
    wait_for(lambda: requests.get(compose.flower_url, timeout=2).status_code == 401, timeout=30, what="flower")
    assert requests.get(compose.flower_url, auth=("operator", "wrong"), timeout=5).status_code == 401
    assert requests.get(compose.flower_url, auth=FLOWER_AUTH, timeout=5).status_code == 200


def test_readiness_follows_redis(compose: ComposeRun) -> None:
    ready = f"{compose.stack.base_url}/readyz"
    assert requests.get(ready, timeout=5).status_code == 200
    compose.redis_server.stop()
    try:
        assert wait_for(lambda: requests.get(ready, timeout=10).status_code == 503, timeout=20,
                        what="/readyz to answer 503")
    finally:
        compose.redis_server.start()
    assert wait_for(lambda: requests.get(ready, timeout=10).status_code == 200, timeout=20,
                    what="/readyz to answer 200 again")
