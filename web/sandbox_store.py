"""Redis state of the sandbox provider, all under `sandbox:`; every transition is one atomic step.

Keys: `client:{id}` (hash: secret digest, redirect URIs, TTL), `knobs:{id}` (hash), `fail:{id}` (list),
`api_fail:{id}` (list), `stats:{id}` (hash), `code:{digest}` (hash, 60 s), `used:{digest}` (grant id the code made),
`grant:{id}` (hash: client_id, scope, workspace), `at:{digest}` ("grant exp"), `rt:{digest}` (grant id,
or "!grant" once spent). Tokens are valid only while their grant exists, so revoking a grant is one DEL.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

from redis import Redis

from shared.crypto import digest, new_secret

CODE_TTL_SECONDS = 60
USED_CODE_TTL_SECONDS = 600
REFRESH_TTL_SECONDS = 30 * 86400
DEFAULT_ACCESS_TTL = 3600
FAILURES = ("500", "502", "503", "429", "timeout", "invalid_grant", "unauthorized_client")
# Caps on the fault knobs, so a script cannot tie up the web's threads for long.
MAX_LATENCY_MS = 30_000
MAX_TIMEOUT_SECONDS = 60
MAX_RETRY_AFTER = 3600
MAX_ACCESS_TTL = 30 * 24 * 3600
MAX_SCRIPTED_FAILURES = 1000
MAX_REDIRECT_URIS = 20
API_FAILURES = ("500", "502", "503")
# The sandbox API's default limit per organization, in requests per window of seconds.
API_RATE_LIMIT, API_RATE_WINDOW = 100, 1

_REVOKE = """
local function revoke(gid)
  local gk = 'sandbox:grant:' .. gid
  local cid = redis.call('HGET', gk, 'client_id')
  if cid then
    redis.call('DEL', gk)
    redis.call('HINCRBY', 'sandbox:stats:' .. cid, 'grants_revoked', 1)
  end
end
local function issue(gid, at, rt, exp, ttl, refresh_ttl)
  redis.call('EXPIRE', 'sandbox:grant:' .. gid, refresh_ttl)
  if rt ~= '' then redis.call('SET', 'sandbox:rt:' .. rt, gid, 'EX', refresh_ttl) end
  redis.call('SET', 'sandbox:at:' .. at, gid .. ' ' .. exp, 'EX', ttl)
end
"""

# KEYS: client, knobs, fail, stats. ARGV: secret digest, grant type ('' = neither count nor inject).
_AUTHENTICATE = """
local c = redis.call('HMGET', KEYS[1], 'secret', 'access_token_ttl')
if c[1] ~= ARGV[1] then return false end
local k = redis.call('HMGET', KEYS[2], 'latency_ms', 'access_token_ttl', 'retry_after', 'timeout_seconds',
                     'rotate_refresh_tokens')
local fail = false
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[4], 'token_requests:' .. ARGV[2], 1)
  fail = redis.call('LPOP', KEYS[3])
  if fail then redis.call('HINCRBY', KEYS[4], 'failures_injected', 1) end
