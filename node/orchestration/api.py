"""The orchestrator's HTTP routes, added to the validator's aiohttp app.

    POST /v1/workers/register            signed Registration   -> 201 {worker, assignment}
    POST /v1/workers/heartbeat           signed Heartbeat      -> 200 {worker, assignment}
    POST /v1/workers/leave               signed Leave          -> 200 {address, left: true}
    GET  /v1/workers/{address}/assignment                      -> 200 assignment (stage or spare)
    GET  /v1/groups[?model_id=0x..]                            -> 200 {model_id, groups, spares, workers, models}
    GET  /v1/orchestrator/progress[?model_id=0x..]             -> 200 tasks, correct answers, tokens/s

Use: `build_app(node, registrars=[orchestration_registrar(orchestrator)])`, or
`register_routes(app, orchestrator)` on an app that is not frozen yet; with several models, one orchestrator
per model (`ModelOrchestrators`, node/orchestration/models.py): a registration goes to the model it names,
everything else about a worker to the orchestrator that has it, and the two GETs answer for `model_id`
(default: the first model). Errors are the validator's JSON errors:
400 `bad_message` (malformed or badly signed, the message says which field), 400 `stale_message`,
409 `replayed_message`, 403 `insufficient_stake`, 404 `not_registered`, 503 `stake_unavailable`, 503
`not_orchestrating` (another validator process on the same ledger orchestrates: node/orchestration/leadership.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ledger import json_input
from node.http.json_errors import ApiError
from node.orchestration.models import ModelOrchestrators
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.registry import RegistrationRefused
from node.protocol.wire_types import ADDRESS_PATTERN
from node.protocol.worker_messages import (
    HeartbeatBody,
    LeaveBody,
    MessageError,
    ModelId,
    RegistrationBody,
    parse_signed_heartbeat,
    parse_signed_leave,
    parse_signed_registration,
)
from node.validator.app_state import ORCHESTRATOR
from node.validator.openapi import Param, Route, add_routes
from node.validator.schemas import AddressText, Groups, Left, Progress, RegisteredWorker, WorkerAssignment

_ADDRESS = re.compile(ADDRESS_PATTERN)


def register_routes(app: web.Application, orchestrators: Orchestrator | ModelOrchestrators) -> None:
    if isinstance(orchestrators, Orchestrator):
        orchestrators = ModelOrchestrators([orchestrators])
    app[ORCHESTRATOR] = orchestrators
    add_routes(app, ROUTES)


def orchestration_registrar(orchestrators: Orchestrator | ModelOrchestrators) -> Callable[[web.Application], None]:
    """A registrar for `node.validator.app.build_app(node, registrars=[...])`."""
    return lambda app: register_routes(app, orchestrators)


def _of_model(request: web.Request) -> Orchestrator:
    """The orchestrator of the `model_id` query parameter (the first model's without one); 404 for another."""
    try:
        return request.app[ORCHESTRATOR].of_model(request.query.get("model_id"))
    except RegistrationRefused as refused:
        raise ApiError(404, refused.code, str(refused)) from None


async def register_worker(request: web.Request) -> web.Response:
    """Register a staked worker (signed by its key, fresh nonce and timestamp) for the model it names"""
    data = await read_json_object(request)
    try:
        signed = parse_signed_registration(data)
        orchestrator: Orchestrator = request.app[ORCHESTRATOR].for_registration(signed)
        record = await orchestrator.register(signed)
    except MessageError as error:
        raise ApiError(400, "bad_message", str(error)) from None
    except RegistrationRefused as refused:
        raise ApiError(refused.status, refused.code, str(refused)) from None
    return web.json_response(
        {"worker": record.to_json(), "assignment": orchestrator.assignment(record.address).to_json()}, status=201
    )


async def heartbeat(request: web.Request) -> web.Response:
    """Keep a registered worker healthy (signed)"""
    data = await read_json_object(request)
    try:
        signed = parse_signed_heartbeat(data)
        orchestrator: Orchestrator = request.app[ORCHESTRATOR].of_worker(signed.message.address)
        record = await orchestrator.heartbeat(signed)
    except MessageError as error:
        raise ApiError(400, "bad_message", str(error)) from None
    except RegistrationRefused as refused:
        raise ApiError(refused.status, refused.code, str(refused)) from None
    return web.json_response({"worker": record.to_json(), "assignment": orchestrator.assignment(record.address).to_json()})


async def leave(request: web.Request) -> web.Response:
    """A worker shutting down leaves its group now (signed); the group is repaired with a spare"""
    data = await read_json_object(request)
    try:
        signed = parse_signed_leave(data)
        await request.app[ORCHESTRATOR].of_worker(signed.message.address).leave(signed)
    except MessageError as error:
        raise ApiError(400, "bad_message", str(error)) from None
    except RegistrationRefused as refused:
        raise ApiError(refused.status, refused.code, str(refused)) from None
    return web.json_response({"address": signed.message.address, "left": True})


async def assignment(request: web.Request) -> web.Response:
    """The stage a worker serves (group, index, layer range) or that it is a spare"""
    address = request.match_info["address"]
    if not _ADDRESS.match(address):
        raise ApiError(400, "bad_address", f"{address!r} is not a 0x-prefixed 20-byte hex address")
    from eth_utils import to_checksum_address

    address = to_checksum_address(address)
    orchestrator: Orchestrator = request.app[ORCHESTRATOR].of_worker(address)
    try:
        orchestrator.check_leading()
    except RegistrationRefused as refused:
        raise ApiError(refused.status, refused.code, str(refused)) from None
    if orchestrator.registry.get(address) is None:
        raise ApiError(404, "not_registered", f"{address} is not registered with this validator")
    return web.json_response(orchestrator.assignment(address).to_json())


async def groups(request: web.Request) -> web.Response:
    """Groups, their stages, layer ranges and throughput; spares; registered workers; the models served"""
    return web.json_response({**_of_model(request).groups_json(), "models": list(request.app[ORCHESTRATOR].model_ids)})


async def progress(request: web.Request) -> web.Response:
    """Tasks done, correct answers, tokens and tokens/s of the running task dispatch"""
    figures = _of_model(request).progress
    if figures is None:
        return web.json_response({"running": False})
    return web.json_response({"running": figures.finished_at is None, **figures.to_json()})


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it (413 past the app's size limit)."""
    body = await request.read()
    if not body:
        raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        data = json_input.loads(body)
    except json_input.JsonInputError as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", f"the body must be a JSON object, got {type(data).__name__}")
    return data


_MODEL = Param("model_id", "query", ModelId)

ROUTES = (
    Route("POST", "/v1/workers/register", register_worker, request=RegistrationBody, response=RegisteredWorker,
          status=201, errors=(400, 403, 409, 413, 503), description="registered; its assignment"),
    Route("POST", "/v1/workers/heartbeat", heartbeat, request=HeartbeatBody, response=RegisteredWorker,
          errors=(400, 403, 404, 409, 413, 503), description="alive; its assignment"),
    Route("POST", "/v1/workers/leave", leave, request=LeaveBody, response=Left, errors=(400, 404, 409, 413, 503),
          description="left"),
    Route("GET", "/v1/workers/{address}/assignment", assignment, response=WorkerAssignment,
          parameters=(Param("address", "path", AddressText),), errors=(400, 404, 503), description="assignment"),
    Route("GET", "/v1/groups", groups, response=Groups, parameters=(_MODEL,), errors=(404,), description="groups"),
    Route("GET", "/v1/orchestrator/progress", progress, response=Progress, parameters=(_MODEL,), errors=(404,),
          description="progress"),
)
