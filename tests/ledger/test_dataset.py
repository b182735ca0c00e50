"""The verified dataset: accepted jobs exported with a Merkle proof each, checked against the chain's roots.

A ledger with two accepted jobs and a blamed one, its epoch anchored on the in-process EVM; the export holds
the two accepted rows, and `verify_dataset` accepts them against the chain. The attacks: a changed
completion, a dropped proof and a row forged from the blamed job each fail, naming the row.
"""

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from ledger import journal, merkle
from ledger.chain.client import ChainClient
from ledger.dataset import export as export_module
from ledger.dataset.export import ExportError, export_dataset
from ledger.dataset.passk import pass_at_k
from ledger.dataset.verify import ChainRoots, verify_dataset
from ledger.samples import SampleError, SampleRecord
from ledger.store import Ledger
from tests.ledger.helpers import address, h32

A, B, C = address(1), address(2), address(3)
MODEL = h32(77)
SAMPLING = {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16, "stop_ids": [2]}


def sample(job: int, task: str, completion: str, correct: bool) -> SampleRecord:
    return SampleRecord(
        job_id=h32(job), task_id=task, task_source="gen:linear:n=2:seed=1", model_id=MODEL,
        prompt_token_ids=(5, 6, 7), completion_token_ids=tuple(ord(c) for c in completion),
        completion_text=completion, sampling=SAMPLING, seed=2**64 - 1 - job, prompt_text=f"solve {task}",
        answer="3", checker="math", correct=correct,
    )


async def anchor_all(ledger: Ledger, chain: ChainClient) -> None:
    epoch = await ledger.close_epoch()
    sent = chain.signed_anchor(chain.dev_keys[0], [chain.dev_keys[0]], epoch.number,
                               bytes.fromhex(epoch.entries_root[2:]), bytes.fromhex(epoch.rewards_root[2:]),
                               epoch.entry_count)
    await ledger.mark_anchored(epoch.number, sent.tx_hash)


@pytest.fixture
async def ledger(db_url):
    led = await Ledger.open(db_url)
    yield led
    await led.close()


@pytest.fixture
def chain():
    return ChainClient.embedded()


@pytest.fixture
async def anchored(ledger, chain):
    """Jobs 1 and 2 accepted (task t1 right, then wrong), job 3 blamed; everything anchored in epoch 1."""
    for job in (1, 2, 3):
        await ledger.record_bundle(h32(job), "{}", [], model_id=MODEL)
    for job in (1, 2):
        async with ledger.transaction() as tx:
            await tx.record_verdict(h32(job), "accepted", figures={"exp_mismatch": [0, 0]})
            await tx.append([journal.reward(A, 10, job_id=h32(job), stage=0, work_units=5),
                             journal.reward(B, 10, job_id=h32(job), stage=1, work_units=5)])
    async with ledger.transaction() as tx:
        await tx.record_verdict(h32(3), "blamed", blamed_stage=1, reason="stage_proof")
        await tx.append([journal.reward(A, 10, job_id=h32(3), stage=0, work_units=5),
                         journal.slash(C, 10**16, evidence_hash=h32(300), job_id=h32(3), stage=1)])
    await ledger.record_sample(sample(1, "t1", "x = \\boxed{3}", True))
    await ledger.record_sample(sample(2, "t1", "x = 4", False))
    await anchor_all(ledger, chain)
    return ledger


async def test_task_lines_count_samples_and_passes_per_task_and_model(anchored):
    page = await anchored.tasks()
    assert page.total == 1
    assert page.items[0].to_json() == {"task_id": "t1", "model_id": MODEL, "task_source": "gen:linear:n=2:seed=1",
                                       "samples": 2, "checked": 2, "correct": 1, "pass_rate": 0.5}


