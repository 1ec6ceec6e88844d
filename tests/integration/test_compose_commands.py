"""The compose file's commands, proven without a Docker engine: each service's command
runs as a plain process, with the environment compose would give it, against this
machine's Redis and PostgreSQL: the migration, gunicorn, two workers, beat and Flower;
and the monitoring profile's Prometheus, whose scrapes answer every dashboard query."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
import yaml

from devstack.ports import free_port
from shared.config import load_settings
from shared.crypto import new_fernet_key
from shared.runtime import build_runtime
from tests.integration import prometheus as prom
from tests.integration.stack import BIN, ROOT, Browser, Stack, Tenant, wait_for
from tests.receiver import Receiver
from tests.unit.web.test_metrics import samples

pytestmark = pytest.mark.integration

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
FLOWER_AUTH = ("operator", "flower-password")
METRICS_TOKEN = "compose-metrics-token-0123456789"
# Dashboard panels the run leaves without a series: the sandbox provider's calls pass no
# circuit breaker (its failures are scripted per client), so no breaker state is exported.
MAY_BE_EMPTY = {"Open circuit breakers"}


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
    prometheus: prom.Prometheus | None = None  # when Debian's prometheus is installed

    def env(self, service: str, **extra: str) -> dict[str, str]:
        return {**service_env(service, self.shell), **self.local, **extra}

    def run(self, service: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        """A one-off command in a service's environment (`docker compose run SERVICE …`)."""
        return subprocess.run(args, cwd=ROOT, env={**self.stack.env, **self.env(service)}, capture_output=True,
                              text=True, timeout=60)


def start_prometheus(run: ComposeRun, program: str, folder: Path) -> prom.Prometheus:
    """The monitoring profile's Prometheus, from its entrypoint and command with `program`
    for /bin/prometheus and `folder` for /etc/prometheus, and the repository's
    prometheus.yml pointed at the local web and workers."""
    workers = [f"127.0.0.1:{port}" for port in run.worker_ports]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(
        prom.local_config(urlsplit(run.stack.base_url).netloc, workers)))
    paths = {"/etc/prometheus/": f"{folder}/", "/bin/prometheus": program}
    service = COMPOSE["services"]["prometheus"]
    args = [re.sub("|".join(map(re.escape, paths)), lambda m: paths[m.group()], str(arg)).replace("$$", "$")
            for arg in [*service["entrypoint"], *service["command"]]]
    port = free_port()
    process = run.stack.spawn("prometheus", [*args, f"--storage.tsdb.path={folder / 'data'}",
                                             f"--web.listen-address=127.0.0.1:{port}"],
                              service_env("prometheus", run.shell))
    return prom.Prometheus(f"http://127.0.0.1:{port}", folder, process)


@pytest.fixture(scope="module")
def compose(new_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeRun]:
    """Every service of the compose file but the stores, started from its command."""
    redis_server = RedisServer(tmp_path_factory.mktemp("redis"))
    redis_server.start()
    port = free_port()
    shell = {"SECRET_KEY": "compose-secret-key-0123456789", "TOKEN_ENCRYPTION_KEYS": new_fernet_key(),
             "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
             "SANDBOX_PROVIDER": "1", "METRICS_TOKEN": METRICS_TOKEN,
             # The tenants' webhook receivers listen on loopback.
             "ALLOW_PRIVATE_PROVIDER_URLS": "1"}
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
    # Started with the others: its first scrapes wait for target discovery (about 5 s).
    program = prom.binary()
    prometheus = start_prometheus(run, program, tmp_path_factory.mktemp("prometheus")) if program else None
    try:
        wait_for(lambda: requests.get(f"{stack.base_url}/readyz", timeout=2).ok, timeout=90, what="web /readyz")
        for worker in workers:
            wait_for(lambda worker=worker: "ready." in worker.output(), timeout=30, what=worker.name)
        if prometheus is not None:
            run.prometheus = prometheus.ready()
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