end
return {c[2], k[1], k[2], k[3], k[4], fail, k[5]}
"""

# KEYS: code, used. ARGV: client_id, redirect_uri, challenge, gid, at, rt, exp, ttl, refresh_ttl, used_ttl.
_EXCHANGE = _REVOKE + """
local c = redis.call('HMGET', KEYS[1], 'client_id', 'redirect_uri', 'challenge', 'scope', 'workspace')
if not c[1] then
  local g = redis.call('GET', KEYS[2])
  if g then revoke(g); return {0, 'code was already used; its grant is revoked'} end
  return {0, 'code is unknown or expired'}
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[10])
if c[1] ~= ARGV[1] then return {0, 'code was issued to another client'} end
if c[2] ~= ARGV[2] then return {0, 'redirect_uri does not match the authorization request'} end
if c[3] ~= ARGV[3] then return {0, 'code_verifier does not match the code_challenge'} end
redis.call('HSET', 'sandbox:grant:' .. ARGV[4], 'client_id', c[1], 'scope', c[4], 'workspace', c[5])
issue(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return {1, c[4]}
"""

# KEYS: refresh token. ARGV: client_id, at, rt ('' = keep the presented one), exp, ttl, refresh_ttl.
_REFRESH = _REVOKE + """
local v = redis.call('GET', KEYS[1])
if not v then return {0, 'refresh token is unknown or expired'} end
if string.sub(v, 1, 1) == '!' then
  revoke(string.sub(v, 2))
  return {0, 'refresh token was already used; its grant is revoked'}
end
local g = redis.call('HMGET', 'sandbox:grant:' .. v, 'client_id', 'scope')
if not g[1] then return {0, 'grant is revoked'} end
if g[1] ~= ARGV[1] then return {0, 'refresh token was issued to another client'} end
if ARGV[3] ~= '' then redis.call('SET', KEYS[1], '!' .. v, 'KEEPTTL') end
issue(v, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('HINCRBY', 'sandbox:stats:' .. ARGV[1], 'refresh_success', 1)
return {1, g[2]}
"""

# KEYS: access token, refresh token, stats. ARGV: client_id.
_REVOKE_TOKEN = _REVOKE + """
redis.call('HINCRBY', KEYS[3], 'revocations', 1)
local v = redis.call('GET', KEYS[2])
if v then
  if string.sub(v, 1, 1) == '!' then v = string.sub(v, 2) end
  if redis.call('HGET', 'sandbox:grant:' .. v, 'client_id') == ARGV[1] then revoke(v) end
  return 1
end
local a = redis.call('GET', KEYS[1])
if a and redis.call('HGET', 'sandbox:grant:' .. string.match(a, '^%S+'), 'client_id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""


@dataclass(frozen=True)
class TokenContext:
    """An authenticated client and its knobs, for one token-endpoint request."""

    client_id: str
    access_ttl: int
    latency_ms: int
    retry_after: int
    timeout_seconds: float
    failure: str | None
    rotate_refresh_tokens: bool = True


@lru_cache(maxsize=8)
def _scripts(client: Redis) -> dict[str, Any]:
    return {name: client.register_script(src) for name, src in (
        ("authenticate", _AUTHENTICATE), ("exchange", _EXCHANGE), ("refresh", _REFRESH),
        ("revoke", _REVOKE_TOKEN))}


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _check_redirect_uri(uri: object) -> str:
    parts = urlsplit(uri) if isinstance(uri, str) else None
    if not parts or parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"redirect URI {uri!r} must be an absolute http(s) URL without a fragment")
    return uri  # type: ignore[return-value]


def _positive_int(value: object, name: str, minimum: int = 1, maximum: int = MAX_ACCESS_TTL) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an integer between {minimum} and {maximum}")
    return value


def register_client(redis: Redis, redirect_uris: list[str], access_token_ttl: int | None = None) -> dict:
    """Register a client; answer its id, its secret (shown once, stored as a digest) and redirect URIs."""
    if not isinstance(redirect_uris, list) or not 0 < len(redirect_uris) <= MAX_REDIRECT_URIS:
        raise ValueError(f"redirect_uris must be a list of 1 to {MAX_REDIRECT_URIS} URIs")
    uris = [_check_redirect_uri(uri) for uri in redirect_uris]
    client_id, secret = f"sbx_{new_secret(12)}", new_secret(32)
    record = {"secret": digest(secret), "redirect_uris": json.dumps(uris)}
    if access_token_ttl is not None:
        record["access_token_ttl"] = str(_positive_int(access_token_ttl, "access_token_ttl"))
    redis.hset(f"sandbox:client:{client_id}", mapping=record)
    return {"client_id": client_id, "client_secret": secret, "redirect_uris": uris}


def redirect_uris(redis: Redis, client_id: str) -> list[str] | None:
    """The client's registered redirect URIs, or None for an unknown client."""
    raw = cast(bytes | None, redis.hget(f"sandbox:client:{client_id}", "redirect_uris"))
    return json.loads(raw) if raw is not None else None


def authenticate(redis: Redis, client_id: str, secret: str, grant_type: str = "") -> TokenContext | None:
    """Check the client's secret; for a grant, count the request and take the next scripted failure."""
    keys = [f"sandbox:{kind}:{client_id}" for kind in ("client", "knobs", "fail", "stats")]
    row = _scripts(redis)["authenticate"](keys=keys, args=[digest(secret), grant_type])
    if row is None:
        return None
    client_ttl, latency, knob_ttl, retry_after, timeout, failure, rotate = (_text(v) for v in row)
    return TokenContext(client_id=client_id, access_ttl=int(client_ttl or knob_ttl or DEFAULT_ACCESS_TTL),
                        latency_ms=int(latency or 0), retry_after=int(retry_after or 1),
                        timeout_seconds=float(timeout or 30), failure=failure,
                        rotate_refresh_tokens=rotate != "0")


def save_code(redis: Redis, code: str, **fields: str) -> None:
    """Remember an approved authorization for CODE_TTL_SECONDS."""
    key = f"sandbox:code:{digest(code)}"
    pipe = redis.pipeline(transaction=True)
    pipe.hset(key, mapping=fields)
    pipe.expire(key, CODE_TTL_SECONDS)
    pipe.execute()


def exchange_code(redis: Redis, code: str, *, client_id: str, redirect_uri: str, challenge: str,
                  access_token: str, refresh_token: str, exp: int, ttl: int) -> tuple[bool, str]:
    """Spend the code and create its grant: (True, scope) or (False, why); a replay revokes the grant."""
    keys = [f"sandbox:code:{digest(code)}", f"sandbox:used:{digest(code)}"]
    args = [client_id, redirect_uri, challenge, new_secret(16), digest(access_token), digest(refresh_token),
            exp, ttl, REFRESH_TTL_SECONDS, USED_CODE_TTL_SECONDS]
    ok, text = _scripts(redis)["exchange"](keys=keys, args=args)
    return bool(ok), text.decode()


def rotate_refresh(redis: Redis, refresh_token: str, *, client_id: str, access_token: str,
                   new_refresh_token: str | None, exp: int, ttl: int) -> tuple[bool, str]:
    """Spend a refresh token for new tokens: (True, scope) or (False, why); a reuse revokes the grant.

    Without a new refresh token the presented one stays valid (a provider that does not rotate)."""
    new_digest = digest(new_refresh_token) if new_refresh_token else ""
    args = [client_id, digest(access_token), new_digest, exp, ttl, REFRESH_TTL_SECONDS]
    ok, text = _scripts(redis)["refresh"](keys=[f"sandbox:rt:{digest(refresh_token)}"], args=args)
    return bool(ok), text.decode()


def revoke_token(redis: Redis, client_id: str, token: str) -> None:
    """RFC 7009: a refresh token takes its grant with it, an access token goes alone."""
    keys = [f"sandbox:at:{digest(token)}", f"sandbox:rt:{digest(token)}", f"sandbox:stats:{client_id}"]
    _scripts(redis)["revoke"](keys=keys, args=[client_id])


def introspect(redis: Redis, client_id: str, token: str, now: int) -> dict[str, Any]:
    """RFC 7662 answer for a token of this client; any other token is inactive."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(f"sandbox:at:{digest(token)}")
    pipe.get(f"sandbox:rt:{digest(token)}")
    pipe.ttl(f"sandbox:rt:{digest(token)}")
    access, refresh, refresh_ttl = pipe.execute()
    if access is not None:
        grant_id, exp = access.decode().split(" ")
        token_type, expires = "access_token", int(exp)
    elif refresh is not None and not refresh.startswith(b"!"):
        grant_id, token_type, expires = refresh.decode(), "refresh_token", now + max(refresh_ttl, 0)
    else:
        return {"active": False}
    fields = cast(list[bytes | None], redis.hmget(f"sandbox:grant:{grant_id}", ["client_id", "scope", "workspace"]))
    owner, scope, workspace = (_text(v) for v in fields)
    if owner != client_id:
        return {"active": False}
    return {"active": True, "client_id": client_id, "scope": scope, "exp": expires, "token_type": token_type,
            "workspace": workspace}


def validate_knobs(body: object) -> dict[str, Any]:
    """The knobs of a PUT body, checked; ValueError names the first problem."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - {"latency_ms", "access_token_ttl", "fail", "retry_after", "timeout_seconds",
                           "rotate_refresh_tokens", "api_rate_limit", "api_rate_window", "expire_access_tokens",
                           "api_fail"}
    if unknown:
        raise ValueError(f"unknown knobs: {', '.join(sorted(unknown))}")
    knobs: dict[str, Any] = {}
    if "latency_ms" in body:
        knobs["latency_ms"] = _positive_int(body["latency_ms"], "latency_ms", 0, MAX_LATENCY_MS)
    if "access_token_ttl" in body:
        knobs["access_token_ttl"] = _positive_int(body["access_token_ttl"], "access_token_ttl")
    if "retry_after" in body:
        knobs["retry_after"] = _positive_int(body["retry_after"], "retry_after", 0, MAX_RETRY_AFTER)
    if "timeout_seconds" in body:
        value = body["timeout_seconds"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"timeout_seconds must be a number between 0 and {MAX_TIMEOUT_SECONDS}")
        knobs["timeout_seconds"] = value
    if "rotate_refresh_tokens" in body:
        if not isinstance(body["rotate_refresh_tokens"], bool):
            raise ValueError("rotate_refresh_tokens must be true or false")
        knobs["rotate_refresh_tokens"] = int(body["rotate_refresh_tokens"])
    for name, minimum, maximum in (("api_rate_limit", 1, 100_000), ("api_rate_window", 1, 3600),
                                   ("expire_access_tokens", 0, 1000)):
        if name in body:
            knobs[name] = _positive_int(body[name], name, minimum, maximum)
    fail = body.get("fail", [])
    if not isinstance(fail, list) or any(item not in FAILURES for item in fail):
        raise ValueError(f"fail must be a list of: {', '.join(FAILURES)}")
    if len(fail) > MAX_SCRIPTED_FAILURES:
        raise ValueError(f"fail may script at most {MAX_SCRIPTED_FAILURES} failures")
    api_fail = body.get("api_fail", [])
    if not isinstance(api_fail, list) or any(item not in API_FAILURES for item in api_fail):
        raise ValueError(f"api_fail must be a list of: {', '.join(API_FAILURES)}")
    if len(api_fail) > MAX_SCRIPTED_FAILURES:
        raise ValueError(f"api_fail may script at most {MAX_SCRIPTED_FAILURES} failures")
    return {**knobs, "fail": fail, "api_fail": api_fail}


def set_knobs(redis: Redis, client_id: str, knobs: dict[str, Any]) -> None:
    """Replace the client's knobs and scripted failures at once."""
    settings = {name: str(value) for name, value in knobs.items() if name not in ("fail", "api_fail")}
    pipe = redis.pipeline(transaction=True)
    pipe.delete(f"sandbox:knobs:{client_id}", f"sandbox:fail:{client_id}", f"sandbox:api_fail:{client_id}")
    if settings:
        pipe.hset(f"sandbox:knobs:{client_id}", mapping=settings)
    if knobs["fail"]:
        pipe.rpush(f"sandbox:fail:{client_id}", *knobs["fail"])
    if knobs.get("api_fail"):
        pipe.rpush(f"sandbox:api_fail:{client_id}", *knobs["api_fail"])
    pipe.execute()


def get_knobs(redis: Redis, client_id: str) -> dict[str, Any]:
    """The client's knobs with their defaults, and the scripted failures not yet consumed."""
    pipe = redis.pipeline(transaction=True)
    pipe.hgetall(f"sandbox:knobs:{client_id}")
    pipe.lrange(f"sandbox:fail:{client_id}", 0, -1)
    pipe.lrange(f"sandbox:api_fail:{client_id}", 0, -1)
    stored, fail, api_fail = pipe.execute()
    knobs = {k.decode(): v.decode() for k, v in stored.items()}
    return {"latency_ms": int(knobs.get("latency_ms", 0)),
            "access_token_ttl": int(knobs["access_token_ttl"]) if "access_token_ttl" in knobs else None,
            "fail": [item.decode() for item in fail], "retry_after": int(knobs.get("retry_after", 1)),
            "timeout_seconds": float(knobs.get("timeout_seconds", 30)),
            "rotate_refresh_tokens": knobs.get("rotate_refresh_tokens", "1") != "0",
            "api_rate_limit": int(knobs.get("api_rate_limit", API_RATE_LIMIT)),
            "api_rate_window": int(knobs.get("api_rate_window", API_RATE_WINDOW)),
            "expire_access_tokens": int(knobs.get("expire_access_tokens", 0)),
            "api_fail": [item.decode() for item in api_fail]}


def get_stats(redis: Redis, client_id: str) -> dict[str, Any]:
    """The client's counters."""
    stats = cast(dict[bytes, bytes], redis.hgetall(f"sandbox:stats:{client_id}"))
    counts = {k.decode(): int(v) for k, v in stats.items()}
    return {"token_requests": {grant: counts.get(f"token_requests:{grant}", 0)
                               for grant in ("authorization_code", "refresh_token")},
            **{name: counts.get(name, 0)
               for name in ("refresh_success", "grants_revoked", "revocations", "failures_injected", "api_requests",
                            "api_tokens_expired", "api_rate_limited", "api_failures_injected")}}
