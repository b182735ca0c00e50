"""`stagewise dataset export`: the ledger's accepted samples as a dataset, streamed.

Epoch by epoch, in journal order: the epoch's entry hashes make its Merkle tree (32 bytes a leaf, whatever
the rows hold), then its `sample` entries joined to their rows are read in pages of `BATCH` and written as
one Arrow record batch (or JSONL lines) each, with their proofs. Three things run at once: the database reads
the next page, Python converts this one, and a thread encodes the one before into Parquet. Memory holds one
epoch's tree, three pages and the per-(task, model) tallies, never the dataset: bench/dataset.py measures it
on a million entries.

Only epochs anchored on chain are exported unless `include_unanchored` (their rows then fail `verify`, and
rows past the last closed epoch carry no proof at all). A blamed or soft-invalidated job has no sample:
`ledger.samples.record` refuses it, so no flag exports one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import journal, json_input, merkle
from ledger.dataset import rows as layout
from ledger.dataset.card import write_card
from ledger.dataset.passk import TaskTally
from ledger.errors import InvalidInput
from ledger.models import Epoch, JournalEntry, Sample

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


_TOKEN_FIELDS = ("prompt_token_ids", "completion_token_ids")
_STORED = ("job_id", "task_id", "task_source", "model_id", "prompt_text", "prompt_token_ids", "completion_text",
           "completion_token_ids", "sampling", "seed", "answer", "checker", "correct", "verdict", "verdict_figures")


# Dictionary encoding only where values repeat (the rest would try it, fail and fall back, at a cost per row).
_DICTIONARY = ["task_source", "model_id", "answer", "checker", "verdict", "verdict_figures", "entries_root",
               "anchor_tx", "task_id"]


def _token_lists(texts: list[str]) -> pa.Array:
    """JSON arrays of integers (token ids as stored) as one Arrow list array, parsed by numpy in one call: no
    Python int per token. ExportError when a stored array is not a list of integers."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([0 if text == "[]" else text.count(",") + 1 for text in texts])
    values = np.fromstring(",".join(text[1:-1] for text in texts if text != "[]"), dtype=np.int64, sep=",")
    if len(values) != offsets[-1] or not all(text[:1] == "[" and text[-1:] == "]" for text in texts):
        raise ExportError("a stored token array is not a JSON list of integers")
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _arrow_column(name: str, values: Any, field: pa.Field) -> pa.Array:
    """One column as Arrow; sampling parameters converted once per distinct value and repeated by index."""
    if isinstance(values, pa.Array):
        return values
    if name == "sampling":
        distinct: dict[int, int] = {}
        order = [distinct.setdefault(id(value), len(distinct)) for value in values]
        firsts = {position: value for value, position in zip(values, order)}
        table = pa.array([firsts[i] for i in range(len(distinct))], type=field.type)
        return table.take(pa.array(order, type=pa.int32()))
    return pa.array(values, type=field.type)


# Min/max statistics only where a reader filters on them: on texts, token ids and proofs they cost a few us a
# row and say nothing.
_STATISTICS = ["job_id", "task_id", "task_source", "model_id", "seed", "answer", "checker", "correct", "verdict",
               "epoch", "journal_seq", "journal_at_ms", "n", "k", "pass_at_1", "pass_at_k"]


