"""The dashboard, loaded in headless Chromium against a running validator that has accepted a job, slashed one
worker three times, closed an epoch, and orchestrates a group of three workers in two regions.

Each page is loaded twice: once for its DOM (`--dump-dom`) and once for a screenshot, with Chromium's console
on stderr; a JavaScript error fails the test either way (the page counts them on <body data-errors>, and the
console shows "Uncaught")."""

import asyncio
import re
import shutil
import subprocess

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ledger.samples import SampleRecord
from node.orchestration.api import orchestration_registrar
from node.orchestration.grouping import GroupingPolicy, ModelShape
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.progress import Progress, TaskResult
from node.orchestration.registry import Registry, RegistryPolicy, stake_lookup
from node.protocol.worker_messages import Capacity, make_registration
from node.validator.app import build_app
from node.validator.dashboard import DASHBOARD_DIR
from tests.validator.conftest import ADMIN_TOKEN
from tests.validator.factory import run_job
from tests.validator.test_validation import PROMPT, submit_and_validate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MIB = 1 << 20
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,2600")


async def chromium(url: str, profile, *extra: str) -> tuple[str, str]:
    """Chromium's stdout and stderr (its console, with --enable-logging) once the page ran for 5 s of virtual time."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return stdout.decode(), stderr.decode(errors="replace")


async def rendered_dom(url: str, profile) -> str:
    """What the page shows once its scripts ran; fails on a JavaScript error the page counted."""
    dom, _ = await chromium(url, profile, "--dump-dom")
    assert 'data-loaded="true"' in dom
    errors = re.search(r'data-errors="(\d+)"', dom)
    assert errors is not None and errors.group(1) == "0", re.search(r'data-last-error="([^"]*)"', dom)
    return dom


async def screenshot(url: str, path) -> None:
    """A screenshot of the page; fails if Chromium's console logged an uncaught JavaScript error."""
    _, console = await chromium(url, path.parent / "chromium-shot", f"--screenshot={path}", "--enable-logging=stderr", "--v=0")
    uncaught = [line for line in console.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "Error" in line)]
    assert not uncaught, "\n".join(uncaught)
    assert path.stat().st_size > 10_000  # a real picture, not an empty page


def section(dom: str, element_id: str) -> str:
    """The HTML inside the element with this id, up to the next section (enough for substring checks)."""
    return dom.split(f'id="{element_id}"', 1)[1].split("</section>", 1)[0]


class IdleDriver:
    """Stage servers that load and release instantly: the groups are what the page shows, not what they run."""

    async def prepare(self, group, workers) -> None:
        pass

    async def release(self, group) -> None:
        pass