async def test_a_blamed_jobs_output_is_never_recorded_as_a_row(anchored):
    with pytest.raises(SampleError, match="blamed"):
        await anchored.record_sample(sample(3, "t1", "x = 3", True))
    with pytest.raises(SampleError, match="no verdict"):
        await anchored.record_sample(sample(9, "t1", "x = 3", True))
    assert await anchored.record_sample(sample(1, "t1", "x = 3", True)) is None  # one row per job
    assert (await anchored.tasks()).items[0].samples == 2  # and counted once


async def test_export_writes_accepted_anchored_rows_that_verify_against_the_chain(anchored, chain, tmp_path):
    report = await export_dataset(anchored, tmp_path / "ds", "parquet")
    assert (report.rows, report.pairs) == (2, 1)
    table = pq.read_table(tmp_path / "ds" / "samples.parquet")
    rows = table.to_pylist()
    assert [r["job_id"] for r in rows] == [h32(1), h32(2)]
    assert rows[0]["completion_text"] == "x = \\boxed{3}" and rows[0]["verdict"] == "accepted"
    assert rows[0]["seed"] == 2**64 - 2 and rows[0]["epoch"] == 1 and rows[0]["anchor_tx"].startswith("0x")
    assert rows[0]["merkle_proof"] and rows[0]["entries_root"] == "0x" + chain.entries_root_of(1).hex()
    (passk,) = pq.read_table(tmp_path / "ds" / "pass_at_k.parquet").to_pylist()
    assert (passk["task_id"], passk["n"], passk["correct"], passk["pass_at_1"]) == ("t1", 2, 1, 0.5)
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "2 rows" in card and MODEL in card and "stagewise dataset verify" in card

    roots = ChainRoots(chain)
    result = verify_dataset(tmp_path / "ds", roots)
    assert (result.ok, result.rows, result.held) == (True, 2, 2)
    assert roots.calls == 1  # one RPC call per epoch, not per row


async def test_jsonl_export_verifies_too(anchored, chain, tmp_path):
    await export_dataset(anchored, tmp_path / "ds", "jsonl")
    lines = (tmp_path / "ds" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["completion_text"] == "x = 4"
    assert verify_dataset(tmp_path / "ds", ChainRoots(chain)).ok


def rewrite(path, change) -> None:
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)


@pytest.mark.parametrize("field,value", [
    ("completion_text", "x = \\boxed{4}"),
    ("completion_token_ids", [1, 2, 3]),
    ("correct", False),
    ("prompt_text", "solve something else"),
    ("seed", 7),
])
async def test_a_changed_field_fails_its_row(anchored, chain, tmp_path, field, value):
    await export_dataset(anchored, tmp_path / "ds", "parquet")

    def change(rows):
        rows[0][field] = value

    rewrite(tmp_path / "ds" / "samples.parquet", change)
    result = verify_dataset(tmp_path / "ds", ChainRoots(chain))
    assert (result.ok, result.held) == (False, 1)
    (failure,) = result.failures
    assert failure.row == 0 and failure.job_id == h32(1) and "does not hash to its journal entry" in failure.problem


async def test_a_dropped_proof_fails_its_row(anchored, chain, tmp_path):
    await export_dataset(anchored, tmp_path / "ds", "parquet")

    def drop(rows):
        rows[1]["merkle_proof"] = None

    rewrite(tmp_path / "ds" / "samples.parquet", drop)
    result = verify_dataset(tmp_path / "ds", ChainRoots(chain))
    (failure,) = result.failures
    assert failure.row == 1 and "no Merkle proof" in failure.problem
    assert str(failure).startswith(f"row 1 (job {h32(2)}, task t1)")


async def test_a_shortened_proof_fails_its_row(anchored, chain, tmp_path):
    await export_dataset(anchored, tmp_path / "ds", "parquet")

    def shorten(rows):
        rows[1]["merkle_proof"] = rows[1]["merkle_proof"][:-1]

    rewrite(tmp_path / "ds" / "samples.parquet", shorten)
    (failure,) = verify_dataset(tmp_path / "ds", ChainRoots(chain)).failures
    assert failure.row == 1 and "anchored on chain" in failure.problem


