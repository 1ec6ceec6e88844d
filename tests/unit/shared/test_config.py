"""Settings: defaults, and one clear line for a missing or bad one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import load_settings
from shared.crypto import new_fernet_key

BIN = Path(sys.executable).parent
REQUIRED = {"secret_key": "0123456789abcdef0123", "token_encryption_keys": new_fernet_key()}


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "PUBLIC_BASE_URL", "REFRESH_MARGIN_SECONDS", "REFRESH_SWEEP_SECONDS",
                 "TOKEN_WAIT_SECONDS", "SANDBOX_PROVIDER", "HTTP_TIMEOUT_SECONDS", "REFRESH_LOCK_SECONDS",
                 "RETENTION_DAYS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(**REQUIRED)
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("var/oauth.db")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.redirect_uri == "http://127.0.0.1:8000/oauth/callback"
    timings = (settings.refresh_margin_seconds, settings.refresh_sweep_seconds, settings.token_wait_seconds)
    assert timings == (600, 60, 10)
    assert settings.sandbox_provider is False
    assert settings.refresh_lock_ttl > settings.http_timeout_seconds
    assert settings.retention_days == 30


def test_a_bad_value_names_the_setting() -> None:
    with pytest.raises(SystemExit, match="REFRESH_MARGIN_SECONDS"):
        load_settings(**REQUIRED, refresh_margin_seconds="soon")
    with pytest.raises(SystemExit, match="RETENTION_DAYS"):
        load_settings(**REQUIRED, retention_days=0)


def test_the_visibility_timeout_must_exceed_the_task_time_limit() -> None:
    with pytest.raises(SystemExit, match="BROKER_VISIBILITY_TIMEOUT_SECONDS must be above"):
        load_settings(**REQUIRED, task_time_limit_seconds=600, broker_visibility_timeout_seconds=300)


@pytest.mark.parametrize("keys", ["not-a-key", " , ", new_fernet_key() + ",short"])
def test_invalid_token_encryption_keys_stop_the_program_with_one_line(keys: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_settings(secret_key=REQUIRED["secret_key"], token_encryption_keys=keys)
    message = str(stopped.value)
    assert message.startswith("configuration error: TOKEN_ENCRYPTION_KEYS") and "\n" not in message
    assert "short" not in message and "not-a-key" not in message, "a key is never echoed"


@pytest.mark.parametrize(("base", "refused"), [
    ("https://keeper.example.com", True), ("https://10.0.0.5:8443", True),
    ("http://keeper.example.com", False), ("https://127.0.0.1:8443", False), ("https://localhost", False),
    ("https://[::1]:8443", False),
])
def test_the_sandbox_refuses_to_start_on_a_public_https_base_url(base: str, refused: bool) -> None:
    if refused:
        with pytest.raises(SystemExit, match="^configuration error: SANDBOX_PROVIDER must be off"):
            load_settings(**REQUIRED, sandbox_provider=True, public_base_url=base)
    else:
        assert load_settings(**REQUIRED, sandbox_provider=True, public_base_url=base).sandbox_provider
    assert not load_settings(**REQUIRED, sandbox_provider=False, public_base_url=base).sandbox_provider


def test_an_invalid_key_stops_the_web_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SECRET_KEY": REQUIRED["secret_key"],
           "TOKEN_ENCRYPTION_KEYS": "not-a-fernet-key"}
    result = subprocess.run([str(BIN / "flask"), "--app", "web", "db", "upgrade"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "configuration error: TOKEN_ENCRYPTION_KEYS: key 1 is not a Fernet key (32 url-safe base64-encoded bytes)"]


@pytest.mark.parametrize("command", [
    [str(BIN / "flask"), "--app", "web", "db", "upgrade"],
    [str(BIN / "celery"), "-A", "worker", "worker"],
])
def test_a_missing_required_setting_stops_the_program_with_one_line(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(command, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["configuration error: SECRET_KEY is required"]
