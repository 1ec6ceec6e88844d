"""Benchmark 3: the cost of one sweep, at two table sizes with 1 % of the connections due.

Connections are loaded into PostgreSQL with COPY (dummy ciphertext: the sweep never decrypts),
then analysed. The sweep function behind `tokens.sweep_due` (`worker.sweep.sweep`) runs in a
child process of its own (so that its peak memory is its own), against the bench's Redis
database, with a Celery app whose `tokens.refresh_batch` messages (one per page) are routed to a
throwaway queue, deleted after each run with the sweep's queued-markers.
"""
from __future__ import annotations

import json
import random
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.harness import ROOT, Environment, Section, say
from shared.crypto import new_secret
from shared.models import Integration
from shared.tenants import create_tenant

TITLE = "Sweep cost"
DATABASES = ("postgresql",)  # the sweep's query plan is PostgreSQL's
GOAL_SECONDS = 2.0
DUE_FRACTION = 0.01
THROWAWAY_QUEUE = "bench-sweep-throwaway"
MARGIN_SECONDS = 600
COLUMNS = ("id", "tenant_id", "integration_id", "end_user_id", "status", "scopes", "access_token_enc",
           "refresh_token_enc", "token_type", "expires_at", "lifetime_seconds", "refresh_failures", "version",
           "created_at", "updated_at")


