"""Connect links survive previews: opening a link does not spend it, a successful
attempt does, and two browsers racing one link make one connection."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.stack import Browser, Stack

pytestmark = pytest.mark.integration


def test_a_previewed_link_still_connects(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    connect_url = tenant.connect_url(integration["id"])
    for _ in range(2):  # a chat app's preview and a mail scanner: GET, never following
        preview = requests.get(connect_url, allow_redirects=False, timeout=5)
        assert preview.status_code == 302, preview.text

    attempt = Browser(stack).connect(connect_url)
    assert attempt["status"] == "succeeded", attempt
    assert tenant.call("GET", f"/connections/{attempt['connection_id']}").json()["status"] == "active"

    spent = requests.get(connect_url, allow_redirects=False, timeout=5)
    assert spent.status_code == 410
    assert "already used" in spent.text and spent.headers["Content-Type"].startswith("text/html")


def test_two_browsers_racing_one_link_make_one_connection(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    # A slow token endpoint keeps both exchanges in flight together, so the claim of
    # the link after the provider's answer is what decides between them.
    stack.knobs(client["client_id"], latency_ms=1500)
    connect_url = tenant.connect_url(integration["id"])
    browsers = [Browser(stack), Browser(stack)]
    callbacks = [browser.decide(browser.open_connect(connect_url)) for browser in browsers]

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda pair: pair[0].callback(pair[1]), zip(browsers, callbacks, strict=True)))
    assert [answer.status_code for answer in answers] == [303, 303]
    attempts = [browser.attempt(answer.headers["Location"], timeout=30)
                for browser, answer in zip(browsers, answers, strict=True)]

    outcomes = sorted((a["status"], a.get("error")) for a in attempts)
    assert outcomes == [("failed", "link_already_used"), ("succeeded", None)], attempts
    connections = tenant.call("GET", "/connections").json()["data"]
    assert [c["id"] for c in connections] == [a["connection_id"] for a in attempts if a["status"] == "succeeded"]
    assert tenant.events(connections[0]["id"]) == ["created"]
    assert requests.get(connect_url, allow_redirects=False, timeout=5).status_code == 410
