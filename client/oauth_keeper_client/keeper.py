"""`Keeper`: oauth-keeper's tenant API, `/api/v1`, with typed answers and typed errors."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from oauth_keeper_client.errors import KeeperError, NeedsReauth, NotFound, RateLimited, Revoked, ServiceUnavailable
from oauth_keeper_client.models import Connection, ConnectSession, Integration, Token

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read: `…/token` may wait for a refresh (TOKEN_WAIT_SECONDS)


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error(response: requests.Response) -> Exception:
    """The typed exception of an error answer."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.reason or "error"
    status = response.status_code
    if status == 404:
        return NotFound(status, code, message)
    if status == 409 and code == "needs_reauth":
        return NeedsReauth(status, code, message)
    if status == 409 and code == "revoked":
        return Revoked(status, code, message)
    if status == 429:
        return RateLimited(f"oauth-keeper: {message}", retry_after(response.headers.get("Retry-After")))
    if status in (502, 503, 504):
        return ServiceUnavailable(status, code, message, retry_after(response.headers.get("Retry-After")))
    return KeeperError(status, code, message)


class Keeper:
    """oauth-keeper's API for one tenant. Thread-safe: share one per process."""

    def __init__(self, base_url: str, api_key: str, *, session: requests.Session | None = None,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._session = session or requests.Session()
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Keeper({self.base_url!r})"  # never the key

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None) -> Any:
        """One call to `/api/v1{path}`: the JSON answer, or the typed error."""
        try:
            response = self._session.request(method, f"{self.base_url}/api/v1{path}", json=json, params=params,
                                             headers=self._headers, timeout=self._timeout)
        except requests.RequestException as error:
            raise ServiceUnavailable(0, "unreachable", f"oauth-keeper did not answer: {type(error).__name__}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json() if response.content else None

    # --- integrations ---------------------------------------------------------------

    def create_integration(self, provider: str, client_id: str, client_secret: str, scopes: list[str],
                           **fields: Any) -> Integration:
        """Register an OAuth app (`api_base_url`, URLs and the rest go in `fields`)."""
        body = {"provider": provider, "client_id": client_id, "client_secret": client_secret, "scopes": scopes,
                **fields}
        return Integration.from_json(self.request("POST", "/integrations", json=body))

    def integrations(self) -> list[Integration]:
        """The tenant's integrations."""
        return [Integration.from_json(item) for item in self.request("GET", "/integrations")["data"]]

    def integration(self, integration_id: str) -> Integration:
        """One integration."""
        return Integration.from_json(self.request("GET", f"/integrations/{integration_id}"))

    # --- connect sessions and connections -------------------------------------------

    def create_connect_session(self, integration_id: str, end_user_id: str, *, return_url: str | None = None,
                               connection_id: str | None = None) -> ConnectSession:
        """A connect link for one end user; with `connection_id`, it re-authorizes that connection."""
        body: dict[str, Any] = {"integration_id": integration_id, "end_user_id": end_user_id}
        if return_url:
            body["return_url"] = return_url
        if connection_id:
            body["connection_id"] = connection_id
        return ConnectSession.from_json(self.request("POST", "/connect-sessions", json=body))

    def connections(self, *, end_user_id: str | None = None, integration_id: str | None = None,
                    status: str | None = None) -> Iterator[Connection]:
        """Every matching connection, following the cursor page by page."""
        params = {name: value for name, value in
                  (("end_user_id", end_user_id), ("integration_id", integration_id), ("status", status)) if value}
        while True:
            page = self.request("GET", "/connections", params=params)
            yield from (Connection.from_json(item) for item in page["data"])
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def connection(self, connection_id: str) -> Connection:
        """One connection (no token)."""
        return Connection.from_json(self.request("GET", f"/connections/{connection_id}"))

    def token(self, connection_id: str) -> Token:
        """The connection's access token, refreshed first by the service when it is due."""
        return Token.from_json(self.request("GET", f"/connections/{connection_id}/token"))

    def refresh(self, connection_id: str) -> Token:
        """A new access token now; concurrent calls share one refresh at the provider."""
        return Token.from_json(self.request("POST", f"/connections/{connection_id}/refresh"))

    def delete_connection(self, connection_id: str) -> None:
        """Disconnect: the service revokes the tokens at the provider and erases them."""
        self.request("DELETE", f"/connections/{connection_id}")

    def api_base_url(self, connection_id: str) -> str | None:
        """The API base URL of the connection's integration."""
        return self.integration(self.connection(connection_id).integration_id).api_base_url