def _conninfo(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _load(database_url: str, tenant_id: str, integration_id: str, count: int, start: int) -> tuple[float, int]:
    """COPY `count` active connections, every 100th one due; answers (seconds, due)."""
    now = datetime.now(UTC)
    rnd = random.Random(start)
    dummy_access = "gAAAAA" + "x" * 134  # the width of a Fernet token of a 43-character secret
    dummy_refresh = "gAAAAA" + "y" * 134
    created = (now - timedelta(days=30)).isoformat()
    step = round(1 / DUE_FRACTION)
    due = 0
    began = time.perf_counter()
    with psycopg.connect(_conninfo(database_url)) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY connections ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            chunk: list[str] = []
            for i in range(start, start + count):
                if i % step == 0:
                    # Due: expired up to 5 minutes ago, or expiring within the margin.
                    expires = now + timedelta(seconds=rnd.uniform(-300, MARGIN_SECONDS - 60))
                    due += 1
                else:
                    # Not due for at least half an hour, whatever the bench's duration.
                    expires = now + timedelta(seconds=rnd.uniform(1800, 3600))
                chunk.append("\t".join((f"conn_{secrets.token_hex(12)}", tenant_id, integration_id, f"user-{i}",
                                        "active", '["contact:read", "message:write"]', dummy_access,
                                        dummy_refresh, "Bearer", expires.isoformat(), "3600", "0", "1", created,
                                        created)))
                if len(chunk) >= 50_000:
                    copy.write("\n".join(chunk) + "\n")
                    chunk.clear()
            if chunk:
                copy.write("\n".join(chunk) + "\n")
    with psycopg.connect(_conninfo(database_url), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE connections")
    return time.perf_counter() - began, due


def _child_run(repeats: int) -> dict:
    """In the child: run the sweep `repeats` times timed, once instrumented, once under tracemalloc."""
    import resource
    import tracemalloc

    from sqlalchemy import text

    from shared import refreshes
    from shared.config import get_settings
    from shared.queue import REFRESH_BATCH, REFRESH_CONNECTION, build_celery
    from shared.runtime import build_runtime
    from worker.sweep import SWEEP_BATCH, sweep

    settings = get_settings()
    rt = build_runtime(settings)
    app = build_celery(settings, name="bench-sweep")
    app.conf.task_routes = {name: {"queue": THROWAWAY_QUEUE} for name in (REFRESH_BATCH, REFRESH_CONNECTION)}
    rt.celery = app

    def reset() -> None:
        keys = list(rt.redis.scan_iter(match=refreshes.queued_key("*"), count=5000))
        for start in range(0, len(keys), 5000):
            rt.redis.unlink(*keys[start:start + 5000])
        rt.redis.delete(THROWAWAY_QUEUE)

    # Warm every connection (database, Redis, broker) and Celery's lazy set-up.
    with rt.db.session() as session:
        session.execute(text("SELECT 1"))
    app.send_task(REFRESH_BATCH, args=[["warm-up"]], ignore_result=True)
    reset()

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    runs = []
    rss_before = rss_mib()
    rss_after_first = rss_before
    for index in range(repeats):
        reset()
        began = time.perf_counter()
        queued = sweep(rt, app)
        seconds = time.perf_counter() - began
        runs.append({"seconds": seconds, "queued": queued, "in_queue": rt.redis.llen(THROWAWAY_QUEUE)})
        if index == 0:
            rss_after_first = rss_mib()

    # Where the time goes: the same sweep with its two Redis-side steps timed.
    spent = {"claim": 0.0, "send_task": 0.0}
    original_claim, original_send = refreshes.claim, app.send_task

    def timed_claim(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original_claim(*args, **kwargs)
        finally:
            spent["claim"] += time.perf_counter() - t

    def timed_send(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original_send(*args, **kwargs)
        finally:
            spent["send_task"] += time.perf_counter() - t

    reset()
    refreshes.claim, app.send_task = timed_claim, timed_send  # type: ignore[method-assign]
    began = time.perf_counter()
    sweep(rt, app)
    spent["total"] = time.perf_counter() - began
    refreshes.claim, app.send_task = original_claim, original_send  # type: ignore[method-assign]

    reset()
    tracemalloc.start()
    sweep(rt, app)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reset()
    return {"runs": runs, "breakdown": spent, "tracemalloc_peak_mib": peak / 2**20,
            "rss_before_mib": rss_before, "rss_growth_first_run_mib": rss_after_first - rss_before,
            "batch": SWEEP_BATCH}


def _child(env: Environment, repeats: int) -> dict:
    env_vars = env.env(REFRESH_MARGIN_SECONDS=str(MARGIN_SECONDS))
    out = subprocess.run([sys.executable, "-m", "bench.sweep", "--child", str(repeats)], cwd=ROOT, env=env_vars,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the sweep child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(section: Section, quick: bool = False, repeats: int = 3, database: str | None = "postgresql") -> None:
    sizes = (10_000, 100_000) if quick else (100_000, 1_000_000)
    results: list[tuple[int, int, dict]] = []
    with Environment("sweep", need_postgres=True) as env:
        rt = env.runtime
        assert rt is not None
        with rt.db.session() as session:
            tenant, _ = create_tenant(session, "bench")
            integration = Integration(
                tenant_id=tenant.id, provider="sandbox", client_id="sbx_bench",
                client_secret_enc=rt.cipher.encrypt(new_secret(32)), scopes=["contact:read"],
                authorize_url="http://127.0.0.1:9/authorize", token_url="http://127.0.0.1:9/token")
            session.add(integration)
            session.flush()
            tenant_id, integration_id = tenant.id, integration.id
        loaded = due_total = 0
        load_notes = []
        for size in sizes:
            say(f"  loading {size - loaded:,} connections (to {size:,})…")
            seconds, due = _load(env.database_url, tenant_id, integration_id, size - loaded, loaded)
            load_notes.append(f"{size - loaded:,} rows COPYed and analysed in {seconds:.1f} s")
            loaded, due_total = size, due_total + due
            say(f"  sweeping {size:,} rows, {due_total:,} due…")
            results.append((size, due_total, _child(env, repeats)))
        # The same table with only as many due as the smallest size had: the sweep's time should
        # then be about the smallest size's, whatever the table size.
        keep = results[0][1]
        with psycopg.connect(_conninfo(env.database_url), autocommit=True) as connection:
            connection.execute(
                "UPDATE connections SET expires_at = now() + interval '45 minutes' "
                "WHERE expires_at <= now() + make_interval(secs => %s) AND id NOT IN ("
                "SELECT id FROM connections WHERE expires_at <= now() + make_interval(secs => %s) "
                "ORDER BY id LIMIT %s)", (MARGIN_SECONDS, MARGIN_SECONDS, keep))
            connection.execute("VACUUM ANALYZE connections")
        say(f"  sweeping {loaded:,} rows, {keep:,} due…")
        results.append((loaded, keep, _child(env, repeats)))
        engine = sa.create_engine(env.database_url)
        with engine.connect() as connection:
            table_size = connection.execute(sa.text(
                "SELECT pg_size_pretty(pg_total_relation_size('connections'))")).scalar()
            plan = [row[0].strip() for row in connection.execute(sa.text(
                "EXPLAIN SELECT id, integration_id, expires_at, lifetime_seconds FROM connections "
                "WHERE status = 'active' AND expires_at <= now() + interval '600 seconds' "
                "ORDER BY expires_at, id LIMIT 1000"))]
        engine.dispose()

    section.setup += [
        f"PostgreSQL, connections loaded with COPY (every {round(1 / DUE_FRACTION)}th row due: expired up to "
        f"5 min ago or expiring within the {MARGIN_SECONDS} s margin; the others expire in 30–60 min), "
        "then `VACUUM ANALYZE`; " + "; ".join(load_notes) + f"; final table with indexes: {table_size}",
        "sweep: `worker.sweep.sweep(runtime, app)` (the function behind `tokens.sweep_due`) in a fresh "
        f"child process, REFRESH_MARGIN_SECONDS={MARGIN_SECONDS}; it claims each due connection's marker and "
        "queues one `tokens.refresh_batch` message per page of ids, with each one's integration (a worker "
        "cuts each into chunks of one provider host); its Celery app routes them to the throwaway queue "
        f"`{THROWAWAY_QUEUE}` "
        "(deleted after each run, with the sweep's `refresh-queued:*` markers, so every run queues every due "
        "connection)",
        f"each size: {repeats} timed runs (median reported, all in the notes), then one run with the "
        "Redis-side steps timed, and one under "
        "tracemalloc for the peak of Python allocations",
    ]
    medians: list[float] = []
    for size, due, data in results:
        times = [r["seconds"] for r in data["runs"]]
        median = statistics.median(times)
        medians.append(median)
        goal = size >= 1_000_000 and due >= size * DUE_FRACTION
        label = f"{size:,} rows, {due:,} due"
        section.add(f"sweep time, {label}", f"{median:.2f} s",
                    f"< {GOAL_SECONDS:g} s" if goal else "", (median < GOAL_SECONDS) if goal else None)
        section.add(f"peak memory, {label}", f"{data['tracemalloc_peak_mib']:.1f} MiB of Python allocations "
                    f"(tracemalloc); RSS grew {data['rss_growth_first_run_mib']:.1f} MiB in the first run")
        b = data["breakdown"]
        other = b["total"] - b["claim"] - b["send_task"]
        section.notes.append(
            f"{label}: runs {', '.join(f'{t:.2f} s' for t in times)}; queued "
            f"{', '.join(str(r['queued']) for r in data['runs'])} (messages in the throwaway queue: "
            f"{', '.join(str(r['in_queue']) for r in data['runs'])}); instrumented run {b['total']:.2f} s = "
            f"send_task {b['send_task']:.2f} s ({b['send_task'] / max(due, 1) * 1000:.3f} ms per due connection) + "
            f"claim markers {b['claim']:.2f} s + database reads and the rest {other:.2f} s; "
            f"child RSS before sweeping {data['rss_before_mib']:.0f} MiB; batch {data['batch']}")
    if len(results) == 3:
        (small, small_due, _), (large, large_due, _), (_, few_due, _) = results
        section.add(f"time ratio {large:,} ÷ {small:,} rows (1 % due in both)", f"{medians[1] / medians[0]:.1f}",
                    f"≈ due ratio {large_due / small_due:.0f} (the table ratio is {large / small:.0f} too)")
        section.add(f"time ratio {large:,} rows with {few_due:,} due ÷ {small:,} rows with {small_due:,} due",
                    f"{medians[2] / medians[0]:.2f}", "≈ 1 (the cost follows the due, not the table)")
    section.notes.append("Query plan of one batch at the largest size: " + " → ".join(f"`{line}`" for line in plan))

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child_run(int(sys.argv[2]))), flush=True)
    else:
        raise SystemExit("usage: python -m bench sweep")
