"""State nonces of the connect flow: written once, consumed once, gone after 10 minutes."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

from shared.crypto import Cipher

STATE_TTL_SECONDS = 600


@dataclass(frozen=True)
class PendingState:
    """What the callback needs to finish a flow started by `/connect/{token}`."""

    session_id: str
    code_verifier: str
    binding_hash: str


class StateStore:
    """Redis-backed state nonces; the payload is encrypted because it holds the PKCE verifier."""

    def __init__(self, client: redis.Redis, cipher: Cipher, ttl: int = STATE_TTL_SECONDS) -> None:
        self._redis = client
        self._cipher = cipher
        self._ttl = ttl

    @staticmethod
    def _key(state: str) -> str:
        return f"state:{state}"

    def put(self, state: str, pending: PendingState) -> bool:
        """Store a new state; False if it already exists (SET NX)."""
        payload = self._cipher.encrypt(json.dumps(asdict(pending)))
        return bool(self._redis.set(self._key(state), payload, nx=True, ex=self._ttl))

    def consume(self, state: str) -> PendingState | None:
        """Take the state atomically (GETDEL): a replay or an expired state finds nothing."""
        payload = self._redis.getdel(self._key(state))
        if payload is None:
            return None
        raw = payload.decode() if isinstance(payload, bytes) else payload
        return PendingState(**json.loads(self._cipher.decrypt(raw)))


class CodeStore:
    """The authorization code of an attempt, encrypted, until a worker takes it."""

    def __init__(self, client: redis.Redis, cipher: Cipher, ttl: int = STATE_TTL_SECONDS) -> None:
        self._redis = client
        self._cipher = cipher
        self._ttl = ttl

    @staticmethod
    def _key(attempt_id: str) -> str:
        return f"attempt:{attempt_id}:code"

    def put(self, attempt_id: str, code: str, code_verifier: str) -> None:
        """Keep the code and verifier for the exchange."""
        payload = self._cipher.encrypt(json.dumps({"code": code, "verifier": code_verifier}))
        self._redis.set(self._key(attempt_id), payload, ex=self._ttl)

    def take(self, attempt_id: str) -> tuple[str, str] | None:
        """Take the code once: a redelivered exchange finds nothing and never posts twice."""
        payload = self._redis.getdel(self._key(attempt_id))
        if payload is None:
            return None
        raw = payload.decode() if isinstance(payload, bytes) else payload
        data = json.loads(self._cipher.decrypt(raw))
        return data["code"], data["verifier"]
