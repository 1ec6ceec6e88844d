"""Schemathesis against the live service's own document (`/api/v1/openapi.json`, served by
gunicorn over real Redis and a real database): every operation, generated valid and
invalid inputs, no 5xx, and every answer's status, content type, headers and body as
documented. Bounded: a few dozen examples per operation."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def live(stack_factory: Callable[..., Stack]) -> Iterator[dict[str, Any]]:
    """A system of its own (its link and API budgets far above what the run sends), with
    a tenant that has an integration and a connection through the sandbox."""
    stack = stack_factory(workers=1, BROWSER_RATE_LIMIT="100000/hour", API_RATE_LIMIT="100000/hour",
                          ALLOW_PRIVATE_PROVIDER_URLS="1")  # generated URLs are never resolved
    tenant = stack.tenant()
    _, connection_id = tenant.connected()
    integration_id = tenant.call("GET", f"/connections/{connection_id}").json()["integration_id"]
    yield {"stack": stack, "headers": {"Authorization": f"Bearer {tenant.api_key}"},
           "ids": {"connection_id": connection_id, "integration_id": integration_id}}


EXAMPLES = 20


def _run(operation: Any, mode: GenerationMode, headers: dict[str, str], examples: int = EXAMPLES,
         **fixed: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={**(case.headers or {}), **headers}, checks=CHECKS, timeout=30)

    run()


def test_every_answer_matches_the_document_and_none_is_a_5xx(live: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(f"{live['stack'].base_url}/api/v1/openapi.json")
    tried, failures = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        # Generated ids find nothing; the tenant's own ids reach its rows (200s, tokens, refreshes).
        own = {name: value for name, value in live["ids"].items() if f"{{{name}}}" in operation.path}
        runs = [(GenerationMode.POSITIVE, {}), (GenerationMode.NEGATIVE, {})] + (
            [(GenerationMode.POSITIVE, own)] if own else [])
        for mode, fixed in runs:
            label = f"{operation.label} ({mode.value}{', own ids' if fixed else ''})"
            tried.append(label)
            try:
                _run(operation, mode, live["headers"], 5 if fixed else EXAMPLES, **fixed)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, label  # nothing of it can be made invalid
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - gather every failure, then fail once
                failures.append(f"{label}: {error}")
    assert len(tried) >= 2 * 15 + 5, tried
    assert not failures, "\n\n".join(failures)
