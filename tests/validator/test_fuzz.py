"""Fuzz the validator API from its own OpenAPI document: whatever arrives, no 5xx, and every error is
the JSON error shape. Bodies come from the document's schemas (`from_schema` below: the subset of JSON
Schema the document uses), from arbitrary JSON, and from one-leaf mutations of a valid bundle; path and
query parameters from their schemas and from arbitrary text."""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.validator.api import ROUTES
from node.validator.openapi import document
from tests.validator.conftest import TEST_DOMAIN, make_config
from tests.validator.factory import signed_bundle
from tests.validator.served import ServedValidator

pytestmark = pytest.mark.slow
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

OPENAPI = document(ROUTES)


def resolve(schema):
    """Inline the document's local $refs so a schema stands alone."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            return resolve(OPENAPI["components"]["schemas"][name])
        return {k: resolve(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve(v) for v in schema]
    return schema


def from_schema(schema) -> st.SearchStrategy:
    """Values that match `schema` (the constructs openapi.py uses; anything else: any JSON value)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum"), allow_nan=False)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30))
    if kind == "array":
        items = from_schema(schema.get("items", {}))
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=max(schema.get("minItems", 0), 4))
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        optional = [k for k in properties if k not in required]
        return st.fixed_dictionaries(
            {k: from_schema(properties[k]) for k in properties if k in required},
            optional={k: from_schema(properties[k]) for k in optional},
        )
    return json_values


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def request(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(base + path, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def check(status: int, body: bytes, content_type: str) -> None:
    assert status < 500, body[:500]
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_dir, worker_keys):
    from ledger.store import Ledger
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.db'}"

    async def make_node():
        ledger = await Ledger.open(url)
        for key in worker_keys:
            await ledger.set_stake(key.address, 10**18)
        return ValidatorNode(make_config(model_dir, max_body_bytes=64 * 1024), ledger, domain=TEST_DOMAIN,
                             models=ReplayModels([model_dir]))

    with ServedValidator(make_node) as server:
        yield server


@pytest.fixture(scope="module")
def valid_bundle(model_dir, model_id, worker_keys):
    from tests.validator.factory import Group

    group = Group(model_dir, model_id, worker_keys, TEST_DOMAIN)
    return signed_bundle(group, group.spec([1, 2, 3]), [4, 5]).to_dict()


def leaf_paths(value, prefix=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaf_paths(v, prefix + (k,))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from leaf_paths(v, prefix + (i,))
    else:
        yield prefix


def test_bundle_intake_never_fails_with_5xx(served, valid_bundle):
    paths = list(leaf_paths(valid_bundle))
    schema_bodies = from_schema(resolve(OPENAPI["paths"]["/v1/bundles"]["post"]["requestBody"]["content"]["application/json"]["schema"]))

    @st.composite
    def mutated(draw):
        doc = json.loads(json.dumps(valid_bundle))
        path = draw(st.sampled_from(paths))
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = draw(json_values)
        return doc

    bodies = (
        schema_bodies.map(lambda d: json.dumps(d).encode())
        | json_values.map(lambda d: json.dumps(d).encode())
        | mutated().map(lambda d: json.dumps(d).encode())
        | st.binary(max_size=200)
    )

    @FUZZ
    @given(bodies)
    def run(body):
        check(*request(served.url, "POST", "/v1/bundles", body))

    run()
    # The valid bundle itself still goes in once, and only once.
    assert request(served.url, "POST", "/v1/bundles", json.dumps(valid_bundle).encode())[0] == 202
    assert request(served.url, "POST", "/v1/bundles", json.dumps(valid_bundle).encode())[0] == 409


def test_reads_never_fail_with_5xx(served):
    gets = [(path, op) for path, item in OPENAPI["paths"].items() for method, op in item.items() if method == "get"]

    @st.composite
    def urls(draw):
        path, op = draw(st.sampled_from(gets))
        query = {}
        for parameter in op.get("parameters", []):
            value = draw(from_schema(parameter["schema"]).map(str) | st.text(max_size=70))
            if parameter["in"] == "path":
                path = path.replace("{" + parameter["name"] + "}", urllib.parse.quote(value, safe="") or "x")
            elif draw(st.booleans()):
                query[parameter["name"]] = value
        return path + ("?" + urllib.parse.urlencode(query) if query else "")

    @FUZZ
    @given(urls())
    def run(url):
        check(*request(served.url, "GET", url))

    run()
