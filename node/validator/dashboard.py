"""The web dashboard: one static page and its JavaScript over the validator's public API.

Nothing is built: `dashboard/` is served as it is (index.html, app.js, format.js, style.css, and the chart
library uPlot, vendored from npm under `dashboard/vendor/` with its licence), and the page fetches the same
JSON that the CLI and other clients read (orchestrator progress, groups, standings, the time series, slashes
per worker, epochs, jobs; node/validator/insight_api.py), so what a person sees is what the API says.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from node.validator.openapi import Route, add_routes

DASHBOARD_DIR = Path(__file__).with_name("dashboard")


async def _index(request: web.Request) -> web.FileResponse:
    """The dashboard's page"""
    return web.FileResponse(DASHBOARD_DIR / "index.html")


def register_dashboard(app: web.Application) -> None:
    """Serve the dashboard at `/` and its assets under `/dashboard/`."""
    app.router.add_static("/dashboard/", DASHBOARD_DIR)
    add_routes(app, (
        Route("GET", "/", _index, content_type="text/html", description="HTML"),
        Route("GET", "/dashboard/{filename}", None, summary="The dashboard's scripts and styles (static files)",
              content_type="application/octet-stream", errors=(404,), description="the file"),
    ))
