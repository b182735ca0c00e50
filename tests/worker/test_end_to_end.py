"""Workers against a running validator, over real parts only: the embedded EVM served over JSON-RPC (stake
read on chain), the validator app with the orchestrator and its HTTP pipeline driver on a loopback port, a
ledger on SQLite, and workers with their own stage servers: `stagewise worker run` subprocesses and
in-process `run_worker` tasks.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web

from node import wallet
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.worker.config import WorkerConfig
from node.worker.errors import WorkerError
from node.worker.run import run_worker

pytestmark = pytest.mark.slow

STAKE = 10**18
ROOT = Path(__file__).resolve().parents[2]


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Stack:
    chain: Any
    node: Any
    driver: Any
    orchestrator: Any
    url: str
    tmp_path: Path
    model_dir: Path
    ledger: Any

    async def follow_chain(self) -> None:
        """What the validator's chain sync does in a running node: stake events into the ledger."""
        from ledger.chain.sync import ChainSync

        await ChainSync(self.chain, self.ledger).sync_to_head()

    def staked_key(self, stake: int = STAKE) -> SigningKey:
        key = SigningKey.generate()
        self.chain.fund(key.address, 2 * STAKE)
        if stake:
            self.chain.stake(key, stake)
        return key

    def keystore(self, key: SigningKey) -> tuple[Path, Path]:
        path = self.tmp_path / f"{key.address}.json"
        wallet.create_keystore(path, "pw", key=key, scrypt_n=1024)
        password = self.tmp_path / "pw"
        password.write_text("pw\n")
        return path, password

    def in_process(self, key: SigningKey, stop: asyncio.Event, **overrides) -> asyncio.Task:
        path, password = self.keystore(key)
        values = dict(model_dirs=(self.model_dir,), memory_bytes=1 << 30, heartbeat_s=0.5, grace_s=2)
        values.update(overrides)
        config = WorkerConfig(keystore=path, validator_url=self.url, password_file=password, **values)
        return asyncio.create_task(run_worker(config, key, stop, handle_signals=False))

    async def group_of(self, keys, check=lambda: None):
        async def formed():
            check()
            for group in self.orchestrator.grouping.groups:
                if {s.worker for s in group.stages} == {k.address for k in keys}:
                    return group
            return None

        return await wait_for(formed, 120, "a group of the workers")

    def spec(self, group, *, seed: int, max_new_tokens: int) -> JobSpec:
        return JobSpec(
            model_id=self.orchestrator.model_id, prompt_token_ids=(1, 5, 9, 14, 3), seed=seed, group_id=group.group_id,
            sampling=SamplingParams(temperature=0.8, max_new_tokens=max_new_tokens),
            stages=tuple(StageAssignment(s.worker, s.layer_start, s.layer_end) for s in group.stages),
        )


@pytest.fixture
async def stack(tmp_path, sqlite_url, model_dir, served_chain):
    async with open_stack(tmp_path, sqlite_url, model_dir, served_chain) as opened:
        yield opened


