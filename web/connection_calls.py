"""One call to a provider's API with a connection's token, for `flask --app web connections call`.

It goes through the client package (`oauth_keeper_client.RespondIO`), so the operator's call meets
the same policy as a tenant's: one refresh on 401, waits on 429/449, retries of idempotent calls.
Its tokens come from `ServiceTokens`: the path of `GET …/token` and `POST …/refresh` itself, so a
refresh is still the workers' single flight under the connection's lock, never a call of our own
to the token endpoint. (The CLI cannot act as the tenant instead: API keys are kept only as hashes.)"""
from __future__ import annotations

from typing import Any

from oauth_keeper_client import NeedsReauth, NotFound, RespondIO, Revoked, ServiceUnavailable, Token
from oauth_keeper_client.errors import KeeperError

from shared.egress import http_session
from shared.integrations import egress_rules
from shared.models import Connection, Integration
from web import runtime
from web.errors import ApiError
from web.tokens import fresh_token

ERRORS: dict[str, type[KeeperError]] = {"needs_reauth": NeedsReauth, "revoked": Revoked, "not_found": NotFound,
                                        "refresh_pending": ServiceUnavailable}


def _rows(connection_id: str) -> tuple[Connection, Integration]:
    with runtime().db.session() as session:
        connection = session.get(Connection, connection_id)
        integration = session.get(Integration, connection.integration_id) if connection else None
    if connection is None or integration is None:
        raise NotFound(404, "not_found", "connection not found")
    return connection, integration


class ServiceTokens:
    """The client's token source inside the service, reading the database directly."""

    def _token(self, connection_id: str, force: bool) -> Token:
        connection, _ = _rows(connection_id)
        try:
            return Token.from_json(fresh_token(connection, force))
        except ApiError as error:
            raise ERRORS.get(error.code, KeeperError)(error.status, error.code, error.message) from None

    def token(self, connection_id: str) -> Token:
        """The stored token, refreshed through the workers first when it is due."""
        return self._token(connection_id, force=False)

    def refresh(self, connection_id: str) -> Token:
        """A refreshed token, sharing a refresh already under way."""
        return self._token(connection_id, force=True)

    def api_base_url(self, connection_id: str) -> str | None:
        """The integration's API base URL."""
        return _rows(connection_id)[1].api_base_url


def call(connection_id: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The status and the answer (JSON, else text) of one call, through a session held to the egress
    rules of the integration's provider (pinned, checked addresses)."""
    rules = egress_rules(runtime().settings, _rows(connection_id)[1].provider)
    response = RespondIO(ServiceTokens(), connection_id, session=http_session(rules)).request(method, path, json=body)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text
