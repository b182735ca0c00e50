"""Writing journal entries: what `LedgerTx.append` does under the journal head's lock.

- `unseen(conn, entries)`: drop the entries whose identity (reward per job and stage, slash per evidence
  hash, soft invalidation per job, anchor per epoch) or `ref` (per chain event) is already journaled, or
  repeated earlier in the batch; the database's UNIQUE indexes back this up.
- `insert_entries(conn, written)`: the rows, batched: one INSERT ... SELECT FROM unnest(...) per batch on
  PostgreSQL, a driver executemany on SQLite.
- `update_totals(conn, written)`: fold them into the per-worker totals in the same transaction, so the
  leaderboard and histories read indexed rows only. bench/ledger.py measures it with a million entries.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import journal
from ledger.journal import Entry, NewEntry
from ledger.models import WEI_DIGITS, JournalEntry, JournalHead

_J = JournalEntry.__table__
_CHUNK = 500  # ids per IN (...) lookup


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The identity lookups below are written out in full, kind and keys, not bound. asyncpg prepares every
# statement, and after a few runs PostgreSQL may plan a prepared one once for any values (a generic plan):
# with the kind bound, no partial index (`WHERE kind = 'reward'`) fits and every append scanned the whole
# journal; with the keys bound (kind written out), a bench build on a journal not yet analyzed still read every
# `sample` entry through the partial index on seq. Written out, each lookup is planned for its own values.
# The values are the ledger's own validated hashes, numbers and kinds, quoted by SQLAlchemy.


def _inline(kind: str):
    return literal(kind, literal_execute=True)


def _inline_list(values: list[Any]):
    return bindparam("keys", values, expanding=True, literal_execute=True)


async def unseen(conn: AsyncConnection, entries: Sequence[NewEntry]) -> list[NewEntry]:
    """The entries whose identity (and ref) is neither journaled already nor repeated earlier in the batch."""
    by_kind: dict[str, list[NewEntry]] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e)
    seen: set[tuple[Any, ...]] = set()
    seen_refs: set[str] = set()
    rewards = by_kind.get(journal.REWARD, [])
    for chunk in _chunks(sorted({e.job_id for e in rewards})):
        rows = await conn.execute(
            select(_J.c.job_id, _J.c.stage).where(_J.c.kind == _inline(journal.REWARD), _J.c.job_id.in_(_inline_list(chunk)))
        )
        seen.update((journal.REWARD, r.job_id, r.stage) for r in rows)
    for kind, column, attr in (
        (journal.SLASH, _J.c.evidence_hash, "evidence_hash"),
        (journal.SOFT_INVALIDATION, _J.c.job_id, "job_id"),
        (journal.ANCHOR, _J.c.epoch, "epoch"),
        (journal.SAMPLE, _J.c.job_id, "job_id"),
    ):
        keys = sorted({getattr(e, attr) for e in by_kind.get(kind, [])})
        for chunk in _chunks(keys):
            rows = await conn.execute(select(column).where(_J.c.kind == _inline(kind), column.in_(_inline_list(chunk))))
            seen.update((kind, value) for (value,) in rows)
    refs = sorted({e.ref for e in entries if e.ref is not None})
    for chunk in _chunks(refs):
        rows = await conn.execute(select(_J.c.ref).where(_J.c.ref.in_(chunk)))
        seen_refs.update(value for (value,) in rows)
    fresh: list[NewEntry] = []
    for e in entries:
        identity = e.identity()
        if identity is not None:
            if identity in seen:
                continue
            seen.add(identity)
        if e.ref is not None:
            if e.ref in seen_refs:
                continue
            seen_refs.add(e.ref)
        fresh.append(e)
    return fresh


async def insert_entries(conn: AsyncConnection, written: Sequence[Entry]) -> None:
    """Write journal rows: on PostgreSQL as one INSERT ... SELECT FROM unnest(arrays) (one statement per
    batch instead of one per row), on SQLite as a driver-level executemany of ready-made tuples. Both
    store exactly what the models' types would (wei padded on SQLite, JSON as text)."""
    if conn.dialect.name == "sqlite":
        pad = f"0{WEI_DIGITS}d"
        await conn.exec_driver_sql(
            "INSERT INTO journal (seq, kind, worker, amount, job_id, stage, work_units, evidence_hash, epoch, ref,"
            " data, at_ms, prev_hash, entry_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (e.seq, e.kind, e.worker, format(e.amount, pad), e.job_id, e.stage, e.work_units, e.evidence_hash,
                 e.epoch, e.ref, None if e.data is None else _json_text(e.data), e.at_ms, e.prev_hash, e.entry_hash)
                for e in written
            ],
        )
        return
    columns = {
        "seq": "bigint",
        "kind": "varchar",
        "worker": "varchar",
        "amount": "numeric",
        "job_id": "varchar",
        "stage": "integer",
        "work_units": "bigint",
        "evidence_hash": "varchar",
        "epoch": "bigint",
        "ref": "varchar",
        "data": "json",
        "at_ms": "bigint",
        "prev_hash": "varchar",
        "entry_hash": "varchar",
    }
    arrays: dict[str, list[Any]] = {name: [] for name in columns}
    for e in written:
        for name in columns:
            arrays[name].append(getattr(e, name))
    arrays["amount"] = [Decimal(v) for v in arrays["amount"]]
    arrays["data"] = [None if v is None else _json_text(v) for v in arrays["data"]]
    names = ", ".join(columns)
    casts = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns.items())
    await conn.execute(text(f"INSERT INTO journal ({names}) SELECT * FROM unnest({casts})"), arrays)


