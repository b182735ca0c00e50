"""The README's operator paths, followed as written (issue 18's "Done when"), with a tiny model in place of
SmolLM2: the commands are read out of the README's own `sh` blocks, their placeholders (VALIDATOR, URL,
0x…, ADDR, THIS-HOST, NODE) filled in with what the running node answers, and run as `stagewise` processes,
each actor in its own data directory as on its own machine. A README edit that breaks a path fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.loopback import free_port, get_json

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "readme paths password"
PLACEHOLDERS = ("VALIDATOR", "THIS-HOST", "NODE", "URL", "ADDR", "0x…")


def readme_blocks(heading: str) -> list[list[list[str]]]:
    """The `sh` blocks of the README section under `## heading`, each as its commands (argv lists):
    continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, f"no sh block under '## {heading}'"
    return [[shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
            for block in blocks]


def filled(argv: list[str], values: dict[str, str]) -> list[str]:
    """`argv` with its placeholders replaced; `--model smollm2` becomes the tiny model's directory."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--model" and token == "smollm2":
            out[-1:] = ["--model-dir", values["model_dir"]]
            continue
        for placeholder, value in values.items():
            token = token.replace(placeholder, value)
        out.append(token)
    left = [t for t in out if any(p in t for p in PLACEHOLDERS)]
    assert not left, f"{argv}: placeholders with no value {left}"
    return out


class Actor:
    """One operator's machine: a data directory and the environment its commands run in."""

    def __init__(self, home: Path, **env: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.env = {**os.environ, "STAGEWISE_HOME": str(home), "STAGEWISE_KEYSTORE_PASSWORD": PASSWORD,
                    "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
        self.env.pop("STAGEWISE_DB", None)
        self.processes: list[subprocess.Popen] = []

    def run(self, argv: list[str], ok: bool = True) -> subprocess.CompletedProcess:
        argv = self._command(argv)
        done = subprocess.run(argv, env=self.env, cwd=self.home, capture_output=True, text=True, timeout=180)
        if ok:
            assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"
        return done

    def start(self, argv: list[str], log: str) -> subprocess.Popen:
        process = subprocess.Popen(self._command(argv), env=self.env, cwd=self.home, stdout=subprocess.PIPE,
                                   stderr=open(self.home / log, "wb"))
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.home / name).read_text(errors="replace")

    @staticmethod
    def _command(argv: list[str]) -> list[str]:
        if argv[0] == "stagewise":
            return [sys.executable, "-m", "node.cli.main", *argv[1:]]
        return argv

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(what: str, check, timeout: float, *logs: tuple[Actor, str]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(f"--- {actor.home.name}/{name}\n{actor.log(name)[-3000:]}" for actor, name in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from node.pipeline.tiny import tiny_model_dir

    return tiny_model_dir("llama", 5, tmp_path_factory.mktemp("readme-model"), num_layers=6)


def test_the_self_contained_node_and_three_workers_as_the_readme_says(tmp_path, tiny_model):
    (node_block, _production) = readme_blocks("A validator operator's path")
    (worker_block,) = readme_blocks("A worker's path: wallet, stake, run")
    run_node, show_groups, fund_rewards = node_block
    assert run_node[:3] == ["stagewise", "validator", "run"] and "--embedded-chain" in run_node
    validator = Actor(tmp_path / "validator", STAGEWISE_PORT=str(free_port()), STAGEWISE_EPOCH_SECONDS="2")
    workers = [Actor(tmp_path / f"worker-{i}") for i in range(3)]
    try:
        node = validator.start(filled(run_node, {"model_dir": str(tiny_model)}), "validator.log")
        listening = json.loads(node.stdout.readline() or b"{}")
        assert listening.get("url"), validator.log("validator.log")[-3000:]
        url = listening["url"]

        # A worker's path, step by step, each worker on "its own machine" (its own data directory); the three
        # make their keys and stake side by side, then start one after another, as people do.
        wallet_new, curl_health, chain_fund, stake, worker_run = worker_block

        def stake_a_worker(worker: Actor) -> dict[str, str]:
            address = re.search(r"address:\s+(0x[0-9a-fA-F]{40})", worker.run(wallet_new).stdout).group(1)
            values = {"model_dir": str(tiny_model), "http://VALIDATOR:8700": url, "ADDR": address}
            chain = json.loads(worker.run(filled(curl_health, values)).stdout)["chain"]
            values |= {"URL": chain["rpc_url"], "0x…": chain["staking_contract"]}
            worker.run(filled(chain_fund, values))
            assert "active stake 1 ETH" in worker.run(filled(stake, values)).stdout
            worker.address = address
            return values

        with ThreadPoolExecutor(len(workers)) as pool:
            staked = list(pool.map(stake_a_worker, workers))
        for worker, values in zip(workers, staked):
            port = str(free_port())
            worker.start(filled(worker_run, values | {"0.0.0.0": "127.0.0.1", "8801": port, "THIS-HOST": "127.0.0.1"}),
                         "worker.log")
            wait_until(f"worker {worker.address} registered", lambda: "registered" in worker.log("worker.log"), 90,
                       (worker, "worker.log"))
        chain = {"rpc_url": staked[0]["URL"], "staking_contract": staked[0]["0x…"]}

        # The three workers, started one after another, form one three-stage pipeline (issue 18, item 7).
        values = {"http://127.0.0.1:8700": url, "URL": chain["rpc_url"], "0x…": chain["staking_contract"]}
        groups = wait_until("one group", lambda: get_json(f"{url}/v1/groups")["groups"], 90, (validator, "validator.log"))
        assert [len(g["stages"]) for g in groups] == [3], groups
        table = validator.run(filled(show_groups, values)).stdout
        assert table.count(" eu-west ") >= 3 and "groups 1" in table, table

        # Jobs are verified and rewarded, an epoch is anchored; the pool is funded and a worker claims.
        anchored = wait_until(
            "an anchored epoch with rewards",
            lambda: [e for e in get_json(f"{url}/v1/epochs")["items"] if e["anchor_tx"] and int(e["total_rewards"])], 180,
            (validator, "validator.log"),
        )
        assert anchored
        assert "to the reward pool" in validator.run(filled(fund_rewards, values)).stdout
        claimer = workers[0]
        chain_flags = ["--rpc-url", chain["rpc_url"], "--contract", chain["staking_contract"]]
        claimed = claimer.run(["stagewise", "claim", "--validator", url, *chain_flags]).stdout
        assert f"for {claimer.address}" in claimed and "claimed " in claimed, claimed

        # Reading the books on the validator's machine (its default ledger, no --db).
        board = validator.run(["stagewise", "ledger", "leaderboard", "--json"]).stdout
        rows = json.loads(board)["items"]
        assert {r["address"] for r in rows} == {w.address for w in workers} and all(int(r["rewards"]) > 0 for r in rows)
        assert json.loads(validator.run(["stagewise", "ledger", "slashes", "--json"]).stdout)["items"] == []
        validator.run(["stagewise", "ledger", "worker", claimer.address])
        validator.run(["stagewise", "ledger", "verify"])
        jobs = get_json(f"{url}/v1/workers/{claimer.address}/jobs")["items"]
        job_id = next(j["job_id"] for j in jobs if j["outcome"] == "accepted")
        evidence = validator.run(["stagewise", "validator", "evidence", job_id]).stdout
        (validator.home / "job.json").write_text(evidence)
        judged = validator.run(["stagewise", "verify-evidence", "job.json", "--model-dir", str(tiny_model)]).stdout
        assert "accept" in judged.lower(), judged

        # SIGTERM: the worker tells the validator it leaves; then it unstakes, and withdraw says when it can.
        leaver = workers[2]
        leaver.processes[0].send_signal(signal.SIGTERM)
        assert leaver.processes[0].wait(60) == 0, leaver.log("worker.log")[-3000:]
        wait_until("the leave", lambda: f"worker {leaver.address} left" in validator.log("validator.log"), 30,
                   (validator, "validator.log"))
        assert "unbonding" in leaver.run(["stagewise", "unstake", "1", *chain_flags]).stdout
        refused = leaver.run(["stagewise", "withdraw", *chain_flags], ok=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.startswith("error: ") and "chain" in refused.stderr, refused.stderr
    finally:
        for actor in (*workers, validator):
            actor.stop()
    assert node.returncode == 0, validator.log("validator.log")[-3000:]


def test_the_production_validator_on_postgresql_and_a_chain_node_as_the_readme_says(tmp_path, tiny_model, pg_url):
    from ledger.chain.embedded import AnvilNode

    (_devnet, production) = readme_blocks("A validator operator's path")
    wallet_new, chain_fund, deploy, run_validator, fund_rewards = production
    operator = Actor(tmp_path / "operator", STAGEWISE_PORT=str(free_port()))
    (operator.home / "admin-token.txt").write_text(subprocess.run(["openssl", "rand", "-hex", "32"], capture_output=True,
                                                                  text=True, check=True).stdout)
    with AnvilNode(accounts=2) as node:
        try:
            address = re.search(r"address:\s+(0x[0-9a-fA-F]{40})", operator.run(wallet_new).stdout).group(1)
            values = {"model_dir": str(tiny_model), "http://NODE:8545": node.url, "ADDR": address,
                      "postgresql://user@db/stagewise": pg_url.replace("+asyncpg", ""), "0.0.0.0": "127.0.0.1"}
            operator.run(filled(chain_fund, values))
            deployed = operator.run(filled(deploy, values)).stdout
            values["0x…"] = re.search(r"deployed StagewiseStaking at (0x[0-9a-fA-F]{40})", deployed).group(1)
            validator = operator.start(filled(run_validator, values), "validator.log")
            listening = json.loads(validator.stdout.readline() or b"{}")
            assert listening.get("url"), operator.log("validator.log")[-3000:]
            health = get_json(f"{listening['url']}/health")
            assert health["validator"] == address and health["chain"]["staking_contract"] == values["0x…"]
            assert "to the reward pool" in operator.run(filled(fund_rewards, values)).stdout
            epochs = operator.run(["stagewise", "--db", values["postgresql://user@db/stagewise"], "ledger", "epochs"])
            assert "error" not in epochs.stderr
        finally:
            operator.stop()
    assert validator.returncode == 0, operator.log("validator.log")[-3000:]
