"""Benchmark 0: `GET /api/v1/connections/{id}/token` on tokens that are not due, beside `/healthz`.

One gunicorn, started exactly as production starts it (`-c gunicorn.conf.py`, only bound to
loopback), serves the web. 100 connections whose tokens are not due (a tenant's busy set) are
inserted directly; the requests cycle through them with the tenant's API key. `/healthz` and the
token endpoint take turns at each level of a closed loop, then each at a fixed offered rate. A second
gunicorn with TOKEN_CACHE_SECONDS=0 measures the same path without the in-process caches (two
database round trips per request), for comparison.
"""
from __future__ import annotations

import cProfile
import itertools
import runpy
import time
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from bench import floors, wrk
from bench.fixtures import Grant, insert_connections
from bench.harness import (
    ROOT,
    CPUMeter,
    Environment,
    Section,
    error_summary,
    format_shares,
    ms,
    per_s,
    profile_shares,
    say,
    stage_times,
    wait_for_quiet,
)
from bench.loadgen import LoadGenerator, Request, Result, build_request
from shared.crypto import new_secret
from shared.models import Connection, Integration, utcnow
from shared.tenants import create_tenant

TITLE = "Token endpoint (not due) vs /healthz"
THROUGHPUT_GOAL = 0.8  # of /healthz
DIAGNOSIS_ROUNDS = 5
WRK_ROUNDS = 3  # wrk's saturation runs of the judged (cached) gunicorn, at each level
# What a request spends in each stage, by the cumulative time of the function that is the stage.
APP_STAGE = "the Flask app (the whole request but the test client)"
LIMITER_STAGE = "flask-limiter's check (the API key's authentication included)"
AUTH_STAGE = "authentication (hash of the key, the cached tenant)"
STAGES = {
    APP_STAGE: ("flask/app.py", "wsgi_app"),
    LIMITER_STAGE: ("flask_limiter/_extension.py", "_check_request_limit"),
    AUTH_STAGE: ("web/auth.py", "authenticate"),
    "the token view (cached row, due rule, decryption, JSON)": ("web/api.py", "_token_response"),
    "Fernet decryption of the token": ("shared/crypto.py", "decrypt"),
    "request metrics (prometheus-client)": ("web/metrics.py", "_count"),
}
P99_GOAL_SECONDS = 0.010  # at the fixed offered rate


def _seed(env: Environment, count: int) -> tuple[str, list[str]]:
    """A tenant with `count` connections whose tokens expire in two hours; answers its API key
    and the connection ids."""
    rt = env.runtime
    assert rt is not None
    with rt.db.session() as session:
        tenant, api_key = create_tenant(session, "bench")
        integration = Integration(
            tenant_id=tenant.id, provider="oauth2", client_id="bench", client_secret_enc=rt.cipher.encrypt("s"),
            scopes=["contact:read"], authorize_url="https://idp.example/authorize",
            token_url="https://idp.example/token")
        session.add(integration)
        session.flush()
        tenant_id, integration_id = tenant.id, integration.id
    grants = [Grant(new_secret(32), new_secret(32)) for _ in range(count)]
    ids = insert_connections(rt, tenant_id, integration_id, grants, expires_at=utcnow() + timedelta(hours=2))
    return api_key, ids


