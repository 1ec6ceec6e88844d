"""Benchmark 1: the connect flow's two browser endpoints beside a hello-world route.

One gunicorn, started exactly as production starts it (`-c gunicorn.conf.py`, only bound to
loopback), serves `bench.hello:create_app()`: the web app plus `GET /bench/hello`. Connect
sessions are inserted directly before the timed part. `GET /connect/{token}` answers 302 with
the state in its Location and the binding cookie; those feed `GET /oauth/callback`, which
consumes the state, writes an attempt and enqueues `connect.exchange_code` (no worker runs: the
messages wait in Redis and are purged afterwards).
"""
from __future__ import annotations

import cProfile
import itertools
import runpy
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy import insert, select

from bench import floors
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
from shared.crypto import digest, new_secret
from shared.models import ConnectSession, Integration, new_id, utcnow
from shared.tenants import create_tenant

TITLE = "Connect flow endpoints vs hello world"
THROUGHPUT_GOAL = 0.5  # of hello world
P99_GOAL_SECONDS = 0.025  # at the fixed offered rate
LIMITER_STAGE = "flask-limiter's check"
# The stages of the two endpoints, each the cumulative time of the function that is the stage.
STAGES = {
    "the Flask app (the whole request but the test client)": ("flask/app.py", "wsgi_app"),
    LIMITER_STAGE: ("flask_limiter/_extension.py", "_check_request_limit"),
    "the connect view": ("web/connect.py", "start"),
    "the callback's view": ("web/connect.py", "callback"),
    "SQL statements (SQLAlchemy, the driver, the round trips)": ("sqlalchemy/engine/base.py", "execute"),
    "into Redis, encrypted (the state; in the callback, the code)": ("shared/nonces.py", "put"),
    "the state out of Redis, decrypted": ("shared/nonces.py", "consume"),
    "PKCE verifier and challenge": ("shared/pkce.py", "s256_challenge"),
    "the authorize URL": ("shared/providers.py", "build_authorize_url"),
    "the exchange's Celery message": ("celery/app/base.py", "send_task"),
}


def _gunicorn_sizing() -> tuple[int, int]:
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return int(conf["workers"]), int(conf["threads"])


def _insert_sessions(env: Environment, tenant_id: str, integration_id: str, count: int) -> list[str]:
    """`count` fresh connect links; answers their tokens."""
    tokens = [new_secret(32) for _ in range(count)]
    expires = utcnow() + timedelta(minutes=30)
    now = utcnow()
    rows = [{"id": new_id("cs"), "tenant_id": tenant_id, "integration_id": integration_id,
             "end_user_id": f"bench-user-{i}", "token_hash": digest(token), "expires_at": expires,
             "created_at": now} for i, token in enumerate(tokens)]
    assert env.runtime is not None
    with env.runtime.db.session() as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(ConnectSession), rows[start:start + 5000])
    return tokens


def _callbacks(host: str, issuer: str, captured: list[tuple[object, int, dict[str, str]]]) -> list[Request]:
    """One valid callback request per 302 of /connect/{token}: its state, a code, `iss`, and the
    binding cookie that response set."""
    requests_: list[Request] = []
    iss = quote(issuer, safe="")
    for _, status, headers in captured:
        if status != 302:
            continue
        state = parse_qs(urlsplit(headers["location"]).query)["state"][0]
        cookie = next(part.split(";", 1)[0] for part in headers["set-cookie"].split("\n")
                      if part.startswith("connect_binding="))
        path = f"/oauth/callback?state={quote(state, safe='')}&code={new_secret(24)}&iss={iss}"
        requests_.append(Request(build_request(host, path, {"Cookie": cookie})))
    return requests_


@dataclass
class Endpoint:
    """What was measured of one endpoint."""

    label: str
    expected: int
    levels: list[tuple[int, Result, CPUMeter]] = field(default_factory=list)
    paced: Result | None = None
    paced_cpu: CPUMeter | None = None

    @property
    def best(self) -> tuple[int, Result, CPUMeter]:
        return max(self.levels, key=lambda level: level[1].rate)


