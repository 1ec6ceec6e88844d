"""The tenant's webhook, `/api/v1/webhook`: its URL and secret, and its deliveries."""
from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import select, tuple_, update

from shared.crypto import new_secret
from shared.egress import ForbiddenAddress, Rules, validate_url
from shared.models import Tenant, WebhookDelivery, utcnow
from shared.webhooks import SECRET_PREFIX, queue_after_commit
from web import runtime
from web.api import _after, _body, _cursor
from web.auth import authenticate
from web.errors import ApiError, not_found
from web.schemas import WebhookIn
from web.serializers import delivery_json

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhook")
bp.before_request(authenticate)


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error.response()


@bp.put("")
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
    response = jsonify({"url": body.url, "secret": secret})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("")
def get_webhook() -> Response:
    """The URL (null when none is set), never the secret."""
    with runtime().db.session() as session:
        url = session.scalar(select(Tenant.webhook_url).where(Tenant.id == g.tenant_id))
    return jsonify({"url": url})


@bp.delete("")
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
def list_deliveries() -> Response:
    """The tenant's deliveries, newest first, in pages."""
    try:
        limit = min(max(int(request.args.get("limit", 50)), 1), 200)
    except ValueError:
        raise ApiError(400, "invalid_limit", "limit must be a whole number") from None
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == g.tenant_id)
    if request.args.get("cursor"):
        query = query.where(tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < _after(request.args["cursor"]))
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit + 1)
    with runtime().db.session() as session:
        rows = session.scalars(query).all()
    page = rows[:limit]
    next_cursor = _cursor(page[-1]) if len(rows) > limit else None  # type: ignore[arg-type]
    return jsonify({"data": [delivery_json(row) for row in page], "next_cursor": next_cursor})


@bp.post("/deliveries/<delivery_id>/retry")
def retry_delivery(delivery_id: str) -> tuple[Response, int]:
    """Send a delivery again now, delivered or not; later failures back off as usual."""
    with runtime().db.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.tenant_id != g.tenant_id:
            raise not_found("delivery")
        if session.scalar(select(Tenant.webhook_url).where(Tenant.id == g.tenant_id)) is None:
            raise ApiError(409, "webhook_not_set", "set a webhook URL with PUT /api/v1/webhook first")
        delivery.next_attempt_at = utcnow()
        queue_after_commit(session, delivery.id)
    return jsonify(delivery_json(delivery)), 202
