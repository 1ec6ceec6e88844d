"""Searching a running system for secrets: every table, every Redis value (Celery
message bodies decoded) and the processes' logs, in every form a secret travels in."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from sqlalchemy import inspect, text

from tests.integration.stack import Stack

MIN_SECRET_LENGTH = 16  # shorter strings would match by chance


def forms(secret: str) -> set[str]:
    """The secret as it may be written: plain, URL-encoded (path and form style) and base64."""
    return {secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()}


def basic_forms(client_id: str, client_secret: str) -> set[str]:
    """HTTP Basic credentials of a client (RFC 6749 §2.3.1 encodes both halves first)."""
    pairs = {f"{client_id}:{client_secret}", f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}",
             f"{quote_plus(client_id)}:{quote_plus(client_secret)}"}
    return {base64.b64encode(pair.encode()).decode() for pair in pairs}


def kombu_bodies(raw: str) -> list[str]:
    """The decoded bodies of the Celery messages in a Redis value: the broker keeps a
    message's body base64-encoded (queued messages as the envelope, unacked ones as
    [envelope, exchange, routing_key]), so a plain scan would miss what it carries."""
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    found: list[str] = []
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, dict):
            body = item.get("body")
            if isinstance(body, str) and (item.get("properties") or {}).get("body_encoding") == "base64":
                found.append(base64.b64decode(body).decode(errors="replace"))
            todo.extend(v for v in item.values() if isinstance(v, (list, dict)))
    return found


def redis_values(stack: Stack) -> list[str]:
    """Every key and value of the stack's Redis database, Celery message bodies decoded."""
    chunks: list[str] = []
    r = stack.runtime.redis
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        chunks.append(key.decode(errors="replace"))
        values: list[str] = []
        if kind == "string":
            values.append(r.get(key).decode(errors="replace"))
        elif kind == "hash":
            for k, v in r.hgetall(key).items():
                values.extend([k.decode(errors="replace"), v.decode(errors="replace")])
        elif kind == "list":
            values.extend(v.decode(errors="replace") for v in r.lrange(key, 0, -1))
        elif kind in ("set", "zset"):
            members = r.smembers(key) if kind == "set" else r.zrange(key, 0, -1)
            values.extend(m.decode(errors="replace") for m in members)
        elif kind == "stream":
            values.extend(repr(entry) for entry in r.xrange(key))
        for value in values:
            chunks.append(value)
            chunks.extend(kombu_bodies(value))
    return chunks


def database_dump(stack: Stack) -> str:
    """Every value of every column of every table, as one text."""
    chunks: list[str] = []
    with stack.runtime.db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                chunks.extend(str(value) for value in row)
    return "\n".join(chunks)


def everything_stored(stack: Stack) -> str:
    """The database dump and every Redis value, as one text."""
    return "\n".join([database_dump(stack), *redis_values(stack)])


def logs(stack: Stack, names: Iterable[str]) -> str:
    """The output of the named processes, each of which must have written something."""
    by_name = {process.name: process for process in stack.processes}
    texts = []
    for name in names:
        assert name in by_name, f"no process {name!r} was started"
        output = by_name[name].output()
        assert output.strip(), f"the log of {name!r} is empty: a scan of it would prove nothing"
        texts.append(output)
    return "\n".join(texts)


def assert_nowhere(secrets: dict[str, set[str]], places: dict[str, str]) -> None:
    """No form of any secret appears in any place (name → text)."""
    for what, written in secrets.items():
        for form in written:
            assert len(form) >= MIN_SECRET_LENGTH, f"{what} is too short to search for"
            for place, haystack in places.items():
                assert form not in haystack, f"{what} found in {place}"
