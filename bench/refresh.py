"""Benchmark 2: refresh throughput of one worker host.

N connections are due (their access tokens expired a minute ago), each holding a real refresh
token of the sandbox, which answers its token endpoint after 100 ms and runs in a gunicorn of
its own. Celery workers (`celery -A worker worker -P threads`) run on this machine; the bench
sends `tokens.refresh_connection` for every connection and waits until every connection's
version has changed. Beside it: the ideal bound (concurrency ÷ provider latency) and a bare
thread pool of `requests` posting as many refresh-token grants straight to the sandbox.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from sqlalchemy import func, select

from bench.fixtures import Grant, Sandbox, insert_connections, mint_grants, tenant_and_integration
from bench.harness import ROOT, CPUMeter, Environment, Section, error_summary, format_shares, per_s, profile_shares, say
from shared.models import Connection, utcnow
from shared.queue import REFRESH_CONNECTION

TITLE = "Refresh throughput"
RATE_GOAL = 400.0
BARE_RATIO_GOAL = 0.8  # issue 8


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
        time.sleep(0.1)


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


def _diagnose_child(ids: list[str]) -> dict:
    """In a child process with the workers' settings: `refresh_once` run sequentially, its CPU
    per call, and where that CPU goes (a CPU-clock profile, by library)."""
    import cProfile

    from worker.app import runtime
    from worker.refresh import refresh_once

    rt = runtime()
    warm, timed, profiled = ids[:20], ids[20:len(ids) // 2 + 10], ids[len(ids) // 2 + 10:]
    for connection_id in warm:
        refresh_once(rt, connection_id, None)
    cpu, wall = time.process_time(), time.perf_counter()
    outcomes: dict[str, int] = {}
    for connection_id in timed:
        name = refresh_once(rt, connection_id, None).name
        outcomes[name] = outcomes.get(name, 0) + 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for connection_id in profiled:
        refresh_once(rt, connection_id, None)
    profile.disable()
    return {"cpu_ms": cpu / len(timed) * 1000, "wall_ms": wall / len(timed) * 1000, "outcomes": outcomes,
            "shares": profile_shares(profile)}


def _diagnose(env: Environment, ids: list[str]) -> dict:
    path = env.tmp / "diagnose-ids.json"
    path.write_text(json.dumps(ids))
    out = subprocess.run([sys.executable, "-m", "bench.refresh", "--diagnose", str(path)], cwd=ROOT,
                         env=env.env(REFRESH_MARGIN_SECONDS="600", HTTP_TIMEOUT_SECONDS="10"),
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"the diagnosis child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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

        say(f"  minting {2 * count:,} sandbox grants and inserting {count:,} due connections…")
        began = time.perf_counter()
        grants = mint_grants(rt, client, 2 * count)
        ids = insert_connections(rt, tenant_id, integration_id, grants[:count],
                                 expires_at=utcnow() - timedelta(minutes=1))
        setup_seconds = time.perf_counter() - began

        worker_env = {"REFRESH_MARGIN_SECONDS": "600", "HTTP_TIMEOUT_SECONDS": "10"}
        workers = [env.start_worker(f"bench{i + 1}", threads, worker_env) for i in range(processes)]
        env.wait_workers_ready(workers)
        section.setup += [
            f"{count:,} active connections due (access token expired a minute ago), each with its own "
            f"live sandbox refresh token (minted and inserted in {setup_seconds:.1f} s, before the timed part)",
            f"sandbox: its own gunicorn, `-k gthread -w 2 --threads 64`, knob latency_ms={latency_ms} "
            "(sleeps before answering the token endpoint)",
            f"workers: {processes} × `celery -A worker worker -P threads -c {threads}` "
            f"(concurrency {concurrency}), REFRESH_MARGIN_SECONDS=600, HTTP_TIMEOUT_SECONDS=10; "
            f"database: {env.kind}",
            "the bench queues `tokens.refresh_connection` for every connection while the workers' consumers "
            "are cancelled, then turns them on (timed from there) and polls the database until no "
            "connection still has version 1",
            f"bare pool: `concurrent.futures.ThreadPoolExecutor({concurrency})` in the bench process, a "
            f"`requests.Session` per thread, posting {count:,} refresh-token grants (other grants) to the same sandbox",
        ]

        # The messages are queued while the workers do not consume, so that the timed part is
        # the workers' alone (the producer's cost is the sweep's, measured by `sweep`).
        names = [f"{w.name}@{socket.gethostname()}" for w in workers]
        replies = rt.celery.control.cancel_consumer("celery", destination=names, reply=True, timeout=5)
        if replies is None or len(replies) != len(names):
            raise RuntimeError(f"not every worker stopped consuming: {replies}")
        say(f"  queueing {count:,} refreshes…")
        started = time.perf_counter()
        with rt.celery.producer_or_acquire() as producer:
            for connection_id in ids:
                rt.celery.send_task(REFRESH_CONNECTION, args=[connection_id], producer=producer,
                                    ignore_result=True)
        enqueue_seconds = time.perf_counter() - started

        before = sandbox.stats(client["client_id"])
        groups = {f"worker {i + 1}": w for i, w in enumerate(workers)}
        groups["sandbox"] = sandbox_proc
        say(f"  refreshing {count:,} connections through the workers…")
        meter = CPUMeter(groups).start()
        rt.celery.control.add_consumer("celery", destination=names, reply=False)
        drain_seconds, samples = _drain(env, count, timeout=max(120.0, count / 50))
        meter.stop()
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
        bare_rate, bare_statuses = _bare_pool(sandbox, client, grants[count:], concurrency)
        bare_meter.stop()

        say("  where a refresh's CPU goes (refresh_once in-process, provider latency 0)…")
        quick_client = sandbox.client()
        _, quick_integration, _ = tenant_and_integration(rt, sandbox, quick_client)
        diagnosis_ids = insert_connections(rt, tenant_id, quick_integration,
                                           mint_grants(rt, quick_client, 300 if not quick else 100),
                                           expires_at=utcnow() - timedelta(minutes=1))
        diagnosis = _diagnose(env, diagnosis_ids)
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
    worker_cpu = sum(meter.used.get(f"worker {i + 1}", 0.0) for i in range(processes))
    section.notes += [
        f"queueing the {count:,} messages (before the timed part, consumers off) took {enqueue_seconds:.1f} s",
        f"sandbox counted {requests_made:,} refresh-token requests and {successes:,} successful refreshes "
        f"for the worker run, {revoked} grants revoked (a reused refresh token revokes its grant)",
        f"versions after the run: {dict(sorted(versions.items()))}; statuses: {statuses}; "
        f"connections with refresh failures: {failing:,}; worker logs: {errors}",
        f"CPU during the worker run: {meter.summary()}",
        f"CPU during the bare pool: {bare_meter.summary()}; statuses {bare_statuses}",
        f"CPU per refresh in the worker run: {worker_cpu / max(rate, 1e-9) * 1000:.1f} ms "
        f"in the worker processes (Celery included); `refresh_once` alone, sequential in one process against "
        f"the sandbox at latency 0: {diagnosis['cpu_ms']:.1f} ms CPU, {diagnosis['wall_ms']:.1f} ms wall per call "
        f"({diagnosis['outcomes']}); its CPU by library: "
        + format_shares(diagnosis["shares"]),
        f"the bare pool spends {bare_meter.used.get('bench (this process)', 0.0) / max(bare_rate, 1e-9) * 1000:.1f} ms "
        "of client CPU per refresh, for comparison",
        "double refreshes = successful sandbox refreshes beyond one per connection + connections whose "
        "version moved by 2 or more + grants the sandbox revoked for reuse",
        "Caveat: workers, the sandbox, PostgreSQL, Redis and the bench share 2 cores; the CPU figures "
        "show where they went.",
    ]
    if kind == "sqlite" and database != "sqlite":
        section.notes.append("The database was SQLite (no PostgreSQL answered): production runs PostgreSQL.")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--diagnose":
        from pathlib import Path

        print(json.dumps(_diagnose_child(json.loads(Path(sys.argv[2]).read_text()))), flush=True)
    else:
        raise SystemExit("usage: python -m bench refresh")
