"""Read-only routes the dashboard draws from (node/validator/insight.py), public like every read.

    GET /v1/standings                      clean workers first, then the slashed; net = rewards - slashed
    GET /v1/stats/series?bucket_s=60       rewards, slashes, jobs and verified tokens/s per time bucket
    GET /v1/slashes/by-worker              slashes collapsed per worker: count, amount, the latest
    GET /v1/workers/{address}/jobs         the jobs a worker served, with verdicts and the verifier's why
    GET /v1/workers/{address}/entries      its journal entries (kind=reward or slash to filter)
    GET /v1/workers/{address}/claimable    what it can claim with the latest closed epoch's root
    GET /v1/tasks                          per task and model: accepted samples, checked, correct, pass rate
"""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field

from node.http.json_errors import ApiError
from node.validator import insight
from node.validator.api import address_of, limit, offset, positive_int
from node.validator.app_state import NODE
from node.validator.openapi import Param, Route, add_routes
from node.validator.schemas import AddressText, Claimable, Limit, Offset, Page, Series

BUCKETS = (10, 60, 300, 3600, 86400)
EntryKind = Literal["reward", "slash", "stake", "unstake", "soft_invalidation"]


def register(app: web.Application) -> None:
    add_routes(app, ROUTES)


async def standings(request: web.Request) -> web.Response:
    """Workers ranked clean first, then slashed; by total reward within each (net = rewards - slashed shown)"""
    return web.json_response(await insight.standings(request.app[NODE].ledger, offset(request), limit(request)))


async def series(request: web.Request) -> web.Response:
    """Rewards, slashes, jobs and verified tokens/s per time bucket, oldest first (the newest journal entries)"""
    bucket_s = positive_int(request.query.get("bucket_s", "60"), max(BUCKETS))
    if bucket_s not in BUCKETS:
        raise ApiError(400, "bad_query", f"bucket_s must be one of {', '.join(map(str, BUCKETS))}")
    buckets = positive_int(request.query.get("buckets", "120"), 1000)
    if buckets is None:
        raise ApiError(400, "bad_query", "buckets must be an integer in [1, 1000]")
    return web.json_response(await insight.series(request.app[NODE].ledger, bucket_s, buckets))


async def slashed_workers(request: web.Request) -> web.Response:
    """Slashes collapsed per worker: count, amount, and the latest one's time, job and reason; most slashed first"""
    return web.json_response(await insight.slashed_workers(request.app[NODE].ledger, offset(request), limit(request)))


async def worker_jobs(request: web.Request) -> web.Response:
    """The jobs a worker served a stage of, newest first: verdict, the verifier's reason, its reward or slash"""
    address = address_of(request)
    return web.json_response(await insight.worker_jobs(request.app[NODE].ledger, address, offset(request), limit(request)))


async def worker_entries(request: web.Request) -> web.Response:
    """A worker's journal entries, newest first (kind=reward or kind=slash for one kind)"""
    address = address_of(request)
    kind = request.query.get("kind")
    if kind is not None and kind not in EntryKind.__args__:
        raise ApiError(400, "bad_query", f"kind must be one of {', '.join(EntryKind.__args__)}")
    page = await request.app[NODE].ledger.worker_history(address, offset(request), limit(request), [kind] if kind else None)
    return web.json_response(page.to_json())


async def worker_claimable(request: web.Request) -> web.Response:
    """What a worker can claim on chain with the latest closed epoch's rewards root, and what waits for the next"""
    address = address_of(request)
    node = request.app[NODE]
    standing = await node.ledger.worker(address)
    if standing is None:
        raise ApiError(404, "unknown_worker", f"no worker {address}")
    return web.json_response({"worker": address, **await insight.claimable(node.ledger, address, standing.rewards)})


async def tasks(request: web.Request) -> web.Response:
    """Per task and model, by task id: accepted samples, how many a checker judged, how many passed, the pass rate"""
    page = await request.app[NODE].ledger.tasks(offset(request), limit(request))
    return web.json_response(page.to_json())


_PAGE = (Param("limit", "query", Limit), Param("offset", "query", Offset))
_WORKER = Param("address", "path", AddressText)
_BUCKET = Annotated[int, Field(json_schema_extra={"enum": list(BUCKETS)}, description="seconds per bucket")]
_BUCKETS = Annotated[int, Field(ge=1, le=1000, description="how many buckets, newest")]

ROUTES = (
    Route("GET", "/v1/standings", standings, response=Page, parameters=_PAGE, errors=(400,), description="standings"),
    Route("GET", "/v1/stats/series", series, response=Series,
          parameters=(Param("bucket_s", "query", _BUCKET), Param("buckets", "query", _BUCKETS)), errors=(400,),
          description="the time series"),
    Route("GET", "/v1/slashes/by-worker", slashed_workers, response=Page, parameters=_PAGE, errors=(400,),
          description="slashed workers"),
    Route("GET", "/v1/workers/{address}/jobs", worker_jobs, response=Page, parameters=(_WORKER, *_PAGE),
          errors=(400,), description="the worker's jobs"),
    Route("GET", "/v1/workers/{address}/entries", worker_entries, response=Page,
          parameters=(_WORKER, *_PAGE, Param("kind", "query", EntryKind)), errors=(400,), description="entries"),
    Route("GET", "/v1/workers/{address}/claimable", worker_claimable, response=Claimable, parameters=(_WORKER,),
          errors=(400, 404), description="the claimable amount"),
    Route("GET", "/v1/tasks", tasks, response=Page, parameters=_PAGE, errors=(400,), description="tasks"),
)