@contextlib.asynccontextmanager
async def open_stack(tmp_path, db_url, model_dir, served_chain, stages_per_group: int = 2):
    """The embedded chain, a validator with its orchestrator on `db_url`, groups of two stages (or as asked)."""
    from ledger.store import Ledger
    from node.orchestration.api import orchestration_registrar
    from node.orchestration.grouping import GroupingPolicy
    from node.orchestration.orchestrator import Orchestrator
    from node.orchestration.registry import Registry, RegistryPolicy, stake_lookup
    from node.orchestration.setup import shape_of_model, stage_url_of
    from node.orchestration.stage_control import HttpPipelineDriver
    from node.pipeline.weights import model_id
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig
    from node.validator.defence_client import StageDefences
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode

    torch.set_num_threads(1)
    chain, rpc_url = served_chain

    ledger = await Ledger.open(db_url)
    validator_key = SigningKey.generate()  # workers trust it: their validator's GET /health names it,
    chain.add_validator(chain.dev_keys[0], validator_key.address)  # and the contract backs it
    node = ValidatorNode(ValidatorConfig(model_dirs=(model_dir,), min_stake_wei=STAKE), ledger,
                         domain=ReceiptDomain(chain.chain_id, chain.address), models=ReplayModels([model_dir]),
                         chain_key=validator_key, rpc_url=rpc_url)
    driver = HttpPipelineDriver(model_dir, key=validator_key, link_timeout_s=10)
    orchestrator = Orchestrator(
        Registry(stake_lookup(chain), RegistryPolicy(min_stake_wei=STAKE, heartbeat_timeout_s=5)), driver,
        model_id(model_dir), shape_of_model(model_dir), GroupingPolicy(stages_per_group=stages_per_group), regroup_interval_s=0.5,
    )
    node.defence_source = StageDefences(lambda worker: stage_url_of(orchestrator.registry, worker), deadline_s=10)
    runner = web.AppRunner(build_app(node, registrars=[orchestration_registrar(orchestrator)], dashboard=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        yield Stack(chain, node, driver, orchestrator, url, tmp_path, model_dir, ledger)
    finally:
        await driver.close()
        await runner.cleanup()
        await ledger.close()


def start_worker_process(stack: Stack, key: SigningKey, *extra: str) -> subprocess.Popen:
    path, password = stack.keystore(key)
    env = {**os.environ, "STAGEWISE_HOME": str(stack.tmp_path / "home-proc"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli.main", "worker", "run", "--keystore", str(path), "--password-file", str(password),
         "--validator", stack.url, "--model-dir", str(stack.model_dir), "--capacity", "1GiB", "--heartbeat", "0.5", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def stop_process(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        log, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
    return log


async def test_worker_process_serves_its_stage_and_its_receipt_reaches_the_validator(stack, caplog):
    keys = [stack.staked_key(), stack.staked_key()]
    await stack.follow_chain()
    process = start_worker_process(stack, keys[0], "--grace", "1")
    log = ""
    stop = asyncio.Event()
    in_process = stack.in_process(keys[1], stop)
    try:
        def alive():
            if process.poll() is not None:
                raise AssertionError(f"worker process exited early:\n{process.stdout.read()}")
            if in_process.done():
                in_process.result()

        group = await stack.group_of(keys, alive)
        # the process gave no --throughput: it measured its own; the in-process worker declared 1000
        offered = {w.address: w.capacity.layer_tokens_per_s for w in stack.orchestrator.registry.all()}
        assert offered[keys[1].address] == 1000.0 and 0 < offered[keys[0].address] != 1000.0
        spec = stack.spec(group, seed=77, max_new_tokens=40)
        output = await asyncio.wait_for(stack.driver.run(group, spec, lambda ids: None), 90)
        assert 1 <= len(output) <= 40

        job = await wait_for(lambda: stack.node.job(spec.job_id_hex), 60, "the bundle at the validator")
        assert [s["worker"] for s in job["stages"]] == [s.worker for s in group.stages]
        assert await stack.node.validate_next() == spec.job_id_hex
        judged = await stack.node.job(spec.job_id_hex)
        assert (judged["status"], judged["verdict"]["outcome"]) == ("done", "accepted"), judged

        # SIGTERM while a long sequence is in flight: it says it leaves, the sequence fails clearly; exit 0.
        started = asyncio.Event()
        long_job = asyncio.create_task(stack.driver.run(group, stack.spec(group, seed=78, max_new_tokens=2000),
                                                        lambda ids: started.set()))
        await asyncio.wait([long_job, asyncio.create_task(started.wait())], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert started.is_set() and not long_job.done()
        process.send_signal(signal.SIGTERM)
        with pytest.raises(Exception):
            await asyncio.wait_for(long_job, 60)
        log, _ = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.returncode is None:
            log = stop_process(process)
        print(f"worker process log:\n{log}")  # shown by pytest when the test fails
        stop.set()
        await asyncio.wait_for(in_process, 30)
    assert process.returncode == 0, log
    assert "registered with" in log and "stopping: 1 sequence(s) in flight" in log
    assert f"measured {offered[keys[0].address]:g} layer-tokens/s" in log
    # it told the validator, whose orchestrator took its stage back (no spare: the group is dissolved) and failed
    # the sequence with a log line; had the validator not answered, the grace period would have ended it
    assert "told the validator this worker is leaving" in log and "stopped:" in log
    # the sequence fails on whichever stage notices first: the process's own, or the in-process worker's (which
    # stage the process serves depends on the throughput it measured)
    assert any(why in text for why in ("the stage was released", "the stage server is shutting down")
               for text in (log, caplog.text)), (log, caplog.text)
    for key in keys:
        assert key.secret.hex() not in log


async def test_a_stage_that_sends_other_activations_than_it_proved_is_named_by_a_signed_complaint(stack):
    def tamper(job_id_hex, stage_index, start, rows):
        return rows + 0.5 if start > 0 else rows  # honest prefill, then lie on the decode rows

    keys = [stack.staked_key(), stack.staked_key()]
    await stack.follow_chain()
    stop = asyncio.Event()
    workers = [stack.in_process(key, stop, tamper=tamper) for key in keys]
    try:
        def alive():
            for worker in workers:
                if worker.done():
                    worker.result()

        group = await stack.group_of(keys, alive)
        spec = stack.spec(group, seed=5, max_new_tokens=80)
        with pytest.raises(Exception):
            await asyncio.wait_for(stack.driver.run(group, spec, lambda ids: None), 90)
        job = await wait_for(lambda: stack.node.job(spec.job_id_hex), 60, "the complaint bundle at the validator")
        assert job["stages"] == []
        assert await stack.node.validate_next() == spec.job_id_hex
        verdict = (await stack.node.job(spec.job_id_hex))["verdict"]
        assert (verdict["blamed_stage"], verdict["reason"]) == (0, "complaint"), verdict
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)


async def test_an_unstaked_worker_stops_before_serving_and_says_what_is_missing(stack):
    key = stack.staked_key(stake=STAKE // 4)
    with pytest.raises(WorkerError) as raised:
        await asyncio.wait_for(stack.in_process(key, asyncio.Event()), 30)
    message = str(raised.value)
    assert f"{key.address} has only 0.25 ETH" in message and "0.75 ETH (750000000000000000 wei) more is needed" in message
    assert f"stagewise stake 750000000000000000wei --keystore {stack.tmp_path / (key.address + '.json')}" in message
    assert stack.orchestrator.registry.all() == ()


async def test_a_worker_refuses_a_validator_the_contract_does_not_back(stack):
    """GET /health names the address a stage server will obey; the contract decides whether it is a validator."""
    stack.chain.remove_validator(stack.chain.dev_keys[0], stack.node.address)
    key = stack.staked_key()
    with pytest.raises(WorkerError, match=f"signs stage control as {stack.node.address}, which is not a validator"):
        await asyncio.wait_for(stack.in_process(key, asyncio.Event()), 30)
    assert stack.orchestrator.registry.all() == ()


async def test_a_new_validator_address_is_obeyed_only_once_the_contract_backs_it(stack, caplog):
    import aiohttp

    from node.worker.run import Worker

    key = stack.staked_key()
    path, password = stack.keystore(key)
    config = WorkerConfig(keystore=path, validator_url=stack.url, password_file=password, model_dirs=(stack.model_dir,))
    async with aiohttp.ClientSession() as session:
        worker = Worker(config, key, session)
        await worker.check_stake()
        first = worker.controllers
        assert first == (stack.node.address,)
        stack.node.chain_key = SigningKey.generate()  # the validator came back signing as someone else
        await worker._refresh_controllers()
        assert worker.controllers == first and "not a validator on the staking contract" in caplog.text
        stack.chain.add_validator(stack.chain.dev_keys[0], stack.node.address)
        await worker._refresh_controllers()
        assert worker.controllers == (stack.node.address,) != first


async def test_a_worker_without_the_validators_model_stops_with_the_reason(stack, tmp_path):
    from node.pipeline.tiny import tiny_model_dir

    other = tiny_model_dir("qwen2", seed=1, path=tmp_path / "other", num_layers=2)
    key = stack.staked_key()
    with pytest.raises(WorkerError, match="none of this worker's models .* is one the validator runs"):
        await asyncio.wait_for(stack.in_process(key, asyncio.Event(), model_dirs=(other,)), 30)
    assert stack.orchestrator.registry.all() == ()


async def test_sigterm_while_starting_leaves_nothing_behind(stack, caplog):
    key = stack.staked_key()
    stop = asyncio.Event()
    stop.set()  # the signal arrives before start-up is done
    with caplog.at_level("INFO", logger="stagewise.worker"):
        await asyncio.wait_for(stack.in_process(key, stop), 30)
    assert "stopped before the worker was registered" in caplog.text
    assert stack.orchestrator.registry.all() == ()
