"""A worker blamed by a verdict leaves its group at once; one blamed again and again may not come back for a while.

The attack (issue 18, item 1): a worker blamed on all 52 of its jobs stayed in its group and took every job
of that group, so the honest members of the group earned nothing for them either.
"""

from __future__ import annotations

import pytest

from node.orchestration.bans import BanPolicy, banned_until
from tests.validator.factory import run_job

PROMPT = [3, 1, 4, 1, 5, 9]


def test_one_blame_evicts_the_second_bans_and_each_further_one_doubles_the_ban():
    policy = BanPolicy(first_s=600, max_s=3600, window_s=86_400)
    assert banned_until([], policy) is None
    assert banned_until([1000.0], policy) is None
    assert banned_until([1000.0, 2000.0], policy) == 2000 + 600
    assert banned_until([2000.0, 1000.0, 1500.0], policy) == 2000 + 1200
    assert banned_until([float(t) for t in range(10)], policy) == 9 + 3600  # capped
    assert banned_until([0.0, 100_000.0], policy) is None  # the earlier blame is outside the window


def test_a_worker_the_cross_job_test_flagged_is_kept_out_for_drift_s():
    policy = BanPolicy(first_s=600, max_s=3600, window_s=86_400, drift_s=7200)
    assert banned_until([], policy, drift_flagged_s=1000.0) == 1000 + 7200
    assert banned_until([1000.0, 2000.0], policy, drift_flagged_s=0.0) == 7200  # the later end counts
    assert banned_until([1000.0, 9000.0], policy, drift_flagged_s=0.0) == 9000 + 600


async def test_a_blamed_worker_is_evicted_and_a_repeatedly_blamed_one_is_banned(ledger, model_dir, group, worker_keys):
    from node.cli.validator import parse_orchestration_flags
    from node.orchestration.registry import RegistrationRefused
    from node.orchestration.setup import build_orchestration
    from node.protocol.worker_messages import make_registration
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.orchestration.conftest import CAPACITIES
    from tests.orchestration.local_pipeline import LocalPipeline, LocalWorker
    from tests.validator.conftest import TEST_DOMAIN, make_config, stake_all

    await stake_all(ledger, worker_keys)
    node = ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN, models=ReplayModels([model_dir]))
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in worker_keys})
    orchestration = build_orchestration(parse_orchestration_flags(["--allow-private-stage-urls", "--defence-seconds", "0.2"]), node, model_dir,
                                        driver=driver)
    registry, cheater = orchestration.orchestrator.registry, worker_keys[1]

    async def register(key):
        index = worker_keys.index(key)
        return await orchestration.orchestrator.register(
            make_registration(key, CAPACITIES[index], "eu", f"http://127.0.0.1:{9000 + index}")
        )

    async def blamed_job(seed: int) -> None:
        spec = group.spec(PROMPT, max_new_tokens=6, seed=seed)
        await orchestration.issued.record(spec)
        await node.submit_bundle(run_job(group, spec, perturbed_stage=1).to_json().encode())
        assert await node.validate_next() == spec.job_id_hex
        assert (await node.job(spec.job_id_hex))["verdict"]["blamed_stage"] == 1

    for key in worker_keys:
        await register(key)
    await blamed_job(seed=1)
    assert registry.get(cheater.address) is None  # out of its group at once
    assert registry.get(worker_keys[0].address) is not None  # its neighbours stay
    await register(cheater)  # a first blame: it may come back with the stake it has left
    await blamed_job(seed=2)
    assert registry.get(cheater.address) is None
    with pytest.raises(RegistrationRefused) as refused:
        await register(cheater)
    assert refused.value.code == "banned" and "may register in" in str(refused.value)
