"""Log lines: one JSON object per line (or plain text for `make dev`), carrying the ids
of what is being worked on, with every token, code, secret and key redacted.

Redaction happens on the finished line, so a secret can't slip through an argument,
an exception's text or a library's own message."""
from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# The ids of what a line is about, by the prefix of the id (see shared.models.new_id).
ID_FIELDS = {"ten": "tenant_id", "conn": "connection_id", "att": "attempt_id", "cs": "connect_session_id",
             "int": "integration_id", "whd": "delivery_id", "evt": "event_id"}
CONTEXT_FIELDS = (*ID_FIELDS.values(), "task_id", "task")

_context: ContextVar[Mapping[str, str]] = ContextVar("log_context", default=MappingProxyType({}))
_ID = re.compile(r"^([a-z]+)_[0-9a-f]{24}$")

REDACTED = "[redacted]"
_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # name=value and "name": "value" for every field that carries a secret
    (re.compile(r"""(?ix)
        (["']?\b(?:access_token|refresh_token|id_token|token|code|code_verifier|client_secret|secret|api_key
              |password|state|assertion)\b["']?\s*[:=]\s*["']?)
        ([^"'&\s,;}\]]+)"""), lambda m: m.group(1) + REDACTED),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"\bok_live_[A-Za-z0-9_-]+"), "ok_live_" + REDACTED),  # API keys
    (re.compile(r"\bwhsec_[A-Za-z0-9_-]+"), "whsec_" + REDACTED),  # webhook signing secrets
    (re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{20,}"), "[encrypted]"),  # Fernet ciphertext
    (re.compile(r"/connect/(?!attempts/)[A-Za-z0-9_-]{16,}"), "/connect/<token>"),  # single-use links
    # Any other long random-looking run (opaque tokens and codes, JWT segments): mixed
    # case and digits, 32+ characters; ids (`conn_` + hex) and UUIDs don't match.
    (re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[0-9])"
                r"[A-Za-z0-9_-]{32,}"), REDACTED),
)


def redact(text: str) -> str:
    """The text with every secret we know the shape of replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def ids_of(*values: object) -> dict[str, str]:
    """Context fields for the ids among `values` (`conn_…` → connection_id, …)."""
    found: dict[str, str] = {}
    for value in values:
        if not isinstance(value, str):
            continue
        match = _ID.match(value)
        if match and match.group(1) in ID_FIELDS:
            found[ID_FIELDS[match.group(1)]] = value
    return found


def bind(**fields: str | None) -> None:
    """Add fields to the context of every line logged from here on, in this thread."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


def clear() -> None:
    """Forget the context (a request or task is over)."""
    _context.set({})


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """The fields in the context for the `with` block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context ids, exception."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": redact(record.getMessage()),
            **_context.get(),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the same context and redaction."""

    def __init__(self, component: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {component} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={v}" for k, v in _context.get().items())
        return redact(super().format(record) + (f" [{context}]" if context else ""))


def formatter(log_format: str, component: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT (`json` or `text`)."""
    return TextFormatter(component) if log_format == "text" else JsonFormatter(component)


def configure(log_format: str, component: str, level: str = "INFO") -> None:
    """Send every log line of the process, through one handler on stderr, in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, component))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def gunicorn_logconfig(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error and access logs, and the app's, in one format."""
    handler = {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": "shared.logs.formatter", "log_format": log_format, "component": "web"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"handlers": ["stderr"], "level": level, "propagate": False}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }
