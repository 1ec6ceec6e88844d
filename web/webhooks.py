"""The tenant's webhook, `/api/v1/webhook`: its URL and secret, and its deliveries."""
from __future__ import annotations

from flask import Blueprint, Response, g
from sqlalchemy import select, tuple_, update

from shared.crypto import new_secret
from shared.egress import ForbiddenAddress, Rules, validate_url
from shared.models import Tenant, WebhookDelivery, utcnow
from shared.webhooks import SECRET_PREFIX, queue_after_commit
from web import runtime, schemas
from web.api import NOT_FOUND, _after, _body, _cursor, _query
from web.auth import authenticate
from web.errors import ApiError, not_found
from web.openapi import Answer, ok, operation
from web.openapi import error as error_answer
from web.schemas import DeliveriesQuery, WebhookIn
from web.serializers import answer, delivery_out

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhook")


@bp.before_request
def _authenticate() -> None:
    if "tenant_id" not in g:  # the rate limit may have done it
        authenticate()


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error.response()


@bp.put("")
@operation("putWebhook", "webhooks", {200: ok(
    schemas.WebhookWithSecret, "The URL and the signing secret (made on the first PUT, new with rotate_secret)",
    **{"Cache-Control": "no-store: the answer carries a secret"})}, body=WebhookIn)
def put_webhook() -> Response:
    """Set the URL; the secret is made on the first PUT and kept unless `rotate_secret`."""
    body = _body(WebhookIn)
    rt = runtime()
    rules = Rules.for_tenant_urls(rt.settings.allow_private_provider_urls)
    try:
        validate_url(body.url, allow_private=rules.allow_private, require_https=rules.require_https)
    except ForbiddenAddress as error:
        raise ApiError(422, "invalid_fields", f"url: {error}",
                       details=[{"field": "url", "message": str(error)}]) from None
    with rt.db.session() as session:
        tenant = session.get(Tenant, g.tenant_id, with_for_update=True)
        assert tenant is not None  # authenticated just now
        if tenant.webhook_secret_enc is None or body.rotate_secret:
            secret = SECRET_PREFIX + new_secret(32)
            tenant.webhook_secret_enc = rt.cipher.encrypt(secret)
        else:
            secret = rt.cipher.decrypt(tenant.webhook_secret_enc)
        tenant.webhook_url = body.url
    response = answer(schemas.WebhookWithSecret(url=body.url, secret=secret))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("")
@operation("getWebhook", "webhooks", {200: ok(schemas.Webhook, "The URL (null when none is set), never the secret")})
def get_webhook() -> Response:
    """The URL (null when none is set), never the secret."""
    with runtime().db.session() as session:
        url = session.scalar(select(Tenant.webhook_url).where(Tenant.id == g.tenant_id))
    return answer(schemas.Webhook(url=url))


@bp.delete("")
@operation("deleteWebhook", "webhooks", {204: Answer("The URL and secret are removed; pending deliveries are dropped")})
def delete_webhook() -> tuple[str, int]:
    """Remove the URL and the secret; deliveries still pending are dropped."""
    with runtime().db.session() as session:
        session.execute(update(Tenant).where(Tenant.id == g.tenant_id)
                        .values(webhook_url=None, webhook_secret_enc=None))
        session.execute(update(WebhookDelivery)
                        .where(WebhookDelivery.tenant_id == g.tenant_id, WebhookDelivery.next_attempt_at.is_not(None))
                        .values(next_attempt_at=None, last_error="webhook_removed"))
    return "", 204


@bp.get("/deliveries")
@operation("listWebhookDeliveries", "webhooks", {
    200: ok(schemas.DeliveryPage, "A page of deliveries, newest first"),
    400: error_answer("A bad query parameter", "invalid_cursor", "invalid_limit"),
}, query=DeliveriesQuery)
def list_deliveries() -> Response:
    """The tenant's deliveries, newest first, in pages."""
    args = _query(DeliveriesQuery)
    limit = args.limit
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == g.tenant_id)
    if args.cursor:
        query = query.where(tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < _after(args.cursor))
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit + 1)
    with runtime().db.session() as session:
        rows = session.scalars(query).all()
    page = rows[:limit]
    next_cursor = _cursor(page[-1]) if len(rows) > limit else None  # type: ignore[arg-type]
    return answer(schemas.DeliveryPage(data=[delivery_out(row) for row in page], next_cursor=next_cursor))


@bp.post("/deliveries/<delivery_id>/retry")
@operation("retryWebhookDelivery", "webhooks", {
    202: ok(schemas.Delivery, "The delivery, due now"), 404: NOT_FOUND,
    409: error_answer("The tenant has no webhook URL", "webhook_not_set"),
})
def retry_delivery(delivery_id: str) -> Response:
    """Send a delivery again now, delivered or not; later failures back off as usual."""
    with runtime().db.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.tenant_id != g.tenant_id:
            raise not_found("delivery")
        if session.scalar(select(Tenant.webhook_url).where(Tenant.id == g.tenant_id)) is None:
            raise ApiError(409, "webhook_not_set", "set a webhook URL with PUT /api/v1/webhook first")
        delivery.next_attempt_at = utcnow()
        queue_after_commit(session, delivery.id)
    return answer(delivery_out(delivery), 202)
