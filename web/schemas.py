"""Request bodies of the tenant API, validated with pydantic."""
from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

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


class Body(BaseModel):
    """Strict bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class IntegrationIn(Body):
    """`POST /api/v1/integrations`."""

    provider: Literal["respondio", "oauth2", "sandbox"]
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str = Field(min_length=1, max_length=2000)
    scopes: list[str] = Field(default_factory=list, max_length=100)
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    issuer: str | None = Field(default=None, max_length=500)
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    pkce: bool = True
    extra_authorize_params: dict[str, str] = Field(default_factory=dict)

    _urls = field_validator("authorize_url", "token_url", "revoke_url")(_absolute_http_url)

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