class _Writer:
    """Pages of rows (as columns of Python values or Arrow arrays) into a Parquet file, or as JSON lines.

    A Parquet page is encoded and compressed on a thread of its own (pyarrow releases the GIL there) while the
    next page is read and converted; at most one page waits for it, so memory holds two pages at most."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.schema = schema
        dictionary = [name for name in _DICTIONARY if name in schema.names]
        # snappy, Parquet's default: zstd would make the file about half as big and cost 5 us more a row
        self._parquet = (pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=dictionary,
                                          write_statistics=[name for name in _STATISTICS if name in schema.names])
                         if fmt == "parquet" else None)
        self._jsonl = open(path, "w", encoding="utf-8") if fmt == "jsonl" else None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="parquet") if self._parquet is not None else None
        self._pending: Future | None = None

    def write(self, columns: dict[str, Any]) -> None:
        if self._parquet is not None:
            arrays = [_arrow_column(field.name, columns[field.name], field) for field in self.schema]
            batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
            self._wait()
            self._pending = self._thread.submit(self._parquet.write_batch, batch)
            return
        names = list(columns)
        values = [v.to_pylist() if isinstance(v, pa.Array) else v for v in columns.values()]
        proofs = names.index("merkle_proof") if "merkle_proof" in names else None
        if proofs is not None:
            values[proofs] = [None if path is None else ["0x" + node.hex() for node in path] for path in values[proofs]]
        self._jsonl.writelines(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n" for row in zip(*values))

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a write that failed fails the export

    def close(self) -> None:
        try:
            self._wait()
        finally:
            if self._thread is not None:
                self._thread.shutdown()
            if self._parquet is not None:
                self._parquet.close()
            if self._jsonl is not None:
                self._jsonl.close()


@dataclass(frozen=True)
class _Tree:
    """One epoch's Merkle tree, each level one bytes object (32 bytes a node): a million leaves hold 64 MB,
    not a hundred in small objects."""

    first_seq: int
    levels: tuple[bytes, ...]

    @property
    def root(self) -> str:
        return "0x" + self.levels[-1][:32].hex()

    def proofs(self, seqs: list[int]) -> pa.Array:
        """The Merkle proof of each entry in `seqs` (the sibling hashes from it up to the root, as
        `merkle.proof` gives them) as one Arrow list of 32-byte hashes, gathered level by level with numpy: no
        Python object per hash. A sibling that does not exist (an odd level's promoted last node) is left out."""
        index = np.asarray(seqs, dtype=np.int64) - self.first_seq
        siblings, present = [], []
        for level in self.levels[:-1]:
            nodes = np.frombuffer(level, dtype=np.uint8).reshape(-1, 32)
            sibling = index ^ 1
            present.append(sibling < len(nodes))
            siblings.append(nodes[np.minimum(sibling, len(nodes) - 1)])
            index = index >> 1
        if not siblings:  # a tree of one leaf: every proof is empty
            return pa.array([[] for _ in seqs], type=pa.list_(pa.binary(32)))
        kept = np.stack(present, axis=1)
        blob = np.stack(siblings, axis=1)[kept]  # row by row, leaf level first
        offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
        np.cumsum(kept.sum(axis=1), out=offsets[1:])
        hashes = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(blob), [None, pa.py_buffer(blob.tobytes())])
        return pa.ListArray.from_arrays(pa.array(offsets), hashes)


# The two reads below go to the driver itself (`_fetch`): SQLAlchemy's result rows, even through
# exec_driver_sql, cost a third more CPU than the database's own work here. Their only values are integers from
# the ledger itself.
_PAGE_SQL = (
    "SELECT j.seq, j.at_ms, j.prev_hash, j.entry_hash, " + ", ".join(f"s.{name}" for name in _STORED)
    + f" FROM journal j JOIN samples s ON s.job_id = j.job_id WHERE j.kind = '{journal.SAMPLE}' AND j.seq > {{after}}{{bound}}"
    " ORDER BY j.seq LIMIT {limit}"
)
# An epoch's entry hashes come concatenated by the database, a page at a time: one string, not a row per entry.
# SQLite before 3.44 has no ORDER BY inside group_concat and keeps the subquery's order; the tree's root is
# compared with the epoch's stored entries root either way, so an order it did not keep fails the export.
_HASHES_SQL = {
    "postgresql": "SELECT count(*), max(seq), string_agg(h, '' ORDER BY seq) FROM (SELECT seq, substr(entry_hash, 3) AS h"
                  " FROM journal WHERE seq > {after} AND seq <= {last} ORDER BY seq LIMIT {limit}) AS page",
    "sqlite": "SELECT count(*), max(seq), group_concat(h, '') FROM (SELECT seq, substr(entry_hash, 3) AS h"
              " FROM journal WHERE seq > {after} AND seq <= {last} ORDER BY seq LIMIT {limit})",
}


async def _fetch(conn: AsyncConnection, sql: str) -> list[Any]:
    """The rows of `sql` as the driver gives them (tuples from aiosqlite, records from asyncpg), on `conn`'s
    connection and in its transaction; any other driver through SQLAlchemy."""
    driver = (await conn.get_raw_connection()).driver_connection
    if conn.dialect.driver == "asyncpg":
        return await driver.fetch(sql)
    if conn.dialect.driver == "aiosqlite":
        return await driver.execute_fetchall(sql)  # one round trip to its thread
    return (await conn.exec_driver_sql(sql)).all()


@contextlib.asynccontextmanager
async def _scan_cache(conn: AsyncConnection):
    """On SQLite, a 4 MiB page cache while the export reads (the ledger's 64 MiB would only fill with pages
    read once, and count in the export's memory); the connection's own size restored after."""
    if conn.dialect.name != "sqlite":
        yield
        return
    ((size,),) = await _fetch(conn, "PRAGMA cache_size")
    await _fetch(conn, "PRAGMA cache_size=-4096")
    try:
        yield
    finally:
        await _fetch(conn, f"PRAGMA cache_size={int(size)}")


