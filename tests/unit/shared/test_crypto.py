"""Encryption at rest survives key rotation; API keys are hashed."""
from __future__ import annotations

import pytest

from shared.crypto import Cipher, digest, new_fernet_key, same


def test_an_old_key_still_decrypts_and_the_newest_encrypts() -> None:
    old, new = new_fernet_key(), new_fernet_key()
    written_before = Cipher([old]).encrypt("refresh-token")
    rotated = Cipher([new, old])
    assert rotated.decrypt(written_before) == "refresh-token"
    written_after = rotated.encrypt("access-token")
    assert Cipher([new]).decrypt(written_after) == "access-token"
    with pytest.raises(ValueError):
        Cipher([old]).decrypt(written_after)


def test_rotate_reencrypts_under_the_newest_key() -> None:
    old, new = new_fernet_key(), new_fernet_key()
    ciphertext = Cipher([old]).encrypt("secret")
    moved = Cipher([new, old]).rotate(ciphertext)
    assert Cipher([new]).decrypt(moved) == "secret"


def test_an_unknown_key_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="known key"):
        Cipher([new_fernet_key()]).decrypt(Cipher([new_fernet_key()]).encrypt("x"))


def test_digest_and_constant_time_comparison() -> None:
    assert digest("key") == digest("key") != digest("other")
    assert same("a", "a") and not same("a", "b")
