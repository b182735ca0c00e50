"""The OpenAPI 3.1 document of the validator API, served at /openapi.json.

Written by hand next to the routes it describes (api.py): it is the contract that clients, the dashboard
and the fuzz tests (tests/validator/test_fuzz.py) read. Orchestration adds its paths through
`app[OPENAPI_EXTRA_PATHS]`.
"""

from __future__ import annotations

from typing import Any

HEX32 = {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}
ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}
HEX = {"type": "string", "pattern": "^0x([0-9a-fA-F]{2})*$"}
WEI = {"type": "string", "pattern": "^[0-9]+$", "description": "an integer amount of wei, as a decimal string"}
UINT = {"type": "integer", "minimum": 0}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "SamplingParams": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "temperature": {"type": "number", "minimum": 0},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "top_k": UINT,
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 65536},
            "stop_ids": {"type": "array", "items": UINT},
        },
    },
    "StageAssignment": {
        "type": "object",
        "additionalProperties": False,
        "required": ["worker", "layer_start", "layer_end"],
        "properties": {"worker": ADDRESS, "layer_start": UINT, "layer_end": UINT},
    },
    "JobSpec": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model_id", "prompt_token_ids", "sampling", "seed", "group_id", "stages"],
        "properties": {
            "version": {"const": 1},
            "model_id": HEX32,
            "prompt_token_ids": {"type": "array", "minItems": 1, "items": UINT},
            "sampling": {"$ref": "#/components/schemas/SamplingParams"},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
            "attempt": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
            "group_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "stages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/StageAssignment"}},
        },
    },
    "Bundle": {
        "type": "object",
        "description": "A job spec, every stage's signed receipt and proofs, and the output tokens "
        "(node/protocol/bundle.py `Bundle.to_json`). Unknown fields are refused.",
        "required": ["spec", "stages", "output_token_ids"],
        "properties": {
            "version": {"type": "integer"},
            "spec": {"$ref": "#/components/schemas/JobSpec"},
            "stages": {"type": "array", "items": {"type": "object"}},
            "output_token_ids": {"type": "array", "items": UINT},
            "complaints": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {"job_id": HEX32, "status": {"type": "string"}},
    },
    "Verdict": {
        "type": "object",
        "properties": {
            "outcome": {"enum": ["accepted", "blamed", "soft_invalidated"]},
            "blamed_stage": {"type": ["integer", "null"]},
            "reason": {"type": ["string", "null"]},
            "rewards_wei": {"type": "array", "items": WEI},
            "slash_wei": WEI,
            "replayed": {"type": "boolean"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {
            "job_id": HEX32,
            "status": {"enum": ["awaiting_bundle", "queued", "validating", "done"]},
            "model_id": HEX32,
            "group_id": {"type": "string"},
            "stages": {"type": "array", "items": {"type": "object"}},
            "verdict": {"oneOf": [{"$ref": "#/components/schemas/Verdict"}, {"type": "null"}]},
        },
    },
    "Evidence": {
        "type": "object",
        "description": "Everything needed to recompute a verdict (I5): `stagewise verify-evidence FILE`.",
        "required": ["version", "model_id", "bundle", "verdict"],
    },
    "RewardProof": {
        "type": "object",
        "required": ["epoch", "worker", "cumulative", "proof", "rewards_root"],
        "properties": {
            "epoch": {"type": "integer"},
            "worker": ADDRESS,
            "cumulative": {"type": "string", "description": "wei, decimal"},
            "proof": {"type": "array", "items": {"type": "string"}},
            "rewards_root": {"type": "string"},
        },
    },
    "Items": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "degraded"]}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), "error") for s in statuses}


LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": HEX32}


PATHS: dict[str, Any] = {
    "/v1/bundles": {
        "post": {
            "summary": "Submit a bundle (any stage may). Stored before the response; validated later.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Bundle")}}},
            "responses": {
                "202": _json(_ref("Accepted"), "stored and queued for validation"),
                **_errors(400, 403, 409, 413, 422),
            },
        }
    },
    "/v1/jobs": {
        "get": {
            "summary": "Recent jobs, newest first",
            "parameters": [LIMIT, {"name": "status", "in": "query", "schema": {"enum": ["awaiting_bundle", "queued", "validating", "done"]}}],
            "responses": {"200": _json(_ref("Items"), "jobs"), **_errors(400)},
        }
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "summary": "A job's status and verdict",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "the job"), **_errors(400, 404)},
        }
    },
    "/v1/jobs/{job_id}/evidence": {
        "get": {
            "summary": "The evidence of a job's verdict, to recompute it offline (I5)",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Evidence"), "evidence"), **_errors(400, 404)},
        }
    },
    "/v1/leaderboard": {
        "get": {
            "summary": "Workers by total reward",
            "parameters": [LIMIT],
            "responses": {"200": _json(_ref("Items"), "leaderboard"), **_errors(400)},
        }
    },
    "/v1/slashes": {
        "get": {
            "summary": "Slashing history with evidence hashes and chain transactions",
            "parameters": [LIMIT],
            "responses": {"200": _json(_ref("Items"), "slashes"), **_errors(400)},
        }
    },
    "/v1/workers/{address}": {
        "get": {
            "summary": "One worker: stake, rewards, slashes",
            "parameters": [{"name": "address", "in": "path", "required": True, "schema": ADDRESS}],
            "responses": {"200": _json({"type": "object"}, "the worker"), **_errors(400, 404)},
        }
    },
    "/v1/workers/{address}/reward-proof": {
        "get": {
            "summary": "A worker's claim proof: cumulative reward and Merkle path to an epoch's rewards root",
            "parameters": [
                {"name": "address", "in": "path", "required": True, "schema": ADDRESS},
                {"name": "epoch", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
            "responses": {"200": _json(_ref("RewardProof"), "the proof"), **_errors(400, 404)},
        }
    },
    "/v1/epochs": {
        "get": {
            "summary": "Closed epochs with their roots and on-chain anchor transactions",
            "parameters": [LIMIT],
            "responses": {"200": _json(_ref("Items"), "epochs"), **_errors(400)},
        }
    },
    "/v1/admin/epochs/close": {
        "post": {
            "summary": "Close an epoch now (admin token)",
            "security": [{"adminToken": []}],
            "responses": {"201": _json({"type": "object"}, "the closed epoch"), **_errors(401, 403, 409)},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }
    },
    "/health": {
        "get": {
            "summary": "Liveness and the ledger's reachability",
            "responses": {"200": _json(_ref("Health"), "healthy"), "503": _json(_ref("Health"), "degraded")},
        }
    },
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
}


def document(extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stagewise validator",
            "version": "1",
            "description": "Bundle intake, verdicts, rewards and slashes of a stagewise validator node. "
            'Every error is {"error": {"code", "message"}}.',
        },
        "paths": {**PATHS, **(extra_paths or {})},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
