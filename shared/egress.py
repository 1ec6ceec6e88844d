"""Where the service may send requests, and the one HTTP client that sends them.

Tenants name the URLs the workers call (token, revocation and webhook URLs), so
without a guard a tenant could make the service call its own network (SSRF). The
rules, applied alike when a URL is saved (`validate_url`) and on every call (`post`,
and the transport adapter of `http_session`):

- a URL is parsed once, by urllib3's parser, the one requests connects with;
  userinfo, backslashes, whitespace, control characters and numeric host forms
  other than canonical IP literals are refused;
- without `allow_private`, https is required where asked, and the name is resolved
  once: every address must be public, IPv6 forms that embed an IPv4 address
  (mapped, compatible, NAT64, 6to4, Teredo) judged by the address they embed;
- the call connects to the address that was checked, while TLS (SNI and the
  certificate) and `Host` keep the name; redirects are never followed and proxies
  from the environment are never used.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3._collections import RecentlyUsedContainer
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
)
from urllib3.exceptions import TimeoutError as SlowAnswer
from urllib3.util import Timeout, Url, parse_url
from urllib3.util.connection import create_connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_BODY_BYTES = 1 << 20
MAX_URL_CHARS = 2048
# Hosts as DNS names: letters, digits, hyphens, underscores, dots (after IDNA).
LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}\.?$){LABEL}(?:\.{LABEL})*\.?")
# A last label that inet_aton would read as a number (`127.1`, `0x7f.1`, `2130706433`).
NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
POOLS_KEPT = 64


class ForbiddenAddress(ValueError):
    """The URL is malformed for egress, or its host is, or resolves to, a non-public address."""


@dataclass(frozen=True)
class Rules:
    """What a call may reach: private and loopback addresses, plain http."""

    allow_private: bool = False
    require_https: bool = True

    @classmethod
    def for_tenant_urls(cls, allow_private_provider_urls: bool) -> Rules:
        """The rules of URLs a tenant names (token, revocation, webhook): https and public
        addresses, or anything when ALLOW_PRIVATE_PROVIDER_URLS is on."""
        return cls(allow_private=allow_private_provider_urls, require_https=not allow_private_provider_urls)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read in full within the deadline."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class AnswerTooLarge(Exception):
    """The answer's body went past the limit."""

    def __init__(self, status: int) -> None:
        super().__init__("answer too large")
        self.status = status


