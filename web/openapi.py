"""The OpenAPI 3.1 document, generated from the routes and the models of `web/schemas.py`.

A view documents itself with `@operation(...)`: its id, tag, answers by status (each
naming a model), and its body and query models. The generator walks the app's url_map,
so a documented route's path, method and path parameters come from Flask itself, and
every schema comes from pydantic (`$defs` become `components/schemas`). What every
operation under a prefix shares (the API key, 401, 429, the body errors) is added here."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from web.schemas import Error

Schema = dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])

JSON, HTML, TEXT = "application/json", "text/html", "text/plain"
REF = "#/components/schemas/"
ATTRIBUTE = "openapi_operation"


@dataclass(frozen=True)
class Answer:
    """One documented answer: its media types (each with a model, or None for text),
    the error codes it may carry, and its headers (name → description)."""

    description: str
    content: dict[str, type[BaseModel] | None] = field(default_factory=dict)
    codes: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


def ok(model: type[BaseModel], description: str, **headers: str) -> Answer:
    """A JSON answer of this model."""
    return Answer(description, {JSON: model}, headers=headers)


def error(description: str, *codes: str, **headers: str) -> Answer:
    """A JSON error whose `error.code` is one of `codes`."""
    return Answer(description, {JSON: Error}, codes, headers)


def page(description: str) -> Answer:
    """A readable HTML page."""
    return Answer(description, {HTML: None})


def text(description: str) -> Answer:
    """Plain text."""
    return Answer(description, {TEXT: None})


def redirect(description: str, location: str) -> Answer:
    """A redirect, and where it goes."""
    return Answer(description, headers={"Location": location})


RETRY_AFTER = "seconds to wait before trying again"
UNAUTHORIZED = error("The API key is missing or unknown", "unauthorized", **{"WWW-Authenticate": "Bearer challenge"})
RATE_LIMITED = error("Over API_RATE_LIMIT for this tenant", "rate_limited", **{"Retry-After": RETRY_AFTER})
RATE_LIMITED_PAGE = Answer("Over BROWSER_RATE_LIMIT for this address", {HTML: None},
                           headers={"Retry-After": RETRY_AFTER})
BODY_ERRORS = {
    400: error("The body is not a JSON object", "invalid_json"),
    413: error("The body is larger than 256 KiB", "request_entity_too_large"),
    422: error("Fields are missing or invalid; `details` names each", "invalid_fields"),
}
# What every operation under a path prefix answers besides its own (public ones excepted);
# those under the API's prefix also need the bearer API key.
BAD_INPUT = error("A NUL character in the path or query, or a query string that is not UTF-8", "bad_request")
BAD_INPUT_PAGE = page("A NUL character in the path or query, or a query string that is not UTF-8")
TOO_LONG = page("The request line is longer than the server accepts (gunicorn: 4094 bytes)")
PREFIX_ANSWERS: dict[str, dict[int, Answer]] = {
    "/api/v1/": {400: BAD_INPUT, 401: UNAUTHORIZED, 414: TOO_LONG, 429: RATE_LIMITED},
    "/connect/": {400: BAD_INPUT_PAGE, 414: TOO_LONG, 429: RATE_LIMITED_PAGE},
    "/oauth/callback": {400: BAD_INPUT_PAGE, 414: TOO_LONG, 429: RATE_LIMITED_PAGE},
}
SECURED_PREFIX = "/api/v1/"


@dataclass(frozen=True)
class Operation:
    """What `@operation` records on a view."""

    operation_id: str
    tag: str
    answers: dict[int, Answer]
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    public: bool
    summary: str


def operation(operation_id: str, tag: str, answers: dict[int, Answer], *, body: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, public: bool = False) -> Callable[[View], View]:
    """Document a view: put it under the route decorator. `public` drops the blueprint's
    shared answers and security (the document itself needs no key)."""

    def mark(view: View) -> View:
        summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else operation_id
        setattr(view, ATTRIBUTE, Operation(operation_id, tag, answers, body, query, public, summary))
        return view

    return mark


def document(app: Flask) -> dict[str, Any]:
    """The app's document, generated on first use and then kept (treat it as read-only)."""
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = _generate(app)
    return app.extensions["openapi"]


