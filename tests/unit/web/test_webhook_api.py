"""`/api/v1/webhook`: the URL and its secret, the deliveries, and bad input (Flask test client)."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shared.models import Connection, Tenant, WebhookDelivery, utcnow
from shared.runtime import Runtime
from shared.tenants import create_tenant
from shared.tokens import record_event
from tests.conftest import seed_connections
from tests.unit.shared.test_webhooks import SentTasks, _runtime
from tests.unit.web.test_api import Api, _error
from web import create_app


@pytest.fixture
def rt() -> Runtime:
    return _runtime(SentTasks())


@pytest.fixture
def api(rt: Runtime) -> Iterator[Api]:
    app = create_app(runtime_=rt)
    with rt.db.session() as session:
        tenant, key = create_tenant(session, "acme")
    api = Api(app.test_client(), key)
    api.tenant_id = tenant.id  # type: ignore[attr-defined]
    yield api


def _other(api: Api, rt: Runtime) -> Api:
    with rt.db.session() as session:
        _, key = create_tenant(session, "globex")
    return Api(api.client, key)


def _deliveries_of(rt: Runtime, tenant_id: str, count: int) -> list[str]:
    """`count` deliveries of a tenant's connection (its webhook URL must be set)."""
    [connection_id] = seed_connections(rt, [3600])
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        connection.tenant_id = tenant_id
        session.flush()
        for _ in range(count):
            record_event(session, connection, "refresh_failed", "http_503")
    with rt.db.session() as session:
        return list(session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.tenant_id == tenant_id)))


def test_the_first_put_makes_a_secret_and_later_ones_keep_it_unless_rotated(api: Api, rt: Runtime) -> None:
    first = api("PUT", "/webhook", json={"url": "https://hooks.example/a"})
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    secret = first.get_json()["secret"]
    assert first.get_json() == {"url": "https://hooks.example/a", "secret": secret} and secret.startswith("whsec_")
    again = api("PUT", "/webhook", json={"url": "https://hooks.example/b"}).get_json()
    assert again == {"url": "https://hooks.example/b", "secret": secret}
    rotated = api("PUT", "/webhook", json={"url": "https://hooks.example/b", "rotate_secret": True}).get_json()
    assert rotated["secret"] != secret
    assert api("GET", "/webhook").get_json() == {"url": "https://hooks.example/b"}
    with rt.db.session() as session:
        stored = session.scalars(select(Tenant.webhook_secret_enc)).all()
    assert rotated["secret"] not in str(stored), "the secret is stored encrypted"
    assert rt.cipher.decrypt(next(s for s in stored if s)) == rotated["secret"]


def test_delete_removes_the_url_and_drops_pending_deliveries(api: Api, rt: Runtime) -> None:
    assert api("GET", "/webhook").get_json() == {"url": None}
    secret = api("PUT", "/webhook", json={"url": "https://hooks.example/a"}).get_json()["secret"]
    [delivery_id] = _deliveries_of(rt, api.tenant_id, 1)  # type: ignore[attr-defined]
    response = api("DELETE", "/webhook")
    assert response.status_code == 204 and response.data == b""
    assert api("GET", "/webhook").get_json() == {"url": None}
    with rt.db.session() as session:
        assert session.get(WebhookDelivery, delivery_id).next_attempt_at is None
    assert api("PUT", "/webhook", json={"url": "https://hooks.example/a"}).get_json()["secret"] != secret


@pytest.mark.parametrize("body", [
    {}, {"url": "ftp://hooks.example/a"}, {"url": "/relative"}, {"url": "https://hooks.example/a#frag"},
    {"url": "https://hooks.example/a", "rotate_secret": "yes"}, {"url": "https://hooks.example/a", "extra": 1},
    {"url": 5},
])
def test_a_bad_webhook_body_is_422(api: Api, body: dict[str, Any]) -> None:
    _error(api("PUT", "/webhook", json=body), 422, "invalid_fields")
    assert api("GET", "/webhook").get_json() == {"url": None}


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    _error(api("PUT", "/webhook", data="url=x", content_type="text/plain"), 400, "invalid_json")


def test_a_private_webhook_url_is_refused_unless_allowed(rt: Runtime) -> None:
    strict = rt.settings.model_copy(update={"allow_private_provider_urls": False})
    app = create_app(runtime_=Runtime(settings=strict, db=rt.db, redis=rt.redis, cipher=rt.cipher,
                                      celery=rt.celery))
    with rt.db.session() as session:
        _, key = create_tenant(session, "acme")
    api = Api(app.test_client(), key)
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.8/hook", "http://[::1]/hook", "http://169.254.169.254/"):
        body = _error(api("PUT", "/webhook", json={"url": url}), 422, "invalid_fields")
        assert body["details"][0]["field"] == "url"