def run(section: Section, quick: bool = False, levels: tuple[int, ...] = (16, 64), rate: float = 300.0,
        connections: int = 100, database: str | None = None) -> None:
    seconds = 2.0 if quick else 8.0
    paced_seconds = 3.0 if quick else 10.0
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    with Environment("token", database=database) as env:
        api_key, ids = _seed(env, connections)
        headers = {"Authorization": f"Bearer {api_key}"}
        results: dict[str, dict] = {}
        for label, extra_env in (("cached", {}), ("uncached", {"TOKEN_CACHE_SECONDS": "0"})):
            web, base = env.start_web(name=f"web-{label}", extra_env=extra_env)
            host = base.removeprefix("http://")
            gen = LoadGenerator("127.0.0.1", int(host.rsplit(":", 1)[1]))
            healthz = Request(build_request(host, "/healthz"))
            tokens = [Request(build_request(host, f"/api/v1/connections/{cid}/token", headers)) for cid in ids]
            groups = {"web (gunicorn)": web}
            say(f"  [{label}] warming up…")
            gen.saturate(itertools.cycle(tokens), connections=max(levels), seconds=2.0 if quick else 4.0)
            gen.saturate(itertools.repeat(healthz), connections=max(levels), seconds=1.0)
            runs: dict[str, list[tuple[int, Result, CPUMeter]]] = {"healthz": [], "token": []}
            for level in levels:
                say(f"  [{label}] saturation at {level} connections: /healthz, …/token…")
                for name, stream in (("healthz", itertools.repeat(healthz)), ("token", itertools.cycle(tokens))):
                    if not quick:
                        wait_for_quiet(patience=10.0)
                    meter = CPUMeter(groups).start()
                    result = gen.saturate(stream, connections=level, seconds=seconds)
                    runs[name].append((level, result, meter.stop()))
            by_wrk: dict[str, list[tuple[int, wrk.WrkResult, CPUMeter]]] = {"healthz": [], "token": []}
            if wrk.available():
                paths = {"healthz": ["/healthz"], "token": [f"/api/v1/connections/{cid}/token" for cid in ids]}
                rounds = WRK_ROUNDS if label == "cached" and not quick else 1
                for round_ in range(rounds):
                    for level in levels:
                        say(f"  [{label}] saturation with wrk at {level} connections, round {round_ + 1} of "
                            f"{rounds}: /healthz, …/token…")
                        for name in ("healthz", "token"):
                            if not quick:
                                wait_for_quiet(patience=10.0)
                            meter = CPUMeter(groups).start()
                            done = wrk.saturate(base, paths[name], headers if name == "token" else None,
                                                connections=level, seconds=seconds)
                            by_wrk[name].append((level, done, meter.stop()))
            count = int(rate * paced_seconds)
            paced: dict[str, tuple[Result, CPUMeter]] = {}
            for name, requests_ in (("healthz", [healthz] * count),
                                    ("token", list(itertools.islice(itertools.cycle(tokens), count)))):
                say(f"  [{label}] {name} at {rate:g} req/s offered…")
                if not quick:
                    wait_for_quiet(patience=10.0)
                meter = CPUMeter(groups).start()
                paced[name] = (gen.paced(requests_, rate), meter.stop())
            log = web.output()
            results[label] = {"runs": runs, "wrk": by_wrk, "paced": paced, "tracebacks": log.count("Traceback"),
                              "errors": error_summary(log)}
            web.stop()
        say("  where the CPU goes (in-process, Flask's test client)…")
        diagnosis = _diagnose(env, api_key, ids, 300 if quick else 2000)
        say("  the floor: the token path's required steps, done bare…")
        assert env.runtime is not None
        with env.runtime.db.session() as session:
            token_enc = session.scalar(select(Connection.access_token_enc).where(Connection.id == ids[0]))
        assert token_enc is not None
        floor = floors.token_floor(env.runtime, api_key, token_enc, 300 if quick else 5000)
        kind = env.kind

    section.setup += [
        f"web: `gunicorn -c gunicorn.conf.py -b 127.0.0.1:PORT \"web:create_app()\"` — {conf['workers']} "
        f"processes × {conf['threads']} threads (gthread), access log on (to a file); database: {kind}; "
        "no Celery worker (nothing is due)",
        f"{connections:,} connections of one tenant, tokens expiring in two hours; the token requests cycle "
        "through them with the tenant's API key (each web process keeps a row for TOKEN_CACHE_SECONDS, 30 s "
        "by default, so a row read by a process is reused until then)",
        "load: a Python asyncio generator in the bench process, keep-alive connections over loopback",
        f"saturation: closed loop at {', '.join(map(str, levels))} connections, {seconds:g} s each, `/healthz` "
        "and the token endpoint taking turns at each level; the best level of each is compared",
        f"fixed rate: open loop at {rate:g} req/s for {paced_seconds:g} s, latency from each request's "
        "scheduled start (no coordinated omission)",
        "the same runs again against a gunicorn with TOKEN_CACHE_SECONDS=0 (no in-process caches: the API "
        "key and the connection read from the database on every request)",
        ("saturation with wrk too (`wrk -t 1 -c LEVEL`, a Lua script cycling through the same paths), the tool "
         "the goal was first measured with: C, so it takes far less of the shared cores per request than the "
         "Python generator, and the ratio is the server's. Where wrk is installed, the goal is judged on it, "
         f"{WRK_ROUNDS} rounds at each level against the caching gunicorn, the median run of the best level"
         if wrk.available() else "wrk is not installed (`apt-get install wrk`): saturation measured with the "
         "Python generator alone, and the goal judged on it"),
    ]
    for label, data in results.items():
        runs, paced = data["runs"], data["paced"]
        best = {name: _typical(levels_) for name, levels_ in runs.items()}
        healthz_rate, token_rate = best["healthz"][1].rate, best["token"][1].rate
        ratio = token_rate / healthz_rate if healthz_rate else float("nan")
        p99 = paced["token"][0].percentile(99)
        cached = label == "cached"
        suffix = "" if cached else " — caches off (TOKEN_CACHE_SECONDS=0)"
        by_wrk = data["wrk"]
        judged_here = cached and not by_wrk["token"]
        section.add(f"`/healthz` at saturation{suffix}", f"{per_s(healthz_rate)} ({best['healthz'][0]} connections)")
        section.add(f"`GET …/token` at saturation{suffix}", f"{per_s(token_rate)} ({best['token'][0]} connections)")
        section.add(f"`GET …/token` ÷ `/healthz`{suffix}", f"{ratio:.2f}",
                    f"≥ {THROUGHPUT_GOAL}" if judged_here else "", ratio >= THROUGHPUT_GOAL if judged_here else None,
                    headline="`GET …/token` (not due) ÷ `/healthz`, Python generator" + ("" if cached else
                                                                                        ", caches off"))
        if by_wrk["token"]:
            top = {name: _typical(wrk_levels) for name, wrk_levels in by_wrk.items()}
            wrk_ratio = top["token"][1].rate / top["healthz"][1].rate if top["healthz"][1].rate else float("nan")
            refused = sum(w.non_2xx + w.socket_errors for wrk_levels in by_wrk.values() for _, w, _ in wrk_levels)
            spread = {name: sorted(w.rate for level, w, _ in by_wrk[name] if level == top[name][0]) for name in top}
            section.add(f"wrk: `/healthz` / `GET …/token` at saturation{suffix}",
                        f"{per_s(top['healthz'][1].rate)} ({top['healthz'][0]} connections) / "
                        f"{per_s(top['token'][1].rate)} ({top['token'][0]} connections); {refused} non-2xx or "
                        "socket errors" + ("" if len(spread["token"]) < 2 else
                                           f"; medians of {len(spread['token'])} rounds, which ranged "
                                           + " and ".join(f"{per_s(rates[0])}–{per_s(rates[-1])}"
                                                          for rates in spread.values())))
            section.add(f"wrk: `GET …/token` ÷ `/healthz`{suffix}", f"{wrk_ratio:.2f}",
                        f"≥ {THROUGHPUT_GOAL}" if cached else "", wrk_ratio >= THROUGHPUT_GOAL if cached else None,
                        headline="`GET …/token` (not due) ÷ `/healthz`, wrk" + ("" if cached else ", caches off"))
            for name, wrk_levels in by_wrk.items():
                for level, measured, cpu in wrk_levels:
                    web_ms = cpu.ms_per("web (gunicorn)", measured.rate)
                    section.notes.append(f"[{label}] wrk, {name} at {level} connections: {per_s(measured.rate)}; "
                                         f"web CPU per request {web_ms:.2f} ms; CPU: {cpu.summary()}")
        section.add(f"`GET …/token` p50 / p99 at {rate:g} req/s offered{suffix}",
                    f"{ms(paced['token'][0].percentile(50))} / {ms(p99)}",
                    f"p99 ≤ {P99_GOAL_SECONDS * 1000:.0f} ms" if cached else "",
                    p99 <= P99_GOAL_SECONDS if cached else None,
                    headline=f"`GET …/token` p50 / p99 at {rate:g} req/s" + ("" if cached else ", caches off"))
        section.add(f"`/healthz` p50 / p99 at {rate:g} req/s offered{suffix}",
                    f"{ms(paced['healthz'][0].percentile(50))} / {ms(paced['healthz'][0].percentile(99))}")
        for name, levels_ in runs.items():
            for level, result, cpu in levels_:
                web_ms = cpu.ms_per("web (gunicorn)", result.rate)
                section.notes.append(f"[{label}] {name} at {level} connections: {_describe(result)}; web CPU per "
                                     f"request {web_ms:.2f} ms; CPU: {cpu.summary()}")
        for name, (result, cpu) in paced.items():
            section.notes.append(f"[{label}] {name} at {rate:g} req/s: {_describe(result)}, {result.late_starts} "
                                 f"late starts; CPU: {cpu.summary()}")
        section.notes.append(f"[{label}] tracebacks in the web's log: {data['tracebacks']}; errors: {data['errors']}")
    section.notes.append(
        "In-process, through Flask's test client (no gunicorn, no sockets, one thread): CPU per request "
        + ", ".join(f"{name} {d['cpu_ms']:.3f} ms" for name, d in diagnosis.items())
        + ". By library (CPU-clock profile): "
        + "; ".join(f"{name}: {format_shares(d['shares'])}" for name, d in diagnosis.items()) + ".")
    plain, cached_case = diagnosis["`/healthz`"], diagnosis["`…/token` cached"]
    section.notes.append(
        f"Where the cached token path's CPU goes, by stage (ms per request, from the profile scaled to the "
        f"unprofiled {cached_case['cpu_ms']:.3f} ms; `/healthz` beside it): "
        + "; ".join(f"{stage} {cached_case['stages'][stage]:.3f} (`/healthz` {plain['stages'][stage]:.3f})"
                    for stage in STAGES)
        + f". The token path's difference in the app, {cached_case['cpu_ms'] - plain['cpu_ms']:.3f} ms, is work "
        "`/healthz` does not do: finding the tenant's limit and counting the request, authenticating the key, "
        "reading the cached row, decrypting the token and writing it as JSON.")
    served, source = _served(results["cached"])
    section.notes.append(_outside_the_app(served, source, plain["stages"][APP_STAGE], cached_case["stages"][APP_STAGE]))
    section.notes.append(_floor_note(served["healthz"], source, plain, cached_case, floor))
    section.notes.append(
        "Caveat: the Python load generator runs in the bench process, on the same 2 cores as the server (and "
        "the database and Redis): its figures are the ratio's, not the server's rates (same generator, same "
        "cost per request); wrk's rows take far less of the cores and judge the goal where wrk is installed.")