async def test_a_row_forged_from_a_blamed_job_fails(anchored, chain, tmp_path):
    """The forger reuses the blamed job's slash entry, which really is under the anchored root, and its proof."""
    await export_dataset(anchored, tmp_path / "ds", "parquet")
    slash = next(e for e in await anchored.entries() if e.kind == journal.SLASH)
    proof = await anchored.entry_proof(slash.seq)
    assert proof.verify()

    def forge(rows):
        forged = dict(rows[0], job_id=h32(3), journal_seq=slash.seq, journal_at_ms=slash.at_ms,
                      journal_prev_hash=slash.prev_hash, entry_hash=slash.entry_hash,
                      merkle_proof=[bytes.fromhex(p[2:]) for p in proof.proof])
        rows.append(forged)
        rows.append(dict(forged, verdict="blamed"))

    rewrite(tmp_path / "ds" / "samples.parquet", forge)
    result = verify_dataset(tmp_path / "ds", ChainRoots(chain))
    assert result.held == 2
    assert [f.row for f in result.failures] == [2, 3]
    assert all(f.job_id == h32(3) for f in result.failures)
    assert "does not hash to its journal entry" in result.failures[0].problem
    assert "blamed" in result.failures[1].problem


async def test_rows_of_unanchored_epochs_are_left_out_unless_asked_and_then_fail(anchored, chain, tmp_path):
    await anchored.record_bundle(h32(4), "{}", [], model_id=MODEL)
    await anchored.record_verdict(h32(4), "accepted")
    await anchored.record_sample(sample(4, "t2", "3", True))
    assert (await export_dataset(anchored, tmp_path / "a", "parquet")).rows == 2
    assert (await export_dataset(anchored, tmp_path / "b", "parquet", include_unanchored=True)).rows == 3
    result = verify_dataset(tmp_path / "b", ChainRoots(chain))
    (failure,) = result.failures
    assert failure.row == 2 and "not in an anchored epoch" in failure.problem


