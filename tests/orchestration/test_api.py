"""The orchestration routes on the validator's app: what a worker and `stagewise groups` see over HTTP."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.orchestration.api import orchestration_registrar
from node.orchestration.grouping import GroupingPolicy, ModelShape
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.registry import Registry, RegistryPolicy, stake_lookup
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import Capacity, make_heartbeat, make_registration
from node.validator.app import build_app
from node.validator.config import ValidatorConfig

from .conftest import CAPACITIES, MIB
from .local_pipeline import LocalPipeline, LocalWorker

UNSTAKED = SigningKey(b"\x77" * 32)


@pytest.fixture
async def served(model_dir, worker_keys):
    registry = Registry(stake_lookup({k.address: 10**18 for k in worker_keys}), RegistryPolicy(min_stake_wei=10**18))
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in worker_keys})
    orchestrator = Orchestrator(registry, driver, "0x" + "ab" * 32, ModelShape(10, 4 * MIB), GroupingPolicy(stages_per_group=2))
    node = SimpleNamespace(config=ValidatorConfig())  # the orchestration routes never touch the ledger
    app = build_app(node, registrars=[orchestration_registrar(orchestrator)], dashboard=False)
    async with TestClient(TestServer(app)) as client:
        yield client, orchestrator


async def test_workers_register_over_http_and_groups_list_their_stages(served, worker_keys):
    client, _ = served
    for key, capacity in zip(worker_keys, CAPACITIES):
        response = await client.post("/v1/workers/register", json=make_registration(key, capacity, "eu", "http://127.0.0.1:9100").to_json())
        assert response.status == 201, await response.text()
    groups = await (await client.get("/v1/groups")).json()
    assert len(groups["groups"]) == 2 and len(groups["spares"]) == 1 and len(groups["workers"]) == 5
    stage = groups["groups"][0]["stages"][1]
    assert set(stage) == {"index", "worker", "layer_start", "layer_end", "region", "layer_tokens_per_s"}
    assignment = await (await client.get(f"/v1/workers/{stage['worker'].lower()}/assignment")).json()
    assert (assignment["status"], assignment["stage_index"], assignment["layer_end"]) == ("assigned", 1, 10)
    beat = await client.post("/v1/workers/heartbeat", json=make_heartbeat(worker_keys[0], in_flight=1).to_json())
    assert beat.status == 200 and (await beat.json())["worker"]["in_flight"] == 1
    spec = await (await client.get("/openapi.json")).json()
    assert "/v1/workers/register" in spec["paths"] and "/v1/groups" in spec["paths"]
    assert (await (await client.get("/v1/orchestrator/progress")).json()) == {"running": False}


async def test_an_unstaked_key_is_refused_and_nothing_is_kept(served):
    client, orchestrator = served
    response = await client.post("/v1/workers/register", json=make_registration(UNSTAKED, CAPACITIES[0], "eu", "http://h:1").to_json())
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "insufficient_stake"
    assert orchestrator.registry.all() == ()


async def test_a_replayed_registration_is_refused(served, worker_keys):
    client, _ = served
    body = make_registration(worker_keys[0], CAPACITIES[0], "eu", "http://h:1").to_json()
    assert (await client.post("/v1/workers/register", json=body)).status == 201
    again = await client.post("/v1/workers/register", json=body)
    assert again.status == 409 and (await again.json())["error"]["code"] == "replayed_message"


def _mutations(key: SigningKey):
    good = make_registration(key, Capacity(8 * MIB, 100.0), "eu", "http://h:1").to_json()
    missing = {**good, "message": {k: v for k, v in good["message"].items() if k != "capacity"}}
    stale = make_registration(key, Capacity(8 * MIB, 100.0), "eu", "http://h:1", now=time.time() - 3600).to_json()
    forged = {**good, "signature": make_registration(UNSTAKED, Capacity(8 * MIB, 100.0), "eu", "http://h:1").to_json()["signature"]}
    return [
        (b"", 400, "malformed_json", "empty"),
        (b"{not json", 400, "malformed_json", "not valid JSON"),
        (b"[1, 2]", 400, "malformed_json", "JSON object"),
        (missing, 400, "bad_message", "missing field(s) ['capacity']"),
        ({**good, "extra": 1}, 400, "bad_message", "unknown field(s) ['extra']"),
        (forged, 400, "bad_message", "signature is by"),
        (stale, 400, "stale_message", "from the validator's clock"),
    ]


@pytest.mark.parametrize("case", range(7))
async def test_bad_registrations_get_clear_json_errors(served, worker_keys, case):
    client, orchestrator = served
    body, status, code, words = _mutations(worker_keys[0])[case]
    if isinstance(body, bytes):
        response = await client.post("/v1/workers/register", data=body, headers={"Content-Type": "application/json"})
    else:
        response = await client.post("/v1/workers/register", json=body)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code and words in error["message"]
    assert orchestrator.registry.all() == ()


async def test_assignment_of_unknown_or_malformed_addresses(served):
    client, _ = served
    unknown = await client.get("/v1/workers/0x" + "11" * 20 + "/assignment")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_registered"
    bad = await client.get("/v1/workers/0x12/assignment")
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_address"
    beat = await client.post("/v1/workers/heartbeat", json=make_heartbeat(UNSTAKED).to_json())
    assert beat.status == 404 and (await beat.json())["error"]["code"] == "not_registered"


async def test_a_worker_that_leaves_is_replaced_by_the_spare_at_once(served, worker_keys):
    from node.protocol.worker_messages import make_leave

    client, orchestrator = served
    for key, capacity in zip(worker_keys, CAPACITIES):
        assert (await client.post("/v1/workers/register", json=make_registration(key, capacity, "eu", "http://h:1").to_json())).status == 201
    spare = orchestrator.grouping.spares[0]
    group = orchestrator.grouping.groups[0]
    leaving = group.stages[1].worker
    key = next(k for k in worker_keys if k.address == leaving)
    body = make_leave(key).to_json()
    response = await client.post("/v1/workers/leave", json=body)
    assert response.status == 200 and (await response.json()) == {"address": leaving, "left": True}
    assert orchestrator.registry.get(leaving) is None
    repaired, index = orchestrator.grouping.group_of(spare)  # repaired, not dissolved
    assert index == 1 and repaired.stages[0].worker == group.stages[0].worker
    again = await client.post("/v1/workers/leave", json=body)
    assert again.status == 409 and (await again.json())["error"]["code"] == "replayed_message"
    forged = make_leave(UNSTAKED).to_json()
    forged["message"]["address"] = worker_keys[0].address
    refused = await client.post("/v1/workers/leave", json=forged)
    assert refused.status == 400 and (await refused.json())["error"]["code"] == "bad_message"
    assert orchestrator.registry.get(worker_keys[0].address) is not None


async def test_answers_have_the_shapes_the_openapi_document_declares(served, worker_keys):
    from node.validator.schemas import Groups, Left, RegisteredWorker, WorkerAssignment

    client, _ = served
    registered = await client.post("/v1/workers/register", json=make_registration(worker_keys[0], CAPACITIES[0], "eu", "http://127.0.0.1:9100").to_json())
    RegisteredWorker.model_validate(await registered.json())
    WorkerAssignment.model_validate(await (await client.get(f"/v1/workers/{worker_keys[0].address}/assignment")).json())
    Groups.model_validate(await (await client.get("/v1/groups")).json())
    beat = await client.post("/v1/workers/heartbeat", json=make_heartbeat(worker_keys[0]).to_json())
    RegisteredWorker.model_validate(await beat.json())
    from node.protocol.worker_messages import make_leave

    Left.model_validate(await (await client.post("/v1/workers/leave", json=make_leave(worker_keys[0]).to_json())).json())


async def test_a_validator_of_two_models_routes_each_worker_to_its_models_groups(model_dir, worker_keys):
    """Two orchestrators behind one app (ModelOrchestrators): a registration goes to the model it names, a
    heartbeat and an assignment to the orchestrator that has the worker, GET /v1/groups?model_id= answers per
    model; a model the validator does not run is refused (409 on registration, 404 on the GETs)."""
    from node.orchestration.models import ModelOrchestrators

    first, second = "0x" + "ab" * 32, "0x" + "cd" * 32
    stakes = stake_lookup({k.address: 10**18 for k in worker_keys})
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in worker_keys})
    orchestrators = [Orchestrator(Registry(stakes, RegistryPolicy()), driver, model, ModelShape(10, 4 * MIB),
                                  GroupingPolicy(stages_per_group=2)) for model in (first, second)]
    app = build_app(SimpleNamespace(config=ValidatorConfig()), dashboard=False,
                    registrars=[orchestration_registrar(ModelOrchestrators(orchestrators))])
    async with TestClient(TestServer(app)) as client:
        for key, model in zip(worker_keys[:3], (first, second, None)):  # None: a worker older than the field
            body = make_registration(key, CAPACITIES[0], "eu", "http://127.0.0.1:9100", model_id=model).to_json()
            assert (await client.post("/v1/workers/register", json=body)).status == 201
        workers = {m: {w["address"] for w in (await (await client.get(f"/v1/groups?model_id={m}")).json())["workers"]}
                   for m in (first, second)}
        assert workers == {first: {worker_keys[0].address, worker_keys[2].address}, second: {worker_keys[1].address}}
        assert (await (await client.get("/v1/groups")).json())["models"] == [first, second]  # the first's by default
        assignment = await (await client.get(f"/v1/workers/{worker_keys[1].address}/assignment")).json()
        assert assignment["model_id"] == second
        assert (await client.post("/v1/workers/heartbeat", json=make_heartbeat(worker_keys[1]).to_json())).status == 200
        stray = make_registration(worker_keys[3], CAPACITIES[0], "eu", "http://127.0.0.1:9100", model_id="0x" + "ee" * 32)
        refused = await client.post("/v1/workers/register", json=stray.to_json())
        assert refused.status == 409 and (await refused.json())["error"]["code"] == "unknown_model"
        assert (await client.get("/v1/groups?model_id=0x" + "ee" * 32)).status == 404
