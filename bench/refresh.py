"""Benchmark 2: refresh throughput of one worker host.

N connections are due (their access tokens expired a minute ago), each holding a real refresh
token of the sandbox, which answers its token endpoint after 100 ms and runs in a gunicorn of
its own. Celery workers (`celery -A worker worker -P threads`) run on this machine. The bench
runs the sweep itself (`worker.sweep.sweep`, what beat's `tokens.sweep_due` runs), which queues
one `tokens.refresh_batch` message per page of due connections, exactly as in production, and
waits until every connection's version has changed. The workers' provider cap
(PROVIDER_CONCURRENCY, per host) is the bare pool's concurrency, so that both may have as many
calls in flight. Beside it: the ideal bound (concurrency ÷ provider latency) and a bare thread
pool of `requests` posting as many refresh-token grants straight to the sandbox.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from sqlalchemy import func, select

from bench import floors
from bench.fixtures import Grant, Sandbox, insert_connections, mint_grants, tenant_and_integration
from bench.harness import CPUMeter, Environment, Section, error_summary, per_s, say
from bench.sampling import Profile, Sampler
from shared.models import Connection, utcnow
from worker.batch import CHUNK
from worker.sweep import sweep

TITLE = "Refresh throughput"
RATE_GOAL = 400.0
WARM_UP = 400  # due connections the workers refresh before the timed part
BARE_RATIO_GOAL = 0.8  # issue 8
FLOOR_CONNECTIONS = 2_000  # refreshed connections the floor writes again, after the timed parts


def _drain(env: Environment, count: int, timeout: float) -> tuple[float, list[tuple[float, int]]]:
    """Poll until no connection has its first version any more; answers the time it took (from
    the moment this is called) and the (seconds, remaining) samples."""
    assert env.runtime is not None
    started = time.perf_counter()
    samples: list[tuple[float, int]] = []
    query = select(func.count()).select_from(Connection).where(Connection.version == 1)
    while True:
        with env.runtime.db.session() as session:
            remaining = session.scalar(query) or 0
        elapsed = time.perf_counter() - started
        samples.append((elapsed, remaining))
        if remaining == 0 or elapsed > timeout:
            return elapsed, samples
        time.sleep(DRAIN_POLL_SECONDS)


def _steady_rate(samples: list[tuple[float, int]], count: int) -> float:
    """Refreshes per second between 10 % and 90 % done (ramp-up and tail left out)."""
    def first(fraction: float) -> tuple[float, int] | None:
        return next(((t, r) for t, r in samples if count - r >= fraction * count), None)

    low, high = first(0.1), first(0.9)
    if low is None or high is None or high[0] <= low[0]:
        return float("nan")
    return (low[1] - high[1]) / (high[0] - low[0])


def _bare_pool(sandbox: Sandbox, client: dict, grants: list[Grant], concurrency: int) -> tuple[float, dict[int, int]]:
    """`requests` from a thread pool, one refresh-token grant per refresh token; answers the rate
    and the status counts."""
    local = threading.local()
    auth = (client["client_id"], client["client_secret"])
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def post(grant: Grant) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        response = session.post(sandbox.token_url, data={"grant_type": "refresh_token",
                                                         "refresh_token": grant.refresh_token},
                                auth=auth, timeout=30)
        with lock:
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(post, grants))
        elapsed = time.perf_counter() - started
    return len(grants) / elapsed, statuses


# How often the drain is checked: each check counts the connections still on their first
# version, which costs the shared cores too, so not too often (±1 % of a 30 s drain).
DRAIN_POLL_SECONDS = 0.25
# The stages of a refresh in a worker, by the functions on the stack (the first that matches).
STAGES = {
    "provider call (egress, HTTP, answer checks)": ("_post",),
    "locks (one script call per chunk)": ("take_refresh_locks",),
    "read (one SELECT per chunk)": ("_read",),
    "per-host slots, breaker and line": ("admit", "renew", "done", "wake", "defer", "take"),
    "write (one transaction per chunk)": ("_write",),
    "settle (locks released and markers settled in one script call, retries)": ("_settle",),
    "the rest of the task": ("refresh_batch",),
}


def _cpu_ms(meter: CPUMeter, rate: float) -> dict[str, float]:
    """Each process group's CPU per refresh, in ms (cores used ÷ refreshes a second)."""
    return {name: meter.ms_per(name, rate) for name, cores in meter.used.items() if cores >= 0.005}


