"""The validator's aiohttp application, composable.

`build_app(node, registrars=...)` returns an app with the validator's routes (api.py), JSON errors, a
request body limit (413 beyond it), metrics, health and the OpenAPI document. Other parts of the node add
their own routes by passing registrars, callables `registrar(app) -> None` that run before the app is
frozen; orchestration keeps its state in `app[ORCHESTRATOR]`. Every module adds its routes with
`node.validator.openapi.add_routes`, which also lists them in `app[OPENAPI_ROUTES]` for /openapi.json.

State every handler can reach: node/validator/app_state.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from node.http.json_errors import json_errors
from node.http.limits import HttpGuard
from node.validator import api, insight_api
from node.validator.app_state import NODE
from node.validator.dashboard import register_dashboard
from node.validator.openapi import OPENAPI_ROUTES

Registrar = Callable[[web.Application], None]


def build_app(
    node: Any, registrars: Iterable[Registrar] = (), *, dashboard: bool = True, guard: HttpGuard | None = None
) -> web.Application:
    """`guard`: the per-client limits (node/http/limits.py); install it on the runner too, after setup."""
    middlewares = [json_errors] + ([guard.middleware] if guard is not None else [])
    app = web.Application(middlewares=middlewares, client_max_size=node.config.max_body_bytes)
    app[NODE] = node
    app[OPENAPI_ROUTES] = []
    api.register(app)
    insight_api.register(app)
    for registrar in registrars:
        registrar(app)
    if dashboard:
        register_dashboard(app)
    return app
