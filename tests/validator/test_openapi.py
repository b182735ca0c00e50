"""/openapi.json is generated from the route tables and the models that validate requests: every route the
app serves is in it, and every request body's schema is the model's own."""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.orchestration.api import orchestration_registrar
from node.validator.app import build_app
from node.validator.config import ValidatorConfig
from node.validator.openapi import OPENAPI_ROUTES


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        if isinstance(route.resource, web.StaticResource):
            routes.add((route.method.lower(), route.resource.get_info()["prefix"] + "/{filename}"))
        else:
            routes.add((route.method.lower(), route.resource.canonical))
    return routes


def referenced(schema, found: set[str]) -> set[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            found.add(schema["$ref"].rsplit("/", 1)[1])
        for value in schema.values():
            referenced(value, found)
    elif isinstance(schema, list):
        for value in schema:
            referenced(value, found)
    return found


async def test_every_served_route_and_request_model_is_in_the_generated_document():
    node = SimpleNamespace(config=ValidatorConfig())  # the document needs no ledger
    app = build_app(node, registrars=[orchestration_registrar(SimpleNamespace())], dashboard=True)
    async with TestClient(TestServer(app)) as client:
        document = await (await client.get("/openapi.json")).json()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served_routes(app) <= documented
    assert served_routes(app) >= documented  # nothing documented that is not served
    schemas = document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"], (method, path)
            for parameter in operation.get("parameters", []):
                assert "{" + parameter["name"] + "}" in path or parameter["in"] == "query"
    for route in app[OPENAPI_ROUTES]:
        if route.request is None:
            continue
        schema = document["paths"][route.path][route.method.lower()]["requestBody"]["content"]["application/json"]["schema"]
        name = referenced(schema, set()).pop()
        generated = route.request.model_json_schema(ref_template="#/components/schemas/{model}")
        generated.pop("$defs", None)
        assert schemas[name] == generated, route.path
        assert referenced(schemas[name], set()) <= set(schemas)  # every nested model is there too
    # the rules of a job spec are the ones JobSpec enforces, not a copy
    spec = schemas["JobSpec"]["properties"]
    assert spec["seed"]["maximum"] == 2**64 - 1 and spec["stages"]["maxItems"] == 256
    assert spec["prompt_token_ids"]["minItems"] == 1 and schemas["JobSpec"]["additionalProperties"] is False
    assert schemas["SignedRegistration"]["properties"]["message"]["properties"]["kind"] == {"const": "stagewise/register"}


async def test_answers_have_the_shapes_the_document_declares(ledger, model_dir, group, worker_keys):
    from node.validator.replay_models import ReplayModels
    from node.validator.schemas import Accepted, Evidence, Health, Items, Job, RewardProof
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import ADMIN_TOKEN, TEST_DOMAIN, make_config, stake_all
    from tests.validator.test_api import bundle_json

    await stake_all(ledger, worker_keys)
    node = ValidatorNode(make_config(model_dir, sample_rate=0.0), ledger, domain=TEST_DOMAIN, models=ReplayModels([model_dir]))
    async with TestClient(TestServer(build_app(node))) as client:
        accepted = Accepted.model_validate(await (await client.post("/v1/bundles", json=bundle_json(group))).json())
        await node.validate_next()
        Job.model_validate(await (await client.get(f"/v1/jobs/{accepted.job_id}")).json())
        for path in ("/v1/jobs", "/v1/leaderboard", "/v1/slashes"):
            Items.model_validate(await (await client.get(path)).json())
        Health.model_validate(await (await client.get("/health")).json())
        Evidence.model_validate(await (await client.get(f"/v1/jobs/{accepted.job_id}/evidence")).json())
        await client.post("/v1/admin/epochs/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        Items.model_validate(await (await client.get("/v1/epochs")).json())
        RewardProof.model_validate(await (await client.get(f"/v1/workers/{worker_keys[0].address}/reward-proof")).json())
