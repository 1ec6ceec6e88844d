"""API errors: JSON with a stable code, as the contract fixes it."""
from __future__ import annotations

from typing import Any

from flask import Response, jsonify


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def response(self) -> Response:
        """The JSON response of this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        response = jsonify({"error": body})
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def not_found(what: str) -> ApiError:
    """404 for an unknown id and for another tenant's id alike."""
    return ApiError(404, "not_found", f"{what} not found")