def _per_refresh(meter: CPUMeter, rate: float, names: dict[str, str] | None = None) -> str:
    """Each process group's CPU per refresh (ms), its total, and what nobody accounts for."""
    parts = {(names or {}).get(name, name): value for name, value in _cpu_ms(meter, rate).items()}
    return (", ".join(f"{name} {value:.2f} ms" for name, value in parts.items())
            + f" (total {sum(parts.values()):.2f} ms; other programs and the kernel "
            f"{meter.others / max(rate, 1e-9) * 1000:.2f} ms)")


def _floor_note(floor: CPUMeter, written: int, bare: CPUMeter, bare_rate: float, bare_ms: float,
                worker_ms: float) -> str:
    """A refresh at its floor (bench/floors.py): the bare pool's cost plus the service's own
    steps done bare; the ratio and the rate reachable at that cost."""
    floor_ms = sum(floor.used.values()) * floor.seconds / max(written, 1) * 1000
    at_floor = bare_ms + floor_ms
    ceiling = floors.ratio_ceiling(bare_ms, floor_ms)
    cores = os.cpu_count() or 1
    rate, rate_as_bare = cores / at_floor * 1000, bare.busy_cores / at_floor * 1000
    return (f"the floor (bench/floors.py): the service's own steps of a refresh, done bare in chunks of {CHUNK} "
            f"(the chunk's Celery message, its locks, one SELECT through the driver, the refresh token decrypted "
            f"and the new pair encrypted, the fenced write and the events in one transaction, the locks released), "
            f"cost {floor_ms:.2f} ms of CPU per refresh ({written:,} written; this process, the database and Redis: "
            f"{_per_refresh(floor, written / max(floor.seconds, 1e-9))}). At the floor a refresh would cost the "
            f"bare pool's {bare_ms:.2f} ms plus that, {at_floor:.2f} ms, against the worker run's {worker_ms:.2f} ms "
            + (f"({worker_ms - at_floor:.2f} ms above the floor: Celery's delivery of each task, the ORM, the "
               f"per-host slots and lines, the call threads)" if worker_ms > at_floor else
               f"(at the floor, {at_floor - worker_ms:.2f} ms below it: the workers' calls go straight through "
               f"urllib3, which costs less than the bare pool's requests)")
            + f". There the ratio to the bare pool would be at most "
            f"{ceiling:.2f} (goal {BARE_RATIO_GOAL}), and the rate at most {per_s(rate)} with all {cores} cores busy, "
            f"{per_s(rate_as_bare)} as busy as the bare pool kept them ({bare.busy_cores:.2f}, for "
            f"{per_s(bare_rate)}) (goal {RATE_GOAL:.0f}/s): the rate goal is "
            + ("out of reach on this machine even at the floor" if rate < RATE_GOAL else "within reach of the floor")
            + ", the ratio goal " + ("out of reach even at the floor." if ceiling < BARE_RATIO_GOAL
                                     else "within reach of the floor."))


def _profile_note(profile: Profile, worker: str) -> str:
    """Where the sampled worker's CPU went."""
    if profile.problem or not profile.samples:
        return f"no profile of {worker}: {profile.problem or 'no samples'}"
    return (f"where {worker}'s CPU went (py-spy, {profile.samples:,} samples of the thread holding the GIL): by stage "
            + ", ".join(f"{name} {share:.0%}" for name, share in profile.share(profile.stages).items()
                        if share >= 0.005)
            + "; by library of the innermost frame "
            + ", ".join(f"{name} {share:.0%}" for name, share in profile.share(profile.libraries).items()
                        if share >= 0.005))


