"""A dataset row's fields, their Arrow types, and the files a dataset is made of.

One row per accepted sample (ledger.samples): what the job computed and what the checker said (the committed
fields, hashed into the row's digest), then where it sits in the ledger and on chain: the epoch, the
`sample` journal entry's position, time, predecessor and hash, the Merkle path from that hash to the epoch's
entries root, the root itself and the anchor transaction. Parquet and JSONL hold the same fields.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

SAMPLES = "samples"
PASS_AT_K = "pass_at_k"
FORMATS = ("parquet", "jsonl")

_TOKENS = pa.list_(pa.int64())
SAMPLING = pa.struct([
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("top_k", pa.int64()),
    ("max_new_tokens", pa.int64()),
    ("stop_ids", _TOKENS),
])

SAMPLE_SCHEMA = pa.schema([
    ("job_id", pa.string()),
    ("task_id", pa.string()),
    ("task_source", pa.string()),
    ("model_id", pa.string()),
    ("prompt_text", pa.string()),
    ("prompt_token_ids", _TOKENS),
    ("completion_text", pa.string()),
    ("completion_token_ids", _TOKENS),
    ("sampling", SAMPLING),
    ("seed", pa.uint64()),
    ("answer", pa.string()),
    ("checker", pa.string()),
    ("correct", pa.bool_()),
    ("verdict", pa.string()),
    ("verdict_figures", pa.string()),
    ("epoch", pa.int64()),
    ("journal_seq", pa.int64()),
    ("journal_at_ms", pa.int64()),
    ("journal_prev_hash", pa.string()),
    ("entry_hash", pa.string()),
    ("merkle_proof", pa.list_(pa.binary(32))),
    ("entries_root", pa.string()),
    ("anchor_tx", pa.string()),
])

PASS_AT_K_SCHEMA = pa.schema([
    ("task_id", pa.string()),
    ("task_source", pa.string()),
    ("model_id", pa.string()),
    ("n", pa.int64()),
    ("correct", pa.int64()),
    ("unchecked", pa.int64()),
    ("k", pa.int64()),
    ("pass_at_1", pa.float64()),
    ("pass_at_k", pa.float64()),
])

FIELD_NOTES = {
    "job_id": "the accepted job (keccak256 of its spec)",
    "task_id": "the task, unique within its source",
    "task_source": "where the task came from: a JSONL file, `arithmetic`, or a generator `gen:NAME:n=..:seed=..`",
    "model_id": "the model (keccak256 of its weight manifest)",
    "prompt_text": "the task's prompt as text (null when the task gave token ids)",
    "prompt_token_ids": "the prompt as the model saw it (chat template applied)",
    "completion_text": "the decoded completion",
    "completion_token_ids": "the completion's tokens, verified stage by stage by the validator",
    "sampling": "temperature, top_p, top_k, max_new_tokens, stop_ids",
    "seed": "the orchestrator's sampling seed (PROTOCOL I1)",
    "answer": "the reference answer (null without a checker)",
    "checker": "the checker that judged the completion (math: math-verify; number; exact; contains)",
    "correct": "the checker's result (null without a checker)",
    "verdict": "always `accepted`: blamed and soft-invalidated jobs are never exported",
    "verdict_figures": "the verifier's figures (JSON)",
    "epoch": "the ledger epoch whose entries root covers this row",
    "journal_seq": "the position of the row's `sample` journal entry",
    "journal_at_ms": "that entry's time (ms since 1970)",
    "journal_prev_hash": "the hash of the entry before it",
    "entry_hash": "keccak256(prev_hash ‖ canonical entry): the entry committing to this row's digest",
    "merkle_proof": "the sibling hashes from entry_hash to entries_root (OpenZeppelin sorted pairs): 32 bytes each in Parquet, 0x-hex in JSONL",
    "entries_root": "the epoch's entries root, as anchored on chain",
    "anchor_tx": "the transaction that anchored the epoch",
}


def data_file(out: Path, name: str, fmt: str) -> Path:
    return Path(out) / f"{name}.{fmt}"


def find_samples(path: Path) -> tuple[Path, str]:
    """The samples file of a dataset directory (or the file itself) and its format; FileNotFoundError if none."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lstrip(".")
        if suffix in FORMATS:
            return path, suffix
        raise FileNotFoundError(f"{path} is neither .parquet nor .jsonl")
    for fmt in FORMATS:
        candidate = data_file(path, SAMPLES, fmt)
        if candidate.is_file():
            return candidate, fmt
    raise FileNotFoundError(f"no {SAMPLES}.parquet or {SAMPLES}.jsonl in {path}")
