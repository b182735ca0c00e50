"""A worker process started by this test serves its stage in a real loopback pipeline, and the bundle of a
job reaches a running validator, which replays it and accepts it.

Real parts only: the embedded EVM served over JSON-RPC (stake checked on chain), the validator app with the
orchestrator and its HTTP pipeline driver on a loopback port, a ledger on SQLite, and two workers: one
`stagewise worker run` subprocess and one in-process `run_worker`, each with its own stage server.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from node import wallet
from node.job import JobSpec, SamplingParams, StageAssignment
from node.receipts import ReceiptDomain
from node.signing import SigningKey
from node.worker import WorkerConfig, run_worker

pytestmark = pytest.mark.slow

STAKE = 10**18
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from node.pipeline.tiny import tiny_model_dir

    return tiny_model_dir("llama", seed=21, path=tmp_path_factory.mktemp("tiny"), num_layers=4)


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_worker_process_serves_its_stage_and_its_receipt_reaches_the_validator(tmp_path, sqlite_url, model_dir, served_chain):
    import torch

    from ledger.store import Ledger
    from node.pipeline.weights import model_id
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig
    from node.validator.grouping import GroupingPolicy
    from node.validator.models import ReplayModels
    from node.validator.node import ValidatorNode
    from node.validator.orchestration_setup import shape_of_model
    from node.validator.orchestrator import Orchestrator
    from node.validator.orchestrator_api import orchestration_registrar
    from node.validator.registry import Registry, RegistryPolicy, stake_lookup
    from node.validator.stage_control import HttpPipelineDriver

    torch.set_num_threads(1)
    chain, rpc_url = served_chain
    keys = [SigningKey.generate() for _ in range(2)]
    for key in keys:
        chain.fund(key.address, 2 * STAKE)
        chain.stake(key, STAKE)

    ledger = await Ledger.open(sqlite_url)
    for key in keys:
        await ledger.set_stake(key.address, STAKE)
    domain = ReceiptDomain(chain.chain_id, chain.address)
    node = ValidatorNode(ValidatorConfig(model_dirs=(model_dir,), min_stake_wei=STAKE), ledger, domain=domain,
                         models=ReplayModels([model_dir]), rpc_url=rpc_url)
    driver = HttpPipelineDriver(model_dir)
    orchestrator = Orchestrator(
        Registry(stake_lookup(chain), RegistryPolicy(min_stake_wei=STAKE)), driver, model_id(model_dir),
        shape_of_model(model_dir), GroupingPolicy(stages_per_group=2), regroup_interval_s=0.5,
    )
    runner = web.AppRunner(build_app(node, registrars=[orchestration_registrar(orchestrator)], dashboard=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    validator_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    keystores = []
    for index, key in enumerate(keys):
        path = tmp_path / f"worker{index}.json"
        wallet.create_keystore(path, "pw", key=key, scrypt_n=1024)
        keystores.append(path)
    password = tmp_path / "pw"
    password.write_text("pw\n")

    env = {**os.environ, "STAGEWISE_HOME": str(tmp_path / "home-proc"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "worker", "run", "--keystore", str(keystores[0]), "--password-file",
         str(password), "--validator", validator_url, "--model-dir", str(model_dir), "--capacity", "1GiB",
         "--heartbeat", "0.5", "--grace", "5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    stop = asyncio.Event()
    in_process = asyncio.create_task(run_worker(
        WorkerConfig(keystore=keystores[1], validator_url=validator_url, password_file=password,
                     model_dirs=(model_dir,), memory_bytes=1 << 30, heartbeat_s=0.5, grace_s=5),
        keys[1], stop, handle_signals=False,
    ))
    try:
        async def group_formed():
            if process.poll() is not None:
                raise AssertionError(f"worker process exited early:\n{process.stdout.read()}")
            if in_process.done():
                in_process.result()
            groups = orchestrator.grouping.groups
            return groups[0] if groups and len(groups[0].stages) == 2 else None

        group = await wait_for(group_formed, 90, "a group of both workers")
        assert {s.worker for s in group.stages} == {k.address for k in keys}
        spec = JobSpec(
            model_id=orchestrator.model_id, prompt_token_ids=(1, 5, 9, 14, 3), seed=77, group_id=group.group_id,
            sampling=SamplingParams(temperature=0.8, max_new_tokens=40),
            stages=tuple(StageAssignment(s.worker, s.layer_start, s.layer_end) for s in group.stages),
        )
        output = await asyncio.wait_for(driver.run(group, spec, lambda ids: None), 90)
        assert 1 <= len(output) <= 40

        job = await wait_for(lambda: node.job(spec.job_id_hex), 60, "the bundle at the validator")
        assert [s["worker"] for s in job["stages"]] == [s.worker for s in group.stages]
        assert await node.validate_next() == spec.job_id_hex
        judged = await node.job(spec.job_id_hex)
        assert judged["status"] == "done"
        assert judged["verdict"]["outcome"] == "accepted", judged
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            log, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            log, _ = process.communicate()
        stop.set()
        await asyncio.wait_for(in_process, 30)
        await driver.close()
        await runner.cleanup()
        await ledger.close()
    assert process.returncode == 0, log
    assert "registered with" in log and "stopped:" in log
    assert "wallet" not in log.lower() or "private" not in log.lower()
    for key in keys:
        assert key.secret.hex() not in log
