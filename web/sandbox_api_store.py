"""Redis state of the sandbox's respond.io-like API, under `sandbox:`, beside `web.sandbox_store`.

An organization is one workspace authorized by one client (the grant's `client_id` and
`workspace`): its rate limit, contacts and message ids are its own. Keys: `org:{org}:contacts`
(hash: id → JSON), `org:{org}:index` (hash: `email:…`/`phone:…` → id), `org:{org}:seq` and
`org:{org}:messages` (counters), `rate:{org}:{window}` (requests in a window)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline

from shared.crypto import digest
from web.sandbox_store import API_RATE_LIMIT, API_RATE_WINDOW

# KEYS: access token. ARGV: now (seconds). An unknown, expired or revoked token answers {0, why};
# while the client's `expire_access_tokens` knob is above zero, a valid token is expired now.
_GATE = """
local v = redis.call('GET', KEYS[1])
if not v then return {0, 'the access token is unknown, expired or revoked'} end
local gid, exp = string.match(v, '^(%S+) (%S+)')
local g = redis.call('HMGET', 'sandbox:grant:' .. gid, 'client_id', 'workspace')
if not g[1] then return {0, 'the access token is revoked'} end
if tonumber(exp) <= tonumber(ARGV[1]) then return {0, 'the access token expired'} end
local stats, knobs = 'sandbox:stats:' .. g[1], 'sandbox:knobs:' .. g[1]
redis.call('HINCRBY', stats, 'api_requests', 1)
local k = redis.call('HMGET', knobs, 'expire_access_tokens', 'api_rate_limit', 'api_rate_window')
if tonumber(k[1] or '0') > 0 then
  redis.call('HINCRBY', knobs, 'expire_access_tokens', -1)
  redis.call('HINCRBY', stats, 'api_tokens_expired', 1)
  redis.call('DEL', KEYS[1])
  return {0, 'the access token expired'}
end
return {1, g[1], g[2] or '', k[2] or '', k[3] or ''}
"""


@dataclass(frozen=True)
class Caller:
    """The organization a valid access token speaks for, and its rate limit."""

    client_id: str
    org: str
    rate_limit: int
    rate_window: int


@lru_cache(maxsize=8)
def _gate(client: Redis) -> Any:
    return client.register_script(_GATE)


def authenticate(redis: Redis, token: str, now: float) -> Caller | str:
    """The caller of a bearer token, or why the token is refused."""
    row = _gate(redis)(keys=[f"sandbox:at:{digest(token)}"], args=[int(now)])
    if not row[0]:
        return row[1].decode()
    client_id, workspace, limit, window = (value.decode() for value in row[1:])
    return Caller(client_id=client_id, org=digest(f"{client_id}\n{workspace}")[:32],
                  rate_limit=int(limit or API_RATE_LIMIT), rate_window=int(window or API_RATE_WINDOW))


def over_limit(redis: Redis, caller: Caller, now: float) -> int | None:
    """Count a request in the organization's window: None within the limit, else `Retry-After` seconds."""
    window = int(now // caller.rate_window)
    key = f"sandbox:rate:{caller.org}:{window}"
    pipe = redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, caller.rate_window + 1)
    count, _ = pipe.execute()
    if count <= caller.rate_limit:
        return None
    redis.hincrby(f"sandbox:stats:{caller.client_id}", "api_rate_limited", 1)
    return max(1, math.ceil((window + 1) * caller.rate_window - now))


def scripted_failure(redis: Redis, client_id: str) -> int | None:
    """The next scripted API failure of the client (a status), if any."""
    failure = cast(bytes | None, redis.lpop(f"sandbox:api_fail:{client_id}"))
    if failure is None:
        return None
    redis.hincrby(f"sandbox:stats:{client_id}", "api_failures_injected", 1)
    return int(failure)


# --- contacts ------------------------------------------------------------------------


class Conflict(Exception):
    """The identifier or an email/phone already belongs to another contact."""


def _keys(org: str) -> tuple[str, str, str]:
    return f"sandbox:org:{org}:contacts", f"sandbox:org:{org}:index", f"sandbox:org:{org}:seq"


def find_contact(redis: Redis, org: str, identifier: str) -> dict[str, Any] | None:
    """The contact `id:…`, `email:…` or `phone:…` of the organization."""
    contacts, index, _ = _keys(org)
    kind, _, value = identifier.partition(":")
    if kind == "id":
        contact_id: str | None = value
    else:
        stored_id = cast(bytes | None, redis.hget(index, identifier))
        contact_id = stored_id.decode() if stored_id is not None else None
    raw = cast(bytes | None, redis.hget(contacts, contact_id)) if contact_id else None
    return json.loads(raw) if raw else None


def _index_entries(contact: dict[str, Any]) -> set[str]:
    return {f"{kind}:{contact[kind]}" for kind in ("email", "phone") if contact.get(kind)}


def save_contact(redis: Redis, org: str, identifier: str, fields: dict[str, Any], *, create: bool,
                 now: str) -> dict[str, Any] | None:
    """Create the contact, or update the one found (None when there is none); email and phone stay unique."""
    contacts, index, seq = _keys(org)

    def step(pipe: Pipeline) -> dict[str, Any] | None:
        current = find_contact(pipe, org, identifier)
        if create and current is not None:
            raise Conflict(f"contact {identifier} already exists")
        if not create and current is None:
            return None
        contact = {**(current or {"custom_fields": [], "created_at": now}), **fields}
        for entry in _index_entries(contact) - _index_entries(current or {}):
            if pipe.hexists(index, entry):
                raise Conflict(f"another contact has {entry}")
        contact_id = current["id"] if current else int(cast(bytes | None, pipe.get(seq)) or 0) + 1
        contact["id"] = contact_id
        pipe.multi()
        if not current:
            pipe.set(seq, contact_id)
        stale = _index_entries(current or {}) - _index_entries(contact)
        if stale:
            pipe.hdel(index, *stale)
        for entry in _index_entries(contact):
            pipe.hset(index, entry, str(contact_id))
        pipe.hset(contacts, str(contact_id), json.dumps(contact))
        return contact

    # redis-py types transaction()'s callable as returning None, though value_from_callable
    # hands back what it returns.
    answer = redis.transaction(step, contacts, index, seq, value_from_callable=True)  # type: ignore[arg-type]
    return cast(dict[str, Any] | None, answer)


def list_contacts(redis: Redis, org: str, search: str, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """A page of contacts by id after `after`, those matching `search` only; and whether more follow."""
    needle = search.lower()
    stored = cast(list[bytes], redis.hvals(_keys(org)[0]))
    rows = sorted((json.loads(raw) for raw in stored), key=lambda contact: contact["id"])
    matching = [contact for contact in rows if contact["id"] > after and (not needle or any(
        needle in str(contact.get(name) or "").lower() for name in ("firstName", "lastName", "email", "phone")))]
    return matching[:limit], len(matching) > limit


def next_message_id(redis: Redis, org: str) -> int:
    """A new message id of the organization."""
    return cast(int, redis.incr(f"sandbox:org:{org}:messages"))
