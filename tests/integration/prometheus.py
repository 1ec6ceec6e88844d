"""A real Prometheus (Debian's `prometheus` package) for the integration tests: the
repository's prometheus.yml with its targets pointed at local processes, its HTTP query
API, and the Grafana dashboard's panel queries made evaluable."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import requests
import yaml

from tests.integration.stack import ROOT, Process, wait_for

CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/oauth-keeper.json"
# Grafana's variables, as Grafana would set them for a 1 h dashboard with 15 s scrapes
# ($__rate_interval is at least four scrape intervals).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Scrapes every second, so the test waits little for what it did to be seen.
SCRAPE_INTERVAL = "1s"


def binary() -> str | None:
    """Where Debian's `prometheus` is (with its `promtool`), or None."""
    found = shutil.which("prometheus")
    return found if found and shutil.which("promtool") else None


def skip_without() -> NoReturn:
    """Skip a test that needs Prometheus; fail it in CI, which installs it."""
    if os.environ.get("CI"):
        pytest.fail("CI must run the Prometheus test: apt-get install prometheus", pytrace=False)
    pytest.skip("needs Debian's prometheus package (apt-get install prometheus)")


def promtool_check(config: Path) -> None:
    """`promtool check config`, which also checks that the files the config names exist."""
    checked = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def local_config(web: str, workers: list[str]) -> dict[str, Any]:
    """The repository's prometheus.yml with the compose host names replaced by local
    addresses (the web's one target, and the workers' that DNS would have found) and
    scrapes every SCRAPE_INTERVAL; everything else, the web's bearer token included, as is."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {**config["global"], "scrape_interval": SCRAPE_INTERVAL,
                        "evaluation_interval": SCRAPE_INTERVAL}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"web", "worker"}, set(jobs)
    assert jobs["web"]["static_configs"] == [{"targets": ["web:8000"]}]
    jobs["web"]["static_configs"] = [{"targets": [web]}]
    (names,) = jobs["worker"].pop("dns_sd_configs")
    assert names["names"] == ["worker"] and names["port"] == 9100, names
    jobs["worker"]["static_configs"] = [{"targets": workers}]
    return config


@dataclass
class Prometheus:
    """A running Prometheus's HTTP API, and the folder that stands for its /etc/prometheus."""

    url: str
    folder: Path
    process: Process

    def ready(self) -> Prometheus:
        """This, once it answers (its first scrapes come later, after target discovery)."""
        wait_for(lambda: self.process.popen.poll() is not None or requests.get(f"{self.url}/-/ready", timeout=2).ok,
                 timeout=30, what="prometheus")
        assert self.process.popen.poll() is None, self.process.output()
        return self

    def get(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        assert response.ok and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (a PromQL error fails the test)."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The one value of a query that answers one series, or None when it answers none."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, each with its job, health and last scrape's error."""
        return list(self.get("/api/v1/targets", state="active")["activeTargets"])

    def targets_up(self) -> dict[str, int]:
        """How many targets of each job answered their last scrape."""
        up: dict[str, int] = {}
        for target in self.targets():
            job = target["labels"]["job"]
            up[job] = up.get(job, 0) + (target["health"] == "up")
        return up

    def wait_until_up(self, expected: dict[str, int], timeout: float) -> None:
        """Wait until `expected` targets of each job answer their scrapes; else fail
        with what each target's last scrape gave."""
        try:
            wait_for(lambda: self.targets_up() == expected, timeout=timeout, interval=0.5,
                     what=f"Prometheus to scrape {expected}")
        except AssertionError as error:
            states = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"], t["lastScrapeDuration"])
                      for t in self.targets()]
            raise AssertionError(f"{error}; targets (job, url, health, last error, seconds): {states}") from None


def panel_queries() -> list[tuple[str, str]]:
    """Every panel query of the dashboard as (panel title, PromQL), Grafana's variables
    replaced by what Grafana would put there."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$__\w+", lambda m: GRAFANA_VARIABLES.get(m.group(), m.group()), target["expr"])
            assert "$" not in expr, f"a variable this test does not know in {panel['title']!r}: {expr}"
            queries.append((panel["title"], expr))
    return queries


def numbers(series: list[dict[str, Any]]) -> list[float]:
    """The values of an instant query's series that are numbers (not NaN: no data)."""
    return [value for value in (float(one["value"][1]) for one in series) if not math.isnan(value)]
