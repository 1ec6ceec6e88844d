"""One call to a provider's API with a connection's token, for `flask --app web connections call`.

It goes through the client package (`oauth_keeper_client.RespondIO`), so the operator's call meets
the same policy as a tenant's: one refresh on 401, waits on 429/449, retries of idempotent calls.
Its tokens come from `ServiceTokens`: the path of `GET …/token` and `POST …/refresh` itself, so a
refresh is still the workers' single flight under the connection's lock, never a call of our own
to the token endpoint. (The CLI cannot act as the tenant instead: API keys are kept only as hashes.)"""
from __future__ import annotations

from typing import Any

from oauth_keeper_client import ClientError, NeedsReauth, NotFound, RespondIO, Revoked, ServiceUnavailable, Token
from oauth_keeper_client.errors import KeeperError

from shared.egress import ForbiddenAddress, check_public
from shared.integrations import public_only
from shared.models import Connection, Integration
from web import runtime
from web.errors import ApiError
from web.tokens import fresh_token

ERRORS: dict[str, type[KeeperError]] = {"needs_reauth": NeedsReauth, "revoked": Revoked, "not_found": NotFound,
                                        "refresh_pending": ServiceUnavailable}


class ServiceTokens:
    """The client's token source inside the service, reading the database directly."""

    def _connection(self, connection_id: str) -> tuple[Connection, Integration]:
        with runtime().db.session() as session:
            connection = session.get(Connection, connection_id)
            integration = session.get(Integration, connection.integration_id) if connection else None
        if connection is None or integration is None:
            raise NotFound(404, "not_found", "connection not found")
        return connection, integration

    def _token(self, connection_id: str, force: bool) -> Token:
        connection, _ = self._connection(connection_id)
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
        """The integration's API base URL, held to the egress rule of its token URL."""
        _, integration = self._connection(connection_id)
        if integration.api_base_url and public_only(runtime().settings, integration.provider):
            try:
                check_public(integration.api_base_url)
            except ForbiddenAddress as error:
                raise ClientError(f"connection {connection_id}: its api_base_url is not allowed: {error}") from None
        return integration.api_base_url


def call(connection_id: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The status and the answer (JSON, else text) of one call."""
    response = RespondIO(ServiceTokens(), connection_id).request(method, path, json=body)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text
