"""The egress guard: one parser, one resolution, the checked address connected to.

Every bypass is refused when the integration is created and again when a worker
calls, under a resolver stub (DNS rebinding: a public answer first, loopback after)."""
from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from shared import egress
from shared.egress import ForbiddenAddress, Rules, is_public, validate_url
from shared.providers import OAuthClient, ProviderError, refresh
from shared.runtime import Runtime
from shared.tenants import create_tenant
from web import create_app

PUBLIC = "93.184.216.34"
STRICT = Rules(allow_private=False, require_https=True)
PRIVATE_OK = Rules(allow_private=True, require_https=False)


class Resolver:
    """Answers names from a table; `rebind.test` answers a public address once, loopback after."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.table = {"idp.test": [PUBLIC], "inside.test": ["10.1.2.3"], "mixed.test": [PUBLIC, "127.0.0.1"],
                      "localhost": ["127.0.0.1"], "provider.test": ["127.0.0.1"], "six.test": ["::1"]}

    def __call__(self, host: str, port: int) -> list[egress.IPAddress]:
        self.calls.append(host)
        if host == "rebind.test":
            answer = [PUBLIC] if self.calls.count(host) == 1 else ["127.0.0.1"]
        elif host in self.table:
            answer = self.table[host]
        else:
            raise ForbiddenAddress(f"the host {host!r} does not resolve")
        return [ipaddress.ip_address(a) for a in answer]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    stub = Resolver()
    monkeypatch.setattr(egress, "resolve", stub)
    return stub


class _Listener(BaseHTTPRequestHandler):
    """A token endpoint on loopback that records what reaches it."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Listener.seen.append((self.path, self.headers.get("Host", "")))
        body = b'{"access_token": "at", "expires_in": 60}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(context: ssl.SSLContext | None = None) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    _Listener.seen = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def listener() -> Iterator[int]:
    yield from _serve()


# Each reaches the loopback listener (port {port}) if the guard lets it through.
BYPASSES = [
    "{scheme}://127.0.0.1:{port}\\@idp.test/token",  # urllib.parse reads idp.test, urllib3 127.0.0.1
    "{scheme}://idp.test@127.0.0.1:{port}/token",
    "{scheme}://user:pass@idp.test:{port}/token",
    "{scheme}://127.0.0.1:{port}/token",
    "{scheme}://localhost:{port}/token",
    "{scheme}://[::1]:{port}/token",
    "{scheme}://[::ffff:127.0.0.1]:{port}/token",  # IPv4-mapped
    "{scheme}://[::127.0.0.1]:{port}/token",  # IPv4-compatible
    "{scheme}://[64:ff9b::7f00:1]:{port}/token",  # NAT64
    "{scheme}://[2002:7f00:1::1]:{port}/token",  # 6to4
    "{scheme}://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/token",  # Teredo, client 127.0.0.1
    "{scheme}://2130706433:{port}/token",  # 127.0.0.1 as one number
    "{scheme}://0x7f.1:{port}/token",
    "{scheme}://127.1:{port}/token",
    "{scheme}://0177.0.0.1:{port}/token",
    "{scheme}://inside.test:{port}/token",
    "{scheme}://mixed.test:{port}/token",  # one private address among public ones is enough
    "{scheme}://six.test:{port}/token",
    "{scheme}://169.254.169.254:{port}/latest/meta-data",
    "{scheme}://100.64.0.1:{port}/token",
    "{scheme}://idp.test:{port}/to ken",
    "{scheme}://idp.test:{port}/to\tken",
    "{scheme}://idp.test:{port}/token\r\nX-Injected: 1",
    "{scheme}://idp.test\x00.evil:{port}/token",
    "{scheme}://nowhere.test:{port}/token",
]


