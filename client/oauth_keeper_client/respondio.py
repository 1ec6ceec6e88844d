"""`RespondIO`: respond.io's API v2 with a connection's token: one refresh on 401, waits on
429 and 449, bounded retries of idempotent calls on 5xx and dropped connections."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import requests

from oauth_keeper_client.errors import ClientError, RateLimited, RespondIOError, TokenRejected
from oauth_keeper_client.keeper import retry_after
from oauth_keeper_client.records import Channel, Contact, SentMessage, WorkspaceUser
from oauth_keeper_client.tokens import TokenCache, TokenSource, shared_cache

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CONTACT_FIELDS = {"first_name": "firstName", "last_name": "lastName", "email": "email", "phone": "phone",
                  "language": "language", "profile_pic": "profilePic", "country_code": "countryCode"}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a call tries. Waits on 429/449 follow `Retry-After`; 5xx backoff doubles from `backoff`."""

    max_retries: int = 3  # 5xx and dropped connections, idempotent calls only
    backoff: float = 0.5
    max_backoff: float = 8.0
    rate_limit_waits: int = 3  # 429/449 answers waited out per call
    max_wait: float = 60.0  # a longer Retry-After raises RateLimited at once
    default_wait: float = 1.0  # when a 429/449 carries no Retry-After

    def backoff_for(self, attempt: int) -> float:
        """The pause before retry number `attempt` (1-based), with up to 25 % jitter."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (1 + random.random() / 4)


def _identifier(identifier: str) -> str:
    kind, sep, value = identifier.partition(":")
    if not sep or kind not in ("id", "email", "phone") or not value:
        raise ValueError("a contact identifier is id:…, email:… or phone:…")
    return quote(identifier, safe=":@+")


def _contact_body(fields: dict[str, Any], custom_fields: dict[str, Any] | None) -> dict[str, Any]:
    unknown = set(fields) - CONTACT_FIELDS.keys()
    if unknown:
        raise TypeError(f"unknown contact fields: {', '.join(sorted(unknown))}")
    body = {CONTACT_FIELDS[name]: value for name, value in fields.items() if value is not None}
    if custom_fields:
        body["custom_fields"] = [{"name": name, "value": value} for name, value in custom_fields.items()]
    return body


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class RespondIO:
    """respond.io's API v2 for one connection. Thread-safe; every client of the same source and
    connection in a process shares one kept token, so threads meeting a 401 share one refresh."""

    def __init__(self, keeper: TokenSource, connection_id: str, *, base_url: str | None = None,
                 session: requests.Session | None = None, policy: RetryPolicy | None = None,
                 timeout: float | tuple[float, float] = (5.0, 30.0), token_margin_seconds: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.keeper, self.connection_id = keeper, connection_id
        self._base_url = base_url.rstrip("/") if base_url else None
        self._session = session or requests.Session()
        self.policy = policy or RetryPolicy()
        self._timeout, self._sleep = timeout, sleep
        self._tokens: TokenCache = shared_cache(keeper, connection_id, token_margin_seconds)

    def __repr__(self) -> str:
        return f"RespondIO(connection_id={self.connection_id!r})"

    @property
    def base_url(self) -> str:
        """The integration's `api_base_url` (read once), unless one was given."""
        if self._base_url is None:
            url = self.keeper.api_base_url(self.connection_id)
            if not url:
                raise ClientError(f"connection {self.connection_id}: its integration has no api_base_url; "
                                  "pass base_url=")
            self._base_url = url.rstrip("/")
        return self._base_url

    def _url(self, path: str) -> str:
        """The URL of a path under the API: never another host, which would receive the token."""
        parts = urlsplit(path)
        if not path.startswith("/") or path.startswith("//") or parts.scheme or parts.netloc:
            raise ValueError("path must be a path under the API base URL, such as /contact/email:a@b.c")
        return self.base_url + path

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                idempotent: bool | None = None) -> requests.Response:
        """One call with the connection's token, after the retries the policy allows; any status comes back.

        Raises TokenRejected on a second 401, RateLimited past the allowed waits, RespondIOError when the
        connection drops for good, and NeedsReauth/Revoked/… from the service as they are."""
        method = method.upper()
        url = self._url(path)
        retry_failures = method in IDEMPOTENT if idempotent is None else idempotent
        token = self._tokens.current()
        refreshed, failures, waits = False, 0, 0
        while True:
            try:
                response = self._session.request(method, url, params=params, json=json, timeout=self._timeout,
                                                 headers={"Authorization": f"Bearer {token.access_token}",
                                                          "Accept": "application/json"})
            except (requests.ConnectionError, requests.Timeout) as error:
                if not retry_failures or failures >= self.policy.max_retries:
                    raise RespondIOError(self.connection_id, 0, None, f"connection {self.connection_id}: {method} "
                                         f"{path} got no answer ({type(error).__name__})") from None
                failures += 1
                self._sleep(self.policy.backoff_for(failures))
                continue
            status = response.status_code
            if status == 401:
                if refreshed:
                    raise TokenRejected(self.connection_id, status, _json(response),
                                        f"connection {self.connection_id}: respond.io answered 401 to a token "
                                        "refreshed just before")
                token, refreshed = self._tokens.replace(token), True
                continue
            if status in (429, 449):
                wait = retry_after(response.headers.get("Retry-After"))
                wait = self.policy.default_wait if wait is None else wait
                if waits >= self.policy.rate_limit_waits or wait > self.policy.max_wait:
                    raise RateLimited(f"connection {self.connection_id}: respond.io answered {status}", wait, status)
                waits += 1
                self._sleep(wait)
                continue
            if status >= 500 and retry_failures and failures < self.policy.max_retries:
                failures += 1
                self._sleep(self.policy.backoff_for(failures))
                continue
            return response

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
             idempotent: bool | None = None) -> Any:
        """`request`, then the JSON of a success, or RespondIOError with the status and body."""
        response = self.request(method, path, params=params, json=json, idempotent=idempotent)
        if response.status_code >= 400:
            raise RespondIOError(self.connection_id, response.status_code, _json(response))
        return _json(response) if response.content else None

    def _pages(self, method: str, path: str, body: Any = None, limit: int = 50) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paged list: `{"items", "pagination": {"next"}}`, `cursorId` in `next`."""
        params: dict[str, Any] = {"limit": limit}
        while True:
            page = self.call(method, path, params=params, json=body, idempotent=True)
            yield from page.get("items", [])
            following = (page.get("pagination") or {}).get("next")
            cursor = parse_qs(urlsplit(following).query).get("cursorId") if following else None
            if not cursor:
                return
            params = {"limit": limit, "cursorId": cursor[0]}

    # --- typed helpers ---------------------------------------------------------------

    def get_contact(self, identifier: str) -> Contact:
        """The contact `id:…`, `email:…` or `phone:…`."""
        return Contact.from_json(self.call("GET", f"/contact/{_identifier(identifier)}"))

    def create_contact(self, identifier: str, *, custom_fields: dict[str, Any] | None = None,
                       **fields: Any) -> Contact:
        """A new contact `email:…` or `phone:…`; fields: first_name, last_name, email, phone, language,
        profile_pic, country_code."""
        body = _contact_body(fields, custom_fields)
        return Contact.from_json(self.call("POST", f"/contact/{_identifier(identifier)}", json=body))

    def update_contact(self, identifier: str, *, custom_fields: dict[str, Any] | None = None,
                       **fields: Any) -> Contact:
        """Change the given fields of a contact; the others stay."""
        body = _contact_body(fields, custom_fields)
        return Contact.from_json(self.call("PUT", f"/contact/{_identifier(identifier)}", json=body))

    def list_contacts(self, search: str = "", *, page_size: int = 50) -> Iterator[Contact]:
        """Every contact (matching `search`), page after page."""
        body = {"search": search, "timezone": "UTC", "filter": {"$and": []}}
        return (Contact.from_json(item) for item in self._pages("POST", "/contact/list", body, page_size))

    def send_message(self, identifier: str, text: str, *, channel_id: int | None = None) -> SentMessage:
        """A text message to a contact, on a channel or the contact's last one. Never retried on a 5xx."""
        body: dict[str, Any] = {"message": {"type": "text", "text": text}}
        if channel_id is not None:
            body["channelId"] = channel_id
        return SentMessage.from_json(self.call("POST", f"/contact/{_identifier(identifier)}/message", json=body))

    def list_channels(self, *, page_size: int = 50) -> list[Channel]:
        """The workspace's channels."""
        return [Channel.from_json(item) for item in self._pages("GET", "/space/channel", limit=page_size)]

    def list_users(self, *, page_size: int = 50) -> list[WorkspaceUser]:
        """The workspace's users."""
        return [WorkspaceUser.from_json(item) for item in self._pages("GET", "/space/user", limit=page_size)]
