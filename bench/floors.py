"""The floors under the hot paths: what each path's required steps cost when done bare.

A step is required when the design or the contract asks for it (the state in Redis, the
attempt's row, the exchange's Celery message, the token decrypted…). Done bare, it runs with
the clients the service itself uses (its Redis client, its database driver, its Celery app,
its Fernet keys) and nothing around them: no Flask, no ORM objects, no task machinery.

A path's floor is then its baseline's own cost (the same app answering `/healthz` or hello
world) plus its required steps at these costs. Where even the floor costs more than a goal
allows, the goal is out of reach with these libraries on this machine; otherwise the distance
between a path and its floor is the time that could still go, and where it goes."""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from shared import pkce
from shared.crypto import digest, new_secret, same
from shared.enums import EventType
from shared.locks import release_refresh_locks, take_refresh_locks
from shared.models import Event, new_id, utcnow
from shared.queue import REFRESH_BATCH
from shared.runtime import Runtime
from shared.tokens import fenced_update_many

SCRATCH_QUEUE = "bench-floor"  # the floors' Celery messages go here, and are purged after


def cpu_ms(step: Callable[[], object], count: int, rounds: int = 3) -> float:
    """CPU per call of `step` (ms): the least of `rounds` rounds of `count` calls, after a warm-up."""
    for _ in range(min(count, 100)):
        step()
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for _ in range(count):
            step()
        best = min(best, (time.process_time() - began) / count * 1000)
    return best


@dataclass
class Floor:
    """A path's required steps and what each costs bare (ms); `aside`: figures shown beside the
    steps, not counted in them."""

    steps: dict[str, float] = field(default_factory=dict)
    aside: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.steps.values())

    def describe(self) -> str:
        text = "; ".join(f"{name} {value:.3f}" for name, value in self.steps.items())
        if self.aside:
            text += " (" + "; ".join(f"{name} {value:.3f}" for name, value in self.aside.items()) + ")"
        return text


class Driver:
    """The database's own driver under the service's engine, one statement a round trip
    (autocommit), `?` marking the parameters whatever the driver's style."""

    def __init__(self, engine: Engine) -> None:
        self._raw = engine.raw_connection()
        self._connection: Any = self._raw.driver_connection
        assert self._connection is not None
        self._postgres = engine.dialect.name == "postgresql"
        if self._postgres:
            self._connection.autocommit = True
        else:
            self._connection.isolation_level = None  # sqlite3: each statement commits

    def run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql.replace("?", "%s") if self._postgres else sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def close(self) -> None:
        self._raw.invalidate()  # its autocommit setting must not go back to the pool


def _sealed(rt: Runtime, value: dict[str, Any]) -> str:
    return rt.cipher.encrypt(json.dumps(value))


def _keys(prefix: str) -> Iterator[str]:
    while True:
        yield f"{prefix}{secrets.token_hex(8)}"


def connect_floor(rt: Runtime, link_hash: str, count: int) -> Floor:
    """`GET /connect/{token}`'s required steps: find the link by its hash, make the state, the
    PKCE pair and the browser binding, keep the state in Redis (sealed, SET NX EX), and build the
    authorize URL."""
    driver = Driver(rt.db.engine)
    names = _keys("bench-floor:state:")
    try:
        steps = {
            "the link's row (one SELECT by its hash)": lambda: driver.run(
                "SELECT id, integration_id, expires_at, used_at FROM connect_sessions WHERE token_hash = ?",
                (link_hash,)),
            "state, PKCE pair, browser binding and its hash": lambda: (
                new_secret(32), pkce.s256_challenge(pkce.new_verifier()), digest(new_secret(24))),
            "the state into Redis (JSON, Fernet, SET NX EX)": lambda: rt.redis.set(
                next(names), _sealed(rt, {"session_id": "cs_x", "integration_id": "int_x",
                                          "code_verifier": "v" * 64, "binding_hash": "h" * 64}), nx=True, ex=600),
            "the authorize URL": lambda: "https://provider.example/authorize?" + urlencode({
                "response_type": "code", "client_id": "client", "redirect_uri": "https://keeper.example/oauth/callback",
                "scope": "contact:read contact:write", "state": "s" * 43, "code_challenge": "c" * 43,
                "code_challenge_method": "S256"}),
        }
        return Floor({name: cpu_ms(step, count) for name, step in steps.items()})
    finally:
        driver.close()
        _clear(rt, "bench-floor:state:*")


