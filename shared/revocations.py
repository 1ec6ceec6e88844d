"""Ending a connection: the status flips to `revoked` at once, and later, once the
provider has been told (or could not be), the stored tokens are erased.

Both writes are fenced (`shared.tokens.fenced_update`), so a refresh in flight when
the connection is revoked finds the version moved and drops its answer."""
from __future__ import annotations

from sqlalchemy.orm import Session

from shared.models import Connection, utcnow
from shared.tokens import fenced_update, record_event

WRITE_ATTEMPTS = 10


def mark_revoked(session: Session, connection_id: str) -> bool:
    """Set the connection `revoked` and record it; False if it was revoked already
    (a second disconnect changes nothing). The caller commits, then announces."""
    for _ in range(WRITE_ATTEMPTS):
        connection = session.get(Connection, connection_id, populate_existing=True)
        if connection is None or connection.status == "revoked":
            return False
        if fenced_update(session, connection.id, connection.version, {"status": "revoked", "updated_at": utcnow()}):
            record_event(session, connection, "revoked")
            return True
    raise RuntimeError(f"connection {connection_id} kept changing while it was being revoked")


def erase_tokens(session: Session, connection_id: str) -> bool:
    """Erase the stored tokens of a revoked connection; False if there was nothing to erase
    or the connection is no longer revoked."""
    for _ in range(WRITE_ATTEMPTS):
        connection = session.get(Connection, connection_id, populate_existing=True)
        if connection is None or connection.status != "revoked":
            return False
        if connection.access_token_enc is None and connection.refresh_token_enc is None:
            return False
        if fenced_update(session, connection.id, connection.version,
                         {"access_token_enc": None, "refresh_token_enc": None, "updated_at": utcnow()}):
            return True
    raise RuntimeError(f"connection {connection_id} kept changing while its tokens were being erased")
