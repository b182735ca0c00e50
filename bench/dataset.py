"""Dataset bench: export rows/s and peak memory from a ledger of a million journal entries, on SQLite and
PostgreSQL, and verify rows/s against a local chain.

    .venv/bin/python bench/dataset.py            # 1,000,000 journal entries, per database
    .venv/bin/python bench/dataset.py --quick    # 100,000 entries

The ledger is what a validator running 3-stage jobs writes: per accepted job three rewards and one `sample`
entry whose row (a 40-token prompt, a 128-token completion, texts, figures) is in `samples`; an epoch every
10,000 entries, each anchored on anvil (the npm-pinned binary; the in-process EVM when it is missing). So a
million entries hold 250,000 dataset rows.

Targets (issue 17): `dataset export` >= 20,000 rows/s with peak memory <= 300 MB (the export runs in a
process of its own, which reports its peak RSS: Python, SQLAlchemy and pyarrow included); `dataset verify`
>= 5,000 rows/s against the chain, with one RPC call per epoch. Each database is fresh: a temporary SQLite
file, and a new PostgreSQL database (from --pg-url or STAGEWISE_TEST_PG_URL) dropped after. Prints one line per
figure with its target; exits 1 when any target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from bench.ledger import Figure, print_summary, scratch_postgres  # noqa: E402
from ledger import journal, samples  # noqa: E402
from ledger.models import Sample  # noqa: E402
from ledger.store import Ledger  # noqa: E402

EPOCH_ENTRIES = 10_000
JOBS_PER_BATCH = 500  # 2,000 entries an append
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 0, "max_new_tokens": 128, "stop_ids": [2]}
MODEL = "0x" + "5a" * 32


def _rows_of_batch(rng: random.Random, first_job: int, workers: list[str]) -> tuple[list[dict], list[journal.NewEntry]]:
    stored, entries = [], []
    now = dt.datetime.now(dt.timezone.utc)
    figures = json.dumps({"exp_mismatch_max": 0, "mantissa_mean": 0.0, "sampling_margin": 1.2e-5, "chunks": 5})
    for job in range(first_job, first_job + JOBS_PER_BATCH):
        job_id = "0x" + job.to_bytes(32, "big").hex()
        task = job % 1000
        correct = rng.random() < 0.6
        row = {
            "job_id": job_id, "task_id": f"linear-1-{task:05d}", "task_source": "gen:linear:n=1000:seed=1",
            "model_id": MODEL, "prompt_text": f"Solve for x: {task}x + 3 = 7. Give the final answer as \\boxed{{...}}.",
            "prompt_token_ids": [rng.randrange(49152) for _ in range(40)],
            "completion_text": "We subtract 3 from both sides, then divide. " * 8 + ("\\boxed{4}" if correct else "\\boxed{5}"),
            "completion_token_ids": [rng.randrange(49152) for _ in range(128)], "sampling": SAMPLING,
            "seed": rng.getrandbits(64), "answer": "4", "checker": "math", "correct": correct, "verdict": "accepted",
            "verdict_figures": figures,
        }
        digest = samples.digest(row)
        stored.append({**row, "prompt_token_ids": json.dumps(row["prompt_token_ids"]),
                       "completion_token_ids": json.dumps(row["completion_token_ids"]), "sampling": json.dumps(SAMPLING),
                       "seed": str(row["seed"]), "digest": digest, "recorded_at": now})
        for stage in range(3):
            entries.append(journal.reward(rng.choice(workers), 10**15, job_id=job_id, stage=stage, work_units=512))
        entries.append(journal.sample(job_id, digest))
    return stored, entries


async def build(url: str, n_entries: int, chain) -> tuple[int, int, float]:
    """A ledger of about `n_entries` journal entries, its epochs anchored on `chain`: (rows, epochs, seconds)."""
    rng = random.Random(17)
    workers = [journal.checksum("0x" + rng.getrandbits(160).to_bytes(20, "big").hex()) for _ in range(1000)]
    started = time.perf_counter()
    rows = epochs = 0
    async with await Ledger.open(url) as ledger:
        job, since_epoch = 1, 0
        with tqdm(total=n_entries, unit="entry", desc="build", leave=False) as bar:
            while True:
                head, _ = await ledger.head()
                if head >= n_entries:
                    break
                stored, entries = _rows_of_batch(rng, job, workers)
                job += JOBS_PER_BATCH
                async with ledger.transaction() as tx:
                    await tx.conn.execute(Sample.__table__.insert(), stored)
                    await tx.append(entries)
                rows += len(stored)
                since_epoch += len(entries)
                bar.update(len(entries))
                if since_epoch >= EPOCH_ENTRIES:
                    await anchor(ledger, chain)
                    epochs += 1
                    since_epoch = 0
        if since_epoch:
            await anchor(ledger, chain)
            epochs += 1
    return rows, epochs, time.perf_counter() - started


async def anchor(ledger: Ledger, chain) -> None:
    epoch = await ledger.close_epoch()
    sent = await asyncio.to_thread(chain.signed_anchor, chain.dev_keys[0], [chain.dev_keys[0]], epoch.number,
                                   bytes.fromhex(epoch.entries_root[2:]), bytes.fromhex(epoch.rewards_root[2:]),
                                   epoch.entry_count)
    await ledger.mark_anchored(epoch.number, sent.tx_hash)


def child(argv: list[str]) -> dict:
    """`python bench/dataset.py --child ...` in a process of its own: the figures and its peak RSS, as JSON."""
    result = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_child(args) -> int:
    if args.child_task == "export":
        from ledger.dataset.export import export_dataset

        async def run():
            async with await Ledger.open(args.db) as ledger:
                return await export_dataset(ledger, Path(args.out), "parquet")

        cpu = time.process_time()
        report = asyncio.run(run())
        figures = {"rows": report.rows, "seconds": report.seconds, "epochs": report.epochs,
                   "cpu_seconds": time.process_time() - cpu}
    else:
        from ledger.chain.client import ChainClient
        from ledger.dataset.verify import ChainRoots, verify_dataset

        if args.rpc_url == "embedded":
            raise SystemExit("verify in a child needs a chain served over JSON-RPC")
        roots = ChainRoots(ChainClient.connect(args.rpc_url, address=args.contract))
        cpu = time.process_time()
        result = verify_dataset(Path(args.out), roots)
        figures = {"rows": result.rows, "held": result.held, "seconds": result.seconds, "rpc_calls": roots.calls,
                   "epochs": result.epochs, "cpu_seconds": time.process_time() - cpu}
    figures["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))
    return 0


async def run_backend(url: str, n_entries: int, chain, rpc_url: str, tmp: Path) -> list[Figure]:
    rows, epochs, seconds = await build(url, n_entries, chain)
    figures = [Figure(f"build ({rows:,} rows, {epochs} epochs)", n_entries / seconds, "entries/s", None, True)]
    out = tmp / "dataset"
    exported = child(["export", "--db", url, "--out", str(out)])
    assert exported["rows"] == rows, exported
    figures.append(Figure(f"export ({exported['rows']:,} rows)", exported["rows"] / exported["seconds"], "rows/s",
                          20_000, True))
    # its own CPU time (SQLite runs inside it, a PostgreSQL server's work is not counted): what the rate would
    # be on an idle machine, to read beside the wall-clock figure above
    figures.append(Figure("export per CPU s (its process)", exported["rows"] / exported["cpu_seconds"], "rows/s", None, True))
    figures.append(Figure("export peak memory (its process)", exported["peak_mb"], "MB", 300, False))
    checked = child(["verify", "--out", str(out), "--rpc-url", rpc_url, "--contract", chain.address])
    assert checked["held"] == rows, checked
    figures.append(Figure(f"verify ({checked['rows']:,} rows)", checked["rows"] / checked["seconds"], "rows/s", 5_000, True))
    figures.append(Figure("verify per CPU s (its process)", checked["rows"] / checked["cpu_seconds"], "rows/s", None, True))
    figures.append(Figure("verify RPC calls per epoch", checked["rpc_calls"] / max(1, checked["epochs"]), "calls", 1, False))
    figures.append(Figure("verify peak memory (its process)", checked["peak_mb"], "MB", None, False))
    return figures


def _chain():
    """(client, rpc_url, stop): anvil when the npm-pinned binary is there, else the in-process EVM served locally."""
    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import AnvilNode

    try:
        node = AnvilNode(accounts=2)
    except FileNotFoundError:
        node = None
    if node is not None:
        node.start()
        client = ChainClient.connect(node.url, dev_keys=node.keys)
        client.deploy(node.keys[0], validators=[node.keys[0].address])
        return client, node.url, node.stop, "anvil"
    raise SystemExit("anvil is missing (cd contracts && npm ci): verify needs a chain served over JSON-RPC")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 entries instead of 1,000,000")
    parser.add_argument("--entries", type=int, help="journal entries (overrides --quick)")
    parser.add_argument("--pg-url", default=os.environ.get("STAGEWISE_TEST_PG_URL"), help="PostgreSQL server (env STAGEWISE_TEST_PG_URL)")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="run one database only")
    args = parser.parse_args()
    n_entries = args.entries or (100_000 if args.quick else 1_000_000)

    chain, rpc_url, stop, kind = _chain()
    print(f"dataset bench: {n_entries:,} journal entries (3 rewards and 1 sample per job), an epoch every "
          f"{EPOCH_ENTRIES:,} anchored on {kind}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall-clock figures suffer above 1 per CPU)")
    results: list[tuple[str, list[Figure]]] = []
    try:
        if args.only in (None, "sqlite"):
            with tempfile.TemporaryDirectory() as tmp:
                figures = await run_backend(f"sqlite+aiosqlite:///{tmp}/bench.db", n_entries, chain, rpc_url, Path(tmp))
                results.append(("sqlite", figures))
                print("\n".join(f.line("sqlite") for f in figures), flush=True)
        if args.only in (None, "postgresql"):
            if not args.pg_url:
                print("postgresql skipped: no --pg-url and no STAGEWISE_TEST_PG_URL")
                if args.only == "postgresql":
                    return 1
            else:
                with scratch_postgres(args.pg_url) as url, tempfile.TemporaryDirectory() as tmp:
                    figures = await run_backend(url, n_entries, _fresh_contract(chain), rpc_url, Path(tmp))
                    results.append(("postgresql", figures))
                    print("\n".join(f.line("postgresql") for f in figures), flush=True)
    finally:
        stop()

    return print_summary(results)


def _fresh_contract(chain):
    """A second contract on the same chain: the second ledger's epochs start at 1 again."""
    chain.deploy(chain.dev_keys[0], validators=[chain.dev_keys[0].address])
    return chain


if __name__ == "__main__":
    if "--child" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", dest="child_task", choices=["export", "verify"])
        parser.add_argument("--db")
        parser.add_argument("--out")
        parser.add_argument("--rpc-url")
        parser.add_argument("--contract")
        sys.exit(run_child(parser.parse_args()))
    sys.exit(asyncio.run(main()))