def callback_floor(rt: Runtime, session_id: str, count: int) -> Floor:
    """`GET /oauth/callback`'s required steps: take the state (GETDEL, open it), check the
    browser binding in constant time, keep the code in Redis (sealed), write the attempt's row
    and send the exchange's Celery message. Beside them: Redis's own LPUSH of a message that size."""
    driver = Driver(rt.db.engine)
    sealed_state = _sealed(rt, {"session_id": session_id, "integration_id": "int_x", "code_verifier": "v" * 64,
                                "binding_hash": "h" * 64})
    taken = [f"bench-floor:state:{i}" for i in range(4 * count + 100)]
    for start in range(0, len(taken), 1000):
        rt.redis.mset(dict.fromkeys(taken[start:start + 1000], sealed_state))
    to_take = iter(taken)
    codes = _keys("bench-floor:code:")
    binding = new_secret(24)
    bound = digest(binding)
    message = json.dumps({"body": "x" * 400, "headers": {"task": "connect.exchange_code", "id": new_id("t")}})

    def take_state() -> object:
        raw = rt.redis.getdel(next(to_take))
        return json.loads(rt.cipher.decrypt(raw.decode() if isinstance(raw, bytes) else str(raw)))

    try:
        steps = {
            "the state out of Redis (GETDEL, Fernet, JSON)": take_state,
            "the browser binding, compared in constant time": lambda: same(digest(binding), bound),
            "the code into Redis (JSON, Fernet, SET EX)": lambda: rt.redis.set(
                next(codes), _sealed(rt, {"code": "c" * 32, "verifier": "v" * 64}), ex=600),
            "the attempt's row (one INSERT)": lambda: driver.run(
                "INSERT INTO connect_attempts (id, session_id, status, created_at) VALUES (?, ?, ?, ?)",
                (new_id("att"), session_id, "pending", utcnow())),
            "the exchange's message (Celery's send_task)": lambda: rt.celery.send_task(
                "connect.exchange_code", args=[new_id("att")], queue=SCRATCH_QUEUE, ignore_result=True, declare=()),
        }
        floor = Floor({name: cpu_ms(step, count) for name, step in steps.items()})
        floor.aside["of the message, Redis's own LPUSH of one that size"] = cpu_ms(
            lambda: rt.redis.lpush(SCRATCH_QUEUE, message), count)
        return floor
    finally:
        driver.close()
        rt.redis.delete(SCRATCH_QUEUE)
        _clear(rt, "bench-floor:*")


def token_floor(rt: Runtime, api_key: str, token_enc: str, count: int) -> Floor:
    """`GET …/token`'s required steps beyond flask-limiter's check: hash the API key (the
    cache is keyed by the hash), decrypt the token (the cache holds rows as stored) and write
    the answer as JSON."""
    answer = {"access_token": rt.cipher.decrypt(token_enc), "token_type": "Bearer",
              "expires_at": "2026-01-01T00:00:00Z", "scopes": ["contact:read", "contact:write"]}
    steps = {
        "the API key's SHA-256": lambda: digest(api_key),
        "Fernet decryption of the token": lambda: rt.cipher.decrypt(token_enc),
        "the answer's JSON": lambda: json.dumps(answer, separators=(",", ":")),
    }
    return Floor({name: cpu_ms(step, count) for name, step in steps.items()})