def parse(url: str, require_https: bool) -> Url:
    """The URL as urllib3 reads it, or ForbiddenAddress naming what is wrong with it."""
    if not isinstance(url, str) or not url:
        raise ForbiddenAddress("the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise ForbiddenAddress("the URL is too long")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ForbiddenAddress("the URL contains whitespace or control characters")
    if "\\" in url:
        raise ForbiddenAddress("the URL contains a backslash")
    try:
        parts = parse_url(url)
    except LocationParseError:
        raise ForbiddenAddress("the URL cannot be parsed") from None
    if parts.scheme not in ("http", "https"):
        raise ForbiddenAddress("the URL must be http or https")
    if require_https and parts.scheme != "https":
        raise ForbiddenAddress("the URL must be https")
    if parts.auth is not None or "@" in (parts.netloc or ""):
        raise ForbiddenAddress("the URL must not carry a user or password")
    if parts.fragment is not None:
        raise ForbiddenAddress("the URL must not have a fragment")
    if not parts.host:
        raise ForbiddenAddress("the URL has no host")
    if parts.port == 0:
        raise ForbiddenAddress("the URL's port is invalid")
    _literal_or_name(parts.host)
    return parts


def _literal_or_name(host: str) -> IPAddress | None:
    """The IP address a host names literally, None for a DNS name; ForbiddenAddress for
    anything else, such as the numeric forms that resolvers read as IPv4."""
    if host.startswith("["):
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ForbiddenAddress("the URL's IPv6 address is invalid") from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    if not HOSTNAME.fullmatch(host):
        raise ForbiddenAddress("the URL's host is not a valid name")
    if NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        raise ForbiddenAddress("the URL's host is a numeric form other than a plain IPv4 address")
    return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if any(address in network for network in NAT64) or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable unicast, judging embedded IPv4 by itself."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    return address.is_global and not address.is_multicast and not address.is_reserved


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the name resolves to, once (tests replace this with a stub)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise ForbiddenAddress(f"the host {host!r} does not resolve") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def pin(parts: Url, rules: Rules) -> IPAddress:
    """Resolve the URL's host once and return the address to connect to; every address
    it resolves to must be public unless the rules allow private ones."""
    host = parts.host or ""
    literal = _literal_or_name(host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = [literal] if literal is not None else resolve(host, port)
    if not addresses:
        raise ForbiddenAddress(f"the host {host!r} does not resolve")
    if not rules.allow_private:
        for address in addresses:
            if not is_public(address):
                raise ForbiddenAddress(f"the host {host!r} resolves to a non-public address ({address})")
    return addresses[0]


def validate_url(url: str, *, allow_private: bool, require_https: bool) -> str:
    """Check a URL before it is saved: well-formed, and (unless private networks are
    allowed) https where required and resolving to public addresses only."""
    parts = parse(url, require_https and not allow_private)
    if not allow_private:  # a private name may resolve only where the workers run
        pin(parts, Rules(allow_private=False, require_https=require_https))
    return url


class _PinnedConnection(HTTPConnection):
    """Opens its socket to the checked address; everything else (`Host`, and for TLS the
    SNI name and the certificate check) keeps the name."""

    def __init__(self, *args: Any, pinned_address: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned_address = pinned_address

    def _new_conn(self) -> socket.socket:
        try:
            return create_connection((self.pinned_address, self.port), self.timeout,
                                     source_address=self.source_address, socket_options=self.socket_options)
        except TimeoutError as error:
            raise ConnectTimeoutError(self, f"connecting to {self.host} timed out") from error
        except OSError as error:
            raise NewConnectionError(self, f"failed to connect to {self.host}: {error}") from error


class _PinnedHTTPConnection(_PinnedConnection):
    """Plain HTTP to the checked address."""


class _PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
    """TLS to the checked address (HTTPSConnection's connect calls `_new_conn`)."""


class _PinnedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class PinnedAdapter(HTTPAdapter):
    """A transport adapter that checks every request's URL under its rules, resolves the
    name once, and sends through a pool whose connections open to that address; `post`
    takes its pools straight from it."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._pools: RecentlyUsedContainer[tuple[str, str, int, str, bool | str | None], HTTPConnectionPool] = (
            RecentlyUsedContainer(POOLS_KEPT, dispose_func=lambda pool: pool.close()))
        self._pools_lock = threading.Lock()
        super().__init__(pool_connections=1, pool_maxsize=4, max_retries=0)

    def get_connection_with_tls_context(self, request: requests.PreparedRequest, verify: bool | str | None,
                                        proxies: Mapping[str, str] | None = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        """The pool for the request's checked address (requests calls this for every send)."""
        return self.pool_for(parse(request.url or "", self.rules.require_https), verify)

    def pool_for(self, parts: Url, verify: bool | str | None) -> HTTPConnectionPool:
        """The pool of the URL's host at the address its name resolves to now (resolved once
        per call, and refused unless the rules allow it); its connections are kept alive."""
        address = str(pin(parts, self.rules))
        scheme, host = parts.scheme or "http", parts.host or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port, address, verify)
        with self._pools_lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._new_pool(scheme, host, port, address, verify)
                self._pools[key] = pool
        return pool

    def _new_pool(self, scheme: str, host: str, port: int, address: str,
                  verify: bool | str | None) -> HTTPConnectionPool:
        if scheme == "http":
            return _PinnedHTTPPool(host, port, maxsize=4, block=False, pinned_address=address)
        kwargs: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify is not False else "CERT_NONE"}
        if isinstance(verify, str):
            kwargs["ca_certs"] = verify
        return _PinnedHTTPSPool(host, port, maxsize=4, block=False, pinned_address=address, **kwargs)

    def close(self) -> None:
        """Close every pool."""
        super().close()
        with self._pools_lock:
            self._pools.clear()


_local = threading.local()


def _adapter(rules: Rules) -> PinnedAdapter:
    """The thread's adapter for calls under these rules (its pools keep their connections alive)."""
    adapters: dict[Rules, PinnedAdapter] = _local.__dict__.setdefault("adapters", {})
    adapter = adapters.get(rules)
    if adapter is None:
        adapter = adapters[rules] = PinnedAdapter(rules)
    return adapter


def http_session(rules: Rules) -> requests.Session:
    """The thread's pooled session for calls under these rules: pinned addresses, and no
    proxies or netrc from the environment. Send through `post`, which never follows redirects."""
    sessions: dict[Rules, requests.Session] = _local.__dict__.setdefault("sessions", {})
    session = sessions.get(rules)
    if session is None:
        session = sessions[rules] = requests.Session()
        session.trust_env = False
        adapter = _adapter(rules)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


class Unreachable(Exception):
    """No answer: the connection could not be made, or broke, or TLS failed."""


class TimedOut(Unreachable):
    """No answer in time: connecting, the first byte, or the whole answer by the deadline."""


def post(url: str, rules: Rules, *, timeout: float, data: Mapping[str, str] | bytes | None = None,
         headers: Mapping[str, str] | None = None, verify: bool | str = True) -> Answer:
    """POST once under the rules: a form (`data` as a mapping) or raw bytes, straight through
    the thread's pinned pool (no proxies, no redirects followed, no retries). Connecting and
    the first byte of the answer are each bounded by `timeout`, and the whole answer must
    have arrived `timeout` after the start, so a call lasts at most about twice the timeout.
    Raises ForbiddenAddress, AnswerTooLarge, TimedOut or Unreachable."""
    deadline = time.monotonic() + timeout
    parts = parse(url, rules.require_https)
    sent = {"Accept-Encoding": "gzip, deflate", "Accept": "*/*", **(headers or {})}
    if isinstance(data, Mapping):
        body: bytes | None = urlencode(list(data.items())).encode()
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    else:
        body = data
    try:
        response = _adapter(rules).pool_for(parts, verify).urlopen(
            "POST", parts.request_uri, body=body, headers=sent, retries=False, redirect=False,
            assert_same_host=False, timeout=Timeout(connect=timeout, read=timeout), preload_content=False,
            decode_content=True)
    except NewConnectionError as error:  # refused or unroutable (urllib3 files it under timeouts)
        raise Unreachable(f"no answer: {type(error).__name__}: {error}") from error
    except (SlowAnswer, TimeoutError) as error:
        raise TimedOut(f"no answer in time: {type(error).__name__}") from error
    except (HTTPError, OSError) as error:
        raise Unreachable(f"no answer: {type(error).__name__}: {error}") from error
    try:
        body_read = bytearray()
        # read1 returns whatever has arrived, so the deadline is checked as bytes come.
        while chunk := response.read1(16384, decode_content=True):
            body_read += chunk
            if len(body_read) > MAX_BODY_BYTES:
                raise AnswerTooLarge(response.status)
            if time.monotonic() > deadline:
                raise TimedOut("the answer did not arrive in time")
    except (SlowAnswer, TimeoutError) as error:
        raise TimedOut(f"the answer stopped coming: {type(error).__name__}") from error
    except (HTTPError, OSError) as error:
        raise Unreachable(f"the answer broke off: {type(error).__name__}: {error}") from error
    finally:
        # Read to its end, the connection went back to the pool already; cut short, it is closed.
        response.close()
        response.release_conn()
    return Answer(response.status, response.headers, bytes(body_read))
