"""A real fresh clone: `git clone`, then `make dev` builds its own virtual environment,
runs, stops on Ctrl-C, and runs again on what the first run kept: the same settings
file (owner-only), the same demo API key, and tokens it can still decrypt.

pip installs from a wheelhouse of the project's dependencies, downloaded once into
pytest's cache, so the install is offline and bounded."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests

from devstack.ports import free_port
from tests.integration.test_make_dev import Output, healthy, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INSTALL_AND_START_TIMEOUT = 420
RESTART_TIMEOUT = 120
STOP_TIMEOUT = 30


@pytest.fixture(scope="module")
def wheelhouse(request: pytest.FixtureRequest) -> Path:
    """The wheels of the project's dependencies, downloaded once per pyproject.toml."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    house = Path(request.config.cache.mkdir(f"wheelhouse-{digest}"))
    stamp = house / ".complete"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "-d", str(house),
                        f"{REPO}[dev]", "setuptools>=68"], check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stamp.touch()
    return house


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A `git clone` of this repository's current commit, with nothing else in it."""
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True, timeout=120)
    assert not (target / ".venv").exists() and not (target / "var").exists()
    return target


class DevRun:
    """One `make dev` in the clone, in its own process group, as a terminal runs it."""

    def __init__(self, checkout: Path, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{env['PORT']}"
        self.process = subprocess.Popen(["make", "dev"], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.output = Output(self.process.stdout)

    def banner(self, timeout: float) -> tuple[str, str]:
        """Wait for the web and the demo banner; return its API key and connect URL."""
        wait_for(lambda: healthy(self.base), timeout, "/healthz", self.process, self.output)
        connect_url = wait_for(lambda: self.output.find(r"^Connect URL: (\S+)"), 60, "the Connect URL line",
                               self.process, self.output)
        api_key = self.output.find(r"^\s*API key:\s+(\S+)")
        assert api_key, self.output.tail()
        return api_key, connect_url

    def ctrl_c(self) -> None:
        """SIGINT to the foreground process group, then wait for everything to stop."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make dev did not stop on Ctrl-C:\n{self.output.tail()}")
        assert self.output.find(r"^dev\s+\| (stopped)$"), self.output.tail()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _connect(base: str, connect_url: str) -> str:
    """Walk the sandbox flow like a browser; return the new connection's id."""
    browser = requests.Session()
    response = browser.get(connect_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    authorize = urljoin(connect_url, response.headers["Location"])
    params = dict(parse_qsl(urlsplit(authorize).query))
    response = browser.post(f"{base}/sandbox/oauth/authorize", data={**params, "decision": "approve"},
                            allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    response = browser.get(urljoin(base, response.headers["Location"]), allow_redirects=False, timeout=10)
    assert response.status_code == 303, response.text
    attempt = urljoin(base, response.headers["Location"])

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = browser.get(attempt, headers={"Accept": "application/json"}, timeout=10).json()
        if body["status"] != "pending":
            assert body["status"] == "succeeded", body
            return str(body["connection_id"])
        time.sleep(0.25)
    pytest.fail("the connect attempt did not end")


@pytest.mark.timeout(900)
def test_a_fresh_clone_runs_make_dev_twice_on_the_same_settings_key_and_tokens(clone: Path,
                                                                               wheelhouse: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(clone.parent)),
           "PORT": str(free_port()),
           # Nothing listens there: make dev starts a Redis of its own rather than share one.
           "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    first = DevRun(clone, env)
    try:
        api_key, connect_url = first.banner(INSTALL_AND_START_TIMEOUT)
        assert (clone / ".venv" / "bin" / "python").exists(), "make dev made the clone's own environment"
        connection_id = _connect(first.base, connect_url)
        auth = {"Authorization": f"Bearer {api_key}"}
        token = requests.get(f"{first.base}/api/v1/connections/{connection_id}/token", headers=auth, timeout=10)
        assert token.status_code == 200, token.text
        access_token = token.json()["access_token"]
        first.ctrl_c()
    finally:
        first.kill()

    dev_env = clone / "var" / "dev.env"
    assert stat.S_IMODE(dev_env.stat().st_mode) == 0o600
    kept = dev_env.read_text()
    assert f"DEMO_API_KEY={api_key}" in kept and "TOKEN_ENCRYPTION_KEYS=" in kept

    second = DevRun(clone, env)
    try:
        again_key, _ = second.banner(RESTART_TIMEOUT)
        assert again_key == api_key, "the second run reuses the demo tenant's key"
        token = requests.get(f"{second.base}/api/v1/connections/{connection_id}/token",
                             headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        assert token.status_code == 200, token.text
        assert token.json()["access_token"] == access_token, "the stored token still decrypts"
        second.ctrl_c()
    finally:
        second.kill()
    assert dev_env.read_text() == kept, "the second run changed no setting"
    assert stat.S_IMODE(dev_env.stat().st_mode) == 0o600