def _api(rt: Runtime, allow_private: bool = False):  # type: ignore[no-untyped-def]
    rt.settings = rt.settings.model_copy(update={"allow_private_provider_urls": allow_private})
    app = create_app(runtime_=rt)
    with rt.db.session() as session:
        _, key = create_tenant(session, "acme")
    client = app.test_client()

    def create(**fields: str):  # type: ignore[no-untyped-def]
        body = {"provider": "oauth2", "client_id": "c", "client_secret": "s",
                "authorize_url": "https://idp.test/authorize", "token_url": "https://idp.test/token", **fields}
        return client.post("/api/v1/integrations", json=body, headers={"Authorization": f"Bearer {key}"})

    return create


@pytest.mark.parametrize("template", BYPASSES)
def test_a_bypass_is_refused_at_creation(template: str, memory_runtime: Runtime, resolver: Resolver) -> None:
    create = _api(memory_runtime)
    for field in ("token_url", "revoke_url"):
        response = create(**{field: template.format(scheme="https", port=8443)})
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["error"]["code"] == "invalid_fields"


@pytest.mark.parametrize("template", BYPASSES)
def test_a_bypass_is_refused_at_call_time_and_nothing_is_sent(template: str, listener: int,
                                                              resolver: Resolver) -> None:
    url = template.format(scheme="http", port=listener)
    client = OAuthClient(client_id="c", client_secret="s", token_url=url,
                         rules=Rules(allow_private=False, require_https=False))
    with pytest.raises(ProviderError) as caught:
        refresh(client, refresh_token="rt", timeout=2)
    assert caught.value.error == "forbidden_address", caught.value
    assert _Listener.seen == []


def test_dns_rebinding_passes_creation_but_the_call_is_refused(memory_runtime: Runtime, listener: int,
                                                               resolver: Resolver) -> None:
    response = _api(memory_runtime)(token_url=f"https://rebind.test:{listener}/token")
    assert response.status_code == 201, "the first answer was public"
    client = OAuthClient(client_id="c", client_secret="s", token_url=f"http://rebind.test:{listener}/token",
                         rules=Rules(allow_private=False, require_https=False))
    with pytest.raises(ProviderError) as caught:
        refresh(client, refresh_token="rt", timeout=2)
    assert caught.value.error == "forbidden_address"
    assert resolver.calls == ["rebind.test", "rebind.test"], "one resolution at creation, one per call"
    assert _Listener.seen == []


def test_plain_http_is_refused_unless_private_provider_urls_are_allowed(memory_runtime: Runtime,
                                                                         resolver: Resolver) -> None:
    refused = _api(memory_runtime)(token_url="http://idp.test/token")
    assert refused.status_code == 422 and "https" in refused.get_json()["error"]["message"]
    with pytest.raises(ForbiddenAddress, match="https"):
        egress.parse("http://idp.test/token", require_https=True)
    assert _api(memory_runtime, allow_private=True)(token_url="http://10.0.0.8:8080/token").status_code == 201


