"""What every benchmark needs: a Redis database and a database of the bench's own, the
system's processes (gunicorn, Celery) started and stopped by process group, CPU accounting,
machine facts, and the figures that end up in the report."""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from devstack.local_redis import LocalRedis, ensure_redis
from devstack.ports import free_port
from shared import migrate
from shared.config import Settings, load_settings
from shared.crypto import new_fernet_key, new_secret
from shared.runtime import Runtime, build_runtime

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCH_REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "12"))
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Far above any load generated here: the limiter still counts every request (its cost is
# measured), it just never refuses one.
UNLIMITED = "100000000/minute"
# Settings the children must not inherit from the caller's environment.
OWN_SETTINGS = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "TOKEN_ENCRYPTION_KEYS", "PUBLIC_BASE_URL",
                "SANDBOX_PROVIDER", "PORT", "WEB_CONCURRENCY", "WEB_THREADS", "REFRESH_MARGIN_SECONDS",
                "REFRESH_SWEEP_SECONDS", "TOKEN_WAIT_SECONDS", "HTTP_TIMEOUT_SECONDS"}


def say(text: str = "") -> None:
    print(text, flush=True)


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception:  # noqa: BLE001 - not up yet
            result = None
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


# --- figures and the report ------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure, beside its goal when it has one."""

    name: str
    value: str
    goal: str = ""
    met: bool | None = None
    headline: str = ""  # its row in the report's summary table, if it has one


@dataclass
class Section:
    """One benchmark's part of the report."""

    key: str
    title: str
    database: str = ""  # "postgresql" or "sqlite": the database this section ran on
    figures: list[Figure] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    idle: float | None = None  # busy cores of other programs just before it ran

    def add(self, name: str, value: str, goal: str = "", met: bool | None = None, headline: str = "") -> Figure:
        figure = Figure(name, value, goal, met, headline)
        self.figures.append(figure)
        say(f"  {name}: {value}" + (f"   (goal {goal}: {'met' if met else 'NOT met'})" if goal and met is not None
                                     else f"   (goal {goal})" if goal else ""))
        return figure


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def per_s(value: float) -> str:
    return f"{value:,.0f}/s"


# --- processes -------------------------------------------------------------------------------


@dataclass
class Process:
    """A child in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pgid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        # Stragglers of the group (a gunicorn worker, a celery child) go too.
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def cpu_seconds(self) -> float:
        """User+system CPU of every live process in the group, plus what reaped children used."""
        return _proc_cpu(lambda pgrp, _comm: pgrp == self.pgid)


def _proc_stats() -> Iterator[tuple[int, bytes, float]]:
    """(process group, command name, CPU seconds with reaped children) of every process."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue
        close = raw.rfind(b")")
        fields = raw[close + 2:].split()
        yield int(fields[2]), raw[raw.find(b"(") + 1:close], sum(int(v) for v in fields[11:15]) / CLK_TCK


def _proc_cpu(match: Callable[[int, bytes], bool]) -> float:
    """CPU seconds (user+system, with reaped children) of the processes that `match(pgrp, comm)`."""
    return sum(ticks for pgrp, comm, ticks in _proc_stats() if match(pgrp, comm))


