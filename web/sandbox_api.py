"""The sandbox's fake of respond.io's API v2, under /sandbox/api/v2 (dev only): contacts, messages,
channels and workspace users of the organization an access token speaks for.

Only the sandbox's own access tokens are accepted (401 otherwise); each organization has a rate
limit (429 with `Retry-After`); the client's knobs expire tokens early and script 5xx answers."""
from __future__ import annotations

import re
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from shared.models import utcnow
from web import runtime
from web import sandbox_api_store as store
from web.serializers import iso

bp = Blueprint("sandbox_api", __name__, url_prefix="/sandbox/api/v2")

IDENTIFIER = re.compile(r"(id:[0-9]{1,12}|email:[^@\s]{1,100}@[^@\s]{1,150}|phone:\+?[0-9]{5,20})")
TEXT_FIELDS = ("firstName", "lastName", "email", "phone", "language", "profilePic", "countryCode")
CHANNELS = ({"id": 1, "name": "WhatsApp", "source": "whatsapp"},
            {"id": 2, "name": "Facebook Messenger", "source": "facebook"},
            {"id": 3, "name": "Email", "source": "email"})
USERS = ({"id": 1, "firstName": "Olive", "lastName": "Owner", "email": "owner@sandbox.invalid", "role": "owner"},
         {"id": 2, "firstName": "Max", "lastName": "Manager", "email": "manager@sandbox.invalid", "role": "manager"},
         {"id": 3, "firstName": "Ada", "lastName": "Agent", "email": "agent@sandbox.invalid", "role": "agent"})


class ApiFault(Exception):
    """An error answer shaped like respond.io's: `{"code": status, "message"}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@bp.errorhandler(ApiFault)
def _fault(error: ApiFault) -> Response:
    response = jsonify({"code": error.status, "message": error.message})
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


@bp.before_request
def _gate() -> None:
    """Bearer token, then the organization's rate limit, then a scripted failure."""
    rt, now = runtime(), time.time()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiFault(401, "a bearer access token is required", {"WWW-Authenticate": 'Bearer realm="sandbox"'})
    caller = store.authenticate(rt.redis, token.strip(), now)
    if isinstance(caller, str):
        raise ApiFault(401, caller, {"WWW-Authenticate": 'Bearer realm="sandbox", error="invalid_token"'})
    wait = store.over_limit(rt.redis, caller, now)
    if wait is not None:
        raise ApiFault(429, "too many requests for this organization", {"Retry-After": str(wait)})
    failure = store.scripted_failure(rt.redis, caller.client_id)
    if failure is not None:
        raise ApiFault(failure, f"scripted failure {failure}")
    g.sandbox_caller = caller


def _org() -> str:
    return g.sandbox_caller.org


def _identifier(identifier: str) -> str:
    if not IDENTIFIER.fullmatch(identifier):
        raise ApiFault(400, "the identifier must be id:<number>, email:<address> or phone:<number>")
    return identifier


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiFault(400, "the body must be a JSON object")
    return body


def _contact_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The contact fields of a body, checked."""
    unknown = set(body) - {*TEXT_FIELDS, "custom_fields"}
    if unknown:
        raise ApiFault(400, f"unknown fields: {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        if name in body:
            if not isinstance(body[name], str) or len(body[name]) > 200:
                raise ApiFault(400, f"{name} must be a string of at most 200 characters")
            fields[name] = body[name].strip() or None
    if fields.get("email") and not IDENTIFIER.fullmatch(f"email:{fields['email']}"):
        raise ApiFault(400, "email is not an email address")
    if fields.get("phone") and not IDENTIFIER.fullmatch(f"phone:{fields['phone']}"):
        raise ApiFault(400, "phone must be digits with an optional leading +")
    if "custom_fields" in body:
        custom = body["custom_fields"]
        if not isinstance(custom, list) or len(custom) > 50 or not all(
                isinstance(item, dict) and set(item) <= {"name", "value"} and isinstance(item.get("name"), str)
                for item in custom):
            raise ApiFault(400, "custom_fields must be a list of {name, value}")
        fields["custom_fields"] = custom
    return fields


def _page(items: list[dict[str, Any]], more: bool) -> Response:
    """A page in respond.io's shape; `pagination.next` carries the cursor."""
    limit = _limit()
    following = f"{request.base_url}?limit={limit}&cursorId={items[-1]['id']}" if more and items else None
    return jsonify({"items": items, "pagination": {"next": following, "previous": None}})