def _template(rule: str) -> str:
    """Flask's `/a/<id>` (or `<path:id>`) as OpenAPI's `/a/{id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


class _Models:
    """The models the document names, turned into schemas together at the end."""

    def __init__(self) -> None:
        self.used: dict[tuple[type[BaseModel], str], None] = {}

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> Schema:
        self.used[(model, mode)] = None
        return {"$ref": REF + model.__name__}

    def schemas(self) -> dict[str, Schema]:
        refs, top = models_json_schema(list(self.used), ref_template=REF + "{model}")  # type: ignore[arg-type]
        names = {ref["$ref"].removeprefix(REF) for ref in refs.values()}
        assert names == {model.__name__ for model, _ in self.used}, "two models share a name"
        return top.get("$defs", {})


def _without_null(schema: Schema) -> Schema:
    """A query parameter is absent rather than null."""
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default") or (k == "default" and v is not None)}
    return {**rest, **options[0]} if len(options) == 1 else rest


def _query_parameters(query: type[BaseModel], models: _Models) -> list[Schema]:
    models.ref(query, "validation")  # for the enums its fields name
    schema = query.model_json_schema(ref_template=REF + "{model}")
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _without_null(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        parameter: Schema = {"name": name, "in": "query", "required": name in schema.get("required", []),
                             "schema": prop}
        parameters.append({**parameter, "description": description} if description else parameter)
    return parameters


def _answer(answer: Answer, models: _Models) -> Schema:
    result: Schema = {"description": answer.description}
    content: Schema = {}
    for media, model in answer.content.items():
        if model is None:
            content[media] = {"schema": {"type": "string"}}
        elif answer.codes and model is Error:
            overlay = {"properties": {"error": {"properties": {"code": {"enum": list(answer.codes)}}}}}
            content[media] = {"schema": {"allOf": [models.ref(Error), overlay]}}
        else:
            content[media] = {"schema": models.ref(model)}
    if content:
        result["content"] = content
    if answer.headers:
        result["headers"] = {name: {"description": description,
                                    "schema": {"type": "integer"} if name == "Retry-After" else {"type": "string"}}
                             for name, description in answer.headers.items()}
    return result


def _merged(shared: Answer, own: Answer) -> Answer:
    """The operation's own answer, with the codes of a shared error of the same status."""
    if own.codes and shared.codes:
        return replace(own, codes=own.codes + tuple(c for c in shared.codes if c not in own.codes))
    return own


def _operation(op: Operation, path: str, models: _Models) -> Schema:
    answers = dict(op.answers)
    if not op.public:
        for prefix, shared in PREFIX_ANSWERS.items():
            if path.startswith(prefix):
                answers = {**shared, **{s: _merged(shared[s], a) if s in shared else a for s, a in answers.items()}}
    result: Schema = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.query is not None:
        result["parameters"] = _query_parameters(op.query, models)
    if op.body is not None:
        answers = {**BODY_ERRORS, **{s: _merged(BODY_ERRORS[s], a) if s in BODY_ERRORS else a
                                     for s, a in answers.items()}}
        result["requestBody"] = {"required": True, "content": {JSON: {"schema": models.ref(op.body, "validation")}}}
    result["responses"] = {str(status): _answer(answers[status], models) for status in sorted(answers)}
    if path.startswith(SECURED_PREFIX) and not op.public:
        result["security"] = [{"bearerAuth": []}]
    return result


def _generate(app: Flask) -> dict[str, Any]:
    models = _Models()
    paths: dict[str, Schema] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op: Operation | None = getattr(app.view_functions.get(rule.endpoint), ATTRIBUTE, None)
        if op is None:
            continue  # undocumented: the sandbox, static files
        path = _template(rule.rule)
        item = paths.setdefault(path, {})
        names = re.findall(r"{([^}]+)}", path)
        if names:
            item["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                  for name in names]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            item[method.lower()] = _operation(op, path, models)
    return {
        "openapi": "3.1.0",
        "info": {"title": "OAuth token service", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": models.schemas(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "a tenant API key"}},
        },
    }