class CPUMeter:
    """CPU used between start() and stop(): the whole machine (busy cores), this process, the
    given process groups, PostgreSQL and Redis, for telling where the cores went."""

    def __init__(self, groups: dict[str, Process] | None = None) -> None:
        self.groups = groups or {}
        self.used: dict[str, float] = {}
        self.seconds = 0.0

    @staticmethod
    def _machine() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # all, idle+iowait

    def _sample(self) -> dict[str, float]:
        pgids = {p.pgid: name for name, p in self.groups.items()}
        sample = dict.fromkeys(self.groups, 0.0)
        sample["postgres"] = sample["redis"] = 0.0

        def match(pgrp: int, comm: bytes) -> bool:
            return pgrp in pgids or comm in (b"postgres", b"redis-server")

        # One pass over /proc, bucketed by owner.
        for pgrp, comm, ticks in _proc_stats():
            if match(pgrp, comm):
                sample[pgids.get(pgrp) or ("postgres" if comm == b"postgres" else "redis")] += ticks
        sample["bench (this process)"] = time.process_time()
        return sample

    def start(self) -> CPUMeter:
        self._t0 = time.monotonic()
        self._m0 = self._machine()
        self._s0 = self._sample()
        return self

    def stop(self) -> CPUMeter:
        self.seconds = max(time.monotonic() - self._t0, 1e-9)
        m1 = self._machine()
        s1 = self._sample()
        total, idle = m1[0] - self._m0[0], m1[1] - self._m0[1]
        self.used = {name: (s1[name] - self._s0.get(name, 0.0)) / self.seconds for name in s1}
        self.busy_cores = (os.cpu_count() or 1) * (1 - idle / total) if total else 0.0
        return self

    def ms_per(self, group: str, rate: float) -> float:
        """A process group's CPU per request (or per refresh), in ms, at `rate` a second."""
        return self.used.get(group, 0.0) / max(rate, 1e-9) * 1000

    @property
    def others(self) -> float:
        """Busy cores not accounted for by the processes measured: the kernel, and anything else
        running on the machine meanwhile (another developer's tests, say)."""
        return max(0.0, self.busy_cores - sum(self.used.values()))

    def summary(self) -> str:
        parts = [f"machine {self.busy_cores:.2f} cores busy"]
        parts += [f"{name} {cores:.2f}" for name, cores in self.used.items() if cores >= 0.005]
        parts.append(f"unaccounted (kernel, other programs) {self.others:.2f}")
        return ", ".join(parts)


def background_load(seconds: float = 1.0) -> float:
    """Busy cores while the bench itself is idle: other programs competing for the machine."""
    meter = CPUMeter().start()
    time.sleep(seconds)
    return meter.stop().busy_cores


# The longest any wait for quiet may last (`python -m bench --patience`): on a machine that is
# never quiet, every wait would otherwise run to its end.
MAX_PATIENCE = {"seconds": float("inf")}


def wait_for_quiet(limit: float = 0.3, patience: float = 60.0) -> tuple[float, float]:
    """Wait (at most `patience` seconds) until other programs keep less than `limit` cores busy;
    answers the last reading and the seconds waited."""
    patience = min(patience, MAX_PATIENCE["seconds"])
    began = time.monotonic()
    load = background_load()
    while load >= limit and time.monotonic() - began < patience:
        load = background_load(2.0)
    return load, time.monotonic() - began


PROFILE_CATEGORIES = (
    ("database (SQLAlchemy, psycopg)", ("/sqlalchemy/", "/psycopg/")),
    ("HTTP client (requests, urllib3, http.client)", ("/requests/", "/urllib3/", "/http/client.py", "socket.py",
                                                      "/idna/", "/charset_normalizer/", "/certifi/")),
    ("Flask, Werkzeug, Jinja", ("/flask/", "/werkzeug/", "/jinja2/", "/markupsafe/", "/itsdangerous/")),
    ("Celery, kombu", ("/celery/", "/kombu/", "/amqp/", "/vine/", "/billiard/")),
    ("encryption (cryptography, base64)", ("/cryptography/", "base64", "hmac", "secrets")),
    ("Redis client", ("/redis/",)),
    ("the service's own code", ("/shared/", "/worker/", "/web/")),
)


def library_of(path: str) -> str:
    """The library (a PROFILE_CATEGORIES name) a source file belongs to."""
    return next((name for name, marks in PROFILE_CATEGORIES if any(m in path for m in marks)),
                "other Python (stdlib, logging…)")


def profile_shares(profile: Any) -> dict[str, float]:
    """Where a CPU-clock cProfile's time went, by library, as fractions (largest first)."""
    import pstats

    shares: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            category = "C functions (socket calls, Fernet's Rust core, json…)"
        else:
            category = library_of(filename)
        shares[category] = shares.get(category, 0.0) + tottime
    total = sum(shares.values()) or 1.0
    return {name: value / total for name, value in sorted(shares.items(), key=lambda kv: -kv[1])}


def stage_times(profile: Any, stages: dict[str, tuple[str, str]], cpu_ms: float) -> dict[str, float]:
    """CPU per call (ms) of named stages of a CPU-clock cProfile, each a (file suffix, function)
    whose cumulative time counts (the outermost, where functions of that name nest), scaled from
    the profile's clock to the unprofiled `cpu_ms` per call (the profiler's own cost spread evenly)."""
    import pstats

    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(tottime for (_, _, tottime, _, _) in stats.values()) or 1.0
    found = dict.fromkeys(stages, 0.0)
    for (filename, _, function), (_, _, _, cumtime, _) in stats.items():
        for name, (suffix, wanted) in stages.items():
            if function == wanted and filename.endswith(suffix):
                found[name] = max(found[name], cumtime)
    return {name: seconds / total * cpu_ms for name, seconds in found.items()}


