"""The code exchange against the sandbox: a blip is retried, a definitive answer is not."""
from __future__ import annotations

import pytest

from tests.integration.stack import Browser, Stack

pytestmark = pytest.mark.integration


def _code_grants(stack: Stack, client: dict[str, str]) -> int:
    return stack.sandbox_stats(client["client_id"])["token_requests"]["authorization_code"]


def test_a_provider_that_answers_503_once_then_succeeds_still_connects(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    stack.knobs(client["client_id"], fail=["503"])
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "succeeded", attempt
    assert _code_grants(stack, client) == 2
    assert tenant.call("GET", f"/connections/{attempt['connection_id']}/token").status_code == 200


def test_two_5xx_in_a_row_are_retried_until_it_connects(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    stack.knobs(client["client_id"], fail=["500", "502"])
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "succeeded", attempt
    assert _code_grants(stack, client) == 3


@pytest.mark.parametrize("answer", ["invalid_grant", "429"])
def test_a_4xx_answer_is_never_retried(stack: Stack, answer: str) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    stack.knobs(client["client_id"], fail=[answer])
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "failed" and attempt["error"] in ("invalid_grant", "temporarily_unavailable")
    assert _code_grants(stack, client) == 1
    assert tenant.call("GET", "/connections").json()["data"] == []


def test_a_provider_that_keeps_failing_fails_the_attempt_after_a_few_tries(stack: Stack) -> None:
    from worker.exchange import MAX_TRIES

    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    stack.knobs(client["client_id"], fail=["503"] * 10)
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    assert attempt == {"status": "failed", "error": "temporarily_unavailable"}
    assert _code_grants(stack, client) == MAX_TRIES
