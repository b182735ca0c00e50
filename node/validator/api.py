"""The validator's HTTP routes: thin handlers over `ValidatorNode` (node/validator/service.py).

Reads are public. Writes are authenticated by what they carry: a bundle by its receipts' signatures, each
recovered and checked against the assigned, staked worker (I3). Admin actions need the node's admin
token as `Authorization: Bearer TOKEN`. Every error is JSON (errors.py) and a refused request writes
nothing.
"""

from __future__ import annotations

import hmac
import re
import time

from aiohttp import web
from eth_utils import is_checksum_address, to_checksum_address

from node.validator.app import NODE
from node.http.json_errors import ApiError

_JOB_ID = re.compile(r"^0x[0-9a-fA-F]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
MAX_PAGE = 500
JOB_STATUSES = ("awaiting_bundle", "queued", "validating", "done")


def register(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/bundles", submit_bundle)
    r.add_get("/v1/jobs", list_jobs)
    r.add_get("/v1/jobs/{job_id}", get_job)
    r.add_get("/v1/jobs/{job_id}/evidence", get_evidence)
    r.add_get("/v1/leaderboard", leaderboard)
    r.add_get("/v1/slashes", slashes)
    r.add_get("/v1/workers/{address}", get_worker)
    r.add_get("/v1/workers/{address}/reward-proof", get_reward_proof)
    r.add_get("/v1/epochs", epochs)
    r.add_post("/v1/admin/epochs/close", admin_close_epoch)
    r.add_get("/metrics", metrics)
    r.add_get("/health", health)
    r.add_get("/openapi.json", openapi)


async def submit_bundle(request: web.Request) -> web.Response:
    node = request.app[NODE]
    node.metrics.bundles_received.inc()
    try:
        body = await request.read()  # past client_max_size: 413
        result = await node.submit_bundle(body)
    except ApiError as error:
        node.metrics.bundles_refused.labels(error.code).inc()
        raise
    except web.HTTPRequestEntityTooLarge:
        node.metrics.bundles_refused.labels("body_too_large").inc()
        raise
    return web.json_response(result, status=202)


async def get_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    job = await request.app[NODE].job(job_id)
    if job is None:
        raise ApiError(404, "unknown_job", f"no bundle for job {job_id}")
    return web.json_response(job)


async def list_jobs(request: web.Request) -> web.Response:
    limit = _limit(request)
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(400, "bad_query", f"status must be one of {', '.join(JOB_STATUSES)}")
    return web.json_response({"items": await request.app[NODE].jobs(limit=limit, status=status)})


async def get_evidence(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    evidence = await request.app[NODE].evidence(job_id)
    if evidence is None:
        raise ApiError(404, "no_evidence", f"no evidence for job {job_id}: unknown, not decided yet, or soft-invalidated")
    return web.json_response(evidence)


async def leaderboard(request: web.Request) -> web.Response:
    return web.json_response({"items": await request.app[NODE].leaderboard(limit=_limit(request))})


async def slashes(request: web.Request) -> web.Response:
    return web.json_response({"items": await request.app[NODE].slashes(limit=_limit(request))})


async def get_worker(request: web.Request) -> web.Response:
    address = _address(request)
    worker = await request.app[NODE].worker(address)
    if worker is None:
        raise ApiError(404, "unknown_worker", f"no worker {address}")
    return web.json_response(worker)


async def get_reward_proof(request: web.Request) -> web.Response:
    """What `stagewise claim --validator URL` sends to the contract: public, since the root is on chain."""
    address = _address(request)
    raw = request.query.get("epoch")
    epoch = _positive_int(raw, 2**63 - 1) if raw is not None else None
    if raw is not None and epoch is None:
        raise ApiError(400, "bad_query", "epoch must be a positive integer")
    proof = await request.app[NODE].ledger.reward_proof(address, epoch)
    if proof is None:
        which = f"epoch {epoch}" if epoch is not None else "the latest epoch"
        raise ApiError(404, "no_reward", f"{address} has no reward in {which} (or that epoch is not closed)")
    return web.json_response(proof.to_json())


def _address(request: web.Request) -> str:
    address = request.match_info["address"]
    if not _ADDRESS.match(address):
        raise ApiError(400, "bad_address", "a worker address is 0x and 40 hex digits")
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise ApiError(400, "bad_address", "mixed-case address with a wrong EIP-55 checksum (a typo?)")
    return to_checksum_address(address.lower())


async def epochs(request: web.Request) -> web.Response:
    return web.json_response({"items": await request.app[NODE].epochs(limit=_limit(request))})


async def admin_close_epoch(request: web.Request) -> web.Response:
    node = request.app[NODE]
    _require_admin(request)
    epoch = await node.close_epoch(force=True)
    if epoch is None:
        raise ApiError(409, "nothing_to_close", "no journal entries since the last epoch")
    return web.json_response(epoch, status=201)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    await node.refresh_gauges()
    response = web.Response(body=node.metrics.render())
    response.content_type = "text/plain"
    response.charset = "utf-8"
    return response


async def health(request: web.Request) -> web.Response:
    started = time.perf_counter()
    report = await request.app[NODE].health()
    report["checked_in_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


async def openapi(request: web.Request) -> web.Response:
    from node.validator.app import OPENAPI_EXTRA_PATHS
    from node.validator.openapi import document

    return web.json_response(document(extra_paths=request.app[OPENAPI_EXTRA_PATHS]))


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise ApiError(400, "bad_job_id", "a job id is 0x and 64 hex digits")
    return job_id.lower()


def _limit(request: web.Request) -> int:
    limit = _positive_int(request.query.get("limit", "100"), MAX_PAGE)
    if limit is None:
        raise ApiError(400, "bad_query", f"limit must be an integer in [1, {MAX_PAGE}]")
    return limit


def _positive_int(raw: str, most: int) -> int | None:
    """`raw` as an integer in [1, most], else None. ASCII digits only: str.isdigit() also admits '²', which
    int() then refuses."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        return None
    value = int(raw)
    return value if 1 <= value <= most else None


def _require_admin(request: web.Request) -> None:
    token = request.app[NODE].config.admin_token
    if not token:
        raise ApiError(403, "admin_disabled", "this node has no admin token; start it with --admin-token-file or STAGEWISE_ADMIN_TOKEN")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
        raise ApiError(401, "unauthorized", "admin actions need 'Authorization: Bearer <admin token>'")