def test_deliveries_are_listed_newest_first_in_pages_and_only_the_tenants_own(api: Api, rt: Runtime) -> None:
    api("PUT", "/webhook", json={"url": "https://hooks.example/a"})
    ids = _deliveries_of(rt, api.tenant_id, 5)  # type: ignore[attr-defined]
    with rt.db.session() as session:  # distinct times, oldest first in `ids`
        for n, delivery_id in enumerate(ids):
            session.get(WebhookDelivery, delivery_id).created_at = utcnow() - timedelta(minutes=10 - n)
    first = api("GET", "/webhook/deliveries?limit=2").get_json()
    second = api("GET", f"/webhook/deliveries?limit=2&cursor={first['next_cursor']}").get_json()
    third = api("GET", f"/webhook/deliveries?limit=2&cursor={second['next_cursor']}").get_json()
    assert [d["id"] for d in first["data"] + second["data"] + third["data"]] == ids[::-1]
    assert third["next_cursor"] is None
    assert set(first["data"][0]) >= {"id", "event_id", "type", "attempts", "last_status", "delivered_at",
                                     "next_attempt_at"}
    assert first["data"][0]["type"] == "connection.refresh_failed" and first["data"][0]["attempts"] == 0
    other = _other(api, rt)
    assert other("GET", "/webhook/deliveries").get_json() == {"data": [], "next_cursor": None}
    _error(api("GET", "/webhook/deliveries?cursor=nope"), 400, "invalid_cursor")
    _error(api("GET", "/webhook/deliveries?limit=x"), 400, "invalid_limit")


def test_retry_makes_a_delivery_due_now_and_queues_it_after_commit(api: Api, rt: Runtime) -> None:
    api("PUT", "/webhook", json={"url": "https://hooks.example/a"})
    [delivery_id] = _deliveries_of(rt, api.tenant_id, 1)  # type: ignore[attr-defined]
    with rt.db.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        delivery.next_attempt_at, delivery.delivered_at, delivery.attempts = None, utcnow(), 1
    rt.redis.flushall()  # the first send's marker is gone, as after its task ran
    rt.celery.sent.clear()  # type: ignore[attr-defined]
    response = api("POST", f"/webhook/deliveries/{delivery_id}/retry")
    assert response.status_code == 202 and response.get_json()["id"] == delivery_id
    assert rt.celery.sent == [("webhooks.deliver", [delivery_id], "webhooks")]  # type: ignore[attr-defined]
    with rt.db.session() as session:
        assert session.get(WebhookDelivery, delivery_id).next_attempt_at <= utcnow()


def test_another_tenants_delivery_is_404_and_unchanged(api: Api, rt: Runtime) -> None:
    api("PUT", "/webhook", json={"url": "https://hooks.example/a"})
    [delivery_id] = _deliveries_of(rt, api.tenant_id, 1)  # type: ignore[attr-defined]
    with rt.db.session() as session:
        session.get(WebhookDelivery, delivery_id).next_attempt_at = None
    other = _other(api, rt)
    other("PUT", "/webhook", json={"url": "https://hooks.example/b"})
    _error(other("POST", f"/webhook/deliveries/{delivery_id}/retry"), 404, "not_found")
    _error(api("POST", "/webhook/deliveries/whd_nope/retry"), 404, "not_found")
    with rt.db.session() as session:
        assert session.get(WebhookDelivery, delivery_id).next_attempt_at is None


def test_retry_without_a_url_is_409(api: Api, rt: Runtime) -> None:
    api("PUT", "/webhook", json={"url": "https://hooks.example/a"})
    [delivery_id] = _deliveries_of(rt, api.tenant_id, 1)  # type: ignore[attr-defined]
    api("DELETE", "/webhook")
    _error(api("POST", f"/webhook/deliveries/{delivery_id}/retry"), 409, "webhook_not_set")


def test_the_webhook_endpoints_need_a_key(api: Api) -> None:
    for method, path in (("PUT", "/webhook"), ("GET", "/webhook"), ("DELETE", "/webhook"),
                         ("GET", "/webhook/deliveries"), ("POST", "/webhook/deliveries/x/retry")):
        _error(api.client.open(f"/api/v1{path}", method=method), 401, "unauthorized")
