"""`flask --app web tenants rotate-key` against a running system: the old key stops working at once."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.stack import BIN, ROOT, Stack

pytestmark = pytest.mark.integration


def test_a_rotated_api_key_answers_401_at_once_and_the_new_one_works(stack: Stack) -> None:
    tenant = stack.tenant("rotating-tenant")
    assert tenant.call("GET", "/integrations").status_code == 200  # the web has seen the old key

    done = subprocess.run([str(BIN / "flask"), "--app", "web", "tenants", "rotate-key", tenant.id], cwd=ROOT,
                          env=stack.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["id"] == tenant.id and printed["api_key"] != tenant.api_key

    old = tenant.call("GET", "/integrations")
    assert old.status_code == 401 and old.json()["error"]["code"] == "unauthorized"
    tenant.api_key = printed["api_key"]
    assert tenant.call("GET", "/integrations").status_code == 200
