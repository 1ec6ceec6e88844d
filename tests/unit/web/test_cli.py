"""The Flask CLI (`flask --app web …`): `tenants create NAME` and `keys rotate`."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import inspect, select, text

from shared.crypto import Cipher, digest, new_fernet_key
from shared.models import Connection, Integration, Tenant
from shared.nonces import PendingState
from shared.runtime import Runtime
from tests.conftest import make_settings
from web import create_app

ACCESS_TOKEN = "access-token-value-0123456789"
REFRESH_TOKEN = "refresh-token-value-0123456789"
CLIENT_SECRET = "client-secret-value-0123456789"
WEBHOOK_SECRET = "webhook-secret-value-0123456789"


def everything_stored(rt: Runtime) -> str:
    """Every value of every table, as one text."""
    chunks: list[str] = []
    with rt.db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                chunks.extend(str(value) for value in row)
    return "\n".join(chunks)


def test_tenants_create_prints_one_json_object_and_stores_only_the_hash(memory_runtime: Runtime) -> None:
    runner = create_app(runtime_=memory_runtime).test_cli_runner()
    result = runner.invoke(args=["tenants", "create", "Acme Corp"])
    assert result.exit_code == 0, result.output

    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    printed = json.loads(lines[0])
    assert set(printed) == {"id", "name", "api_key"}
    assert printed["name"] == "Acme Corp"
    api_key = printed["api_key"]
    assert len(api_key) >= 32

    with memory_runtime.db.session() as session:
        tenant = session.get(Tenant, printed["id"])
        assert tenant is not None
        assert tenant.name == "Acme Corp"
        assert tenant.api_key_hash == digest(api_key)
    assert api_key not in everything_stored(memory_runtime)

    # The printed key is the one that works.
    app = create_app(runtime_=memory_runtime)
    answer = app.test_client().get("/api/v1/integrations", headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code == 200


def test_tenants_create_needs_a_name(memory_runtime: Runtime) -> None:
    result = create_app(runtime_=memory_runtime).test_cli_runner().invoke(args=["tenants", "create"])
    assert result.exit_code != 0
    with memory_runtime.db.session() as session:
        assert session.scalars(select(Tenant)).all() == []


def _seed_under(rt: Runtime) -> dict[str, str]:
    """A tenant with a webhook secret, an integration (through the API) and a connection with
    tokens, all encrypted under the runtime's key; returns the ids."""
    app = create_app(runtime_=rt)
    printed = json.loads(app.test_cli_runner().invoke(args=["tenants", "create", "acme"]).output)
    response = app.test_client().post("/api/v1/integrations", headers={"Authorization": f"Bearer {printed['api_key']}"},
                                      json={"provider": "oauth2", "client_id": "cid", "client_secret": CLIENT_SECRET,
                                            "scopes": ["a"], "authorize_url": "https://idp.example/authorize",
                                            "token_url": "https://idp.example/token"})
    assert response.status_code == 201, response.get_json()
    integration_id = response.get_json()["id"]
    with rt.db.session() as session:
        tenant = session.get(Tenant, printed["id"])
        tenant.webhook_url = "https://app.example/hooks"
        tenant.webhook_secret_enc = rt.cipher.encrypt(WEBHOOK_SECRET)
        connection = Connection(tenant_id=tenant.id, integration_id=integration_id, end_user_id="u", scopes=["a"],
                                access_token_enc=rt.cipher.encrypt(ACCESS_TOKEN),
                                refresh_token_enc=rt.cipher.encrypt(REFRESH_TOKEN))
        # A connection whose tokens were erased (revoked) has nothing to re-encrypt.
        erased = Connection(tenant_id=tenant.id, integration_id=integration_id, end_user_id="v", scopes=["a"],
                            status="revoked")
        session.add_all([connection, erased])
        session.flush()
        connection_id = connection.id
    return {"tenant": printed["id"], "integration": integration_id, "connection": connection_id}


def _stored(rt: Runtime, ids: dict[str, str]) -> dict[str, str]:
    with rt.db.session() as session:
        tenant = session.get(Tenant, ids["tenant"])
        integration = session.get(Integration, ids["integration"])
        connection = session.get(Connection, ids["connection"])
        return {"webhook": tenant.webhook_secret_enc, "client_secret": integration.client_secret_enc,
                "access": connection.access_token_enc, "refresh": connection.refresh_token_enc}


def _runtime_with_keys(base: Runtime, keys: str) -> Runtime:
    """A runtime over the same database and Redis, with other encryption keys."""
    settings = make_settings(token_encryption_keys=keys)
    return Runtime(settings=settings, db=base.db, redis=base.redis, cipher=Cipher(settings.encryption_keys))


