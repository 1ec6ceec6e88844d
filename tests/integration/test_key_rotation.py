"""Rotating the encryption key on a running system: with keys `new,old`, `keys rotate`,
then every process restarted with `new` alone. Every token, client secret and connect
flow under way (a state nonce, a stored code) still opens."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect, text

from shared.crypto import Cipher, new_fernet_key
from tests.integration.conftest import StackFactory
from tests.integration.stack import BIN, ROOT, Browser, Stack

pytestmark = pytest.mark.integration

OLD_KEY, NEW_KEY = new_fernet_key(), new_fernet_key()


@pytest.fixture(scope="module")
def old_key_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """A system whose processes encrypt under OLD_KEY."""
    stack = stack_factory(workers=1, TOKEN_ENCRYPTION_KEYS=OLD_KEY)
    yield stack
    stack.stop_all()


def _restart(stack: Stack, keys: str, worker: str | None) -> None:
    """Stop every process and start the web (and a worker) with these keys."""
    stack.stop_all()
    stack.env["TOKEN_ENCRYPTION_KEYS"] = keys
    stack.start_web()
    if worker:
        stack.start_worker(worker)


def _rotate(stack: Stack) -> int:
    """`flask --app web keys rotate`, as an operator runs it; the count it prints."""
    done = subprocess.run([str(BIN / "flask"), "--app", "web", "keys", "rotate"], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(json.loads(done.stdout.strip().splitlines()[-1])["reencrypted"])


def _encrypted_values(stack: Stack) -> list[str]:
    """Every value of every `*_enc` column of every table."""
    values: list[str] = []
    with stack.runtime.db.engine.connect() as connection:
        inspector = inspect(connection)
        for table in inspector.get_table_names():
            for column in (c["name"] for c in inspector.get_columns(table) if c["name"].endswith("_enc")):
                values.extend(connection.execute(text(f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL'))
                              .scalars())
    return values


def test_after_rotation_every_secret_and_every_flow_under_way_opens_with_the_new_key_alone(
        old_key_stack: Stack) -> None:
    stack = old_key_stack
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    token_before = tenant.call("GET", f"/connections/{connection_id}/token").json()["access_token"]
    integration_id = stack.row(connection_id).integration_id

    # A flow waiting at the provider: its state nonce is sealed in Redis.
    waiting_at_provider = Browser(stack)
    authorize_url = waiting_at_provider.open_connect(tenant.connect_url(integration_id, "user-2"))
    # A flow back from the provider while no worker runs: its code is sealed in Redis.
    next(p for p in stack.processes if p.name == "w1").stop()
    waiting_for_exchange = Browser(stack)
    callback = waiting_for_exchange.callback(waiting_for_exchange.decide(
        waiting_for_exchange.open_connect(tenant.connect_url(integration_id, "user-3"))))
    assert callback.status_code == 303, callback.text

    _restart(stack, f"{NEW_KEY},{OLD_KEY}", worker=None)
    reencrypted = _rotate(stack)
    _restart(stack, NEW_KEY, worker="w2")

    only_new = Cipher([NEW_KEY])
    stored = _encrypted_values(stack)
    assert len(stored) >= 3
    for value in stored:
        only_new.decrypt(value)  # raises if anything is still under the old key

    exchanged = waiting_for_exchange.attempt(callback.headers["Location"], timeout=60)
    assert exchanged["status"] == "succeeded", exchanged
    finished = waiting_at_provider.finish(authorize_url)
    assert finished["status"] == "succeeded", finished

    assert tenant.call("GET", f"/connections/{connection_id}/token").json()["access_token"] == token_before
    refreshed = tenant.call("POST", f"/connections/{connection_id}/refresh")  # refresh token and client secret
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["access_token"] != token_before
    assert stack.introspect(client, refreshed.json()["access_token"])["active"] is True
    assert len(tenant.call("GET", "/connections").json()["data"]) == 3
    assert reencrypted >= 5, "the client secret, both tokens, the state and the code"
