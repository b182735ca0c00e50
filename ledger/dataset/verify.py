"""`stagewise dataset verify`: every row of an exported dataset checked against the roots anchored on chain.

A row holds when, in this order:
1. its verdict is `accepted` (a blamed job's output is no dataset row, whatever proof comes with it);
2. it has an epoch and a Merkle proof (a row of an epoch never anchored, or one whose proof was dropped, fails);
3. its committed fields digest (ledger.samples) into the `sample` journal entry whose hash is `entry_hash`,
   given the entry's stored position, time and predecessor: a changed completion, token, seed or checker
   result changes the digest, hence the entry's hash;
4. `merkle_proof` leads from `entry_hash` to the entries root the staking contract holds for the epoch.
Nothing is trusted from the file but what it proves; the chain is read once per epoch (`ChainRoots`).
Rows are read in record batches (Parquet) or line by line (JSONL), so memory stays flat.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ledger import json_input, merkle
from ledger.dataset.rows import find_samples
from ledger.models import ACCEPTED
from ledger.samples import SampleError, digest, sample_entry_hash

READ_BATCH = 1_024
MEMO_PAIRS = 1 << 16  # pair hashes kept for the proofs of one epoch (ledger.merkle.process_proof): about 12 MB
MAX_LINE_BYTES = 64 << 20
FAILURES_KEPT = 1_000


@dataclass(frozen=True)
class RowFailure:
    row: int
    job_id: Any
    task_id: Any
    problem: str

    def __str__(self) -> str:
        return f"row {self.row} (job {self.job_id}, task {self.task_id}): {self.problem}"


@dataclass
class VerifyResult:
    rows: int = 0
    held: int = 0
    epochs: int = 0
    seconds: float = 0.0
    failures: list[RowFailure] = field(default_factory=list)
    failed: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.rows > 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "held": self.held, "failed": self.failed, "epochs": self.epochs,
                "seconds": round(self.seconds, 3), "failures": [str(f) for f in self.failures]}


class ChainRoots:
    """The entries root each epoch anchored on chain, read once per epoch from a `ChainClient`."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain
        self._roots: dict[int, bytes] = {}
        self.calls = 0

    def __call__(self, epoch: int) -> bytes:
        found = self._roots.get(epoch)
        if found is None:
            self.calls += 1
            found = self._roots[epoch] = self._chain.entries_root_of(epoch)
        return found


def _hash32(value: Any) -> bytes | None:
    """A 32-byte hash from a proof: raw bytes (Parquet) or 0x-hex (JSONL); None for anything else."""
    if isinstance(value, bytes):
        return value if len(value) == 32 else None
    if not isinstance(value, str) or len(value) != 66 or value[:2] != "0x":
        return None
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        return None


def check_row(row: dict[str, Any], root_of: Callable[[int], bytes], memo: dict[bytes, bytes] | None = None) -> str | None:
    """None when `row` holds, else what is wrong with it. `merkle_proof` is a list of 32-byte hashes (bytes or
    0x hex) or, as `_rows` reads it from Parquet, the hashes concatenated. `memo`: pair hashes already computed
    for rows of the same epoch (ledger.merkle.process_proof)."""
    if row.get("verdict") != ACCEPTED:
        return f"its job's verdict is {row.get('verdict')!r}: only accepted jobs belong in the dataset"
    epoch, proof = row.get("epoch"), row.get("merkle_proof")
    if epoch is None:
        return "it is not in an anchored epoch (exported with --include-unanchored)"
    if proof is None:
        return "it has no Merkle proof"
    try:
        entry = sample_entry_hash(row["job_id"], digest(row), row["journal_seq"], row["journal_at_ms"],
                                  row["journal_prev_hash"])
    except (KeyError, TypeError, ValueError, SampleError) as error:
        return f"its fields cannot be hashed ({type(error).__name__}: {error})"
    if entry != row.get("entry_hash"):
        return (f"its content does not hash to its journal entry (entry {row.get('journal_seq')} would be {entry}, "
                f"the row says {row.get('entry_hash')}): changed since it was exported")
    if type(proof) is bytes:  # Parquet, as `_rows` reads it
        if len(proof) % 32:
            return "its Merkle proof holds something other than 32-byte hashes"
        proof = [proof[i:i + 32] for i in range(0, len(proof), 32)]
    elif not all(type(p) is bytes and len(p) == 32 for p in proof):  # JSONL gives hex
        proof = [_hash32(p) for p in proof]
        if any(p is None for p in proof):
            return "its Merkle proof holds something other than 32-byte hashes"
    on_chain = root_of(int(epoch))
    if on_chain == merkle.ZERO_HASH:
        return f"epoch {epoch} is not anchored on chain"
    if merkle.process_proof(bytes.fromhex(entry[2:]), proof, memo) != on_chain:
        return f"its Merkle proof does not lead to the entries root epoch {epoch} anchored on chain (0x{on_chain.hex()})"
    return None