def run_through_prometheus(compose: ComposeRun, prometheus: prom.Prometheus, receiver: Receiver) -> None:
    """A connect, a refresh, a refused refresh, a refused code, a revoke and their webhooks;
    then wait until Prometheus has scraped all of it twice, so that each series has the
    two samples a rate needs."""
    tenant = compose.stack.tenant("monitored")
    assert tenant.call("PUT", "/webhook", json={"url": receiver.url}).status_code == 200
    client, integration = tenant.sandbox_integration()
    attempt = Browser(compose.stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "succeeded", attempt
    connection_id = attempt["connection_id"]
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 200
    assert tenant.call("GET", f"/connections/{connection_id}/token").status_code == 200
    # The provider refuses the next two grants: a refresh, then another end user's code.
    compose.stack.knobs(client["client_id"], fail=["invalid_grant", "invalid_grant"])
    tenant.call("POST", f"/connections/{connection_id}/refresh")
    wait_for(lambda: compose.stack.row(connection_id).status == "needs_reauth", timeout=20,
             what="the refused refresh to mark the connection")
    refused = Browser(compose.stack).connect(tenant.connect_url(integration["id"], end_user_id="user-2"))
    assert (refused["status"], refused.get("error")) == ("failed", "invalid_grant"), refused
    assert tenant.call("DELETE", f"/connections/{connection_id}").status_code == 202
    receiver.wait(2)

    def seen() -> bool:
        return (prometheus.value('sum(oauth_exchanges_total{outcome="failed", error="invalid_grant"})') == 1
                and prometheus.value('sum(oauth_refreshes_total{outcome="needs_reauth"})') == 1
                and (prometheus.value('sum(oauth_webhook_deliveries_total{outcome="failed"})') or 0) >= 1
                and (prometheus.value('sum(oauth_webhook_deliveries_total{outcome="delivered"})') or 0) >= 1)

    wait_for(seen, timeout=20, interval=0.25, what="Prometheus to scrape the run's figures")
    # The token's route once more (a 409 now: revoked), so its latency has an increase to show.
    assert tenant.call("GET", f"/connections/{connection_id}/token").status_code == 409
    seen_at = time.time()
    wait_for(lambda: (prometheus.value("min(timestamp(up))") or 0) > seen_at, timeout=10, interval=0.25,
             what="Prometheus to scrape every target again")


def test_prometheus_scrapes_the_services_and_answers_every_dashboard_query(compose: ComposeRun) -> None:
    prometheus = compose.prometheus
    if prometheus is None:
        prom.skip_without()
    # The entrypoint put the web's token beside the configuration, for Prometheus's user only;
    # promtool accepts the repository's file there, as in the container, and the local one.
    token = prometheus.folder / "metrics_token"
    assert (token.read_text(), token.stat().st_mode & 0o777) == (METRICS_TOKEN, 0o600)
    shutil.copy(prom.CONFIG, prometheus.folder / "repository.yml")
    for config in ("repository.yml", "prometheus.yml"):
        prom.promtool_check(prometheus.folder / config)
    # Every target answers its scrapes (the web only with the token) before the run starts.
    # Scrapes time out after 1 s (the scrape interval), which a loaded machine may exceed.
    prometheus.wait_until_up({"web": 1, "worker": 2}, timeout=60)

    receiver = Receiver(script=[500])  # the first webhook delivery fails, the others are delivered
    try:
        run_through_prometheus(compose, prometheus, receiver)
    finally:
        receiver.close()
    for title, expr in prom.panel_queries():
        series = prometheus.query(expr)  # a query that is not valid PromQL fails here
        assert prom.numbers(series) or title in MAY_BE_EMPTY, f"{title!r}: no series for {expr}"
    # What the run did shows as a rate above 0, the first of each outcome included: the
    # workers export those series from their start.
    for counter, labels in [("oauth_refreshes_total", 'outcome="refreshed"'),
                            ("oauth_refreshes_total", 'outcome="needs_reauth"'),
                            ("oauth_exchanges_total", 'outcome="connected"'),
                            ("oauth_webhook_deliveries_total", 'outcome="delivered"'),
                            ("oauth_webhook_deliveries_total", 'outcome="failed"')]:
        assert (prometheus.value(f"sum(rate({counter}{{{labels}}}[1m]))") or 0) > 0, (counter, labels)