async def test_the_parquet_dataset_loads_with_hugging_face_datasets(anchored, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    await export_dataset(anchored, tmp_path / "ds", "parquet")
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "ds" / "samples.parquet"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.num_rows == 2 and loaded[1]["completion_text"] == "x = 4"
    assert loaded.features["completion_token_ids"].feature.dtype == "int64"


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(n=4, c=0, k=2) == 0.0
    assert pass_at_k(n=4, c=4, k=2) == 1.0
    assert pass_at_k(n=4, c=1, k=1) == 0.25
    assert pass_at_k(n=4, c=1, k=2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(n=5, c=2, k=3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(n=2, c=1, k=3) is None  # fewer samples than k: not defined


async def test_an_export_refuses_an_epoch_whose_entries_no_longer_give_its_root(anchored, tmp_path):
    """A ledger edited after anchoring (an entry's stored hash) would yield proofs that fail: it is refused."""
    async with anchored.transaction() as tx:
        await tx.conn.execute(text("UPDATE journal SET entry_hash = :h WHERE seq = 1"), {"h": h32(999)})
    with pytest.raises(ExportError, match="epoch 1: its journal entries do not give the entries root"):
        await export_dataset(anchored, tmp_path / "ds", "parquet")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_an_epochs_proofs_gathered_at_once_are_the_proofs_of_its_entries(n):
    """The export reads every proof of a page out of the epoch's tree in one gather (numpy, no object per
    hash); each is the path `merkle.proof` gives, promoted nodes left out."""
    leaves = [bytes([i]) * 32 for i in range(1, n + 1)]
    levels = [b"".join(leaves)]
    while len(levels[-1]) > 32:
        levels.append(merkle.parent_level(levels[-1]))
    tree = export_module._Tree(first_seq=100, levels=tuple(levels))
    seqs = [100 + i for i in range(n - 1, -1, -1)]  # any order
    assert tree.proofs(seqs).to_pylist() == [merkle.proof(leaves, seq - 100) for seq in seqs]


async def test_an_export_of_many_pages_over_several_epochs_keeps_every_row_in_order(ledger, chain, tmp_path, monkeypatch):
    """Pages of two rows, each read while the one before is written: seven rows in two epochs come out once
    each, in journal order, and all verify; the SQLite page cache the export shrank is the ledger's again."""
    monkeypatch.setattr(export_module, "BATCH", 2)
    for job in range(1, 8):
        await ledger.record_bundle(h32(job), "{}", [], model_id=MODEL)
        async with ledger.transaction() as tx:
            await tx.record_verdict(h32(job), "accepted", figures={"exp_mismatch": [0, 0]})
            await tx.append([journal.reward(A, 10, job_id=h32(job), stage=0, work_units=5)])
        await ledger.record_sample(sample(job, f"t{job % 3}", f"x = {job}", job % 2 == 0))
        if job in (4, 7):
            await anchor_all(ledger, chain)
    report = await export_dataset(ledger, tmp_path / "ds", "parquet")
    table = pq.read_table(tmp_path / "ds" / "samples.parquet")
    assert report.rows == table.num_rows == 7 and report.epochs == 2
    assert table.column("job_id").to_pylist() == [h32(job) for job in range(1, 8)]
    assert np.all(np.diff(table.column("journal_seq").to_numpy()) > 0)
    result = verify_dataset(tmp_path / "ds", ChainRoots(chain))
    assert result.ok and result.held == 7 and result.epochs == 2
    if ledger.dialect == "sqlite":
        async with ledger.reading() as conn:
            assert (await conn.exec_driver_sql("PRAGMA cache_size")).scalar() == -65536


async def test_samples_of_one_task_on_two_models_give_a_pass_at_k_row_per_model(ledger, chain, tmp_path):
    """Task t1 sampled three times on each of two models: one pass@k row per (task, model), with the unbiased
    estimator, in the export and in the ledger's task lines (GET /v1/tasks)."""
    other = h32(78)
    outcomes = {MODEL: (True, False, False), other: (True, True, True)}
    job = 0
    for model_id, results in outcomes.items():
        for correct in results:
            job += 1
            await ledger.record_bundle(h32(job), "{}", [], model_id=model_id)
            await ledger.record_verdict(h32(job), "accepted", figures={"exp_mismatch": [0, 0]})
            record = dataclasses.replace(sample(job, "t1", "x = 3" if correct else "x = 4", correct), model_id=model_id)
            await ledger.record_sample(record)
    await anchor_all(ledger, chain)

    report = await export_dataset(ledger, tmp_path / "ds", "parquet", k=2)
    assert report.models == tuple(sorted(outcomes)) and report.pairs == 2
    rows = {r["model_id"]: r for r in pq.read_table(tmp_path / "ds" / "pass_at_k.parquet").to_pylist()}
    assert (rows[MODEL]["n"], rows[MODEL]["correct"], rows[MODEL]["k"]) == (3, 1, 2)
    assert rows[MODEL]["pass_at_1"] == pytest.approx(1 / 3)
    assert rows[MODEL]["pass_at_k"] == pytest.approx(1 - 1 / 3)  # 1 - C(2,2)/C(3,2)
    assert (rows[other]["n"], rows[other]["correct"], rows[other]["pass_at_1"], rows[other]["pass_at_k"]) == (3, 3, 1.0, 1.0)
    lines = {line.model_id: line.to_json() for line in (await ledger.tasks()).items}
    assert (lines[MODEL]["samples"], lines[MODEL]["correct"], lines[other]["correct"]) == (3, 1, 3)
    assert verify_dataset(tmp_path / "ds", ChainRoots(chain)).held == 6
