"""`stagewise dataset export` and `dataset verify` end to end: a ledger anchored on anvil, the dataset written
from the ledger's database, every row checked over JSON-RPC; a tampered row fails by name with status 1."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq

from ledger import journal
from ledger.chain.client import ChainClient
from ledger.store import Ledger
from node.cli.main import main
from tests.ledger.helpers import address, h32
from tests.ledger.test_dataset import MODEL, anchor_all, sample


async def _anchored_ledger(url: str, chain: ChainClient) -> None:
    async with await Ledger.open(url) as ledger:
        for job in (1, 2, 3):
            await ledger.record_bundle(h32(job), "{}", [], model_id=MODEL)
            async with ledger.transaction() as tx:
                await tx.record_verdict(h32(job), "accepted", figures={"ok": True})
                await tx.append([journal.reward(address(1), 10, job_id=h32(job), stage=0, work_units=5)])
            await ledger.record_sample(sample(job, f"t{job % 2}", f"\\boxed{{{job}}}", job == 3))
        await anchor_all(ledger, chain)


def test_export_then_verify_against_anvil_and_a_tampered_row_is_named(anvil, sqlite_url, tmp_path, capsys):
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    chain.deploy(anvil.keys[0], validators=[anvil.keys[0].address])
    asyncio.run(_anchored_ledger(sqlite_url, chain))
    out = tmp_path / "dataset"

    assert main(["--db", sqlite_url, "dataset", "export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported 3 rows (0 unanchored) of 2 tasks on 1 model(s) from 1 epochs" in printed
    verify = ["dataset", "verify", str(out), "--rpc-url", anvil.url, "--contract", chain.address]
    assert main(verify) == 0
    assert "ok: 3 of 3 rows hold against the entries roots of 1 epoch(s) anchored on chain (1 RPC calls" in capsys.readouterr().out

    rows = pq.read_table(out / "samples.parquet").to_pylist()
    rows[2]["completion_text"] = "\\boxed{4}"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(out / "samples.parquet")), out / "samples.parquet")
    assert main(verify + ["--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["held"], result["failed"]) == (False, 2, 1)
    assert result["failures"][0].startswith(f"row 2 (job {h32(3)}, task t1): its content does not hash")


def test_verify_and_export_errors_are_one_line(anvil, sqlite_url, tmp_path, capsys):
    assert main(["--db", str(tmp_path / "none.db"), "dataset", "export", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    chain.deploy(anvil.keys[0], validators=[anvil.keys[0].address])
    assert main(["dataset", "verify", str(tmp_path / "nothing"), "--rpc-url", anvil.url, "--contract", chain.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no samples.parquet or samples.jsonl in") and err.count("\n") == 1
