"""State nonces and stored codes: single-use, expiring, encrypted."""
from __future__ import annotations

import time

import fakeredis

from shared.crypto import Cipher, new_fernet_key
from shared.nonces import CodeStore, PendingState, StateStore

PENDING = PendingState(session_id="cs_1", integration_id="int_1", code_verifier="v" * 64, binding_hash="b" * 64)


def _store(ttl: int = 600) -> tuple[StateStore, fakeredis.FakeRedis]:
    redis = fakeredis.FakeRedis()
    return StateStore(redis, Cipher([new_fernet_key()]), ttl=ttl), redis


def test_a_state_is_consumed_once() -> None:
    store, _ = _store()
    assert store.put("abc", PENDING)
    assert store.consume("abc") == PENDING
    assert store.consume("abc") is None


def test_a_state_cannot_be_written_twice() -> None:
    store, _ = _store()
    assert store.put("abc", PENDING)
    assert not store.put("abc", PendingState("cs_2", "int_2", "x", "y"))
    assert store.consume("abc") == PENDING


def test_a_state_expires_after_its_ttl() -> None:
    store, redis = _store(ttl=600)
    store.put("abc", PENDING)
    assert 599 <= redis.ttl("state:abc") <= 600
    redis.pexpire("state:abc", 1)
    time.sleep(0.01)
    assert store.consume("abc") is None


def test_the_state_payload_holds_no_plaintext_verifier() -> None:
    store, redis = _store()
    store.put("abc", PENDING)
    assert b"vvvv" not in redis.get("state:abc")


def test_a_code_is_taken_once_and_stored_encrypted() -> None:
    redis = fakeredis.FakeRedis()
    codes = CodeStore(redis, Cipher([new_fernet_key()]))
    codes.put("att_1", "the-code-123", "verifier")
    assert b"the-code-123" not in redis.get("attempt-code:att_1")
    assert codes.take("att_1") == ("the-code-123", "verifier")
    assert codes.take("att_1") is None
