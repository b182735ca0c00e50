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

from ledger import json_input
from node.http.json_errors import ApiError
from node.protocol.bundle import BundleBody
from node.protocol.wire_types import ADDRESS_PATTERN, HEX32_PATTERN
from node.validator.app_state import NODE
from node.validator.cosign import Refused, cosign
from node.validator.openapi import OPENAPI_ROUTES, Param, Route, add_routes, document
from node.validator.schemas import (
    JOB_STATUSES,
    MAX_OFFSET,
    MAX_PAGE,
    Accepted,
    AddressText,
    Cosigned,
    CosignRequest,
    Epoch,
    EpochEntries,
    Evidence,
    Health,
    Items,
    Job,
    JobId,
    JobStatus,
    Limit,
    Offset,
    Page,
    RewardProof,
)

_JOB_ID = re.compile(HEX32_PATTERN)
_ADDRESS = re.compile(ADDRESS_PATTERN)


def register(app: web.Application) -> None:
    add_routes(app, ROUTES)


async def submit_bundle(request: web.Request) -> web.Response:
    """Submit a bundle (any stage may). Stored before the response; validated later."""
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
    """A job's status and verdict"""
    job_id = _job_id(request)
    job = await request.app[NODE].job(job_id)
    if job is None:
        raise ApiError(404, "unknown_job", f"no bundle for job {job_id}")
    return web.json_response(job)


async def list_jobs(request: web.Request) -> web.Response:
    """Recent jobs, newest first"""
    limit_ = limit(request)
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(400, "bad_query", f"status must be one of {', '.join(JOB_STATUSES)}")
    jobs = await request.app[NODE].jobs(limit=limit_, status=status, offset=offset(request))
    return web.json_response({"items": jobs})


async def get_evidence(request: web.Request) -> web.Response:
    """The evidence of a job's verdict, to recompute it offline (I5)"""
    job_id = _job_id(request)
    evidence = await request.app[NODE].evidence(job_id)
    if evidence is None:
        raise ApiError(404, "no_evidence", f"no evidence for job {job_id}: unknown, not decided yet, or soft-invalidated")
    return web.json_response(evidence)


async def leaderboard(request: web.Request) -> web.Response:
    """Workers by total reward (a page: items, total, offset, limit)"""
    return web.json_response(await request.app[NODE].leaderboard(limit=limit(request), offset=offset(request)))


async def slashes(request: web.Request) -> web.Response:
    """Slashing history with evidence hashes and chain transactions (a page: items, total, offset, limit)

    `?worker=0x…`: one worker's slashes only."""
    worker = request.query.get("worker")
    if worker is not None:
        worker = _checked_address(worker)
    page = await request.app[NODE].slashes(limit=limit(request), offset=offset(request), worker=worker)
    return web.json_response(page)


async def get_worker(request: web.Request) -> web.Response:
    """One worker: stake, rewards, slashes"""
    address = address_of(request)
    worker = await request.app[NODE].worker(address)
    if worker is None:
        raise ApiError(404, "unknown_worker", f"no worker {address}")
    return web.json_response(worker)


async def get_reward_proof(request: web.Request) -> web.Response:
    """A worker's claim proof: cumulative reward and Merkle path to an epoch's rewards root.

    What `stagewise claim --validator URL` sends to the contract: public, since the root is on chain."""
    address = address_of(request)
    raw = request.query.get("epoch")
    epoch = positive_int(raw, 2**63 - 1) if raw is not None else None
    if raw is not None and epoch is None:
        raise ApiError(400, "bad_query", "epoch must be a positive integer")
    proof = await request.app[NODE].ledger.reward_proof(address, epoch)
    if proof is None:
        which = f"epoch {epoch}" if epoch is not None else "the latest epoch"
        raise ApiError(404, "no_reward", f"{address} has no reward in {which} (or that epoch is not closed)")
    return web.json_response(proof.to_json())


def address_of(request: web.Request) -> str:
    """The `{address}` of the path, checksummed; 400 unless it is an address (with a right checksum if mixed-case)."""
    return _checked_address(request.match_info["address"])


def _checked_address(address: str) -> str:
    if not _ADDRESS.match(address):
        raise ApiError(400, "bad_address", "a worker address is 0x and 40 hex digits")
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise ApiError(400, "bad_address", "mixed-case address with a wrong EIP-55 checksum (a typo?)")
    return to_checksum_address(address.lower())


async def epochs(request: web.Request) -> web.Response:
    """Closed epochs with their roots and on-chain anchor transactions (a page: items, total, offset, limit)"""
    return web.json_response(await request.app[NODE].epochs(limit=limit(request), offset=offset(request)))


async def epoch_entries(request: web.Request) -> web.Response:
    """A closed epoch's entries and the cumulative rewards before it, for a co-signer to recompute its roots"""
    number = positive_int(request.match_info["number"], 10**12)
    if number is None:
        raise ApiError(400, "bad_epoch", "an epoch is a positive integer")
    package = await request.app[NODE].epoch_entries(number)
    if package is None:
        raise ApiError(404, "unknown_epoch", f"epoch {number} is not closed")
    return web.json_response(package)


