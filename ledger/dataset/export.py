"""`stagewise dataset export`: the ledger's accepted samples as a dataset, streamed.

Epoch by epoch, in journal order: the epoch's entry hashes make its Merkle tree (32 bytes a leaf, whatever
the rows hold), then its `sample` entries joined to their rows are read in pages of `BATCH` and written as
one Arrow record batch (or JSONL lines) each, with their proofs. Memory holds one epoch's tree, one page and
the per-(task, model) tallies, never the dataset: bench/dataset.py measures it on a million entries.

Only epochs anchored on chain are exported unless `include_unanchored` (their rows then fail `verify`, and
rows past the last closed epoch carry no proof at all). A blamed or soft-invalidated job has no sample:
`ledger.samples.record` refuses it, so no flag exports one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import journal, merkle
from ledger.dataset import rows as layout
from ledger.dataset.card import write_card
from ledger.dataset.passk import TaskTally
from ledger.errors import InvalidInput
from ledger.models import Epoch, JournalEntry, Sample
from ledger.samples import row_from_stored

BATCH = 5_000
_J = JournalEntry.__table__
_S = Sample.__table__


class ExportError(InvalidInput):
    """An export that cannot be written as asked: the message says why."""


@dataclass(frozen=True)
class ExportReport:
    out: Path
    fmt: str
    rows: int
    pairs: int  # (task, model) rows of pass@k
    epochs: int
    unanchored_rows: int
    models: tuple[str, ...]
    tasks: int
    k: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.fmt, "rows": self.rows, "pass_at_k_rows": self.pairs,
                "epochs": self.epochs, "unanchored_rows": self.unanchored_rows, "models": list(self.models),
                "tasks": self.tasks, "k": self.k, "seconds": round(self.seconds, 3)}


class _Writer:
    """Record batches into a Parquet file, or the same rows as JSON lines."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.schema = schema
        self.fmt = fmt
        self._parquet = pq.ParquetWriter(path, schema, compression="zstd") if fmt == "parquet" else None
        self._jsonl = open(path, "w", encoding="utf-8") if fmt == "jsonl" else None

    def write(self, columns: dict[str, list[Any]]) -> None:
        if self._parquet is not None:
            self._parquet.write_batch(pa.RecordBatch.from_pydict(columns, schema=self.schema))
            return
        names = list(columns)
        for values in zip(*columns.values()):
            self._jsonl.write(json.dumps(dict(zip(names, values)), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._jsonl is not None:
            self._jsonl.close()


async def _epoch_tree(conn: AsyncConnection, first_seq: int, last_seq: int) -> list[list[bytes]]:
    hashes: list[bytes] = []
    after = first_seq - 1
    while after < last_seq:
        page = (await conn.execute(
            select(_J.c.seq, _J.c.entry_hash).where(_J.c.seq > after, _J.c.seq <= last_seq).order_by(_J.c.seq)
            .limit(100_000)
        )).all()
        if not page:
            break
        hashes.extend(bytes.fromhex(h[2:]) for _, h in page)
        after = page[-1].seq
    return merkle.levels(hashes)


async def _sample_pages(conn: AsyncConnection, after: int, last_seq: int | None):
    """Pages of (sample entry, its row) with after < seq <= last_seq (no bound when None), in journal order."""
    while True:
        query = (
            select(_J.c.seq, _J.c.at_ms, _J.c.prev_hash, _J.c.entry_hash, _S)
            .join(_S, _S.c.job_id == _J.c.job_id)
            .where(_J.c.kind == journal.SAMPLE, _J.c.seq > after)
            .order_by(_J.c.seq)
            .limit(BATCH)
        )
        if last_seq is not None:
            query = query.where(_J.c.seq <= last_seq)
        page = (await conn.execute(query)).all()
        if not page:
            return
        yield page
        after = page[-1].seq


def _columns(page, epoch: Any, tree: list[list[bytes]] | None, tally: Callable[[dict[str, Any]], None]) -> dict:
    columns: dict[str, list[Any]] = {name: [] for name in layout.SAMPLE_SCHEMA.names}
    root = None if tree is None else "0x" + tree[-1][0].hex()
    for stored in page:
        row = row_from_stored(stored)
        tally(row)
        if tree is not None:
            path = ["0x" + p.hex() for p in merkle.proof_from_levels(tree, stored.seq - epoch.first_seq)]
        else:
            path = None
        row.update(
            epoch=None if epoch is None else epoch.number,
            journal_seq=stored.seq,
            journal_at_ms=stored.at_ms,
            journal_prev_hash=stored.prev_hash,
            entry_hash=stored.entry_hash,
            merkle_proof=path,
            entries_root=root,
            anchor_tx=None if epoch is None else epoch.anchor_tx,
        )
        for name, values in columns.items():
            values.append(row[name])
    return columns


async def export_dataset(
    ledger: Any,
    out: Path,
    fmt: str = "parquet",
    *,
    include_unanchored: bool = False,
    k: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> ExportReport:
    """Write the dataset of `ledger` (a `Ledger`) into the directory `out`; see the module docstring. `k`: the k
    of pass@k (default: the fewest samples any (task, model) has, so that every row has a figure)."""
    if fmt not in layout.FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {', '.join(layout.FORMATS)}")
    if k is not None and k < 1:
        raise ExportError("k of pass@k must be at least 1")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tallies: dict[tuple[str, str], TaskTally] = {}

    def tally(row: dict[str, Any]) -> None:
        key = (row["task_id"], row["model_id"])
        found = tallies.get(key)
        if found is None:
            found = tallies[key] = TaskTally(row["task_id"], row["task_source"], row["model_id"])
        found.add(row["correct"])

    written = unanchored = epochs_used = 0
    writer = _Writer(layout.data_file(out, layout.SAMPLES, fmt), fmt, layout.SAMPLE_SCHEMA)
    try:
        async with ledger.reading() as conn:
            epochs = (await conn.execute(select(Epoch.__table__).order_by(Epoch.number))).all()
            last_closed = epochs[-1].last_seq if epochs else 0
            for epoch in epochs:
                if epoch.anchor_tx is None and not include_unanchored:
                    continue
                tree = None
                async for page in _sample_pages(conn, epoch.first_seq - 1, epoch.last_seq):
                    if tree is None:
                        tree = await _epoch_tree(conn, epoch.first_seq, epoch.last_seq)
                        epochs_used += 1
                    writer.write(_columns(page, epoch, tree, tally))
                    written += len(page)
                    unanchored += 0 if epoch.anchor_tx else len(page)
                    if progress:
                        progress(len(page))
            if include_unanchored:
                async for page in _sample_pages(conn, last_closed, None):
                    writer.write(_columns(page, None, None, tally))
                    written += len(page)
                    unanchored += len(page)
    finally:
        writer.close()

    counted = [t.n for t in tallies.values() if t.n]
    k = k or (min(counted) if counted else 1)
    pass_rows = sorted((t.row(k) for t in tallies.values()), key=lambda r: (r["task_id"], r["model_id"]))
    pass_writer = _Writer(layout.data_file(out, layout.PASS_AT_K, fmt), fmt, layout.PASS_AT_K_SCHEMA)
    try:
        for start in range(0, len(pass_rows), BATCH):
            chunk = pass_rows[start:start + BATCH]
            pass_writer.write({name: [r[name] for r in chunk] for name in layout.PASS_AT_K_SCHEMA.names})
    finally:
        pass_writer.close()

    report = ExportReport(
        out=out, fmt=fmt, rows=written, pairs=len(pass_rows), epochs=epochs_used, unanchored_rows=unanchored,
        models=tuple(sorted({m for _, m in tallies})), tasks=len({t for t, _ in tallies}), k=k,
        seconds=time.perf_counter() - started,
    )
    write_card(report, pass_rows)
    return report
