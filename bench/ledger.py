"""Ledger bench: ingestion rate and query latency with a million journal entries, on SQLite and PostgreSQL.

    .venv/bin/python bench/ledger.py            # 1,000,000 entries over 10,000 workers, per database
    .venv/bin/python bench/ledger.py --quick    # 100,000 entries over 10,000 workers (under a minute)

Targets (issue 2): ingestion >= 5,000 entries/s in batches; the leaderboard's first page <= 50 ms and one
worker's slashing history <= 20 ms, measured through the public `Ledger` API (pool checkout, SQL, rows to
dataclasses), median of repeated calls. Each database is fresh: a temporary SQLite file, and a new
PostgreSQL database (from --pg-url or STAGEWISE_TEST_PG_URL) created for the run and dropped after.
Prints one line per figure with its target; exits 1 when any target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from ledger import journal  # noqa: E402
from ledger.store import Ledger  # noqa: E402

SLASH_SHARE = 0.01  # of entries
STAKE_SHARE = 0.01


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: float | None
    higher_is_better: bool

    @property
    def ok(self) -> bool:
        if self.target is None:
            return True
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def line(self, backend: str) -> str:
        if self.target is None:
            target = "(no target)"
            verdict = ""
        else:
            target = f"target {'>=' if self.higher_is_better else '<='} {self.target:,.0f} {self.unit}"
            verdict = "ok" if self.ok else "MISS"
        return f"{backend:10} {self.name:38} {self.value:>12,.2f} {self.unit:10} {target:28} {verdict}"


def make_batches(n_entries: int, n_workers: int, batch: int, seed: int) -> tuple[list[list[journal.NewEntry]], list[str]]:
    """Rewards for 4-stage jobs, with a sprinkle of slashes and stake events, over `n_workers` addresses."""
    rng = random.Random(seed)
    workers = [journal.checksum("0x" + rng.getrandbits(160).to_bytes(20, "big").hex()) for _ in range(n_workers)]
    entries: list[journal.NewEntry] = []
    job = 0
    while len(entries) < n_entries:
        roll = rng.random()
        if roll < SLASH_SHARE:
            entries.append(
                journal.slash(
                    rng.choice(workers),
                    10**17,
                    evidence_hash=rng.getrandbits(256).to_bytes(32, "big"),
                    job_id=job.to_bytes(32, "big"),
                    stage=rng.randrange(4),
                    data={"chunk": rng.randrange(8), "exp_mismatches": rng.randrange(20, 120)},
                )
            )
        elif roll < SLASH_SHARE + STAKE_SHARE:
            entries.append(journal.stake(rng.choice(workers), 32 * 10**18, ref=f"0x{len(entries):x}:0"))
        else:
            job += 1
            job_id = job.to_bytes(32, "big")
            for stage in range(min(4, n_entries - len(entries))):
                entries.append(
                    journal.reward(
                        rng.choice(workers), rng.randrange(10**15, 10**16), job_id=job_id, stage=stage, work_units=4 * 128
                    )
                )
    return [entries[i : i + batch] for i in range(0, len(entries), batch)], workers


async def median_ms(call, repeats: int) -> float:
    await call()  # warm the pool and the database's cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def run_backend(url: str, batches: list[list[journal.NewEntry]], workers: list[str], quick: bool) -> list[Figure]:
    ledger = await Ledger.open(url)
    try:
        total = sum(len(b) for b in batches)
        spent = cpu = 0.0
        with tqdm(total=total, unit="entry", desc="ingest", leave=False) as bar:
            for batch in batches:
                start, start_cpu = time.perf_counter(), time.process_time()
                await ledger.append(batch)
                spent += time.perf_counter() - start
                cpu += time.process_time() - start_cpu
                bar.update(len(batch))
        figures = [
            Figure("ingestion (batches of %d)" % len(batches[0]), total / spent, "entries/s", 5000, True),
            # This process's CPU only (SQLite runs inside it; a PostgreSQL server's work is not counted):
            # what the rate would be on an idle machine, to read beside the wall-clock figure above.
            Figure("ingestion per CPU s (this process)", total / cpu, "entries/s", None, True),
        ]

        figures.append(
            Figure("leaderboard first page (50)", await median_ms(lambda: ledger.leaderboard(0, 50), 30), "ms", 50, False)
        )
        slashed = [s.worker for s in (await ledger.slashes(0, 200)).items]
        picks = iter(slashed * 10)

        async def one_worker_slashes():
            page = await ledger.slashes(0, 50, worker=next(picks))
            assert page.items, "a slashed worker shows its slashes"

        figures.append(Figure("one worker's slashing history", await median_ms(one_worker_slashes, 30), "ms", 20, False))
        history_picks = iter(workers * 2)
        figures.append(
            Figure(
                "one worker's history (50)",
                await median_ms(lambda: ledger.worker_history(next(history_picks), 0, 50), 30),
                "ms",
                None,
                False,
            )
        )
        figures.append(
            Figure("one worker's standing with rank", await median_ms(lambda: ledger.worker(next(history_picks)), 30), "ms", None, False)
        )
        start = time.perf_counter()
        closed = await ledger.close_epoch()
        figures.append(Figure(f"close epoch ({closed.entry_count:,} entries)", time.perf_counter() - start, "s", None, False))
        start = time.perf_counter()
        proof = await ledger.reward_proof(workers[0])
        leaves = len({e.worker for b in batches for e in b if e.kind == journal.REWARD})
        figures.append(Figure(f"reward proof ({leaves:,} leaves)", (time.perf_counter() - start) * 1000, "ms", None, False))
        assert proof is None or proof.verify()
        start = time.perf_counter()
        report = await ledger.verify()
        elapsed = time.perf_counter() - start
        assert report.ok, report.problem
        figures.append(Figure("verify (hash chain, roots, totals)", report.entries / elapsed, "entries/s", None, True))
        return figures
    finally:
        await ledger.close()


def _pg_admin(base: str):
    import psycopg

    return psycopg.connect(base.replace("postgresql+asyncpg://", "postgresql://"), autocommit=True)


def print_summary(results: list[tuple[str, list[Figure]]]) -> int:
    """Every backend's figures side by side; the exit status: 1 when a target was missed."""
    misses = [(b, f) for b, figs in results for f in figs if not f.ok]
    print(f"\nsummary (load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for backend, figs in results:
        print("\n".join(f.line(backend) for f in figs))
    if misses:
        print(f"{len(misses)} target(s) missed: " + ", ".join(f"{b} {f.name}" for b, f in misses))
        return 1
    print("all targets met")
    return 0


@contextlib.contextmanager
def scratch_postgres(base: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server of `base` for one bench run, dropped afterwards: its URL."""
    name = f"sw_bench_{uuid.uuid4().hex[:10]}"
    with _pg_admin(base) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with _pg_admin(base) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 entries instead of 1,000,000 (under a minute)")
    parser.add_argument("--entries", type=int, help="journal entries to ingest (overrides --quick)")
    parser.add_argument("--workers", type=int, default=10_000, help="distinct workers (default 10,000)")
    parser.add_argument("--batch", type=int, default=2_000, help="entries per append (default 2,000)")
    parser.add_argument("--pg-url", default=os.environ.get("STAGEWISE_TEST_PG_URL"), help="PostgreSQL server (env STAGEWISE_TEST_PG_URL)")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="run one database only")
    args = parser.parse_args()
    n_entries = args.entries or (100_000 if args.quick else 1_000_000)

    print(f"ledger bench: {n_entries:,} journal entries over {args.workers:,} workers, batches of {args.batch:,}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall-clock figures suffer above 1 per CPU)")
    batches, workers = make_batches(n_entries, args.workers, args.batch, seed=7)
    results: list[tuple[str, list[Figure]]] = []

    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(("sqlite", await run_backend(f"sqlite+aiosqlite:///{tmp}/bench.db", batches, workers, args.quick)))
            print("\n".join(f.line("sqlite") for f in results[-1][1]), flush=True)

    if args.only in (None, "postgresql"):
        if not args.pg_url:
            print("postgresql skipped: no --pg-url and no STAGEWISE_TEST_PG_URL")
            if args.only == "postgresql":
                return 1
        else:
            with scratch_postgres(args.pg_url) as url:
                results.append(("postgresql", await run_backend(url, batches, workers, args.quick)))
                print("\n".join(f.line("postgresql") for f in results[-1][1]), flush=True)

    return print_summary(results)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