async def orchestrating(group, worker_keys) -> Orchestrator:
    registry = Registry(stake_lookup({k.address: 10**18 for k in worker_keys}), RegistryPolicy(min_stake_wei=10**18))
    orchestrator = Orchestrator(registry, IdleDriver(), group.model_id, ModelShape(6, MIB), GroupingPolicy(stages_per_group=3))
    for key, region in zip(worker_keys, ("eu-west", "eu-west", "us-east")):
        await orchestrator.register(make_registration(key, Capacity(2 * MIB, 600.0), region, "http://127.0.0.1:9"))
    [formed] = orchestrator.grouping.groups
    ticks = iter(range(100, 10**6, 2))  # each reading of the clock is 2 s later
    progress = Progress(tasks_total=4, clock=lambda: float(next(ticks)))
    progress.job_started(formed.group_id)
    progress.job_ended(formed.group_id, 24)
    progress.task_finished(TaskResult("t1", (1, 2), "ok", True, ("0x" + "11" * 32,), (formed.group_id,), reroutes=1))
    orchestrator.progress = progress
    return orchestrator


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.slow
async def test_the_dashboard_shows_progress_charts_pipelines_regions_standings_and_collapsed_slashes(
    node, group, worker_keys, tmp_path
):
    orchestrator = await orchestrating(group, worker_keys)
    async with TestClient(TestServer(build_app(node, registrars=[orchestration_registrar(orchestrator)]))) as client:
        honest = await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=1)))
        assert honest["verdict"]["outcome"] == "accepted"
        for seed in (2, 3, 4):
            blamed = await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=seed), perturbed_stage=1))
            assert blamed["verdict"]["blamed_stage"] == 1
        await node.ledger.record_sample(SampleRecord(
            job_id=honest["job_id"], task_id="linear-1-00001", task_source="gen:linear:n=1:seed=1",
            model_id=group.model_id, prompt_token_ids=(1, 2), completion_token_ids=(3, 4), completion_text="\\boxed{2}",
            sampling={"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 6, "stop_ids": []}, seed=1,
            answer="2", checker="math", correct=True,
        ))
        closed = await client.post("/v1/admin/epochs/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert closed.status == 201
        url = str(client.make_url("/"))

        dom = await rendered_dom(url, tmp_path / "chromium")
        await screenshot(url, tmp_path / "overview.png")
        all_tasks = await rendered_dom(url + "#/tasks", tmp_path / "chromium")

    cheater, clean = worker_keys[1].address, worker_keys[0].address
    assert "could not load" not in dom
    progress = section(dom, "progress")
    assert "1 / 4" in progress and "tokens/s" in progress and "reroutes" in progress
    for chart in ("chart-throughput", "chart-rewards", "chart-slashes"):
        assert "<canvas" in section(dom, chart).split("</figure>")[0], chart  # drawn by the vendored uPlot
    pipelines = section(dom, "groups")
    assert pipelines.count('class="stage ok"') == 3 and pipelines.count('class="arrow"') == 2 and "measured" in pipelines
    regions = section(dom, "regions")
    assert 'data-region="eu-west"' in regions and 'data-region="us-east"' in regions
    assert all(f"#/worker/{key.address}" in regions for key in worker_keys)
    standings = section(dom, "standings")
    assert standings.index(clean) < standings.index(cheater)  # the slashed worker ranks below the clean ones
    assert " ETH</span>" in standings and "net" in standings
    slashed = section(dom, "slashed")
    assert slashed.count("#/worker/") == 1 and "3×" in slashed  # three slashes of one worker: one row
    assert cheater in slashed and "mantissa error" in slashed and "#/job/0x" in slashed
    epochs = section(dom, "epochs")
    assert "<td>1</td>" in epochs
    assert section(dom, "jobs").count("#/job/0x") == 4
    tasks = section(dom, "tasks")
    assert "linear-1-00001" in tasks and "1 / 1" in tasks and "100 %" in tasks and "<meter" in tasks
    assert 'data-route="tasks"' in all_tasks and "linear-1-00001" in section(all_tasks, "all-tasks")
    assert 'id="overview" hidden' in all_tasks
    chain = dom.split('id="chain"', 1)[1].split("</dl>", 1)[0]
    assert ">31337<" in chain and ("ab" * 20) in chain.lower()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.slow
async def test_a_worker_page_shows_its_jobs_verdicts_rewards_slashes_and_claimable_amount(client, node, group, tmp_path):
    await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=1)))
    await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=2), perturbed_stage=1))
    closed = await client.post("/v1/admin/epochs/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert closed.status == 201
    cheater = group.keys[1].address
    url = str(client.make_url("/")) + f"#/worker/{cheater}"

    dom = await rendered_dom(url, tmp_path / "chromium")
    await screenshot(url, tmp_path / "worker.png")

    assert 'data-route="worker"' in dom and "could not load" not in dom
    jobs = section(dom, "worker-jobs")
    assert jobs.count("#/job/0x") == 2 and "accepted" in jobs and "blamed" in jobs and "(its stage)" in jobs
    assert "mantissa error" in jobs  # the verifier's one-line why, from the evidence
    assert "ETH" in section(dom, "worker-rewards") and "#/job/0x" in section(dom, "worker-rewards")
    slashes = section(dom, "worker-slashes")
    assert "mantissa error" in slashes and " ETH" in slashes
    claimable = dom.split('id="claimable"', 1)[1].split("</div>", 1)[0]
    assert "epoch 1" in claimable and " ETH" in claimable
    assert 'id="overview" hidden' in dom  # a worker page is the worker's, not the overview

    blamed_job = re.search(r'href="#/job/(0x[0-9a-f]{64})"', jobs).group(1)  # newest first: the blamed one
    job = await rendered_dom(str(client.make_url("/")) + f"#/job/{blamed_job}", tmp_path / "chromium")
    why = job.split('id="why"', 1)[1].split("</p>", 1)[0]
    assert "stage 1 blamed" in why and "mantissa error" in why
    assert all(f"#/worker/{key.address}" in job for key in group.keys) and "/evidence" in job


def test_amounts_are_ether_with_their_unit(tmp_path):
    """format.js `ether`: wei in, ether with its unit out (run in Chromium when there, else skipped)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed")
    script = tmp_path / "page.html"
    format_js = (DASHBOARD_DIR / "format.js").read_text()
    cases = ["0", "1", "250000000000000000", "1000000000000000000", "-1500000000000000", "123456789000000000000"]
    script.write_text(f"<script>{format_js}</script><body><script>document.body.textContent = "
                      f"JSON.stringify({cases}.map((w) => ether(w)));</script></body>")
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", script.as_uri()],
                         capture_output=True, text=True, timeout=90).stdout
    assert ('["0 ETH","0.000000000000000001 ETH","0.25 ETH","1 ETH","-0.0015 ETH","123.456789 ETH"]'
            in out.replace("&quot;", '"')), out
