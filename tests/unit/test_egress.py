"""Token and revocation URLs must reach public addresses only, unless allowed."""
from __future__ import annotations

import socket

import pytest

from shared.egress import ForbiddenAddress, check_public
from shared.providers import OAuthClient, ProviderError, refresh
from shared.runtime import Runtime
from shared.tenants import create_tenant
from web import create_app


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/token", "http://localhost/token", "https://10.1.2.3/token", "http://192.168.0.1/t",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/token", "http://0.0.0.0/token",
    "https://name.invalid/token",
])
def test_private_loopback_metadata_and_unresolvable_hosts_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenAddress):
        check_public(url)


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[tuple[str, int]]:
    """Make every name resolve to these addresses; return the look-ups made."""
    asked: list[tuple[str, int]] = []

    def getaddrinfo(host: str, port: int, *_: object, **__: object) -> list[tuple]:
        asked.append((host, port))
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_public_address_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _resolving_to(monkeypatch, "93.184.216.34")
    check_public("https://idp.example/oauth/token")  # raises if refused
    assert asked == [("idp.example", 443)], "the name was resolved and its address judged"


def test_a_name_with_any_non_public_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolving_to(monkeypatch, "93.184.216.34", "127.0.0.1")
    with pytest.raises(ForbiddenAddress, match="127.0.0.1"):
        check_public("https://idp.example/oauth/token")


def test_a_worker_never_posts_to_a_private_address() -> None:
    client = OAuthClient(client_id="c", client_secret="s", token_url="http://127.0.0.1:9/token")
    with pytest.raises(ProviderError) as caught:
        refresh(client, refresh_token="rt", timeout=1)
    assert caught.value.error == "forbidden_address" and caught.value.status is None


def test_the_api_refuses_a_private_token_url_unless_allowed(memory_runtime: Runtime) -> None:
    body = {"provider": "oauth2", "client_id": "c", "client_secret": "s", "authorize_url": "https://idp.example/a",
            "token_url": "http://169.254.169.254/token"}
    for allowed, status in ((False, 422), (True, 201)):
        memory_runtime.settings = memory_runtime.settings.model_copy(update={"allow_private_provider_urls": allowed})
        app = create_app(runtime_=memory_runtime)
        with memory_runtime.db.session() as session:
            _, key = create_tenant(session, "acme")
        response = app.test_client().post("/api/v1/integrations", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == status, response.get_json()
        if status == 422:
            assert response.get_json()["error"]["details"][0]["field"] == "token_url"
