"""PKCE (RFC 7636) with the S256 method."""
from __future__ import annotations

import base64
import hashlib
import secrets


def new_verifier() -> str:
    """A 64-character verifier from the unreserved alphabet."""
    return secrets.token_urlsafe(48)


def s256_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
