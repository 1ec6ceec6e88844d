"""PKCE S256 (RFC 7636)."""
from __future__ import annotations

import re

from shared.pkce import new_verifier, s256_challenge


def test_the_rfc_7636_appendix_b_example() -> None:
    verifier, challenge = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert s256_challenge(verifier) == challenge


def test_verifiers_are_long_random_and_unreserved() -> None:
    verifiers = {new_verifier() for _ in range(100)}
    assert len(verifiers) == 100
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9\-._~]+", verifier)