def run(section: Section, quick: bool = False, levels: tuple[int, ...] = (4, 16, 64),
        rate: float = 300.0, database: str | None = None) -> None:
    seconds = 2.0 if quick else 8.0
    paced_seconds = 3.0 if quick else 10.0
    warmup = 1.0 if quick else 2.0
    workers, threads = _gunicorn_sizing()
    with Environment("connect", database=database) as env:
        rt = env.runtime
        assert rt is not None
        web, base = env.start_web(app="bench.hello:create_app()")
        host = base.removeprefix("http://")
        port = int(host.rsplit(":", 1)[1])
        issuer = f"{base}/sandbox"
        with rt.db.session() as session:
            tenant, _ = create_tenant(session, "bench")
            integration = Integration(
                tenant_id=tenant.id, provider="sandbox", client_id="sbx_bench",
                client_secret_enc=rt.cipher.encrypt(new_secret(32)), scopes=["contact:read", "message:write"],
                authorize_url=f"{issuer}/oauth/authorize", token_url=f"{issuer}/oauth/token",
                revoke_url=f"{issuer}/oauth/revoke", issuer=issuer, pkce=True)
            session.add(integration)
            session.flush()
            tenant_id, integration_id = tenant.id, integration.id

        section.setup += [
            f"web: `gunicorn -c gunicorn.conf.py -b 127.0.0.1:PORT \"bench.hello:create_app()\"` — "
            f"{workers} processes × {threads} threads (gthread), access log on (to a file)",
            f"database: {env.kind}; Redis db {env.redis_url.rsplit('/', 1)[1]}; no Celery worker runs "
            "(the callbacks' `connect.exchange_code` messages queue up and are purged after)",
            "load: a Python asyncio generator in the bench process, keep-alive connections over loopback",
            f"saturation: closed loop at {', '.join(map(str, levels))} connections, {seconds:g} s each "
            f"after a {warmup:g} s warm-up, the three endpoints taking turns at each level (each run "
            "after waiting up to 10 s for other programs to quiet down); the best level is reported "
            "(all levels in the notes)",
            f"fixed rate: open loop at {rate:g} req/s for {paced_seconds:g} s, latency counted from each "
            "request's scheduled start (no coordinated omission)",
        ]

        hello = Request(build_request(host, "/bench/hello"))
        gen = LoadGenerator("127.0.0.1", port, capture=("location", "set-cookie"))
        groups = {"web (gunicorn)": web}

        def quiet() -> None:
            if not quick:
                wait_for_quiet(patience=10.0)

        def measure(endpoint: Endpoint, level: int, requests_: Iterable[Request], keep: bool = False) -> list:
            quiet()
            meter = CPUMeter(groups).start()
            result = gen.saturate(requests_, connections=level, seconds=seconds, keep=keep)
            endpoint.levels.append((level, result, meter.stop()))
            captured, result.captured = result.captured, []
            return captured

        def paced(endpoint: Endpoint, requests_: list[Request], keep: bool = False) -> Result:
            meter = CPUMeter(groups).start()
            endpoint.paced = gen.paced(requests_, rate, keep=keep)
            endpoint.paced_cpu = meter.stop()
            return endpoint.paced

        hello_ep = Endpoint("hello world `GET /bench/hello`", 200)
        connect_ep = Endpoint("`GET /connect/{token}`", 302)
        callback_ep = Endpoint("`GET /oauth/callback`", 303)

        say("  warming up…")
        warm_hello = gen.saturate(itertools.repeat(hello), connections=max(levels), seconds=warmup)
        # Enough links for the warm-up, every saturation level (even at hello world's rate) and
        # the paced run; a run stops early if it ever runs out.
        count = int(rate * paced_seconds)
        needed = min(int(warm_hello.rate * (seconds * len(levels) + warmup)), 150_000) + count + 500
        say(f"  inserting {needed:,} connect sessions…")
        tokens = iter(_insert_sessions(env, tenant_id, integration_id, needed))

        def connect_requests() -> Iterator[Request]:
            for token in tokens:
                yield Request(build_request(host, f"/connect/{token}"))

        warm = gen.saturate(connect_requests(), connections=max(levels), seconds=warmup, keep=True)
        # States (with their cookies) from /connect, oldest first, for the callbacks.
        states: deque[Request] = deque(_callbacks(host, issuer, warm.captured))

        def callback_requests() -> Iterator[Request]:
            while states:
                yield states.popleft()

        # The three endpoints take turns at each level, so that each comparison is made
        # under the same conditions of the machine.
        for level in levels:
            say(f"  saturation at {level} connections: hello world, /connect/{{token}}, /oauth/callback…")
            measure(hello_ep, level, itertools.repeat(hello))
            states.extend(_callbacks(host, issuer, measure(connect_ep, level, connect_requests(), keep=True)))
            measure(callback_ep, level, callback_requests())

        say(f"  fixed offered rate {rate:g}/s…")
        quiet()
        paced(hello_ep, [hello] * count)
        quiet()
        connect_paced = paced(connect_ep, list(itertools.islice(connect_requests(), count)), keep=True)
        quiet()
        paced(callback_ep, _callbacks(host, issuer, connect_paced.captured))

        say("  where the CPU goes (in-process, Flask's test client)…")
        diagnosis = _diagnose(env, tenant_id, integration_id, issuer, 100 if quick else 300)
        say("  the floors: each endpoint's required steps, done bare…")
        link_hash = digest(_insert_sessions(env, tenant_id, integration_id, 1)[0])
        with rt.db.session() as session:
            session_id = session.scalar(select(ConnectSession.id).where(ConnectSession.token_hash == link_hash))
        assert session_id is not None
        floor_count = 300 if quick else 2000
        floor_of = {"connect": floors.connect_floor(rt, link_hash, floor_count),
                    "callback": floors.callback_floor(rt, session_id, floor_count)}
        log = web.output()
        tracebacks, errors = log.count("Traceback"), error_summary(log)
        queued = rt.redis.llen("celery")
        rt.redis.delete("celery")
        kind = env.kind

    hello_rate = hello_ep.best[1].rate
    for endpoint in (hello_ep, connect_ep, callback_ep):
        is_hello = endpoint is hello_ep
        level, sat, meter = endpoint.best
        section.add(f"{endpoint.label}: throughput at saturation", f"{per_s(sat.rate)} ({level} connections)")
        if not is_hello:
            ratio = sat.rate / hello_rate if hello_rate else float("nan")
            section.add(f"{endpoint.label}: ratio to hello world", f"{ratio:.2f}", f"≥ {THROUGHPUT_GOAL}",
                        ratio >= THROUGHPUT_GOAL, headline=f"{endpoint.label} ÷ hello world")
        section.add(f"{endpoint.label}: p50 / p99 at saturation",
                    f"{ms(sat.percentile(50))} / {ms(sat.percentile(99))}")
        assert endpoint.paced is not None and endpoint.paced_cpu is not None
        p99 = endpoint.paced.percentile(99)
        section.add(f"{endpoint.label}: p50 / p99 at {rate:g} req/s offered",
                    f"{ms(endpoint.paced.percentile(50))} / {ms(p99)}",
                    "" if is_hello else f"p99 ≤ {P99_GOAL_SECONDS * 1000:.0f} ms",
                    None if is_hello else p99 <= P99_GOAL_SECONDS)
        for level, result, cpu in endpoint.levels:
            web_ms = cpu.ms_per("web (gunicorn)", result.rate)
            section.notes.append(f"{endpoint.label} at {level} connections: {_describe(result, endpoint.expected)}; "
                                 f"web CPU per request {web_ms:.2f} ms; CPU: {cpu.summary()}")
        section.notes.append(f"{endpoint.label} at {rate:g} req/s: {_describe(endpoint.paced, endpoint.expected)}, "
                             f"{endpoint.paced.late_starts} late starts; CPU: {endpoint.paced_cpu.summary()}")
    section.notes.append(
        "In-process, through Flask's test client (no gunicorn, no sockets, one thread): CPU per request "
        f"`/connect/{{token}}` {diagnosis['connect']['cpu_ms']:.2f} ms, `/oauth/callback` "
        f"{diagnosis['callback']['cpu_ms']:.2f} ms, `/healthz` {diagnosis['healthz']['cpu_ms']:.2f} ms. "
        f"By library (CPU-clock profile): `/connect/{{token}}`: {format_shares(diagnosis['connect']['shares'])}; "
        f"`/oauth/callback`: {format_shares(diagnosis['callback']['shares'])}.")
    for name, label in (("connect", "`/connect/{token}`"), ("callback", "`/oauth/callback`")):
        stages = diagnosis[name]["stages"]
        section.notes.append(
            f"Where {label}'s CPU goes, by stage (ms per request, from the profile scaled to the unprofiled "
            f"{diagnosis[name]['cpu_ms']:.2f} ms; `/healthz` {diagnosis['healthz']['cpu_ms']:.2f} ms): "
            + "; ".join(f"{stage} {stages[stage]:.2f}" for stage in STAGES if stages[stage] >= 0.005) + ".")
    hello_ms = hello_ep.best[2].ms_per("web (gunicorn)", hello_rate)
    for name, label in (("connect", "`/connect/{token}`"), ("callback", "`/oauth/callback`")):
        section.notes.append(_floor_note(label, floor_of[name], diagnosis[name], diagnosis["healthz"], hello_ms))
    section.notes.append(f"Tracebacks in the web's log over the whole run: {tracebacks}; errors: {errors}.")
    section.notes.append(f"{queued:,} `connect.exchange_code` messages were left queued by the callbacks "
                         "and purged.")
    section.notes.append(
        "Caveat: the load generator is Python in the bench process, on the same 2 cores as the server "
        "(and PostgreSQL and Redis): its share is the `bench (this process)` CPU figure. Throughput is "
        "a lower bound of what the server would do alone; the ratio to hello world (same generator, "
        "same cost per request) is the fairer figure.")
    if kind == "sqlite" and database != "sqlite":
        section.notes.append("The database was SQLite (no PostgreSQL answered): production runs PostgreSQL.")


