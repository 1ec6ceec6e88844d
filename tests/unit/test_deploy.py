"""What operators deploy: the compose file, the settings they can set, the dashboard."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from shared import metrics
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert {name.upper() for name in Settings.model_fields} <= documented


def test_compose_passes_every_setting_to_the_services() -> None:
    passed = set(SERVICES["worker"]["environment"])
    assert {name.upper() for name in Settings.model_fields} <= passed


def test_workers_are_health_checked_with_celery_inspect_ping() -> None:
    assert "celery -A worker inspect ping" in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_the_web_is_health_checked_on_readyz() -> None:
    assert "/readyz" in " ".join(SERVICES["web"]["healthcheck"]["test"])


def test_redis_never_evicts_keys() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_the_dashboard_only_plots_metrics_the_service_exports() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/oauth-keeper.json").read_text())
    plotted = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\boauth_[a-z_]+", target["expr"])}
    exported = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    families = set()
    for name in exported:
        families |= {name, f"{name}_total", f"{name}_bucket"}
    families |= {"oauth_connections", "oauth_connections_expiring", "oauth_connections_failing",
                 "oauth_queue_length", "oauth_state_age_seconds"}
    assert plotted and plotted <= families, plotted - families
