"""Connect attempts end once: pending → succeeded or failed, never back."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.db import rowcount
from shared.models import ConnectAttempt, ConnectSession, utcnow
from shared.nonces import STATE_TTL_SECONDS

# An attempt still pending after its code would have expired will never finish.
ATTEMPT_TIMEOUT = timedelta(seconds=STATE_TTL_SECONDS)


def finish_attempt(session: Session, attempt_id: str, status: str, *, error: str | None = None,
                   connection_id: str | None = None) -> bool:
    """End a pending attempt; False if it had already ended (a redelivery or a race)."""
    result = session.execute(
        update(ConnectAttempt)
        .where(ConnectAttempt.id == attempt_id, ConnectAttempt.status == "pending")
        .values(status=status, error=error, connection_id=connection_id, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def claim_link(session: Session, session_id: str) -> bool:
    """Spend a connect link for the attempt that succeeds through it: a conditional
    `UPDATE … WHERE used_at IS NULL`, so of two attempts racing one link exactly one
    wins (the other's UPDATE waits for the winner's commit, then matches nothing).
    Call it in the transaction that stores the connection."""
    result = session.execute(
        update(ConnectSession)
        .where(ConnectSession.id == session_id, ConnectSession.used_at.is_(None))
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def expire_if_stale(session: Session, attempt: ConnectAttempt) -> None:
    """Fail an attempt that has been pending longer than any exchange can take."""
    if attempt.status == "pending" and utcnow() - attempt.created_at > ATTEMPT_TIMEOUT:
        if finish_attempt(session, attempt.id, "failed", error="timed_out"):
            session.refresh(attempt)
