"""The whole loop with real parts: a chain, staked workers (node.worker.run) with stage servers, the validator
node with orchestration. Workers register, a group forms, tasks run as jobs with orchestrator seeds, the
last stage delivers each bundle, the validator replays it and pays the stages. Midway a stage worker dies:
the spare takes its stage, the continuation jobs carry its receipts and are accepted like any other."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from node.cli.validator import parse_orchestration_flags
from node.orchestration.setup import build_orchestration
from node.protocol.signing import SigningKey

from .conftest import MIB, ran_to_its_end

pytest.importorskip("node.pipeline.server")

STAKE = 10**18


@pytest.mark.slow
async def test_tasks_flow_from_registration_to_paid_verdicts(tmp_path, sqlite_url, model_dir, worker_keys):
    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import ChainServer
    from ledger.store import Ledger
    from node.protocol.receipts import ReceiptDomain
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from node.worker.config import WorkerConfig
    from node.worker.run import Worker

    chain = await asyncio.to_thread(ChainClient.embedded)
    chain_server = ChainServer(chain.w3, host="127.0.0.1", port=0)
    rpc_url = await chain_server.start()
    keys = worker_keys[:3]
    for key in keys:
        await asyncio.to_thread(chain.fund, key.address, 2 * STAKE)
        await asyncio.to_thread(chain.stake, key, STAKE)

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": f"{i} plus {i}?", "answer": str(2 * i), "checker": "number"}) for i in range(3)))
    args = parse_orchestration_flags(["--tasks", str(tasks), "--stages-per-group", "2", "--max-new-tokens", "10", "--temperature", "0.7",
                              "--allow-private-stage-urls"])  # the workers are on loopback

    ledger = await Ledger.open(sqlite_url)
    node = ValidatorNode(
        ValidatorConfig(model_dirs=(model_dir,), min_stake_wei=STAKE, epoch_seconds=3600, bundle_deadline_seconds=3),
        ledger, domain=ReceiptDomain(chain.chain_id, chain.address), models=ReplayModels([model_dir]),
        chain=chain, chain_key=SigningKey(bytes(chain.dev_keys[0].key)), rpc_url=rpc_url,
    )
    orchestration = build_orchestration(args, node, model_dir)
    runner = web.AppRunner(build_app(node, [orchestration.registrar], dashboard=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    node.start()
    workers = []
    async with aiohttp.ClientSession() as session:
        try:
            for key, speed in zip(keys, (3000.0, 1000.0, 500.0)):
                config = WorkerConfig(keystore=tmp_path / "unused.json", validator_url=url, model_dirs=(model_dir,),
                                      memory_bytes=64 * MIB, layer_tokens_per_s=speed, heartbeat_s=0.5)
                worker = Worker(config, key, session)
                await worker.start()
                workers.append(worker)
            (group,) = orchestration.orchestrator.grouping.groups
            assert [(s.layer_start, s.layer_end) for s in group.stages] == [(0, 8), (8, 10)]  # 3:1 of 10 layers
            assert orchestration.orchestrator.grouping.spares == (keys[2].address,)
            await orchestration.start()
            dispatcher = orchestration.dispatcher
            for _ in range(3000):
                if any(len(run.generated) >= 3 for run, _ in dispatcher._active.values()):
                    break
                await asyncio.sleep(0.01)
            await workers[1].server.stop()  # stage 1's worker dies mid-job
            await asyncio.wait_for(orchestration.wait_dispatched(), 60)
            progress = dispatcher.progress
            assert progress.tasks_done == 3 and progress.reroutes >= 1
            outputs = [result.output_token_ids for result in progress.results]
            assert all(ran_to_its_end(output, 10, dispatcher.policy.sampling.stop_ids) for output in outputs), outputs
            assert progress.tokens >= sum(map(len, outputs))  # and the tokens of the interrupted jobs, if counted

            async with session.get(url + "/v1/groups") as response:
                groups = await response.json()
            (repaired,) = groups["groups"]
            assert [s["worker"] for s in repaired["stages"]] == [keys[0].address, keys[2].address]
            assert repaired["measured_tokens_per_s"] > 0

            # the jobs that completed: each task's last job (an interrupted job is never bundled)
            job_ids = {result.job_ids[-1] for result in progress.results}
            for _ in range(300):  # bundles arrive from the last stage and are replayed
                async with session.get(url + "/v1/jobs?status=done") as response:
                    done = {job["job_id"] for job in (await response.json())["items"]}
                if job_ids <= done:
                    break
                await asyncio.sleep(0.1)
            assert job_ids <= done
            for job_id in job_ids:
                async with session.get(f"{url}/v1/jobs/{job_id}") as response:
                    job = await response.json()
                assert job["verdict"]["outcome"] == "accepted", job
                if job["group_id"] == repaired["group_id"]:
                    assert job["stages"][1]["worker"] == keys[2].address  # the replacement's receipt
            rerouted = [r for r in progress.results if r.reroutes]
            assert rerouted and all(r.groups[-1] == repaired["group_id"] for r in rerouted)
            # the interrupted jobs never got a bundle: soft-invalidated at the deadline, nobody paid or slashed
            interrupted = {job for r in rerouted for job in r.job_ids[:-1]}
            for _ in range(100):
                outcomes = []
                for job_id in interrupted:
                    async with session.get(f"{url}/v1/jobs/{job_id}") as response:
                        outcomes.append(((await response.json()).get("verdict") or {}).get("outcome"))
                if outcomes == ["soft_invalidated"] * len(interrupted):
                    break
                await asyncio.sleep(0.1)
            assert outcomes == ["soft_invalidated"] * len(interrupted)
        finally:
            for worker in workers[:1] + workers[2:]:
                await worker.shutdown()
            await orchestration.stop()
            await node.stop()
            await runner.cleanup()
            await chain_server.stop()
            await ledger.close()
