"""Settings: read from the environment once, in one place, and passed in."""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from limits import parse_many
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE = f"sqlite:///{ROOT / 'var' / 'oauth.db'}"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """Every setting of the contract, with its default."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = DEFAULT_SQLITE
    redis_url: str = DEFAULT_REDIS_URL
    public_base_url: str = "http://127.0.0.1:8000"
    secret_key: str = Field(min_length=16)
    token_encryption_keys: str = Field(min_length=1)
    refresh_margin_seconds: int = Field(default=600, ge=1)
    refresh_sweep_seconds: int = Field(default=60, ge=1)
    token_wait_seconds: float = Field(default=10, gt=0)
    # How long a web process may serve an API key's tenant or a connection row from
    # its memory; announcements drop entries at once, this bounds a missed one. 0: off.
    token_cache_seconds: float = Field(default=30, ge=0, le=60)
    sandbox_provider: bool = False
    # Let integrations name token and revocation URLs on loopback or private
    # networks (an on-premises OAuth server, development). Off for a hosted service.
    allow_private_provider_urls: bool = False
    # Bounds one call to a provider: connecting, then the whole answer; so a call
    # lasts at most about twice this.
    http_timeout_seconds: float = Field(default=10, gt=0)
    # The refresh lock's TTL; by default above the longest provider call. A smaller
    # value is a misconfiguration that the fenced write still survives.
    refresh_lock_seconds: float | None = Field(default=None, gt=0)
    # Provider calls in flight per provider host (host:port), across every worker: one
    # tenant's stalling token endpoint then holds no more than this many calls.
    provider_concurrency: int = Field(default=8, ge=1)
    # How long a host whose calls keep failing (timeouts, 5xx) is left alone before a
    # probe call may test it again (the circuit breaker's open time).
    provider_breaker_seconds: float = Field(default=30, gt=0)
    # Threads per worker process (Celery's -c wins when given).
    worker_concurrency: int = Field(default=32, ge=1)
    # Database connections per process: a request or task holds one only while it
    # talks to the database (never while it waits on a provider or a refresh), so a
    # few kept-open connections serve many threads; overflow connections would be
    # opened and closed under load, which costs PostgreSQL a process each time.
    # Mind PostgreSQL's max_connections across processes.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    # Celery: a task's hard time limit, and the Redis visibility timeout that must
    # stay above it, or a slow task would be handed to a second worker.
    task_time_limit_seconds: int = Field(default=120, ge=5)
    # How long events, delivered webhook deliveries and ended connect sessions and
    # attempts are kept; a beat task prunes older ones.
    retention_days: int = Field(default=30, ge=1)
    # How often beat runs that pruning.
    retention_sweep_seconds: int = Field(default=3600, ge=1)
    broker_visibility_timeout_seconds: int = Field(default=3600, ge=10)
    # Rate limits (flask-limiter notation, e.g. "120/minute" or "10/second;500/hour"):
    # per client address on the browser flow, per tenant on the API.
    browser_rate_limit: str = "120/minute"
    api_rate_limit: str = "6000/minute"
    # How many proxies in front of the web add X-Forwarded-For: their entries are
    # believed for the client address, nobody else's (0: the socket's peer).
    trusted_proxy_count: int = Field(default=0, ge=0, le=10)
    # One JSON object per log line for collectors; plain text in `make dev`.
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # When set, /metrics answers only to `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: str | None = Field(default=None, min_length=16)
    # Each worker serves its own metrics on this port (off when unset).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("metrics_token", "worker_metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("browser_rate_limit", "api_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit such as '120/minute'") from None
        return value

    @field_validator("token_encryption_keys")
    @classmethod
    def _fernet_keys(cls, value: str) -> str:
        keys = [k.strip() for k in value.split(",") if k.strip()]
        if not keys:
            raise ValueError("needs at least one Fernet key")
        for position, key in enumerate(keys, 1):
            try:
                Fernet(key.encode())
            except (ValueError, TypeError):
                raise ValueError(f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes)") from None
        return value

    @model_validator(mode="after")
    def _sandbox_only_in_development(self) -> Settings:
        # The sandbox hands out tokens to anyone; a public https deployment must not mount it.
        if self.sandbox_provider and self.secure_cookies and not _is_loopback(self.public_base_url):
            raise ValueError("SANDBOX_PROVIDER must be off when PUBLIC_BASE_URL is https on a non-loopback host")
        return self

    @model_validator(mode="after")
    def _visibility_above_time_limit(self) -> Settings:
        if self.broker_visibility_timeout_seconds <= self.task_time_limit_seconds:
            raise ValueError("BROKER_VISIBILITY_TIMEOUT_SECONDS must be above TASK_TIME_LIMIT_SECONDS")
        return self

    @property
    def refresh_lock_ttl(self) -> float:
        """How long the refresh lock lives."""
        return self.refresh_lock_seconds or 2 * self.http_timeout_seconds + 5

    @property
    def redirect_uri(self) -> str:
        """The exact redirect URI registered with every provider."""
        return f"{self.public_base_url}/oauth/callback"

    @property
    def encryption_keys(self) -> list[str]:
        """Fernet keys, newest first."""
        return [k.strip() for k in self.token_encryption_keys.split(",") if k.strip()]

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry Secure when the service is reached over https."""
        return self.public_base_url.startswith("https://")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    if not problem["loc"]:
        return f"configuration error: {problem['msg'].removeprefix('Value error, ')}"
    name = str(problem["loc"][0]).upper()
    if problem["type"] == "missing":
        return f"configuration error: {name} is required"
    return f"configuration error: {name}: {problem['msg'].removeprefix('Value error, ')}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings, or stop the program with one line naming the bad one."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SystemExit(_first_problem(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
