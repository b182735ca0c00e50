"""`stagewise devnet` end to end on a tiny model: real processes, the embedded chain, a cheater caught."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from node.pipeline.tiny import tiny_model_dir
from tests.loopback import free_port


@pytest.mark.slow
def test_the_devnet_pays_the_honest_slashes_the_cheater_and_anchors(tmp_path):
    model_dir = tiny_model_dir("llama", seed=11, path=tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--data-dir", str(tmp_path / "home"), "devnet",
         "--model-dir", str(model_dir), "--tasks", "4", "--samples-per-task", "2", "--max-new-tokens", "8",
         "--port", str(free_port()),
         "--timeout", "240"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-12000:]
    out = result.stdout
    assert "was caught and slashed; honest workers slashed: 0." in out
    assert "anchored in transaction 0x" in out
    assert "claims its reward: claimed" in out  # against the anchored root, paid from the reward pool
    # PROTOCOL I7: three validators, threshold two; every slash and anchor above was co-signed by the second,
    # which replayed the evidence itself; the third, dishonest, could not slash an honest worker.
    dishonest = out.split("A dishonest validator")[1]
    assert dishonest.count("refused: not_reproduced:") == 2 and "refused its lone signature: " in dishonest
    assert "TooFewSignatures" in dishonest and "the dishonest slash was refused by the other two" in dishonest
    leaderboard = out.split("Leaderboard")[1].split("Slashing history")[0]
    paid = [line for line in leaderboard.splitlines()[2:] if line.strip() and line.split()[3] != "0"]
    assert len(paid) >= 3  # an honest group of three stages was paid
    # the cheater left its group when its first verdict landed, and only tasks with an accepted job are done
    home = tmp_path / "home" / "devnet"
    validator_log = (home / "validator" / "log.txt").read_text()
    cosigner_log = (home / "cosigner" / "log.txt").read_text()
    assert "co-signed slash order" in cosigner_log and "co-signed anchor order" in cosigner_log
    assert "dropped: blamed by a verdict" in validator_log
    # issue 18, item 10: the log is a file, not a terminal: progress as plain lines, no tqdm bar in it
    assert "\r" not in validator_log and "█" not in validator_log and "tasks: 8/8 finished" in validator_log
    results = [json.loads(line) for line in (home / "results.jsonl").read_text().splitlines()]
    assert len(results) == 8 and all(r["error"] is None for r in results)
    # issue 17: the run's dataset, one row per accepted sequence, every row verified against the chain
    assert "verified against the chain: 8 of 8 rows hold" in out, out[-3000:]
    assert "8 rows (one per accepted job) of 4 tasks on 1 model(s), 4 pass@k rows (k = 2)" in out
    rows = pq.read_table(home / "dataset" / "samples.parquet").to_pylist()
    assert len(rows) == 8 and all(r["verdict"] == "accepted" and r["merkle_proof"] is not None for r in rows)
    assert sorted(r["job_id"] for r in rows) == sorted(r["job_ids"][-1] for r in results)
    assert (home / "dataset" / "README.md").read_text().count("| `0x") == 1  # one model in the card


def test_the_devnet_report_shows_amounts_in_ether_with_their_unit(capsys):
    from node.launch.devnet import _print_table

    worker = "0x" + "ab" * 20
    _print_table([{"rank": 1, "address": worker, "rewards": "7440000000000", "stake": str(10**18)}],
                 {worker: "worker-0"}, ["rank", "address", "rewards", "stake"])
    table = capsys.readouterr().out
    assert "0.00000744 ETH" in table and "1 ETH" in table and "7440000000000" not in table


@pytest.mark.parametrize("precision, kind, scale", [("fp32", "perturb", 1e-3), ("bf16", "int4", 128), ("fp16", "int4", 128)])
def test_the_devnet_cheat_without_a_kind_is_one_the_declared_precisions_proofs_separate(precision, kind, scale):
    from node.launch.devnet import Cheat

    cheat = Cheat.parse("worker=2").for_precision(precision)
    assert (cheat.worker, cheat.kind, cheat.scale) == (2, kind, scale)
    assert Cheat.parse("worker=1,kind=sparse-2-4").for_precision("bf16").worker_flag() == "sparse-2-4:1"
    assert Cheat.parse("none") is None
