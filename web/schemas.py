"""The shapes of the API, in one place: request bodies and query strings (validated),
and answers (serialized). The OpenAPI document is generated from these models, so a
shape changes here and nowhere else."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from shared.enums import AttemptStatus, ConnectionStatus, EventType, ProviderKind, TokenAuthMethod

# Set by the service on every authorize URL; a tenant overriding one would break the flow.
RESERVED_AUTHORIZE_PARAMS = frozenset({"response_type", "response_mode", "client_id", "redirect_uri", "scope",
                                       "state", "code_challenge", "code_challenge_method"})


def _absolute_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    return value


def _no_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_no_nul(k) and _no_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_no_nul(item) for item in value)
    return True


class Body(BaseModel):
    """Strict bodies: unknown fields are an error, not silently dropped; no text may hold
    a NUL character (PostgreSQL stores none)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _storable(cls, value: object) -> object:
        if not _no_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class IntegrationIn(Body):
    """`POST /api/v1/integrations`."""

    provider: ProviderKind
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str = Field(min_length=1, max_length=2000)
    scopes: list[str] = Field(default_factory=list, max_length=100)
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    api_base_url: str | None = None
    issuer: str | None = Field(default=None, max_length=500)
    token_auth_method: TokenAuthMethod = TokenAuthMethod.CLIENT_SECRET_BASIC
    pkce: bool = True
    extra_authorize_params: dict[str, str] = Field(default_factory=dict)

    _urls = field_validator("authorize_url", "token_url", "revoke_url", "api_base_url")(_absolute_http_url)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        if any(not s or " " in s for s in value):
            raise ValueError("each scope must be a non-empty string without spaces")
        return value

    @field_validator("extra_authorize_params")
    @classmethod
    def _extra(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = RESERVED_AUTHORIZE_PARAMS & value.keys()
        if reserved:
            raise ValueError(f"these parameters are set by the service: {', '.join(sorted(reserved))}")
        return value


class ConnectSessionIn(Body):
    """`POST /api/v1/connect-sessions`."""

    integration_id: str = Field(min_length=1, max_length=40)
    end_user_id: str = Field(min_length=1, max_length=200)
    return_url: str | None = None
    connection_id: str | None = Field(default=None, max_length=40)

    _return_url = field_validator("return_url")(_absolute_http_url)

class WebhookIn(Body):
    """`PUT /api/v1/webhook`."""

    url: str = Field(max_length=2000)
    rotate_secret: StrictBool = False

    _url = field_validator("url")(_absolute_http_url)


# --- query strings -----------------------------------------------------------------

PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX = 50, 200


class Query(BaseModel):
    """Query strings: unknown parameters are ignored, a bad value is a 400."""

    model_config = ConfigDict(extra="ignore")




class PageQuery(Query):
    """A page of a list: its size, and where the previous page ended."""

    limit: int = Field(default=PAGE_LIMIT_DEFAULT, description=f"page size; values outside 1..{PAGE_LIMIT_MAX} "
                                                               "are clamped")
    cursor: str | None = Field(default=None, description="the next_cursor of the previous page")

    _clamp = field_validator("limit")(lambda value: min(max(value, 1), PAGE_LIMIT_MAX))


class DeliveriesQuery(PageQuery):
    """`GET /api/v1/webhook/deliveries`."""


class EventsQuery(PageQuery):
    """`GET /api/v1/connections/{id}/events`."""


class ConnectionsQuery(PageQuery):
    """`GET /api/v1/connections`."""

    end_user_id: str | None = None
    integration_id: str | None = None
    status: ConnectionStatus | None = None


class CallbackQuery(Query):
    """`GET /oauth/callback`, as the provider sends the browser back (RFC 6749 §4.1.2, RFC 9207)."""

    state: str | None = None
    code: str | None = None
    error: str | None = None
    iss: str | None = None


# --- answers -----------------------------------------------------------------------

Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]


class Answer(BaseModel):
    """Answers: every field is always present (null where it may be empty), no other."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)


class FieldError(Answer):
    """One invalid field of a body."""

    field: str
    message: str


class ErrorBody(Answer):
    """What went wrong: a stable code, and words for humans."""

    code: str
    message: str
    details: list[FieldError] | None = Field(default=None, description="each invalid field (422 only)")


class Error(Answer):
    """Every error of the API: `{"error": {"code", "message"}}`."""

    error: ErrorBody


class Integration(Answer):
    """A tenant's OAuth app (never its client secret)."""

    id: str
    provider: ProviderKind
    client_id: str
    scopes: list[str]
    authorize_url: Url
    token_url: Url
    revoke_url: Url | None
    api_base_url: Url | None = Field(description="where the provider's own API lives, for the client")
    issuer: str | None
    token_auth_method: TokenAuthMethod
    pkce: bool
    extra_authorize_params: dict[str, str]
    redirect_uri: Url
    created_at: datetime


class IntegrationList(Answer):
    """The tenant's integrations, oldest first."""

    data: list[Integration]


class ConnectSession(Answer):
    """A connect link for one end user."""

    id: str
    connect_url: Url
    expires_at: datetime


class Connection(Answer):
    """One authorized account (never its tokens)."""

    id: str
    integration_id: str
    end_user_id: str
    status: ConnectionStatus
    scopes: list[str]
    expires_at: datetime | None
    last_refreshed_at: datetime | None
    refresh_failures: int = Field(ge=0)
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class ConnectionPage(Answer):
    """A page of connections, oldest first."""

    data: list[Connection]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class Token(Answer):
    """A connection's access token."""

    access_token: str
    token_type: str
    expires_at: datetime | None
    scopes: list[str]


class Event(Answer):
    """One entry of a connection's history."""

    id: str
    type: EventType
    error: str | None
    created_at: datetime


class EventPage(Answer):
    """A page of a connection's history, oldest first."""

    data: list[Event]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class Webhook(Answer):
    """The tenant's webhook URL (null when none is set), never its secret."""

    url: Url | None


class WebhookWithSecret(Answer):
    """The webhook URL and its signing secret."""

    url: Url
    secret: str


class Delivery(Answer):
    """One webhook delivery: its event, attempts and outcome."""

    id: str
    event_id: str
    type: str = Field(description="the webhook event type, e.g. connection.created")
    attempts: int = Field(ge=0)
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    created_at: datetime


class DeliveryPage(Answer):
    """A page of deliveries, newest first."""

    data: list[Delivery]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class Attempt(Answer):
    """A connect attempt as its status page polls it."""

    status: AttemptStatus
    connection_id: str | None = Field(default=None, description="when it succeeded")
    error: str | None = Field(default=None, description="when it failed")


class ReadinessChecks(Answer):
    """Each dependency: `ok`, or the name of the error met."""

    database: str
    redis: str


class Readiness(Answer):
    """Whether the process can serve."""

    ready: bool
    checks: ReadinessChecks


class OpenApiDocument(BaseModel):
    """The OpenAPI 3.1 document of the service."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, str]
    paths: dict[str, dict[str, object]]
    components: dict[str, dict[str, object]]