def refresh_floor(rt: Runtime, driver: Driver, connection_ids: list[str], chunk: int) -> int:
    """What a refresh costs the service beyond its provider call, done bare, a chunk of `chunk`
    connections at a time: the chunk's Celery message, its locks (one script call), its rows
    (one SELECT, the driver alone), the refresh token decrypted and the new pair encrypted, the
    fenced write and the `refreshed` events (one transaction), the locks released (one script
    call). New tokens stand in for the provider's answers. Answers how many connections were
    written; the caller meters the CPU (this process, the database, Redis), with the driver open
    before and closed after, so that no database process comes or goes while it meters."""
    written = 0
    try:
        for start in range(0, len(connection_ids), chunk):
            ids = connection_ids[start:start + chunk]
            rt.celery.send_task(REFRESH_BATCH, args=[ids], queue=SCRATCH_QUEUE, ignore_result=True, declare=())
            held = take_refresh_locks(rt.redis, ids, rt.settings.refresh_lock_ttl)
            rows = driver.run("SELECT c.id, c.version, c.tenant_id, c.refresh_token_enc, i.token_url "
                              "FROM connections c JOIN integrations i ON i.id = c.integration_id "
                              f"WHERE c.id IN ({', '.join('?' * len(ids))})", tuple(ids))
            now = utcnow()
            writes = []
            for row in rows:
                rt.cipher.decrypt(row[3])  # what the provider call would post
                writes.append((row[0], row[1], {
                    "access_token_enc": rt.cipher.encrypt(new_secret(32)),
                    "refresh_token_enc": rt.cipher.encrypt(new_secret(32)),
                    "expires_at": now + timedelta(hours=1), "last_refreshed_at": now, "updated_at": now}))
            with rt.db.session() as session:
                done = fenced_update_many(session, writes)
                session.execute(insert(Event.__table__), [
                    {"id": new_id("evt"), "connection_id": row[0], "tenant_id": row[2], "type": EventType.REFRESHED,
                     "error": None, "created_at": now} for row in rows if row[0] in done])
            release_refresh_locks(rt.redis, held)
            written += len(done)
        return written
    finally:
        rt.redis.delete(SCRATCH_QUEUE)


def ratio_ceiling(baseline_ms: float, extra_ms: float) -> float:
    """The highest throughput ratio to the baseline a path can reach when CPU-bound, if it
    costs the baseline's CPU per request plus `extra_ms`: the baseline's cost ÷ the path's."""
    return baseline_ms / max(baseline_ms + extra_ms, 1e-9)


@dataclass
class Verdict:
    """A web path against its floor: the baseline route's CPU in process, plus the part of
    flask-limiter's check the baseline does not pay, plus the required steps done bare; and the
    throughput ratio to the baseline reachable at that floor."""

    path: str
    baseline: str
    baseline_ms: float  # the baseline's CPU per request in process
    check: str  # which part of flask-limiter's check the path pays beyond the baseline
    check_ms: float
    floor: Floor
    measured_ms: float  # the path's CPU per request in process
    above: str  # what lies between the floor and the path as built
    served_ms: float  # the baseline's web CPU per request under gunicorn
    served: str  # how that was measured
    goal: float

    def __str__(self) -> str:
        extra = self.check_ms + self.floor.total
        at_floor = self.baseline_ms + extra
        ceiling = ratio_ceiling(self.served_ms, extra)
        return (f"The floor of {self.path} (bench/floors.py; ms of CPU per request, in process): `/healthz` "
                f"{self.baseline_ms:.3f}, {self.check} {self.check_ms:.3f}, and its required steps done bare, "
                f"{self.floor.total:.3f}: {self.floor.describe()}. That is {at_floor:.3f} ms against the "
                f"{self.measured_ms:.3f} ms it costs, so {max(self.measured_ms - at_floor, 0.0):.3f} ms is above the "
                f"floor ({self.above}). At the floor, and even if its extra {extra:.3f} ms cost no more under gunicorn "
                f"than in process, the ratio to {self.baseline} (web CPU {self.served_ms:.2f} ms a request "
                f"{self.served}) is at most {ceiling:.2f}: the goal of {self.goal} is "
                + ("out of reach with these libraries on this machine." if ceiling < self.goal
                   else "within reach of the floor, not of the path as built."))


def _clear(rt: Runtime, pattern: str) -> None:
    keys = list(rt.redis.scan_iter(match=pattern, count=1000))
    for start in range(0, len(keys), 1000):
        rt.redis.delete(*keys[start:start + 1000])
