"""The newcomer's path: `make dev` in a clean copy of the repo, with no settings at all,
then a sandbox connection through a browser-like session, then Ctrl-C."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests

from devstack.ports import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 150
STOP_TIMEOUT = 20


def venv_dir() -> Path:
    """The virtual environment running these tests (make test's), else the repo's."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return REPO / ".venv"


def copy_checkout(target: Path) -> None:
    """Tracked files plus untracked ones that are not ignored: what a fresh clone would have."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file():  # deleted in the working tree
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)  # keeps mtimes, so make sees nothing to rebuild


# --- processes -------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[2]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> dict[int, str]:
    """Every live process under `root` (children run in their own sessions), with its command line."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        stat = _stat(pid)
        if stat:
            children.setdefault(stat[0], []).append(pid)
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = _cmdline(pid)
        todo.extend(children.get(pid, []))
    return found


def still_running(recorded: dict[int, str]) -> dict[int, str]:
    """Those of the recorded processes that still run (same pid and command line, not a zombie)."""
    left = {}
    for pid, cmd in recorded.items():
        stat = _stat(pid)
        if stat and stat[2] != "Z" and _cmdline(pid) == cmd:
            left[pid] = cmd
    return left


class Output:
    """Collects a process's output lines in a thread."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def find(self, pattern: str) -> str | None:
        for line in list(self.lines):
            match = re.match(pattern, line)
            if match:
                return match.group(1)
        return None

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])


@pytest.fixture
def make_dev(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Output, str]]:
    """`make dev` in a fresh copy. Parametrized (indirectly) by where REDIS_URL points:
    "unset" leaves it out, "dead-port" names a loopback port where nothing listens."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    copy_checkout(checkout)
    venv = venv_dir()
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"no virtual environment at {venv}")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(tmp_path)),
           "PORT": str(port)}
    if getattr(request, "param", "unset") == "dead-port":
        env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    # -o: treat the install stamp as up to date, so the shared virtual environment is
    # never re-pointed at this temporary copy.
    process = subprocess.Popen(
        ["make", "-o", f"{venv}/.installed", "dev", f"VENV={venv}"],
        cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(process.stdout)
    seen: dict[int, str] = {}
    try:
        yield process, output, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            seen.update(descendants(process.pid))
            for pid in seen:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen[bytes], output: Output):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            time.sleep(0.5)  # let the last lines arrive
            pytest.fail(f"make dev exited (rc={process.returncode}) before {what}:\n{output.tail()}")
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}:\n{output.tail()}")


def healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.parametrize("make_dev", ["unset", "dead-port"], indirect=True)
def test_make_dev_runs_the_system_connects_a_sandbox_account_and_stops_on_ctrl_c(make_dev, request) -> None:  # type: ignore[no-untyped-def]
    process, output, base = make_dev
    variant = request.node.callspec.params["make_dev"]

    wait_for(lambda: healthy(base), START_TIMEOUT, "/healthz", process, output)
    connect_url = wait_for(lambda: output.find(r"^Connect URL: (\S+)"), 60, "the Connect URL line", process, output)
    api_key = output.find(r"^\s*API key:\s+(\S+)")
    assert api_key, f"the banner shows no API key:\n{output.tail()}"
    assert connect_url.startswith(base + "/connect/"), output.tail()
    redis_line = output.find(r"^\s*Redis:\s+(.+)$")
    assert redis_line, output.tail()
    if variant == "dead-port":
        # Nothing answers at REDIS_URL: make dev starts a redis-server of its own (or,
        # where none is installed, the embedded fallback) and says so.
        if shutil.which("redis-server", path=os.environ.get("PATH")):
            assert "(redis-server started for this run)" in redis_line, output.tail()
            assert output.find(r"^dev\s+\| redis: (.*did not answer; started redis-server at .*)$"), output.tail()
            servers = [pid for pid, cmd in descendants(process.pid).items() if "redis-server" in cmd]
            assert len(servers) == 1, descendants(process.pid)
        else:
            assert "(embedded fakeredis" in redis_line, output.tail()

    browser = requests.Session()
    # The connect link sends the browser to the provider (the sandbox).
    response = browser.get(connect_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    authorize = urljoin(connect_url, response.headers["Location"])
    assert urlsplit(authorize).path == "/sandbox/oauth/authorize"
    params = dict(parse_qsl(urlsplit(authorize).query))
    assert params["state"] and params["code_challenge"] and params["code_challenge_method"] == "S256"

    # The consent page, then approval.
    response = browser.get(authorize, timeout=10)
    assert response.status_code == 200
    response = browser.post(
        f"{base}/sandbox/oauth/authorize", data={**params, "decision": "approve"}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 302, response.text
    callback = urljoin(base, response.headers["Location"])
    assert urlsplit(callback).path == "/oauth/callback"

    # Back at the service: the code is handed to a worker, the browser to the status page.
    response = browser.get(callback, allow_redirects=False, timeout=10)
    assert response.status_code == 303, response.text
    attempt = urljoin(base, response.headers["Location"])
    assert re.fullmatch(r"/connect/attempts/[^/]+", urlsplit(attempt).path), attempt

    def finished() -> dict | None:
        body = browser.get(attempt, headers={"Accept": "application/json"}, timeout=10).json()
        return body if body["status"] != "pending" else None

    result = wait_for(finished, 60, "the code exchange", process, output)
    assert result["status"] == "succeeded", (result, output.tail())
    assert result["connection_id"]

    # The printed key works, and sees the new connection.
    listed = requests.get(f"{base}/api/v1/connections", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert listed.status_code == 200, listed.text
    assert result["connection_id"] in [c["id"] for c in listed.json()["data"]]

    # The printed client snippet lists the connection's sandbox contacts (none yet).
    starts = ("from oauth_keeper_client import", "keeper = Keeper(", "print(list(RespondIO(")
    snippet = [next((line.strip() for line in output.lines if line.strip().startswith(start)), "")
               for start in starts]
    assert all(snippet), output.tail()
    ran = subprocess.run([sys.executable, "-c", "\n".join(snippet)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip() == "[]", (ran.stdout, ran.stderr)

    # Ctrl-C, as a terminal sends it: to the foreground process group, make's, which
    # holds make and the dev runner (the runner's children have sessions of their own).
    before = descendants(process.pid)
    runners = [pid for pid, cmd in before.items() if "-m devstack.dev" in cmd]
    assert len(runners) == 1, before
    assert _stat(runners[0])[1] == process.pid, "the dev runner is not in make's process group"
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make dev did not stop within {STOP_TIMEOUT} s of SIGINT:\n{output.tail()}")
    time.sleep(0.5)  # let the last lines arrive
    # The runner stopped everything and exited 0; make itself, interrupted too, dies of
    # SIGINT after its child has finished (as in a terminal) or exits 0.
    assert output.find(r"^dev\s+\| (stopped)$"), output.tail()
    assert not any("Error" in line for line in output.lines if line.startswith("make")), output.tail()
    assert process.returncode in (0, -signal.SIGINT), (process.returncode, output.tail())

    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
    time.sleep(0.5)  # orphans are reaped by init a moment after their parent exits
    assert still_running(before) == {}, f"left behind: {still_running(before)}\n{output.tail()}"