async def cosign_order(request: web.Request) -> web.Response:
    """Judge a peer validator's slash or anchor order and sign it when it holds (PROTOCOL I7)"""
    node = request.app[NODE]
    try:
        body = json_input.loads(await request.read(), max_bytes=node.config.max_body_bytes)
    except json_input.JsonInputError as error:
        raise ApiError(400, "bad_json", str(error)) from None
    try:
        return web.json_response(await cosign(node, body))
    except Refused as refusal:
        raise ApiError(422, "refused", f"{refusal.code}: {refusal}") from None


async def admin_close_epoch(request: web.Request) -> web.Response:
    """Close an epoch now (admin token)"""
    node = request.app[NODE]
    _require_admin(request)
    epoch = await node.close_epoch(force=True)
    if epoch is None:
        raise ApiError(409, "nothing_to_close", "no journal entries since the last epoch")
    return web.json_response(epoch, status=201)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics"""
    node = request.app[NODE]
    await node.refresh_gauges()
    response = web.Response(body=node.metrics.render())
    response.content_type = "text/plain"
    response.charset = "utf-8"
    return response


async def health(request: web.Request) -> web.Response:
    """Liveness and the ledger's reachability"""
    started = time.perf_counter()
    report = await request.app[NODE].health()
    report["checked_in_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


async def openapi(request: web.Request) -> web.Response:
    """This document"""
    return web.json_response(document(request.app[OPENAPI_ROUTES]))


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise ApiError(400, "bad_job_id", "a job id is 0x and 64 hex digits")
    return job_id.lower()


def limit(request: web.Request) -> int:
    """The `limit` query parameter: a page size in [1, MAX_PAGE], 100 by default."""
    value = positive_int(request.query.get("limit", "100"), MAX_PAGE)
    if value is None:
        raise ApiError(400, "bad_query", f"limit must be an integer in [1, {MAX_PAGE}]")
    return value


def offset(request: web.Request) -> int:
    """The `offset` query parameter: how many rows to skip, 0 by default."""
    raw = request.query.get("offset", "0")
    if raw == "0":
        return 0
    value = positive_int(raw, MAX_OFFSET)
    if value is None:
        raise ApiError(400, "bad_query", f"offset must be an integer in [0, {MAX_OFFSET}]")
    return value


def positive_int(raw: str, most: int) -> int | None:
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


_LIMIT = Param("limit", "query", Limit)
_OFFSET = Param("offset", "query", Offset)
_JOB = Param("job_id", "path", JobId)
_WORKER = Param("address", "path", AddressText)

ROUTES = (
    Route("POST", "/v1/bundles", submit_bundle, request=BundleBody, response=Accepted, status=202,
          errors=(400, 403, 409, 413, 422), description="stored and queued for validation"),
    Route("GET", "/v1/jobs", list_jobs, response=Items, parameters=(_LIMIT, _OFFSET, Param("status", "query", JobStatus)),
          errors=(400,), description="jobs"),
    Route("GET", "/v1/jobs/{job_id}", get_job, response=Job, parameters=(_JOB,), errors=(400, 404), description="the job"),
    Route("GET", "/v1/jobs/{job_id}/evidence", get_evidence, response=Evidence, parameters=(_JOB,), errors=(400, 404),
          description="evidence"),
    Route("GET", "/v1/leaderboard", leaderboard, response=Page, parameters=(_LIMIT, _OFFSET), errors=(400,), description="leaderboard"),
    Route("GET", "/v1/slashes", slashes, response=Page, parameters=(_LIMIT, _OFFSET, Param("worker", "query", AddressText)), errors=(400,), description="slashes"),
    Route("GET", "/v1/workers/{address}", get_worker, parameters=(_WORKER,), errors=(400, 404), description="the worker"),
    Route("GET", "/v1/workers/{address}/reward-proof", get_reward_proof, response=RewardProof,
          parameters=(_WORKER, Param("epoch", "query", Epoch)), errors=(400, 404), description="the proof"),
    Route("GET", "/v1/epochs", epochs, response=Page, parameters=(_LIMIT, _OFFSET), errors=(400,), description="epochs"),
    Route("GET", "/v1/epochs/{number}/entries", epoch_entries, response=EpochEntries,
          parameters=(Param("number", "path", Epoch),), errors=(400, 404), description="the epoch's entries"),
    Route("POST", "/v1/cosign", cosign_order, request=CosignRequest, response=Cosigned, errors=(400, 422),
          description="this validator's signature of the order"),
    Route("POST", "/v1/admin/epochs/close", admin_close_epoch, status=201, errors=(401, 403, 409), admin=True,
          description="the closed epoch"),
    Route("GET", "/metrics", metrics, content_type="text/plain", description="text exposition"),
    Route("GET", "/health", health, response=Health, more={503: (Health, "degraded")}, description="healthy"),
    Route("GET", "/openapi.json", openapi, description="OpenAPI 3.1"),
)