_HASHES = pa.list_(pa.binary(32))


def _column(array: pa.Array) -> list[Any]:
    """A column of a record batch as one value a row, as `to_pylist` gives it, except:
    - token ids without nulls: numpy slices of the column's buffer (what the digest packs), not a Python int
      per token; as uint64 when none is negative (the digest's packing, so nothing is converted per row);
    - 32-byte hashes (the Merkle proofs): each row's hashes as one bytes object, not a bytes object per hash."""
    if pa.types.is_list(array.type) and pa.types.is_integer(array.type.value_type) and array.null_count == 0:
        offsets, values = array.offsets.to_numpy(), array.values.to_numpy()
        if values.dtype == "<i8" and (not len(values) or values.min() >= 0):
            values = values.view("<u8")
        return [values[offsets[i]:offsets[i + 1]] for i in range(len(array))]
    if array.type == _HASHES and array.values.null_count == 0:
        offsets = (array.offsets.to_numpy() * 32).tolist()
        hashes = array.values
        data = hashes.buffers()[1].to_pybytes()[hashes.offset * 32:(hashes.offset + len(hashes)) * 32]
        valid = array.is_valid().to_pylist() if array.null_count else None
        return [data[offsets[i]:offsets[i + 1]] if valid is None or valid[i] else None for i in range(len(array))]
    return array.to_pylist()


def _rows(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    if fmt == "parquet":
        # pre_buffer off: the reader would otherwise keep every row group's bytes it pre-buffered until the file
        # is closed (about 1 MB a row group, so memory would grow with the dataset)
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=READ_BATCH):
            names = batch.schema.names
            for values in zip(*(_column(column) for column in batch.columns)):
                yield dict(zip(names, values))
        return
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            if len(line) > MAX_LINE_BYTES:
                yield {"_problem": f"line longer than {MAX_LINE_BYTES} bytes"}
                continue
            try:
                value = json_input.loads(line)
            except ValueError as error:
                yield {"_problem": f"not JSON: {error}"}
                continue
            yield value if isinstance(value, dict) else {"_problem": "not a JSON object"}


def verify_dataset(out: Path, root_of: Callable[[int], bytes], progress: Callable[[int], Any] | None = None) -> VerifyResult:
    """Check every row of the dataset at `out` (a directory or its samples file) against `root_of(epoch)`, the
    entries root anchored for an epoch (`ChainRoots(client)`). FileNotFoundError when there is no data file."""
    path, fmt = find_samples(out)
    result = VerifyResult()
    started = time.perf_counter()
    epochs: set[int] = set()
    memo: dict[bytes, bytes] = {}
    memo_epoch = None
    for index, row in enumerate(_rows(path, fmt)):
        if row.get("epoch") != memo_epoch or len(memo) > MEMO_PAIRS:
            memo.clear()
            memo_epoch = row.get("epoch")
        problem = row.get("_problem") or check_row(row, root_of, memo)
        result.rows += 1
        if problem is None:
            result.held += 1
            epochs.add(row["epoch"])
        else:
            result.failed += 1
            if len(result.failures) < FAILURES_KEPT:
                result.failures.append(RowFailure(index, row.get("job_id"), row.get("task_id"), problem))
        if progress and result.rows % READ_BATCH == 0:
            progress(READ_BATCH)
    result.epochs = len(epochs)
    result.seconds = time.perf_counter() - started
    return result
