"""A dataset row of the ledger: what one accepted job produced, and the digest its journal entry commits to.

The orchestrator records a `Sample` once the job that produced a task's output is accepted
(`LedgerTx.record_sample`): the row goes into the `samples` table and a `sample` journal entry carrying the
row's digest goes into the journal, in one transaction. The digest covers every field a reader of the
dataset relies on (`COMMITTED`), so a row is proved by three hashes anyone can recompute: its digest, its
journal entry's hash (`sample_entry_hash`), and the Merkle path from that hash to the entries root its epoch
anchored on chain (ledger.dataset.verify).

    digest = keccak256("stagewise/sample/v1" || keccak256(prompt_token_ids packed)
                       || keccak256(completion_token_ids packed) || canonical JSON of the other committed fields)

Token ids are packed as unsigned 64-bit little-endian integers, one after another (a verifier hashes them
straight from an Arrow or numpy buffer, with no Python integer per token). Canonical JSON: sorted keys, no
spaces, ASCII; the seed as an integer, the sampling parameters as an object, the verdict's figures as the JSON
text stored with the verdict.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import journal
from ledger.db import insert
from ledger.errors import InvalidInput
from ledger.merkle import keccak
from ledger.models import ACCEPTED, Sample, TaskStats, Verdict

DIGEST_DOMAIN = b"stagewise/sample/v1"
COMMITTED = (
    "job_id", "task_id", "task_source", "model_id", "prompt_text", "prompt_token_ids", "completion_text",
    "completion_token_ids", "sampling", "seed", "answer", "checker", "correct", "verdict", "verdict_figures",
)
TOKEN_FIELDS = ("prompt_token_ids", "completion_token_ids")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens", "stop_ids")
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class SampleError(InvalidInput):
    """A sample that cannot be recorded: the message says why."""


@dataclass(frozen=True)
class SampleRecord:
    """What the orchestrator knows about one finished, accepted sample of a task."""

    job_id: str
    task_id: str
    task_source: str
    model_id: str
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    completion_text: str
    sampling: Mapping[str, Any] = field(hash=False)
    seed: int
    prompt_text: str | None = None
    answer: str | None = None
    checker: str | None = None
    correct: bool | None = None


def sampling_params(value: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling parameters in the one form the digest hashes (floats as floats, integers as integers), so
    that a row read back from Parquet, where temperature 0 is 0.0, digests like the row written."""
    if not isinstance(value, Mapping) or set(value) != set(SAMPLING_FIELDS):
        raise SampleError(f"sampling parameters are {', '.join(SAMPLING_FIELDS)}")
    return {
        "temperature": float(value["temperature"]),
        "top_p": float(value["top_p"]),
        "top_k": int(value["top_k"]),
        "max_new_tokens": int(value["max_new_tokens"]),
        "stop_ids": [int(t) for t in value["stop_ids"]],
    }


def packed_tokens(tokens: Any) -> bytes:
    """Token ids (a list, or a numpy array) as the digest packs them: uint64 little-endian, one after another.
    SampleError for anything but non-negative integers."""
    values = np.asarray(tokens)
    if values.dtype == "<u8" and values.ndim == 1:  # as a verifier reads them from Arrow: nothing to check
        return values.tobytes()
    if values.ndim != 1 or (values.size and (values.dtype.kind not in "iu" or values.min() < 0)):
        raise SampleError("token ids are a list of non-negative integers")
    return values.astype("<u8").tobytes()


def digest(row: Mapping[str, Any]) -> str:
    """The digest of a row (any mapping holding the `COMMITTED` fields) as 0x hex. TypeError, ValueError or
    SampleError when a field cannot have been written by the ledger (not a list of integers, ...)."""
    body = {name: row[name] for name in COMMITTED if name not in TOKEN_FIELDS}
    body["seed"] = int(body["seed"])
    body["sampling"] = sampling_params(body["sampling"])
    tokens = b"".join(keccak(packed_tokens(row[name])) for name in TOKEN_FIELDS)
    return "0x" + keccak(DIGEST_DOMAIN + tokens + _CANONICAL.encode(body).encode()).hex()


def sample_entry_hash(job_id: str, row_digest: str, seq: int, at_ms: int, prev_hash: str) -> str:
    """The hash of the `sample` journal entry of `job_id` at `seq` that commits to `row_digest`."""
    fields = journal.fields_of(journal.sample(job_id, row_digest))
    return journal.hash_fields(fields, seq, at_ms, prev_hash)


def _json(value: Any) -> str:
    return _CANONICAL.encode(value)


async def record(conn: AsyncConnection, sample: SampleRecord) -> str | None:
    """Store `sample` if its job was accepted (SampleError otherwise); returns its digest, or None when the job
    already has a sample. The caller journals `journal.sample(job_id, digest)` in the same transaction."""
    job_id = journal.hash32(sample.job_id, "job_id")
    if not 0 < len(sample.task_id) <= 128 or len(sample.task_source) > 256:
        raise SampleError("a sample's task id has 1 to 128 characters and its source at most 256")
    verdict = (await conn.execute(select(Verdict.outcome, Verdict.figures).where(Verdict.job_id == job_id))).first()
    if verdict is None:
        raise SampleError(f"job {job_id} has no verdict: a sample is recorded once its job is accepted")
    if verdict.outcome != ACCEPTED:
        raise SampleError(f"job {job_id} was {verdict.outcome}: only an accepted job's output is a dataset row")
    row: dict[str, Any] = {
        "job_id": job_id,
        "task_id": sample.task_id,
        "task_source": sample.task_source,
        "model_id": journal.hash32(sample.model_id, "model_id"),
        "prompt_text": sample.prompt_text,
        "prompt_token_ids": list(sample.prompt_token_ids),
        "completion_text": sample.completion_text,
        "completion_token_ids": list(sample.completion_token_ids),
        "sampling": sampling_params(sample.sampling),
        "seed": int(sample.seed),
        "answer": sample.answer,
        "checker": sample.checker,
        "correct": sample.correct,
        "verdict": verdict.outcome,
        "verdict_figures": None if verdict.figures is None else _json(verdict.figures),
    }
    row_digest = digest(row)
    stored = {
        **row,
        "prompt_token_ids": _json(row["prompt_token_ids"]),
        "completion_token_ids": _json(row["completion_token_ids"]),
        "sampling": _json(row["sampling"]),
        "seed": str(row["seed"]),
        "digest": row_digest,
        "recorded_at": dt.datetime.now(dt.timezone.utc),
    }
    result = await conn.execute(insert(conn.dialect.name, Sample.__table__).values(**stored).on_conflict_do_nothing())
    if result.rowcount != 1:
        return None
    await _count(conn, row, stored["recorded_at"])
    return row_digest


async def _count(conn: AsyncConnection, row: dict[str, Any], now: dt.datetime) -> None:
    """Fold one more sample into its (task, model) line of `task_stats`."""
    t = TaskStats.__table__
    checked, correct = int(row["correct"] is not None), int(bool(row["correct"]))
    stmt = insert(conn.dialect.name, t).values(
        task_id=row["task_id"], model_id=row["model_id"], task_source=row["task_source"], samples=1,
        checked=checked, correct=correct, updated_at=now,
    )
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=[t.c.task_id, t.c.model_id],
        set_={"samples": t.c.samples + 1, "checked": t.c.checked + checked, "correct": t.c.correct + correct,
              "updated_at": now},
    ))
