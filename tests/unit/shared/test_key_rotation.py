"""`rotate_keys`: small committed batches, safe beside writers, idempotent."""
from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from sqlalchemy import event, select

from shared.crypto import Cipher, new_fernet_key
from shared.db import Database
from shared.models import Base, Connection, Integration
from shared.runtime import Runtime
from shared.tenants import rotate_keys
from tests.conftest import make_settings, seed_connections


@pytest.fixture
def old_key() -> str:
    return new_fernet_key()


@pytest.fixture
def rt(tmp_path: Path, old_key: str) -> Runtime:
    """A runtime over a SQLite file (so that two sessions are two connections), under `old_key`."""
    settings = make_settings(token_encryption_keys=old_key)
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    Base.metadata.create_all(db.engine)
    return Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(), cipher=Cipher(settings.encryption_keys))


def _with_tokens(rt: Runtime, count: int) -> list[str]:
    ids = seed_connections(rt, [3600] * count)
    with rt.db.session() as session:
        for n, connection in enumerate(session.scalars(select(Connection).where(Connection.id.in_(ids)))):
            connection.access_token_enc = rt.cipher.encrypt(f"access-{n}")
        for integration in session.scalars(select(Integration)):
            integration.client_secret_enc = rt.cipher.encrypt("client-secret")
    return ids


def test_rotation_commits_in_small_batches_and_a_second_run_changes_nothing(rt: Runtime, old_key: str) -> None:
    ids = _with_tokens(rt, 25)
    commits: list[int] = []
    event.listen(rt.db.engine, "commit", lambda _conn: commits.append(1))
    rotating = Cipher([new_fernet_key(), old_key])

    assert rotate_keys(rt.db, rotating, batch=4) == 25 + 1  # the access tokens and the client secret
    assert len(commits) >= 25 // 4
    with rt.db.session() as session:
        stored = session.scalars(select(Connection.access_token_enc).where(Connection.id.in_(ids))).all()
    assert all(rotating.is_newest(value) for value in stored)
    assert sorted(rotating.decrypt(value) for value in stored) == sorted(f"access-{n}" for n in range(25))
    assert rotate_keys(rt.db, rotating, batch=4) == 0


def test_a_token_written_during_the_rotation_is_never_overwritten_with_the_older_one(
        rt: Runtime, old_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    [connection_id] = _with_tokens(rt, 1)
    with rt.db.session() as session:
        read_by_rotation = session.get(Connection, connection_id).access_token_enc
    rotating = Cipher([new_fernet_key(), old_key])
    refreshed = rotating.encrypt("access-after-a-refresh")
    rotate = rotating.rotate
    raced: list[str] = []

    def refresh_lands_first(ciphertext: str) -> str:
        # A worker's refresh commits between the rotation's read of the access token and its write.
        if ciphertext == read_by_rotation:
            with rt.db.session() as session:
                session.get(Connection, connection_id).access_token_enc = refreshed
            raced.append(ciphertext)
        return rotate(ciphertext)

    monkeypatch.setattr(rotating, "rotate", refresh_lands_first)
    assert rotate_keys(rt.db, rotating) == 1  # the client secret; not the access token written meanwhile
    assert raced == [read_by_rotation]
    with rt.db.session() as session:
        assert session.get(Connection, connection_id).access_token_enc == refreshed


def test_is_newest_tells_values_under_the_newest_key_from_older_ones(old_key: str) -> None:
    newer = Cipher([new_fernet_key(), old_key])
    assert newer.is_newest(newer.encrypt("x"))
    assert not newer.is_newest(Cipher([old_key]).encrypt("x"))