def _floor_note(label: str, floor: floors.Floor, measured: dict, healthz: dict, hello_ms: float) -> str:
    """The endpoint against its floor (bench/floors.py), with `/healthz` as its baseline in
    process and hello world under gunicorn."""
    return str(floors.Verdict(
        label, "hello world", healthz["cpu_ms"], "flask-limiter's per-address check beyond `/healthz`'s",
        max(measured["stages"][LIMITER_STAGE] - healthz["stages"][LIMITER_STAGE], 0.0), floor, measured["cpu_ms"],
        "Flask's routing, arguments, cookies and response, SQLAlchemy, the stores' wrappers", hello_ms,
        "under gunicorn", THROUGHPUT_GOAL))


def _diagnose(env: Environment, tenant_id: str, integration_id: str, issuer: str, count: int) -> dict[str, dict]:
    """Each endpoint in this process through Flask's test client (no gunicorn, no network):
    CPU per request, and where a CPU-clock profile says it goes."""
    from web import create_app

    assert env.runtime is not None
    app = create_app(runtime_=env.runtime)
    client = app.test_client()
    tokens = _insert_sessions(env, tenant_id, integration_id, 2 * count + 40)
    iss = quote(issuer, safe="")

    def connect(token: str) -> str:
        response = client.get(f"/connect/{token}")
        assert response.status_code == 302, response.status_code
        return parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]

    def callback(state: str) -> None:
        response = client.get(f"/oauth/callback?state={quote(state, safe='')}&code={new_secret(24)}&iss={iss}")
        assert response.status_code == 303, response.status_code

    def hello() -> None:
        assert client.get("/healthz").status_code == 200

    for token in tokens[:20]:
        callback(connect(token))
    timed, profiled = tokens[20:20 + count], tokens[20 + count:]
    results: dict[str, dict] = {}
    inputs: Sequence[str | None]
    more: Sequence[str | None]
    for name, steps in (("connect", connect), ("callback", callback), ("healthz", hello)):
        if name == "connect":
            inputs, more = timed, profiled
        elif name == "callback":
            inputs, more = results["connect"]["outputs"], results["connect"]["more_outputs"]
        else:
            inputs, more = [None] * count, [None] * count
        cpu = time.process_time()
        outputs = [steps(item) if item is not None else steps() for item in inputs]  # type: ignore[call-arg]
        cpu_ms = (time.process_time() - cpu) / len(inputs) * 1000
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        more_outputs = [steps(item) if item is not None else steps() for item in more]  # type: ignore[call-arg]
        profile.disable()
        results[name] = {"cpu_ms": cpu_ms, "shares": profile_shares(profile), "outputs": outputs,
                         "stages": stage_times(profile, STAGES, cpu_ms),
                         "more_outputs": more_outputs}
    return results


def _describe(result: Result, expected: int) -> str:
    other = {status: n for status, n in result.statuses.items() if status != expected}
    text = (f"{result.completed:,} answers in {result.elapsed:.1f} s = {per_s(result.rate)}, "
            f"p50 {ms(result.percentile(50))}, p99 {ms(result.percentile(99))}, "
            f"{result.ok(expected):,} × {expected}")
    if other:
        text += f", other statuses {other}"
    if result.errors:
        text += f", errors {result.errors}"
    return text + f", {result.connections_opened} connections opened"
