"""Where the workers may send requests: a tenant names the token and revocation URLs,
so without a check a tenant could make the service call its own network (SSRF)."""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class ForbiddenAddress(ValueError):
    """The URL's host is, or resolves to, an address that is not public."""


def check_public(url: str) -> None:
    """Raise ForbiddenAddress unless every address of the URL's host is a global one
    (no loopback, private, link-local or cloud-metadata address)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ForbiddenAddress("the URL has no host")
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise ForbiddenAddress(f"the host {host!r} does not resolve") from error
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ForbiddenAddress(f"the host {host!r} resolves to a non-public address ({address})")
