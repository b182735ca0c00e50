"""The OpenAPI 3.1 document of the validator API, served at /openapi.json: generated, not written.

Each API module declares its routes once as a table of `Route`s (method, path, handler, request and
response models, parameters, error statuses) and registers them with `add_routes`, which both adds them to
the aiohttp router and records them in `app[OPENAPI_ROUTES]`. `document(routes)` turns that table into the
document: a path item per route, its summary from the handler's docstring, and every model's JSON Schema
(`model_json_schema`, the same types that validate the requests) under `components/schemas`. Clients, the
dashboard and the fuzz tests (tests/validator/test_fuzz.py) read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from node.http.json_errors import ErrorBody

OPENAPI_ROUTES: web.AppKey[list] = web.AppKey("openapi_routes", list)
REF_TEMPLATE = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    """A path or query parameter: its name, where it is, and the type its values have."""

    name: str
    where: str  # "path" or "query"
    kind: Any

    def to_openapi(self) -> dict[str, Any]:
        schema = TypeAdapter(self.kind).json_schema(ref_template=REF_TEMPLATE)
        return {"name": self.name, "in": self.where, "required": self.where == "path", "schema": schema}


@dataclass(frozen=True)
class Route:
    """One route of the API, as served and as documented. `handler` None: served by aiohttp itself (static files)."""

    method: str
    path: str
    handler: Callable[[web.Request], Any] | None
    request: type | None = None  # the body's model (validated by the handler's parser)
    response: type | None = None  # the success body's model; None: `description` only
    status: int = 200
    errors: Sequence[int] = ()
    parameters: Sequence[Param] = ()
    description: str = "success"
    content_type: str = "application/json"
    admin: bool = False  # needs `Authorization: Bearer <admin token>`
    summary: str | None = None  # default: the first paragraph of the handler's docstring
    more: dict[int, tuple[type | None, str]] = field(default_factory=dict)  # other answers: status -> (model, description)

    def summary_text(self) -> str:
        text = self.summary or (self.handler.__doc__ if self.handler is not None else None) or ""
        return " ".join(text.strip().split("\n\n")[0].split())


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Serve `routes` on `app` and list them in its OpenAPI document."""
    if OPENAPI_ROUTES not in app:
        app[OPENAPI_ROUTES] = []
    for route in routes:
        if route.handler is not None and route.method == "GET":
            app.router.add_get(route.path, route.handler)  # and HEAD, as aiohttp's add_get always did
        elif route.handler is not None:
            app.router.add_route(route.method, route.path, route.handler)
        app[OPENAPI_ROUTES].append(route)


def _models(routes: Sequence[Route]) -> list[type]:
    found: dict[type, None] = {ErrorBody: None}
    for route in routes:
        for model in (route.request, route.response, *(model for model, _ in route.more.values())):
            if model is not None:
                found[model] = None
    return list(found)


def _titles(models: Sequence[type], schemas: dict[str, Any]) -> dict[str, str]:
    renamed = {}
    for model in models:
        title = getattr(model, "model_config", {}).get("title")
        if title and title != model.__name__ and model.__name__ in schemas and title not in schemas:
            renamed[model.__name__] = title
    return renamed


def _renamed(schema: Any, renamed: dict[str, str]) -> Any:
    """`schema` with its references to the models in `renamed` pointing at their new names."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in renamed:
            schema = {**schema, "$ref": REF_TEMPLATE.format(model=renamed[ref.rsplit("/", 1)[-1]])}
        return {key: _renamed(value, renamed) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_renamed(value, renamed) for value in schema]
    return schema


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (an app's `app[OPENAPI_ROUTES]`, or one module's route table)."""
    routes = list(routes)
    models = _models(routes)
    refs, definitions = models_json_schema([(m, "validation") for m in models], ref_template=REF_TEMPLATE)
    schemas = definitions.get("$defs", {})
    renamed = _titles(models, schemas)
    if renamed:  # a model named for Python (BundleBody) is shown by its title (Bundle)
        refs = {key: _renamed(ref, renamed) for key, ref in refs.items()}
        schemas = {renamed.get(name, name): _renamed(schema, renamed) for name, schema in schemas.items()}

    def body(model: type | None, description: str, content_type: str = "application/json") -> dict[str, Any]:
        schema = refs[(model, "validation")] if model is not None else {}
        if content_type != "application/json":
            schema = {"type": "string"}
        return {"description": description, "content": {content_type: {"schema": schema}}} if schema else {"description": description}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {"summary": route.summary_text()}
        if route.parameters:
            operation["parameters"] = [p.to_openapi() for p in route.parameters]
        if route.request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[(route.request, "validation")]}}}
        if route.admin:
            operation["security"] = [{"adminToken": []}]
        responses = {str(route.status): body(route.response, route.description, route.content_type)}
        responses.update({str(status): body(model, text) for status, (model, text) in route.more.items()})
        responses.update({str(status): body(ErrorBody, "error") for status in route.errors})
        operation["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stagewise validator",
            "version": "1",
            "description": "Bundle intake, verdicts, rewards and slashes of a stagewise validator node. "
            'Every error is {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
