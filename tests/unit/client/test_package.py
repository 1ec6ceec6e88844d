"""The client package stands on its own: requests is its one dependency, and importing it pulls in
nothing of the service (no Flask, Celery or SQLAlchemy)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[3] / "client"


def test_the_distribution_depends_on_requests_only() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "oauth-keeper-client"
    assert [dependency.split(">")[0] for dependency in project["dependencies"]] == ["requests"]


def test_importing_it_loads_none_of_the_service() -> None:
    probe = ("import sys, oauth_keeper_client; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'celery', 'sqlalchemy', 'redis', "
             "'shared', 'web', 'worker', 'pydantic'}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