async def update_totals(conn: AsyncConnection, written: Sequence[Entry]) -> None:
    """Fold the new entries into the per-worker totals that the leaderboard reads."""
    deltas: dict[str, dict[str, int]] = {}
    for e in written:
        if e.worker is None:
            continue
        d = deltas.setdefault(
            e.worker, {"rewards": 0, "accepted_jobs": 0, "work_units": 0, "slashes": 0, "slashed_amount": 0}
        )
        d["last_seq"] = e.seq
        if e.kind == journal.REWARD:
            d["rewards"] += e.amount
            d["accepted_jobs"] += 1
            d["work_units"] += e.work_units or 0
        elif e.kind == journal.SLASH:
            d["slashes"] += 1
            d["slashed_amount"] += e.amount
    if not deltas:
        return
    if conn.dialect.name == "postgresql":
        await _add_totals_in_sql(conn, deltas)
        return
    await _add_totals_in_python(conn, deltas)


async def _add_totals_in_python(conn: AsyncConnection, deltas: dict[str, dict[str, int]]) -> None:
    """SQLite: read the workers' totals, add, write back, with plain driver statements (the rows are
    few and the database is in-process, so this costs microseconds a row). Safe because the caller
    holds the write lock (BEGIN IMMEDIATE)."""
    current: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks(sorted(deltas)):
        marks = ",".join("?" * len(chunk))
        rows = await conn.exec_driver_sql(
            "SELECT address, rewards, accepted_jobs, work_units, slashes, slashed_amount FROM workers"
            f" WHERE address IN ({marks})",
            tuple(chunk),
        )
        current.update({r[0]: r for r in rows})
    now = _now().strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite DATETIME storage format
    pad = f"0{WEI_DIGITS}d"
    inserts, updates = [], []
    for address, d in deltas.items():
        row = current.get(address)
        if row is None:
            inserts.append(
                (address, format(0, pad), format(d["rewards"], pad), d["accepted_jobs"], d["work_units"],
                 d["slashes"], format(d["slashed_amount"], pad), d["last_seq"], now, now)
            )
        else:
            updates.append(
                (format(int(row[1]) + d["rewards"], pad), row[2] + d["accepted_jobs"], row[3] + d["work_units"],
                 row[4] + d["slashes"], format(int(row[5]) + d["slashed_amount"], pad), d["last_seq"], now, address)
            )
    if inserts:
        await conn.exec_driver_sql(
            "INSERT INTO workers (address, stake, rewards, accepted_jobs, work_units, slashes, slashed_amount,"
            " last_seq, first_seen, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        await count_new_workers(conn, len(inserts))
    if updates:
        await conn.exec_driver_sql(
            "UPDATE workers SET rewards = ?, accepted_jobs = ?, work_units = ?, slashes = ?, slashed_amount = ?,"
            " last_seq = ?, updated_at = ? WHERE address = ?",
            updates,
        )


async def _add_totals_in_sql(conn: AsyncConnection, deltas: dict[str, dict[str, int]]) -> None:
    """PostgreSQL: one INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE that adds the deltas
    in SQL (NUMERIC arithmetic is exact): one statement for the whole batch, no read first. SQLite
    stores wei as padded text, so it adds in Python instead."""
    ordered = sorted(deltas.items())
    now = _now()
    result = await conn.execute(
        text(
            "INSERT INTO workers (address, stake, rewards, accepted_jobs, work_units, slashes, slashed_amount,"
            " last_seq, first_seen, updated_at)"
            " SELECT a, 0, r, j, u, s, x, q, :now, :now FROM unnest("
            "CAST(:a AS varchar[]), CAST(:r AS numeric[]), CAST(:j AS bigint[]), CAST(:u AS bigint[]),"
            " CAST(:s AS bigint[]), CAST(:x AS numeric[]), CAST(:q AS bigint[])) AS t(a, r, j, u, s, x, q)"
            " ON CONFLICT (address) DO UPDATE SET rewards = workers.rewards + excluded.rewards,"
            " accepted_jobs = workers.accepted_jobs + excluded.accepted_jobs,"
            " work_units = workers.work_units + excluded.work_units,"
            " slashes = workers.slashes + excluded.slashes,"
            " slashed_amount = workers.slashed_amount + excluded.slashed_amount,"
            " last_seq = excluded.last_seq, updated_at = excluded.updated_at"
            " RETURNING (xmax = 0)"  # true for a row this statement inserted
        ),
        {
            "now": now,
            "a": [w for w, _ in ordered],
            "r": [Decimal(d["rewards"]) for _, d in ordered],
            "j": [d["accepted_jobs"] for _, d in ordered],
            "u": [d["work_units"] for _, d in ordered],
            "s": [d["slashes"] for _, d in ordered],
            "x": [Decimal(d["slashed_amount"]) for _, d in ordered],
            "q": [d["last_seq"] for _, d in ordered],
        },
    )
    await count_new_workers(conn, sum(1 for (inserted,) in result if inserted))


async def count_new_workers(conn: AsyncConnection, n: int) -> None:
    """Add `n` to the worker count kept in the head row (the leaderboard's total, no count(*))."""
    if n:
        await conn.execute(
            update(JournalHead).where(JournalHead.id == 1).values(worker_count=JournalHead.worker_count + n)
        )