async def _epoch_tree(conn: AsyncConnection, epoch: Any) -> _Tree:
    """The Merkle tree of `epoch`'s entries; ExportError when it does not give the root the epoch stores."""
    leaves = bytearray()
    after, last = int(epoch.first_seq) - 1, int(epoch.last_seq)
    sql = _HASHES_SQL["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    while after < last:
        ((count, top, hashes),) = await _fetch(conn, sql.format(after=after, last=last, limit=100_000))
        if not count:
            break
        leaves += bytes.fromhex(hashes)
        after = top
    levels = [bytes(leaves)]
    while len(levels[-1]) > 32:
        levels.append(merkle.parent_level(levels[-1]))
    tree = _Tree(epoch.first_seq, tuple(levels))
    if len(leaves) != 32 * epoch.entry_count or tree.root != epoch.entries_root:
        raise ExportError(f"epoch {epoch.number}: its journal entries do not give the entries root it stores "
                          f"({epoch.entries_root}); run `stagewise ledger verify`")
    return tree


def _page_sql(after: int, last_seq: int | None) -> str:
    """The next page of (sample entry, its row) with after < seq <= last_seq (no bound when None)."""
    bound = "" if last_seq is None else f" AND j.seq <= {int(last_seq)}"
    return _PAGE_SQL.format(after=int(after), bound=bound, limit=BATCH)


async def _each_page(conn: AsyncConnection, first: list[Any], last_seq: int | None, handle: Callable[[list], None]) -> None:
    """`handle` each page of sample rows in journal order, from the page `first` up to `last_seq`. The next page
    is read while `handle` works on this one (SQLite's thread or the PostgreSQL server does its part meanwhile);
    nothing else uses the connection until the last read has come back."""
    page: list[Any] = first
    upcoming: asyncio.Future | None = None
    try:
        while page:
            if len(page) == BATCH:  # a shorter page is the last
                upcoming = asyncio.ensure_future(_fetch(conn, _page_sql(page[-1][0], last_seq)))
                await asyncio.sleep(0)  # let the read reach the driver before the CPU work below
            handle(page)
            page, upcoming = (await upcoming if upcoming is not None else []), None
    finally:
        if upcoming is not None:
            await asyncio.gather(upcoming, return_exceptions=True)


def _columns(page, epoch: Any, tree: _Tree | None, parsed: dict[str, Any]) -> dict[str, list[Any]]:
    """A page of rows as the schema's columns: Python values, the token ids as Arrow arrays."""
    stored = dict(zip(("seq", "at_ms", "prev_hash", "entry_hash", *_STORED), map(list, zip(*page))))
    count = len(page)
    columns = {name: stored[name] for name in _STORED}
    for name in _TOKEN_FIELDS:
        columns[name] = _token_lists(stored[name])
    columns["sampling"] = [parsed.get(text) or parsed.setdefault(text, json_input.loads(text)) for text in stored["sampling"]]
    columns["seed"] = [int(seed) for seed in stored["seed"]]
    columns["correct"] = [None if value is None else bool(value) for value in stored["correct"]]
    columns.update(
        epoch=[None if epoch is None else epoch.number] * count,
        journal_seq=stored["seq"],
        journal_at_ms=stored["at_ms"],
        journal_prev_hash=stored["prev_hash"],
        entry_hash=stored["entry_hash"],
        merkle_proof=(pa.nulls(count, layout.SAMPLE_SCHEMA.field("merkle_proof").type) if tree is None
                      else tree.proofs(stored["seq"])),
        entries_root=[None if tree is None else tree.root] * count,
        anchor_tx=[None if epoch is None else epoch.anchor_tx] * count,
    )
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

    parsed: dict[str, Any] = {}  # sampling parameters by their JSON text: a run has a few

    def tally(columns: dict[str, list[Any]]) -> None:
        counted = Counter(zip(columns["task_id"], columns["task_source"], columns["model_id"], columns["correct"]))
        for (task_id, source, model_id, correct), times in counted.items():
            found = tallies.get((task_id, model_id))
            if found is None:
                found = tallies[(task_id, model_id)] = TaskTally(task_id, source, model_id)
            found.add(correct, times)

    def write(page, *, epoch, tree) -> None:
        nonlocal written, unanchored
        columns = _columns(page, epoch, tree, parsed)
        tally(columns)
        writer.write(columns)
        written += len(page)
        unanchored += 0 if epoch is not None and epoch.anchor_tx else len(page)
        if progress:
            progress(len(page))

    written = unanchored = epochs_used = 0
    writer = _Writer(layout.data_file(out, layout.SAMPLES, fmt), fmt, layout.SAMPLE_SCHEMA)
    try:
        async with ledger.reading() as conn, _scan_cache(conn):
            epochs = (await conn.execute(select(Epoch.__table__).order_by(Epoch.number))).all()
            last_closed = epochs[-1].last_seq if epochs else 0
            for epoch in epochs:
                if epoch.anchor_tx is None and not include_unanchored:
                    continue
                first = await _fetch(conn, _page_sql(epoch.first_seq - 1, epoch.last_seq))
                if not first:
                    continue
                tree = await _epoch_tree(conn, epoch)
                epochs_used += 1
                await _each_page(conn, first, epoch.last_seq, functools.partial(write, epoch=epoch, tree=tree))
            if include_unanchored:
                first = await _fetch(conn, _page_sql(last_closed, None))
                await _each_page(conn, first, None, functools.partial(write, epoch=None, tree=None))
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