def test_keys_rotate_reencrypts_everything_under_the_newest_key(memory_runtime: Runtime) -> None:
    key_a = memory_runtime.settings.token_encryption_keys
    assert "," not in key_a
    ids = _seed_under(memory_runtime)
    before = _stored(memory_runtime, ids)

    key_b = new_fernet_key()
    only_b = Cipher([key_b])
    for value in before.values():
        with pytest.raises(ValueError):
            only_b.decrypt(value)

    rotating = _runtime_with_keys(memory_runtime, f"{key_b},{key_a}")
    result = create_app(runtime_=rotating).test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert json.loads(lines[0]) == {"reencrypted": 4}

    after = _stored(memory_runtime, ids)
    plain = {"webhook": WEBHOOK_SECRET, "client_secret": CLIENT_SECRET, "access": ACCESS_TOKEN,
             "refresh": REFRESH_TOKEN}
    for name, value in after.items():
        assert value != before[name], name
        assert only_b.decrypt(value) == plain[name], name
        with pytest.raises(ValueError):
            Cipher([key_a]).decrypt(value)

    # A runtime with only key B reads every value through the application too.
    only_b_runtime = _runtime_with_keys(memory_runtime, key_b)
    with only_b_runtime.db.session() as session:
        for model, column in ((Tenant, "webhook_secret_enc"), (Integration, "client_secret_enc"),
                              (Connection, "access_token_enc"), (Connection, "refresh_token_enc")):
            for value in session.scalars(select(getattr(model, column)).where(getattr(model, column).is_not(None))):
                assert only_b_runtime.cipher.decrypt(value) in plain.values()
    stored = everything_stored(memory_runtime)
    for secret in plain.values():
        assert secret not in stored


def test_keys_rotate_with_nothing_stored_prints_zero(memory_runtime: Runtime) -> None:
    result = create_app(runtime_=memory_runtime).test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"reencrypted": 0}


def _create(app_runtime: Runtime, name: str) -> dict[str, str]:
    result = create_app(runtime_=app_runtime).test_cli_runner().invoke(args=["tenants", "create", name])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _status(rt: Runtime, api_key: str) -> int:
    app = create_app(runtime_=rt)
    return app.test_client().get("/api/v1/integrations", headers={"Authorization": f"Bearer {api_key}"}).status_code


def test_tenants_rotate_key_prints_a_new_key_and_the_old_one_stops_working(memory_runtime: Runtime) -> None:
    created = _create(memory_runtime, "acme")
    other = _create(memory_runtime, "other")
    pubsub = memory_runtime.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("api-key-updates")

    result = create_app(runtime_=memory_runtime).test_cli_runner().invoke(args=["tenants", "rotate-key", "acme"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    printed = json.loads(lines[0])
    assert set(printed) == {"id", "name", "api_key"}
    assert (printed["id"], printed["name"]) == (created["id"], "acme")
    assert printed["api_key"] != created["api_key"] and len(printed["api_key"]) >= 32

    assert _status(memory_runtime, created["api_key"]) == 401
    assert _status(memory_runtime, printed["api_key"]) == 200
    assert _status(memory_runtime, other["api_key"]) == 200  # nobody else's key changed
    messages = [pubsub.get_message(timeout=0.2) for _ in range(3)]
    assert [m["data"] for m in messages if m] == [created["id"].encode()]
    assert printed["api_key"] not in everything_stored(memory_runtime)


def test_tenants_rotate_key_of_an_unknown_or_ambiguous_name_fails_and_changes_nothing(
        memory_runtime: Runtime) -> None:
    first, second = _create(memory_runtime, "twin"), _create(memory_runtime, "twin")
    runner = create_app(runtime_=memory_runtime).test_cli_runner()

    unknown = runner.invoke(args=["tenants", "rotate-key", "nobody"])
    assert unknown.exit_code != 0 and "no tenant is named 'nobody'" in unknown.output
    ambiguous = runner.invoke(args=["tenants", "rotate-key", "twin"])
    assert ambiguous.exit_code != 0 and first["id"] in ambiguous.output and second["id"] in ambiguous.output
    assert _status(memory_runtime, first["api_key"]) == _status(memory_runtime, second["api_key"]) == 200

    by_id = runner.invoke(args=["tenants", "rotate-key", second["id"]])
    assert by_id.exit_code == 0, by_id.output
    assert _status(memory_runtime, second["api_key"]) == 401
    assert _status(memory_runtime, first["api_key"]) == 200


def test_tenants_list_prints_one_json_object_per_tenant_and_never_a_key(memory_runtime: Runtime) -> None:
    created = [_create(memory_runtime, name) for name in ("acme", "globex")]
    result = create_app(runtime_=memory_runtime).test_cli_runner().invoke(args=["tenants", "list"])
    assert result.exit_code == 0, result.output
    listed = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert [(t["id"], t["name"]) for t in listed] == [(t["id"], t["name"]) for t in created]
    assert all(set(t) == {"id", "name", "webhook_url", "created_at"} for t in listed)
    for tenant in created:
        assert tenant["api_key"] not in result.output and digest(tenant["api_key"]) not in result.output


def test_tenants_list_with_no_tenant_prints_nothing(memory_runtime: Runtime) -> None:
    result = create_app(runtime_=memory_runtime).test_cli_runner().invoke(args=["tenants", "list"])
    assert result.exit_code == 0 and result.output == ""


def test_keys_rotate_also_reseals_connect_flows_under_way(memory_runtime: Runtime) -> None:
    key_a = memory_runtime.settings.token_encryption_keys
    pending = PendingState(session_id="cs_1", integration_id="int_1", code_verifier="v" * 43, binding_hash="b" * 64)
    memory_runtime.states.put("state-1", pending)
    memory_runtime.codes.put("att_1", "code-1", "v" * 43)
    key_b = new_fernet_key()

    rotating = _runtime_with_keys(memory_runtime, f"{key_b},{key_a}")
    result = create_app(runtime_=rotating).test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"reencrypted": 2}

    only_b = _runtime_with_keys(memory_runtime, key_b)
    assert only_b.states.consume("state-1") == pending
    assert only_b.codes.take("att_1") == ("code-1", "v" * 43)
