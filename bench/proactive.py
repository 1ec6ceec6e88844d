"""Benchmark 3: proactive refresh keeping pace with short-lived tokens.

N active connections hold 40 s access tokens (the sandbox issues 40 s tokens and answers its
token endpoint after 200 ms). A token is due at half its lifetime, so each connection needs a
refresh every 20 s: N ÷ 20 refreshes a second. Their first expiries are spread evenly over the
next 20–40 s, so they fall due evenly over the first 20 s and the demand is steady from the
start. Beat (`celery -A worker beat`, REFRESH_SWEEP_SECONDS=1) sweeps, workers refresh;
nothing calls the API. Sampled every second: refreshes done, and connections whose token
expired while they were still active (lapsed).
"""
from __future__ import annotations

import re
import statistics
import time
from datetime import timedelta

from sqlalchemy import func, insert, select

from bench.fixtures import SCOPES, Sandbox, mint_grants, tenant_and_integration
from bench.harness import BIN, CPUMeter, Environment, Section, error_summary, per_s, say
from shared.models import Connection, Event, new_id, utcnow
from worker.batch import CHUNK

TITLE = "Proactive refresh of short-lived tokens"
LIFETIME_SECONDS = 40
LATENCY_MS = 200
# A chunk's run as Celery logs it: its seconds and how many it refreshed.
_CHUNK_RUN = re.compile(r"Task tokens\.refresh_batch\[[^\]]*\] succeeded in ([0-9.]+)s: \{[^}]*'refreshed': (\d+)")


def _slots_note(logs: str, slots: int, steady: float) -> str:
    """What the host's slots allow: each call holds one from its chunk leaving the line to
    the end of the chunk's calls; the chunks' runs (from the workers' logs) show most of it."""
    full = [float(seconds) for seconds, count in _CHUNK_RUN.findall(logs) if int(count) == CHUNK]
    held = slots / steady if steady > 0 else float("nan")
    ideal = per_s(slots / LATENCY_MS * 1000)
    return (f"the host's slots: {slots} calls in flight at {LATENCY_MS} ms each would carry {ideal}; at "
            f"{per_s(steady)}, were the slots always taken, each call held its slot {held * 1000:.0f} ms. A full "
            f"chunk ({CHUNK} calls at once) ran {statistics.median(full) * 1000:.0f} ms (median of {len(full):,}: "
            f"its calls, then its write after the slots went back): the burst's CPU on these shared cores, in the "
            f"workers and the sandbox, adds to the provider's {LATENCY_MS} ms" if full
            else "no full chunk in the workers' logs")


def _insert(env: Environment, tenant_id: str, integration_id: str, grants: list, spread: float) -> None:
    """One connection per grant, expiring evenly between 20 s and 20 s + `spread` from now."""
    rt = env.runtime
    assert rt is not None
    now = utcnow()
    rows = [{"id": new_id("conn"), "tenant_id": tenant_id, "integration_id": integration_id,
             "end_user_id": f"bench-user-{i}", "status": "active", "scopes": SCOPES,
             "access_token_enc": rt.cipher.encrypt(grant.access_token),
             "refresh_token_enc": rt.cipher.encrypt(grant.refresh_token), "token_type": "Bearer",
             "expires_at": now + timedelta(seconds=LIFETIME_SECONDS / 2 + spread * i / len(grants)),
             "lifetime_seconds": LIFETIME_SECONDS, "refresh_failures": 0, "version": 1,
             "created_at": now, "updated_at": now} for i, grant in enumerate(grants)]
    with rt.db.session() as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Connection), rows[start:start + 2000])


