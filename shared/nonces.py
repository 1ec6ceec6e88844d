"""State nonces and authorization codes of the connect flow: written once, taken once
(GETDEL), gone after 10 minutes, and encrypted in Redis."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
from cryptography.fernet import InvalidToken

from shared.crypto import Cipher

STATE_TTL_SECONDS = 600
STATE_PREFIX = "state:"
CODE_PREFIX = "attempt-code:"

# Replace a sealed value only if it is still the one read (a taker or a writer in
# between wins), keeping its remaining lifetime.
_RESEAL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""


class SealedStore:
    """JSON values under `{prefix}{key}`, encrypted, each taken at most once."""

    def __init__(self, client: redis.Redis, cipher: Cipher, prefix: str, ttl: int = STATE_TTL_SECONDS) -> None:
        self._redis = client
        self._cipher = cipher
        self._prefix = prefix
        self._ttl = ttl

    def put(self, key: str, value: dict[str, Any], *, only_new: bool = False) -> bool:
        """Store a value; with `only_new`, False if the key exists already (SET NX)."""
        sealed = self._cipher.encrypt(json.dumps(value))
        return bool(self._redis.set(f"{self._prefix}{key}", sealed, nx=only_new, ex=self._ttl))

    def take(self, key: str) -> dict[str, Any] | None:
        """Read and delete in one step: a second taker, or a late one, finds nothing."""
        sealed = cast(bytes | str | None, self._redis.getdel(f"{self._prefix}{key}"))
        if sealed is None:
            return None
        raw = sealed.decode() if isinstance(sealed, bytes) else sealed
        return json.loads(self._cipher.decrypt(raw))


@dataclass(frozen=True)
class PendingState:
    """What the callback needs to finish a flow started by `/connect/{token}`."""

    session_id: str
    integration_id: str
    code_verifier: str = field(repr=False)
    binding_hash: str


class StateStore:
    """`state:{state}`: the pending flow, including its PKCE verifier."""

    def __init__(self, client: redis.Redis, cipher: Cipher, ttl: int = STATE_TTL_SECONDS) -> None:
        self._store = SealedStore(client, cipher, STATE_PREFIX, ttl)

    def put(self, state: str, pending: PendingState) -> bool:
        """Store a new state; False if it already exists."""
        return self._store.put(state, asdict(pending), only_new=True)

    def consume(self, state: str) -> PendingState | None:
        """Take the state: a replay or an expired state finds nothing."""
        value = self._store.take(state)
        return PendingState(**value) if value else None


class CodeStore:
    """`attempt-code:{id}`: the authorization code of an attempt until a worker takes it."""

    def __init__(self, client: redis.Redis, cipher: Cipher, ttl: int = STATE_TTL_SECONDS) -> None:
        self._store = SealedStore(client, cipher, CODE_PREFIX, ttl)

    def put(self, attempt_id: str, code: str, code_verifier: str) -> None:
        """Keep the code and verifier for the exchange."""
        self._store.put(attempt_id, {"code": code, "verifier": code_verifier})

    def take(self, attempt_id: str) -> tuple[str, str] | None:
        """Take the code once: a redelivered exchange finds nothing and never posts twice."""
        value = self._store.take(attempt_id)
        return (value["code"], value["verifier"]) if value else None


def reseal_pending(client: redis.Redis, cipher: Cipher) -> int:
    """Re-encrypt every pending state and stored code under the newest key, so that
    flows begun before a key rotation still finish once the old key is gone; return
    how many values were re-encrypted. Values under no known key are left to expire."""
    script = client.register_script(_RESEAL)
    count = 0
    for prefix in (STATE_PREFIX, CODE_PREFIX):
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            sealed = cast(bytes | str | None, client.get(key))
            if sealed is None:
                continue
            old = sealed.decode() if isinstance(sealed, bytes) else sealed
            try:
                new = cipher.rotate(old)
            except InvalidToken:
                continue
            count += int(script(keys=[key], args=[old, new]))
    return count