def _limit() -> int:
    try:
        return min(max(int(request.args.get("limit", 10)), 1), 100)
    except ValueError:
        raise ApiFault(400, "limit must be a whole number") from None


def _cursor() -> int:
    try:
        return int(request.args.get("cursorId", 0))
    except ValueError:
        raise ApiFault(400, "cursorId must be a whole number") from None


def _fixed_page(rows: tuple[dict[str, Any], ...]) -> Response:
    after, limit = _cursor(), _limit()
    rest = [row for row in rows if row["id"] > after]
    return _page(rest[:limit], len(rest) > limit)


@bp.get("/contact/<identifier>")
def get_contact(identifier: str) -> Response:
    """One contact by `id:…`, `email:…` or `phone:…`."""
    contact = store.find_contact(runtime().redis, _org(), _identifier(identifier))
    if contact is None:
        raise ApiFault(404, "contact not found")
    return jsonify(contact)


@bp.post("/contact/<identifier>")
def create_contact(identifier: str) -> Response:
    """A new contact under an `email:…` or `phone:…` identifier (which it takes as its own)."""
    kind, _, value = _identifier(identifier).partition(":")
    if kind == "id":
        raise ApiFault(400, "create a contact by email:… or phone:…")
    fields = _contact_fields(_body())
    if fields.get(kind, value) != value:
        raise ApiFault(400, f"{kind} differs from the identifier")
    fields[kind] = value
    try:
        contact = store.save_contact(runtime().redis, _org(), identifier, fields, create=True, now=iso(utcnow()) or "")
    except store.Conflict as error:
        raise ApiFault(409, str(error)) from None
    return jsonify(contact)


@bp.put("/contact/<identifier>")
def update_contact(identifier: str) -> Response:
    """Change the given fields of a contact."""
    try:
        contact = store.save_contact(runtime().redis, _org(), _identifier(identifier), _contact_fields(_body()),
                                     create=False, now="")
    except store.Conflict as error:
        raise ApiFault(409, str(error)) from None
    if contact is None:
        raise ApiFault(404, "contact not found")
    return jsonify(contact)


@bp.post("/contact/list")
def list_contacts() -> Response:
    """Contacts by id, `search` matching names, email or phone; `limit` and `cursorId` page them."""
    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict) or not isinstance(body.get("search", ""), str):
        raise ApiFault(400, "the body must be a JSON object with an optional string search")
    items, more = store.list_contacts(runtime().redis, _org(), body.get("search", ""), _cursor(), _limit())
    return _page(items, more)


@bp.post("/contact/<identifier>/message")
def send_message(identifier: str) -> Response:
    """A text message to a contact, on a channel of the workspace."""
    body = _body()
    message, channel_id = body.get("message"), body.get("channelId", CHANNELS[0]["id"])
    if not isinstance(message, dict) or message.get("type") != "text" or not isinstance(message.get("text"), str) \
            or not 0 < len(message["text"]) <= 4096:
        raise ApiFault(400, "message must be {type: text, text: 1 to 4096 characters}")
    if channel_id not in {channel["id"] for channel in CHANNELS}:
        raise ApiFault(400, "unknown channelId")
    contact = store.find_contact(runtime().redis, _org(), _identifier(identifier))
    if contact is None:
        raise ApiFault(404, "contact not found")
    return jsonify({"contactId": contact["id"], "messageId": store.next_message_id(runtime().redis, _org())})


@bp.get("/space/channel")
def list_channels() -> Response:
    """The workspace's channels."""
    return _fixed_page(CHANNELS)


@bp.get("/space/user")
def list_users() -> Response:
    """The workspace's users."""
    return _fixed_page(USERS)


@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str) -> Response:
    """Any other path: respond.io's shape of a 404, not an HTML page."""
    raise ApiFault(404, "no such endpoint")
