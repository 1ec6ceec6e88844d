"""State nonces and stored codes: single-use, expiring, encrypted."""
from __future__ import annotations

import time

import fakeredis

from shared.crypto import Cipher, new_fernet_key
from shared.nonces import CodeStore, PendingState, StateStore, reseal_pending

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


def test_pending_states_and_codes_are_resealed_under_the_newest_key_keeping_their_ttl() -> None:
    redis = fakeredis.FakeRedis()
    old_key, new_key = new_fernet_key(), new_fernet_key()
    old = Cipher([old_key])
    StateStore(redis, old, ttl=300).put("abc", PENDING)
    CodeStore(redis, old).put("att_1", "the-code", "the-verifier")
    redis.set("unrelated", "left alone")
    StateStore(redis, Cipher([new_fernet_key()])).put("lost", PENDING)  # under a key nobody has: skipped

    assert reseal_pending(redis, Cipher([new_key, old_key])) == 2

    only_new = Cipher([new_key])
    assert 290 <= redis.ttl("state:abc") <= 300
    assert StateStore(redis, only_new).consume("abc") == PENDING
    assert CodeStore(redis, only_new).take("att_1") == ("the-code", "the-verifier")
    assert redis.get("unrelated") == b"left alone"
    assert redis.exists("state:lost")


def test_resealing_never_brings_back_a_value_taken_meanwhile() -> None:
    redis = fakeredis.FakeRedis()
    old_key = new_fernet_key()
    CodeStore(redis, Cipher([old_key])).put("att_1", "the-code", "the-verifier")
    rotating = Cipher([new_fernet_key(), old_key])
    real_get = redis.get

    def get_then_taken(key: str) -> bytes | None:
        value = real_get(key)
        redis.delete(key)  # a worker takes the code between the read and the write
        return value

    redis.get = get_then_taken  # type: ignore[method-assign]
    assert reseal_pending(redis, rotating) == 0
    assert not redis.exists("attempt-code:att_1")