def run(section: Section, quick: bool = False, count: int = 10_000, processes: int = 2, threads: int = 32,
        latency_ms: int = 100, database: str | None = None) -> None:
    if quick:
        count = 1_000
    concurrency = processes * threads
    ideal = concurrency / (latency_ms / 1000)
    with Environment("refresh", database=database) as env:
        rt = env.runtime
        assert rt is not None
        sandbox_proc, base = env.start_sandbox(workers=2, threads=64)
        sandbox = Sandbox(base)
        client = sandbox.client()
        sandbox.knobs(client["client_id"], latency_ms=latency_ms)
        tenant_id, integration_id, _ = tenant_and_integration(rt, sandbox, client)

        say(f"  minting {2 * count + WARM_UP:,} sandbox grants…")
        began = time.perf_counter()
        grants = mint_grants(rt, client, 2 * count + WARM_UP)
        setup_seconds = time.perf_counter() - began

        # PUBLIC_BASE_URL: a sandbox integration calls the sandbox of the service's own base URL.
        worker_env = {"REFRESH_MARGIN_SECONDS": "600", "HTTP_TIMEOUT_SECONDS": "10", "PUBLIC_BASE_URL": base,
                      "PROVIDER_CONCURRENCY": str(concurrency)}
        workers = [env.start_worker(f"bench{i + 1}", threads, worker_env) for i in range(processes)]
        env.wait_workers_ready(workers)
        say(f"  warming the workers up with {WARM_UP} refreshes…")
        expired = utcnow() - timedelta(minutes=1)
        insert_connections(rt, tenant_id, integration_id, grants[2 * count:], expires_at=expired)
        sweep(rt, rt.celery)
        _drain(env, WARM_UP, timeout=120.0)
        timed_ids = insert_connections(rt, tenant_id, integration_id, grants[:count],
                                       expires_at=utcnow() - timedelta(minutes=1))
        section.setup += [
            f"{count:,} active connections due (access token expired a minute ago), each with its own "
            f"live sandbox refresh token (minted in {setup_seconds:.1f} s, before the timed part)",
            f"sandbox: its own gunicorn, `-k gthread -w 2 --threads 64`, knob latency_ms={latency_ms} "
            "(sleeps before answering the token endpoint)",
            f"workers: {processes} × `celery -A worker worker -P threads -c {threads}`, "
            f"PROVIDER_CONCURRENCY={concurrency} (the bare pool's concurrency: at most {concurrency} calls in "
            f"flight to the sandbox's host across both workers), REFRESH_MARGIN_SECONDS=600, "
            f"HTTP_TIMEOUT_SECONDS=10; database: {env.kind}",
            f"the workers first refresh {WARM_UP} other due connections (untimed), so that what is timed is "
            "warm workers: database and HTTP connections open, the runtime built",
            "the production path: while the workers' consumers are cancelled, the bench runs the sweep "
            "(`worker.sweep.sweep`, what beat's `tokens.sweep_due` runs), which claims every due connection "
            "and queues one `tokens.refresh_batch` message per page of 1,000; then it turns the consumers on "
            "(timed from there: the workers cut the pages into chunks and refresh them) and polls the "
            "database until no connection still has version 1",
            f"bare pool: `concurrent.futures.ThreadPoolExecutor({concurrency})` in the bench process, a "
            f"`requests.Session` per thread, posting {count:,} refresh-token grants (other grants) to the same sandbox",
        ]

        # The pages are queued while the workers do not consume, so that the timed part is the
        # workers' alone (the sweep's own cost is measured by the `sweep` benchmark).
        names = [f"{w.name}@{socket.gethostname()}" for w in workers]
        replies = rt.celery.control.cancel_consumer("celery", destination=names, reply=True, timeout=5)
        if replies is None or len(replies) != len(names):
            raise RuntimeError(f"not every worker stopped consuming: {replies}")
        say(f"  sweeping {count:,} due connections into the queue…")
        started = time.perf_counter()
        queued = sweep(rt, rt.celery)
        enqueue_seconds = time.perf_counter() - started
        if queued != count:
            raise RuntimeError(f"the sweep queued {queued:,} of {count:,} due connections")

        before = sandbox.stats(client["client_id"])
        groups = {f"worker {i + 1}": w for i, w in enumerate(workers)}
        groups["sandbox"] = sandbox_proc
        say(f"  refreshing {count:,} connections through the workers…")
        meter = CPUMeter(groups).start()
        sampler = Sampler(workers[0].popen.pid, env.tmp / "worker1.pyspy").start()
        rt.celery.control.add_consumer("celery", destination=names, reply=False)
        drain_seconds, samples = _drain(env, count, timeout=max(120.0, count / 50))
        meter.stop()
        profile = sampler.stop(STAGES)
        time.sleep(1.0)  # late duplicates, if any, would land now
        after = sandbox.stats(client["client_id"])
        with rt.db.session() as session:
            versions = dict(session.execute(select(Connection.version, func.count())
                                            .group_by(Connection.version)).all())
            statuses = dict(session.execute(select(Connection.status, func.count())
                                            .group_by(Connection.status)).all())
            failing = session.scalar(select(func.count()).select_from(Connection)
                                     .where(Connection.refresh_failures > 0)) or 0
        for worker in workers:
            worker.stop()
        worker_log = "\n".join(w.output() for w in workers)
        errors = f"{worker_log.count('Traceback')} tracebacks, errors: {error_summary(worker_log)}"

        say(f"  bare pool of {concurrency} threads…")
        bare_meter = CPUMeter({"sandbox": sandbox_proc}).start()
        bare_rate, bare_statuses = _bare_pool(sandbox, client, grants[count:2 * count], concurrency)
        bare_meter.stop()

        say("  the floor: a refresh's own steps, done bare…")
        floor_ids = timed_ids[:min(count, FLOOR_CONNECTIONS)]
        driver = floors.Driver(rt.db.engine)
        with rt.db.session() as session:  # the pooled connection the floor's writes take, open already
            session.execute(select(1))
        try:
            floor_meter = CPUMeter().start()
            floor_written = floors.refresh_floor(rt, driver, floor_ids, CHUNK)
            floor_meter.stop()
        finally:
            driver.close()
        kind = env.kind

    remaining = versions.get(1, 0)
    done = count - remaining
    rate = done / drain_seconds
    steady = _steady_rate(samples, count)
    successes = after["refresh_success"] - before["refresh_success"]
    requests_made = after["token_requests"]["refresh_token"] - before["token_requests"]["refresh_token"]
    revoked = after["grants_revoked"] - before["grants_revoked"]
    bumped_twice = sum(n for version, n in versions.items() if version >= 3)
    doubles = max(0, successes - done) + bumped_twice + revoked
    section.add("refreshes/s through the workers (consumers on → all drained)", per_s(rate), f"≥ {RATE_GOAL:.0f}/s",
                rate >= RATE_GOAL, headline=f"refresh drain, {count:,} due, {latency_ms} ms provider: refreshes/s")
    section.add("refreshes/s in steady state (10 % → 90 % done)", per_s(steady))
    section.add(f"time to drain {count:,}", f"{drain_seconds:.1f} s" + ("" if not remaining else
                                                                      f" (timed out: {remaining:,} left)"))
    section.add(f"ideal bound (concurrency {concurrency} ÷ {latency_ms} ms)", per_s(ideal))
    section.add(f"bare `requests` pool ({concurrency} threads) straight to the sandbox", per_s(bare_rate))
    ratio = rate / bare_rate if bare_rate else float("nan")
    section.add("workers ÷ bare pool", f"{ratio:.2f}", f"≥ {BARE_RATIO_GOAL}", ratio >= BARE_RATIO_GOAL,
                headline="refresh drain: workers ÷ bare `requests` pool")
    section.add("double refreshes", f"{doubles:,}", "0", doubles == 0)
    bare_ms, worker_ms = sum(_cpu_ms(bare_meter, bare_rate).values()), sum(_cpu_ms(meter, rate).values())
    ceiling = bare_ms / max(worker_ms, 1e-9)
    section.notes += [
        f"the sweep queued the {count:,} due connections (before the timed part, consumers off) in "
        f"{enqueue_seconds:.1f} s",
        f"sandbox counted {requests_made:,} refresh-token requests and {successes:,} successful refreshes "
        f"for the worker run, {revoked} grants revoked (a reused refresh token revokes its grant)",
        f"versions after the run: {dict(sorted(versions.items()))}; statuses: {statuses}; "
        f"connections with refresh failures: {failing:,}; worker logs: {errors}",
        f"CPU during the worker run: {meter.summary()}",
        f"CPU during the bare pool: {bare_meter.summary()}; statuses {bare_statuses}",
        "CPU per refresh, by process (cores used ÷ refreshes a second): worker run "
        + _per_refresh(meter, rate) + "; bare pool "
        + _per_refresh(bare_meter, bare_rate, {"bench (this process)": "client"}),
        f"the drain is CPU-bound on these 2 shared cores, so the ratio to the bare pool can reach at most its CPU "
        f"per refresh ÷ the worker run's (sandbox, database and Redis included): {ceiling:.2f} in this run",
        f"the rate goal ({RATE_GOAL:.0f}/s) against what the machine can do: the bare pool alone, with no service "
        f"at all, costs {bare_ms:.2f} ms of CPU per refresh (the sandbox provider "
        f"{_cpu_ms(bare_meter, bare_rate).get('sandbox', 0.0):.2f} ms of it), so 2 cores carry at most "
        f"{per_s(2000 / max(bare_ms, 1e-9))} even for it; the worker run, at {worker_ms:.2f} ms per refresh, at "
        f"most {per_s(2000 / max(worker_ms, 1e-9))}",
        _floor_note(floor_meter, floor_written, bare_meter, bare_rate, bare_ms, worker_ms),
        _profile_note(profile, workers[0].name),
        "double refreshes = successful sandbox refreshes beyond one per connection + connections whose "
        "version moved by 2 or more + grants the sandbox revoked for reuse",
        "Caveat: workers, the sandbox, PostgreSQL, Redis and the bench share 2 cores; the CPU figures "
        "show where they went.",
    ]
    if kind == "sqlite" and database != "sqlite":
        section.notes.append("The database was SQLite (no PostgreSQL answered): production runs PostgreSQL.")
