"""API errors: JSON with a stable code, as the contract fixes it."""
from __future__ import annotations

from flask import Response, request
from werkzeug.exceptions import BadRequest

from web.schemas import Error, ErrorBody, FieldError
from web.serializers import answer


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def response(self) -> Response:
        """The JSON response of this error."""
        details = [FieldError(**item) for item in self.details] if self.details is not None else None
        response = answer(Error(error=ErrorBody(code=self.code, message=self.message, details=details)),
                          self.status, exclude_none=True)
        response.headers.update(self.headers)
        return response


def not_found(what: str) -> ApiError:
    """404 for an unknown id and for another tenant's id alike."""
    return ApiError(404, "not_found", f"{what} not found")


def refuse_unreadable_input() -> None:
    """400 (a page, or JSON under /api) for a query string whose raw bytes are not UTF-8,
    which Flask would fail to parse, and for a NUL character in the path or the query,
    which PostgreSQL cannot compare or store: either would otherwise end in a 500."""
    try:
        request.query_string.decode()
    except UnicodeDecodeError:
        raise BadRequest("The query string is not valid UTF-8.") from None
    if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        raise BadRequest("NUL characters are not accepted.")