def run(section: Section, quick: bool = False, count: int = 5000, seconds: float = 90.0, processes: int = 2,
        threads: int = 32, database: str | None = None) -> None:
    if quick:
        count, seconds = 500, 30.0
    needed = count / (LIFETIME_SECONDS / 2)
    with Environment("proactive", database=database) as env:
        rt = env.runtime
        assert rt is not None
        sandbox_proc, base = env.start_sandbox(workers=2, threads=64)
        sandbox = Sandbox(base)
        client = sandbox.client()
        sandbox.knobs(client["client_id"], latency_ms=LATENCY_MS, access_token_ttl=LIFETIME_SECONDS)
        tenant_id, integration_id, _ = tenant_and_integration(rt, sandbox, client)
        say(f"  minting {count:,} sandbox grants…")
        grants = mint_grants(rt, client, count)
        # PUBLIC_BASE_URL: a sandbox integration calls the sandbox of the service's own base URL.
        # PROVIDER_CONCURRENCY: as many calls in flight to the sandbox's host as the workers have threads.
        worker_env = {"REFRESH_SWEEP_SECONDS": "1", "HTTP_TIMEOUT_SECONDS": "10", "PUBLIC_BASE_URL": base,
                      "PROVIDER_CONCURRENCY": str(processes * threads)}
        workers = [env.start_worker(f"bench{i + 1}", threads, worker_env) for i in range(processes)]
        env.wait_workers_ready(workers)
        _insert(env, tenant_id, integration_id, grants, LIFETIME_SECONDS / 2)
        beat = env.spawn("beat", [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "WARNING",
                                  "--schedule", str(env.tmp / "celerybeat-schedule")], env.env(**worker_env))
        groups = {f"worker {i + 1}": w for i, w in enumerate(workers)}
        groups.update({"beat": beat, "sandbox": sandbox_proc})
        say(f"  {count:,} connections of {LIFETIME_SECONDS} s tokens for {seconds:.0f} s "
            f"({needed:.0f} refreshes/s needed)…")
        lapsed_max, samples = 0, []
        refreshed = select(func.count()).select_from(Event).where(Event.type == "refreshed")
        meter = CPUMeter(groups).start()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            with rt.db.session() as session:
                done = session.scalar(refreshed) or 0
                lapsed = session.scalar(select(func.count()).select_from(Connection).where(
                    Connection.status == "active", Connection.expires_at < utcnow())) or 0
            samples.append((elapsed, done))
            lapsed_max = max(lapsed_max, lapsed)
            time.sleep(1.0)
        cpu = meter.stop()
        with rt.db.session() as session:
            statuses = dict(session.execute(select(Connection.status, func.count()).group_by(Connection.status)).all())
            failures = session.scalar(select(func.count()).select_from(Event).where(Event.type != "refreshed")) or 0
        logs = " ".join(w.output() for w in workers) + beat.output()
        errors = error_summary(logs)
        kind = env.kind

    # Steady state: the second half of the run (the first samples include the workers' warm-up).
    half = [s for s in samples if s[0] >= seconds / 2]
    steady = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) if len(half) > 1 else float("nan")
    total = samples[-1][1] if samples else 0
    section.setup += [
        f"{count:,} active connections, {LIFETIME_SECONDS} s tokens (due at half-life, so every connection needs a "
        f"refresh every {LIFETIME_SECONDS // 2} s: {needed:.0f}/s), first expiries spread evenly over 20–40 s from the "
        "start, so the demand is steady from the first second",
        f"sandbox: its own gunicorn (`-w 2 --threads 64`), latency_ms={LATENCY_MS}, "
        f"access_token_ttl={LIFETIME_SECONDS}",
        f"beat: `celery -A worker beat` (RedBeat), REFRESH_SWEEP_SECONDS=1, whose sweep queues one "
        f"`tokens.refresh_batch` per page of due connections (the production path); workers: {processes} × "
        f"`celery -A worker worker -P threads -c {threads}`, PROVIDER_CONCURRENCY={processes * threads} (as many "
        f"calls in flight to the sandbox's host as the workers have threads; the default, 8 per host, would cap "
        f"them at {8 / (LATENCY_MS / 1000):.0f}/s); database: {kind}",
        f"run: {seconds:.0f} s; the database sampled every second",
    ]
    section.add("refreshes/s in steady state (second half of the run)", per_s(steady), f"≥ {needed:.0f}/s",
                steady >= 0.95 * needed,
                headline=f"proactive, {count:,} connections of {LIFETIME_SECONDS} s tokens: refreshes/s")
    section.add("lapsed: most connections past expiry at once (1 s samples)", f"{lapsed_max:,}", "0",
                lapsed_max == 0, headline="proactive: connections lapsed (most at once)")
    section.add("refreshes in the run", f"{total:,}")
    average = total / seconds if seconds else 0.0
    per_refresh = {name: cpu.ms_per(name, average) for name, cores in cpu.used.items() if cores >= 0.005}
    spent = sum(per_refresh.values())
    section.notes += [
        f"statuses at the end: {statuses}; other events (failures, needs_reauth): {failures}",
        f"CPU over the run: {cpu.summary()}",
        "CPU per refresh over the run (cores used ÷ refreshes a second), by process: "
        + ", ".join(f"{name} {value:.2f} ms" for name, value in per_refresh.items())
        + f" (total {spent:.2f} ms): at that cost 2 cores carry at most {per_s(2000 / max(spent, 1e-9))}, against "
        f"the {needed:.0f}/s needed; the sandbox provider's own share is "
        f"{per_refresh.get('sandbox', 0.0):.2f} ms",
        _slots_note(logs, processes * threads, steady),
        f"errors in the workers' and beat's logs: {errors}",
    ]