def test_the_call_connects_to_the_address_resolved_once_and_keeps_the_name(listener: int,
                                                                           resolver: Resolver) -> None:
    # provider.test exists only in the stub: reaching the listener proves the socket went
    # to the address the stub answered, resolved once, with the name kept as Host.
    client = OAuthClient(client_id="c", client_secret="s", token_url=f"http://provider.test:{listener}/token",
                         rules=PRIVATE_OK)
    assert refresh(client, refresh_token="rt", timeout=5).access_token == "at"
    assert refresh(client, refresh_token="rt", timeout=5).access_token == "at"
    assert _Listener.seen == [("/token", f"provider.test:{listener}")] * 2
    assert resolver.calls == ["provider.test", "provider.test"], "exactly one resolution per call"


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[tuple[int, str, list[str]]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("provider.test").configure_cert(context)
    names: list[str] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    for port in _serve(context):
        yield port, str(ca_file), names


def test_https_to_the_pinned_address_checks_the_certificate_and_sni_by_name(
        tls_listener: tuple[int, str, list[str]], resolver: Resolver) -> None:
    port, ca_file, names = tls_listener
    answer = egress.post(f"https://provider.test:{port}/token", PRIVATE_OK, data={"a": "b"}, timeout=5,
                         verify=ca_file)
    assert answer.status == 200 and names == ["provider.test"]
    assert _Listener.seen == [("/token", f"provider.test:{port}")]
    resolver.table["other.test"] = ["127.0.0.1"]  # same address, a name the certificate does not carry
    with pytest.raises(Exception, match="certificate|hostname|match"):
        egress.post(f"https://other.test:{port}/token", PRIVATE_OK, timeout=5, verify=ca_file)


def test_proxies_from_the_environment_are_never_used(listener: int, resolver: Resolver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{listener}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(egress, "_local", threading.local())  # a fresh session, built under these variables
    egress.post(f"http://provider.test:{listener}/token", PRIVATE_OK, timeout=5)
    assert _Listener.seen == [("/token", f"provider.test:{listener}")], "sent directly, not as a proxy request"


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("::ffff:93.184.216.34", True), ("64:ff9b::5db8:d822", True), ("2002:5db8:d822::1", True),
    ("::93.184.216.34", True), ("2001:0:4136:e378:8000:63bf:a247:27dd", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fc00::1", False), ("::ffff:10.0.0.1", False), ("::10.0.0.1", False), ("64:ff9b::a9fe:a9fe", False),
    ("64:ff9b:1::a00:1", False), ("2002:a9fe:a9fe::", False), ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),
    ("ff02::1", False),
])
def test_embedded_ipv4_is_judged_by_the_address_it_embeds(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_validate_url_accepts_a_public_https_url(resolver: Resolver) -> None:
    assert validate_url("https://idp.test/oauth/token?x=1", allow_private=False, require_https=True)
    with pytest.raises(ForbiddenAddress):
        validate_url("https://idp.test/token#frag", allow_private=False, require_https=True)
    with pytest.raises(ForbiddenAddress, match="user"):
        validate_url("http://u@10.0.0.1/token", allow_private=True, require_https=False)


@pytest.mark.parametrize("url", [
    "http://10.0.0.1:8080\\@idp.test/token", "http://user@10.0.0.1/token", "http://:pw@10.0.0.1/token",
    "http://10.0.0.1/to ken", "http://10.0.0.1/to\tken", "http://10.0.0.1/token\x7f", "http://10.0.0.1\x00/token",
    "http://10.0.0.1/token#part", "http://2130706433/token", "http://0x7f.1/token", "http://127.1/token",
    "http://0177.0.0.1/token", "http://idp..test/token", "http://idp.test:0/token", "ftp://idp.test/token",
    "http:///token", "//idp.test/token",
])
def test_malformed_urls_are_refused_even_where_private_addresses_are_allowed(url: str) -> None:
    with pytest.raises(ForbiddenAddress):
        validate_url(url, allow_private=True, require_https=False)
    with pytest.raises(ForbiddenAddress):
        egress.post(url, PRIVATE_OK, timeout=1)


@pytest.mark.parametrize("allow_private", [False, True])
def test_a_webhook_url_passes_the_same_rules(memory_runtime: Runtime, resolver: Resolver, allow_private: bool) -> None:
    memory_runtime.settings = memory_runtime.settings.model_copy(update={"allow_private_provider_urls": allow_private})
    app = create_app(runtime_=memory_runtime)
    with memory_runtime.db.session() as session:
        _, key = create_tenant(session, "acme")

    def put(url: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return app.test_client().put("/api/v1/webhook", json={"url": url}, headers=headers).status_code

    assert put("https://idp.test/hook") == 200
    assert put("http://10.0.0.1:9\\@idp.test/hook") == 422
    assert put("http://user@idp.test/hook") == 422
    assert put("https://inside.test/hook") == (200 if allow_private else 422)