def _diagnose(env: Environment, api_key: str, ids: list[str], count: int) -> dict[str, dict]:
    """`/healthz` and the token endpoint (caches on, then off) in this process: CPU per request
    (the least of several rounds, the cases taking turns) and where a CPU-clock profile says it goes."""
    from web import create_app

    assert env.runtime is not None
    headers = {"Authorization": f"Bearer {api_key}"}
    cases = {}
    for name, cache_seconds in (("`/healthz`", None), ("`…/token` cached", 60.0), ("`…/token` caches off", 0.0)):
        app = create_app(runtime_=env.runtime)
        updates = app.extensions["updates"]
        updates.connections.ttl = updates.api_keys.ttl = cache_seconds or 0.0
        updates.start(wait=5)
        client = app.test_client()
        if cache_seconds is None:
            def one(connection_id: str, client: FlaskClient = client) -> None:
                assert client.get("/healthz").status_code == 200
        else:
            def one(connection_id: str, client: FlaskClient = client) -> None:
                response = client.get(f"/api/v1/connections/{connection_id}/token", headers=headers)
                assert response.status_code == 200, response.status_code
        cases[name] = one
    results: dict[str, dict] = {}
    picks = list(itertools.islice(itertools.cycle(ids[:100]), count))
    for one in cases.values():
        for connection_id in picks[:200]:
            one(connection_id)
    # The cases take turns, several rounds; each keeps its least disturbed round.
    cpu_ms_of: dict[str, float] = dict.fromkeys(cases, float("inf"))
    for _ in range(DIAGNOSIS_ROUNDS):
        for name, one in cases.items():
            cpu = time.process_time()
            for connection_id in picks:
                one(connection_id)
            cpu_ms_of[name] = min(cpu_ms_of[name], (time.process_time() - cpu) / len(picks) * 1000)
    for name, one in cases.items():
        cpu_ms = cpu_ms_of[name]
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for connection_id in picks:
            one(connection_id)
        profile.disable()
        results[name] = {"cpu_ms": cpu_ms, "shares": profile_shares(profile),
                         "stages": stage_times(profile, STAGES, cpu_ms)}
    return results


