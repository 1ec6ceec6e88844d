"""The leak audit: after a connection's whole life on a running system (web, worker and
beat), no issued token, code, client secret or API key is found in the database, in
Redis (Celery messages decoded) or in any process's log, in any form it travels in.

Each step of the life is one function in STEPS that records the secrets it saw issued;
a new step (a revocation) is one more line there."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.integration import leaks
from tests.integration.conftest import StackFactory
from tests.integration.listener import Listener, Reply
from tests.integration.stack import BIN, Browser, Stack, Tenant, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Audit:
    """What one life of a connection issued, to be searched for afterwards."""

    stack: Stack
    tenant: Tenant
    client: dict[str, Any] = field(default_factory=dict)
    connection_id: str = ""
    secrets: dict[str, set[str]] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)  # endpoints the steps opened

    def saw(self, name: str, secret: str) -> None:
        """Remember a secret under a readable name, in all its forms."""
        self.secrets[f"{name} #{len(self.secrets)}"] = leaks.forms(secret)

    def saw_stored_tokens(self) -> None:
        """Remember the connection's tokens as stored now (decrypted here only)."""
        row = self.stack.row(self.connection_id)
        cipher = self.stack.runtime.cipher
        self.saw("access token", cipher.decrypt(row.access_token_enc))
        if row.refresh_token_enc:
            self.saw("refresh token", cipher.decrypt(row.refresh_token_enc))


def connect(audit: Audit) -> None:
    """A tenant, an integration and a connection made through the browser flow."""
    audit.saw("API key", audit.tenant.api_key)
    audit.client, integration = audit.tenant.sandbox_integration()
    audit.saw("client secret", audit.client["client_secret"])
    audit.secrets["client credentials (Basic)"] = leaks.basic_forms(audit.client["client_id"],
                                                                    audit.client["client_secret"])
    connect_url = audit.tenant.connect_url(integration["id"])
    audit.saw("connect link token", urlsplit(connect_url).path.rsplit("/", 1)[1])
    browser = Browser(audit.stack)
    authorize_url = browser.open_connect(connect_url)
    state = dict(parse_qsl(urlsplit(authorize_url).query))["state"]
    sealed = audit.stack.runtime.redis.get(f"state:{state}")
    audit.saw("PKCE verifier", json.loads(audit.stack.runtime.cipher.decrypt(sealed.decode()))["code_verifier"])
    callback_url = browser.decide(authorize_url)
    audit.saw("authorization code", dict(parse_qsl(urlsplit(callback_url).query))["code"])
    response = browser.callback(callback_url)
    assert response.status_code == 303, response.text
    attempt = browser.attempt(response.headers["Location"], timeout=30)
    assert attempt["status"] == "succeeded", attempt
    audit.connection_id = attempt["connection_id"]
    audit.saw_stored_tokens()
    served = audit.tenant.call("GET", f"/connections/{audit.connection_id}/token")
    assert served.status_code == 200, served.text


def refresh(audit: Audit) -> None:
    """A forced refresh through the API: the provider issues new tokens."""
    response = audit.tenant.call("POST", f"/connections/{audit.connection_id}/refresh")
    assert response.status_code == 200, response.text
    audit.saw("refreshed access token", response.json()["access_token"])
    audit.saw_stored_tokens()


def webhook_delivery(audit: Audit) -> None:
    """A webhook endpoint, and an event delivered to it (the grant revoked: needs_reauth)."""
    receiver = Listener(Reply(204))
    audit.listeners.append(receiver.__enter__())
    response = audit.tenant.call("PUT", "/webhook", json={"url": f"{receiver.url}/hooks"})
    assert response.status_code == 200, response.text
    audit.saw("webhook secret", response.json()["secret"])
    audit.stack.knobs(audit.client["client_id"], fail=["invalid_grant"])
    assert audit.tenant.call("POST", f"/connections/{audit.connection_id}/refresh").status_code == 409
    delivered = wait_for(lambda: receiver.received, timeout=30, what="the webhook delivery")
    assert json.loads(delivered[0].body)["type"] == "connection.needs_reauth"


def revoke(audit: Audit) -> None:
    """A disconnect: revoked at the provider, the tokens erased, the webhook told."""
    assert audit.tenant.call("DELETE", f"/connections/{audit.connection_id}").status_code == 202
    wait_for(lambda: audit.stack.row(audit.connection_id).access_token_enc is None, timeout=30,
             what="the tokens to be erased")
    receiver = audit.listeners[-1]
    wait_for(lambda: any(json.loads(r.body)["type"] == "connection.revoked" for r in receiver.received),
             timeout=30, what="the revoked webhook")


STEPS: list[Callable[[Audit], None]] = [
    connect,
    refresh,
    webhook_delivery,
    revoke,
]


@pytest.fixture(scope="module")
def audited_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """Web, one worker and one beat sweeping every second, each logging to its own file;
    private URLs allowed, so that a loopback listener can receive webhooks."""
    stack = stack_factory(workers=1, REFRESH_SWEEP_SECONDS="1", ALLOW_PRIVATE_PROVIDER_URLS="1")
    beat = stack.spawn("beat", [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO",
                                "--schedule", str(stack.logdir / "beat.schedule")])
    wait_for(lambda: "Sending due task" in beat.output(), timeout=30, what="beat to send")
    yield stack
    stack.stop_all()


def test_no_issued_secret_is_found_in_storage_queues_or_logs(audited_stack: Stack) -> None:
    audit = Audit(audited_stack, audited_stack.tenant("audited"))
    try:
        for step in STEPS:
            step(audit)
    finally:
        for listener in audit.listeners:
            listener.__exit__()
    assert len(audit.secrets) >= 10

    leaks.assert_nowhere(audit.secrets, {
        "the database": leaks.database_dump(audited_stack),
        "Redis": "\n".join(leaks.redis_values(audited_stack)),
        "the logs": leaks.logs(audited_stack, ["web", "w1", "beat"]),
    })
