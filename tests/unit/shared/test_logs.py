"""Log lines: JSON with context ids, and no secret in any of them."""
from __future__ import annotations

import base64
import json
import logging

import pytest

from shared import logs
from shared.crypto import Cipher, new_fernet_key, new_secret


def line(formatter: logging.Formatter, message: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("test", logging.WARNING, __file__, 1, message, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    return formatter.format(record)


@pytest.mark.parametrize("template", [
    "token={secret}", "access_token={secret}&x=1", '{{"refresh_token": "{secret}"}}', "code={secret}",
    "client_secret={secret}", "Authorization: Bearer {secret}", "state={secret}", "code_verifier: {secret}",
    "GET /connect/{secret} 302", "answer was {secret}, giving up", "key ok_live_{secret}",
])
def test_every_secret_shape_is_redacted(template: str) -> None:
    secret = new_secret(32)
    assert secret not in logs.redact(template.format(secret=secret))


def test_basic_credentials_and_ciphertext_are_redacted() -> None:
    basic = base64.b64encode(f"client:{new_secret(16)}".encode()).decode()
    ciphertext = Cipher([new_fernet_key()]).encrypt(new_secret(32))
    text = logs.redact(f"Authorization: Basic {basic} stored {ciphertext}")
    assert basic not in text and ciphertext not in text


def test_ids_and_uuids_stay_readable() -> None:
    text = "refresh of conn_0123456789abcdef01234567 in task 3f2a1b4c-1111-2222-3333-444455556666"
    assert logs.redact(text) == text


def test_a_json_line_carries_the_context_ids_and_redacts_the_message_and_exception() -> None:
    secret = new_secret(32)
    with logs.bound(**logs.ids_of("ten_" + "a" * 24, "conn_" + "b" * 24, "not-an-id"), task_id="t-1"):
        try:
            raise ValueError(f"provider said token={secret}")
        except ValueError as error:
            text = line(logs.JsonFormatter("worker"), "refresh failed: %s", f"Bearer {secret}", exc=error)
    record = json.loads(text)
    assert "\n" not in text
    assert record["component"] == "worker" and record["level"] == "warning"
    assert record["tenant_id"] == "ten_" + "a" * 24 and record["connection_id"] == "conn_" + "b" * 24
    assert record["task_id"] == "t-1"
    assert "ValueError" in record["exception"]
    assert secret not in text


def test_the_context_ends_with_its_block_and_text_lines_show_it() -> None:
    with logs.bound(attempt_id="att_" + "c" * 24):
        assert "attempt_id=att_" in line(logs.TextFormatter("web"), "hello")
    assert "attempt_id" not in line(logs.TextFormatter("web"), "hello")


def test_log_format_picks_the_formatter() -> None:
    assert isinstance(logs.formatter("text", "web"), logs.TextFormatter)
    assert isinstance(logs.formatter("json", "web"), logs.JsonFormatter)