def _typical(runs: list[tuple[int, Any, CPUMeter]]) -> tuple[int, Any, CPUMeter]:
    """Of (level, result, CPU) runs, some levels measured in several rounds: the run of median
    rate at the level whose median rate is the highest. wrk's connections land on gunicorn's
    processes as the kernel hands them out, a new draw each run, so one run can be lucky or not."""
    by_level: dict[int, list[tuple[int, Any, CPUMeter]]] = {}
    for run_ in runs:
        by_level.setdefault(run_[0], []).append(run_)
    medians = [sorted(level_runs, key=lambda r: r[1].rate)[(len(level_runs) - 1) // 2]
               for level_runs in by_level.values()]
    return max(medians, key=lambda r: r[1].rate)


def _served(data: dict) -> tuple[dict[str, float], str]:
    """The web's CPU per request under gunicorn, of `/healthz` and of the token path, each at its
    best level (wrk's runs where there are any, the median round), and which load measured it."""
    runs, source = (data["wrk"], ", wrk") if data["wrk"]["token"] else (data["runs"], "")
    served = {}
    for name in ("healthz", "token"):
        _, best, cpu = _typical(runs[name])
        served[name] = cpu.ms_per("web (gunicorn)", best.rate)
    return served, source


def _outside_the_app(served: dict[str, float], source: str, healthz_app_ms: float, token_app_ms: float) -> str:
    """The web's CPU per request under gunicorn split into the Flask app's share (measured in
    process) and the rest."""
    return (f"Per request under gunicorn (caches on, at each endpoint's best level{source}): "
            + "; ".join(f"{label} {total:.2f} ms of the web's CPU: {app:.2f} of it in the Flask app (measured "
                        f"in process), {max(total - app, 0.0):.2f} the rest (gunicorn's HTTP parsing and thread "
                        "hand-offs, the access log line, the kernel)"
                        for label, total, app in (("`/healthz`", served["healthz"], healthz_app_ms),
                                                  ("`GET …/token`", served["token"], token_app_ms)))
            + ".")


def _floor_note(healthz_served_ms: float, source: str, healthz: dict, token: dict, floor: floors.Floor) -> str:
    """The cached token path against its floor (bench/floors.py), with `/healthz` as its
    baseline; flask-limiter's per-tenant check counts without the key's authentication, whose
    required part (the key's hash) is a step of the floor."""
    return str(floors.Verdict(
        "the cached token path", "`/healthz`", healthz["cpu_ms"],
        "flask-limiter's per-tenant check beyond `/healthz`'s (the key's authentication left out)",
        max(token["stages"][LIMITER_STAGE] - token["stages"][AUTH_STAGE] - healthz["stages"][LIMITER_STAGE], 0.0),
        floor, token["cpu_ms"], "the route, the view, the cache lookups", healthz_served_ms,
        f"under gunicorn{source}", THROUGHPUT_GOAL))


def _describe(result: Result) -> str:
    text = (f"{result.completed:,} answers in {result.elapsed:.1f} s = {per_s(result.rate)}, "
            f"p50 {ms(result.percentile(50))}, p99 {ms(result.percentile(99))}, statuses {result.statuses}")
    if result.errors:
        text += f", errors {result.errors}"
    return text