def format_shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.items() if share >= 0.005)


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.*)$")


def error_summary(log: str, top: int = 3) -> str:
    """The exceptions that ended tracebacks in a log, most frequent first (a chained exception is
    counted once, by its last line)."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    for index, line in enumerate(lines):
        match = _ERROR_LINE.match(line)
        following = next((later for later in lines[index + 1:index + 3] if later.strip()), "")
        if match and not following.startswith("The above exception") and not following.startswith("During handling"):
            key = f"{match.group(1)}: {match.group(2)[:140]}"
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "none"
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return "; ".join(f"{n} × `{text}`" for text, n in ranked)


def machine_facts(database_url: str | None = None) -> list[tuple[str, str]]:
    """What a reader needs to weigh the figures."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    versions = []
    for package in ("gunicorn", "celery", "flask", "sqlalchemy", "redis", "psycopg"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:  # noqa: BLE001
            pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    facts = [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("cores", f"{os.cpu_count()} ({model})" if model else str(os.cpu_count())),
        ("memory", memory),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OS", platform.platform()),
        ("packages", ", ".join(versions)),
        ("git commit", commit or "unknown"),
    ]
    return facts


# --- the environment of one benchmark ---------------------------------------------------------


def _admin_url() -> str | None:
    """A PostgreSQL server to create the bench database on: DATABASE_URL's, else the default
    local one if it answers, else None (SQLite)."""
    given = os.environ.get("DATABASE_URL", "")
    candidates = [given] if given.startswith("postgresql") else ([] if given else [DEFAULT_ADMIN_URL])
    for url in candidates:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return url
        except Exception:  # noqa: BLE001 - not there
            continue
        finally:
            engine.dispose()
    return None


class Environment:
    """Redis database BENCH_REDIS_DB (flushed before and after), a fresh database
    `oauth_bench_<hex>` (dropped after) or a SQLite file, settings and a runtime for this
    process, and the children it starts."""

    def __init__(self, name: str, need_postgres: bool = False, database: str | None = None) -> None:
        self.name = name
        # "postgresql" or "sqlite"; None: PostgreSQL when a server answers, else SQLite.
        self.database = "postgresql" if need_postgres else database
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.processes: list[Process] = []
        self.local_redis: LocalRedis | None = None
        self.admin_url: str | None = None
        self.db_name: str | None = None
        self.database_url = ""
        self.redis_url = ""
        self.secret_key = new_secret(24)
        self.encryption_key = new_fernet_key()
        self.settings: Settings | None = None
        self.runtime: Runtime | None = None

    @property
    def kind(self) -> str:
        return "postgresql" if self.db_name else "sqlite"

    def __enter__(self) -> Environment:
        try:
            self._open()
        except BaseException as error:
            self.close()
            if isinstance(error, SkipBenchmark):
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                say(f"  logs of the processes kept in {self.tmp}")
            raise
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close()
        if exc_type is None and not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            say(f"  logs of the processes kept in {self.tmp}")

    def _open(self) -> None:
        self.local_redis = ensure_redis(os.environ.get("REDIS_URL"))
        self.redis_url = urlunsplit(urlsplit(self.local_redis.url)._replace(path=f"/{BENCH_REDIS_DB}"))
        self.admin_url = _admin_url() if self.database != "sqlite" else None
        if self.admin_url:
            self.db_name = f"oauth_bench_{secrets.token_hex(4)}"
            admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{self.db_name}"'))
            admin.dispose()
            self.database_url = make_url(self.admin_url).set(database=self.db_name).render_as_string(
                hide_password=False)
        elif self.database == "postgresql":
            raise SkipBenchmark("needs PostgreSQL: set DATABASE_URL to a postgresql+psycopg:// URL "
                                f"(or run one at {DEFAULT_ADMIN_URL})")
        else:
            self.database_url = f"sqlite:///{self.tmp / 'bench.db'}"
        migrate.upgrade(self.database_url)
        self.settings = self.make_settings()
        self.runtime = build_runtime(self.settings)
        self.runtime.redis.flushdb()

    def make_settings(self, **overrides: Any) -> Settings:
        """The bench's settings, for the processes it runs in itself."""
        values: dict[str, Any] = {"database_url": self.database_url, "redis_url": self.redis_url,
                                  "secret_key": self.secret_key, "token_encryption_keys": self.encryption_key,
                                  "api_rate_limit": UNLIMITED, "browser_rate_limit": UNLIMITED}
        values.update(overrides)
        return load_settings(**values)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child: this one's minus the service's settings, plus the bench's."""
        base = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
        return {**base, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                "SECRET_KEY": self.secret_key, "TOKEN_ENCRYPTION_KEYS": self.encryption_key,
                "PYTHONUNBUFFERED": "1",
                "API_RATE_LIMIT": UNLIMITED, "BROWSER_RATE_LIMIT": UNLIMITED, **extra}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait_http(self, process: Process, url: str) -> None:
        def up() -> bool:
            if not process.alive():
                raise SystemExit(f"{process.name} exited:\n{process.output()[-3000:]}")
            return requests.get(url, timeout=1).status_code == 200

        try:
            wait_for(up, timeout=60, interval=0.1, what=f"{process.name} at {url}")
        except RuntimeError:
            raise RuntimeError(f"{process.name} did not answer:\n{process.output()[-3000:]}") from None

    def start_web(self, name: str = "web", app: str = "web:create_app()", sandbox: bool = False,
                  extra_env: dict[str, str] | None = None) -> tuple[Process, str]:
        """The web under gunicorn with the repo's gunicorn.conf.py (production sizing), bound to
        loopback; answers the process and its base URL."""
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = self.env(PUBLIC_BASE_URL=base, PORT=str(port), SANDBOX_PROVIDER="1" if sandbox else "0",
                       **(extra_env or {}))
        process = self.spawn(name, [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
                                    "-b", f"127.0.0.1:{port}", app], env)
        self._wait_http(process, f"{base}/healthz")
        return process, base

    def start_sandbox(self, workers: int = 2, threads: int = 64) -> tuple[Process, str]:
        """The sandbox provider in a gunicorn of its own (quiet: no access log)."""
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        conf = self.tmp / "sandbox.gunicorn.conf.py"
        conf.write_text("control_socket_disable = True\nloglevel = 'warning'\nkeepalive = 30\n")
        env = self.env(PUBLIC_BASE_URL=base, SANDBOX_PROVIDER="1")
        process = self.spawn("sandbox", [str(BIN / "gunicorn"), "-c", str(conf), "-b", f"127.0.0.1:{port}",
                                         "-k", "gthread", "-w", str(workers), "--threads", str(threads),
                                         "--backlog", "2048", "web:create_app()"], env)
        self._wait_http(process, f"{base}/healthz")
        return process, base

    def start_worker(self, name: str, concurrency: int, extra_env: dict[str, str] | None = None,
                     queues: str | None = None) -> Process:
        """`celery -A worker worker` with a thread pool of `concurrency`."""
        args = [str(BIN / "celery"), "-A", "worker", "worker", "-n", f"{name}@%h", "-P", "threads",
                "-c", str(concurrency), "--loglevel", "WARNING", "--without-mingle", "--without-gossip",
                "--without-heartbeat"]
        if queues:
            args += ["-Q", queues]
        process = self.spawn(name, args, self.env(**(extra_env or {})))
        return process

    def wait_workers_ready(self, processes: list[Process], timeout: float = 60) -> None:
        """Until every worker answers a ping."""
        runtime = self.runtime
        assert runtime is not None
        names = {f"{p.name}@{socket.gethostname()}" for p in processes}

        def ready() -> bool:
            for process in processes:
                if not process.alive():
                    raise SystemExit(f"{process.name} exited:\n{process.output()[-3000:]}")
            replies = runtime.celery.control.ping(timeout=0.5) or []
            seen = {name for reply in replies for name in reply}
            return names <= seen

        wait_for(ready, timeout=timeout, interval=0.2, what="the workers")

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.runtime is not None:
            try:
                self.runtime.redis.flushdb()
            except Exception:  # noqa: BLE001
                pass
            self.runtime.db.dispose()
            self.runtime = None
        if self.db_name and self.admin_url:
            admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            finally:
                admin.dispose()
            self.db_name = None
        if self.local_redis is not None:
            self.local_redis.stop()
            self.local_redis = None


class SkipBenchmark(Exception):
    """A benchmark that cannot run here, with the reason."""
