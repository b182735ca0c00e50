"""How one validator's cost grows with the network: simulated workers against a real `validator run` process.

Every simulated worker has its own key and sends real signed registrations and heartbeats over loopback HTTP;
its stage server (one aiohttp app in this process, one listening port a worker, since a stage URL is a server
root) answers the validator's signed control requests (PUT/DELETE /v1/assignment, GET /health, POST /v1/jobs and its
stream) and computes
nothing. Stakes are seeded into the validator's ledger, as chain sync would have written them (--no-chain).

Rows (one run, side by side, each beside its target; --quick: 1,000 workers, else 10,000):
  registrations per second                      >= 500/s
  heartbeats, every worker every 5 s            >= the offered rate (N/5 per s), p99 latency <= 100 ms;
                                                validator CPU per heartbeat (/proc/PID/stat), reported
  grouping, form_groups / regroup after 5 %     <= 1 s at 10,000 (in process, node/orchestration/grouping.py)
  the validator's own regroup after 5 % leave   as seen through GET /v1/groups; reported
  resident memory per registered worker         /proc/PID/status VmRSS before and after; reported
  epoch close + anchor, 1,000,000 entries       close on the ledger, anchor on the in-process EVM; reported
  intake CPU per bundle, two validators on one  PostgreSQL (--pg-url or STAGEWISE_TEST_PG_URL); reported
  job dispatch per second                       a second validator process resumes the groups from the
                                                ledger and dispatches; the stage 0s stream at once; reported

Registrations and heartbeats are sent with at most --concurrency (256) in flight: a registration is answered
after the regroup round it joins, so the registration rate is also bounded by 256 / the round's time
(docs/scaling.md). --profile runs the validators under cProfile; --logs keeps their logs (their "regrouped"
lines time every round).

The validator runs with its HTTP limits raised (--requests-per-second, --max-connections,
--max-connections-per-client): every simulated worker shares the bench's one loopback address, which the
defaults (200 requests/s, 128 connections per address) would refuse as one abusive client.

Usage: .venv/bin/python bench/scale.py [--quick] [--workers N] [--entries N] [--pg-url URL]; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from simulated_workers import StageServers, cpu_s, percentile, post_many, rss_bytes, sign_in_pool  # noqa: E402

from node.orchestration.grouping import Candidate, GroupingPolicy, ModelShape, form_groups, regroup  # noqa: E402
from node.protocol.signing import SigningKey  # noqa: E402

HERE = Path(__file__).resolve().parent
CHAIN_ID = 31337
CONTRACT = "0x" + "5c" * 20
VALIDATOR_KEY = SigningKey((0xBE7C4).to_bytes(32, "big"))
HEARTBEAT_EVERY_S = 5.0
TARGETS = {"registrations_per_s": 500, "heartbeat_p99_ms": 100, "grouping_s": 1.0}
REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south")


def _load(name: str):
    """A sibling bench module (bench/ is scripts, not a package; bench/ledger.py shares its name with ledger/)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ the validator under test


def start_validator(home: Path, db_url: str, model_dir: Path, *extra: str,
                    profile: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A `validator run` process and its URL; with `profile`, run under cProfile, its stats written there on exit."""
    env = {**os.environ, "STAGEWISE_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "STAGEWISE_VALIDATOR_KEY": "0x" + VALIDATOR_KEY.secret.hex(),
           "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    command = [
        sys.executable, *profiler, "-m", "node.cli.main", "--db", db_url, "validator", "run", "--no-chain",
        "--chain-id", str(CHAIN_ID), "--contract", CONTRACT, "--model-dir", str(model_dir), "--port", "0",
        "--requests-per-second", "1000000", "--max-connections", "16000", "--max-connections-per-client", "16000",
        *extra,
    ]
    log = open(home / f"validator-{len(list(home.glob('validator-*.log')))}.log", "ab")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env, cwd=HERE.parent)
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError(f"the validator did not start; see {log.name}")
    return process, json.loads(line)["url"]


def stop(process: subprocess.Popen, wait_s: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def seed_stakes(db_url: str, addresses: list[str]) -> None:
    """What chain sync would have written: every worker's stake, in one transaction."""
    from ledger.store import Ledger

    ledger = await Ledger.open(db_url)
    try:
        async with ledger.transaction() as tx:
            for address in addresses:
                await tx.set_stake(address, 10**18)
    finally:
        await ledger.close()


async def groups_view(session: aiohttp.ClientSession, base: str) -> dict:
    async with session.get(base + "/v1/groups", timeout=aiohttp.ClientTimeout(total=120)) as response:
        return json.loads(await response.read())


async def wait_grouped(session: aiohttp.ClientSession, base: str, expect: int, gone: set[str], timeout_s: float) -> dict:
    """Poll GET /v1/groups until `expect` workers are registered, none of `gone` is in a group and every other
    worker is in a group or a spare; the last view and how long it took."""
    started = time.monotonic()
    while True:
        view = await groups_view(session, base)
        grouped = {s["worker"] for g in view["groups"] for s in g["stages"]}
        settled = len(view["workers"]) == expect and not grouped & gone and len(grouped) + len(view["spares"]) >= expect
        if settled or time.monotonic() - started > timeout_s:
            return {"seconds": time.monotonic() - started, "settled": settled, "groups": len(view["groups"]),
                    "grouped": len(grouped), "spares": len(view["spares"])}
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------------------ rows


async def validator_rows(args, tmp: Path, model_dir: Path, figures: dict) -> None:
    """Registrations, heartbeats, the validator's regroup after churn and its memory, against one process."""
    n = args.workers
    rng = random.Random(19)
    secrets = [(0x10_0000 + i).to_bytes(32, "big") for i in range(n)]
    addresses = [SigningKey(s).address for s in secrets]
    db_url = args.db or f"sqlite+aiosqlite:///{tmp}/ledger.db"
    await seed_stakes(db_url, addresses)
    stages = StageServers()
    urls = await stages.start(addresses)
    rounds = args.rounds
    # Messages are signed ahead (1 ms of the generator's CPU each: signed live, the generator would be what is
    # measured). A registration's timestamp must be within 120 s of the validator's clock when it arrives, so
    # all carry one timestamp 100 s after signing should end: valid from then - 20 s to then + 220 s.
    started = time.monotonic()
    sample = sign_in_pool("register", secrets[:64], [("http://127.0.0.1:1", "eu-west", VALIDATOR_KEY.address,
                                                      CHAIN_ID, None)] * 64)
    expected_s = 0.8 * (time.monotonic() - started) * n / len(sample)
    stamp = time.time() + expected_s + 100
    registrations = sign_in_pool("register", secrets, [(u, rng.choice(REGIONS), VALIDATOR_KEY.address, CHAIN_ID, stamp)
                                                       for u in urls])
    signing_s = time.monotonic() - started
    process, base = start_validator(tmp, db_url, model_dir, "--allow-private-stage-urls", "--heartbeat-timeout", "3600",
                                    "--regroup-interval", "2", "--validation-workers", "1",
                                    profile=args.profile)
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
            await groups_view(session, base)  # warm: imports and the first statement compilations
            rss_before, cpu_before = rss_bytes(process.pid), cpu_s(process.pid)
            ours_before = cpu_s()
            reg = await post_many(session, base + "/v1/workers/register", registrations, args.concurrency,
                                  deadline_s=args.phase_timeout)
            if reg["sent"] < n:
                print(f"  registration stopped after {args.phase_timeout:.0f} s (--phase-timeout): {reg['sent']:,} of "
                      f"{n:,} sent; the rows below are for the {len(reg['accepted']):,} registered", flush=True)
            total = n
            registered = reg["accepted"]
            n = len(registered)
            secrets = [secrets[i] for i in registered]
            addresses = [addresses[i] for i in registered]
            reg_cpu = cpu_s(process.pid) - cpu_before
            figures["registrations"] = {
                "workers": n, "offered": total, "sent": reg["sent"], "per_s": reg["sent"] / reg["seconds"],
                "seconds": reg["seconds"], "statuses": reg["statuses"],
                "p50_ms": 1000 * percentile(reg["latencies"], 0.5), "p99_ms": 1000 * percentile(reg["latencies"], 0.99),
                "validator_cpu_ms_each": 1000 * reg_cpu / reg["sent"], "generator_cpu_s": cpu_s() - ours_before,
                "errors": reg["errors"], "presign_s": signing_s,
            }
            grouped = await wait_grouped(session, base, n, set(), args.settle_timeout)
            figures["registrations"]["grouped_after_s"] = grouped
            print(f"  {n:,} registered; grouped {grouped['seconds']:.0f} s later", flush=True)
            rss_after = rss_bytes(process.pid)
            figures["memory"] = {"rss_before": rss_before, "rss_after": rss_after,
                                 "bytes_per_worker": (rss_after - rss_before) / max(1, n)}

            start_at = time.time() + 3 + n * rounds * 0.0006  # room to sign them first
            order = list(range(n))
            plan_wall = []
            for r in range(rounds):
                for position, i in enumerate(order):
                    plan_wall.append(start_at + r * HEARTBEAT_EVERY_S + position * HEARTBEAT_EVERY_S / n)
            heartbeats = sign_in_pool("heartbeat", [secrets[i % n] for i in range(n * rounds)], plan_wall)
            # signing took longer than planned (a loaded machine): send later than signed, well within the skew
            shift = max(0.0, time.time() + 5.0 - plan_wall[0])
            offset = time.monotonic() - time.time() + shift
            plan = [t + offset for t in plan_wall]
            print(f"  {n:,} registered and grouped; {len(heartbeats):,} heartbeats from {plan[0] - time.monotonic():.0f} s "
                  "from now", flush=True)
            idle_before, idle_started = cpu_s(process.pid), time.monotonic()
            await asyncio.sleep(max(0.0, plan[0] - time.monotonic()))  # the validator's own background (regroup
            idle_cores = (cpu_s(process.pid) - idle_before) / max(1e-9, time.monotonic() - idle_started)  # loop, epochs)
            cpu_before, ours_before = cpu_s(process.pid), cpu_s()
            beat = await post_many(session, base + "/v1/workers/heartbeat", heartbeats, args.concurrency, at=plan,
                                   deadline_s=plan[-1] - time.monotonic() + 60)  # a validator far behind: stop
            hb_cpu = cpu_s(process.pid) - cpu_before
            count = beat["sent"]
            span = plan[-1] - plan[0] + HEARTBEAT_EVERY_S / n
            figures["heartbeats"] = {
                "workers": n, "sent": count, "planned": len(heartbeats), "offered_per_s": len(heartbeats) / span, "seconds": beat["seconds"],
                "achieved_per_s": count / (beat["ended"] - plan[0]), "statuses": beat["statuses"],
                "p50_ms": 1000 * percentile(beat["latencies"], 0.5), "p99_ms": 1000 * percentile(beat["latencies"], 0.99),
                "late_p99_ms": 1000 * percentile(beat["late"], 0.99),
                "validator_cpu_ms_each": 1000 * hb_cpu / count, "idle_cores": idle_cores,
                "validator_cpu_ms_each_over_idle": 1000 * (hb_cpu - idle_cores * (beat["ended"] - plan[0])) / count,
                "validator_cores": hb_cpu / (beat["ended"] - plan[0]),
                "generator_cores": (cpu_s() - ours_before) / (beat["ended"] - plan[0]), "errors": beat["errors"],
            }

            gone = set(rng.sample(addresses, max(1, n // 20)))
            leaves = sign_in_pool("leave", [s for s, a in zip(secrets, addresses) if a in gone], [None] * len(gone))
            cpu_before = cpu_s(process.pid)
            churn_started = time.monotonic()
            print(f"  heartbeats done; {len(gone)} workers leave", flush=True)
            left = await post_many(session, base + "/v1/workers/leave", leaves, min(args.concurrency, len(leaves)))
            settled = await wait_grouped(session, base, n - len(gone), gone, args.settle_timeout)
            figures["validator_regroup"] = {
                "left": len(gone), "leave_statuses": left["statuses"], "leaves_s": left["seconds"],
                "settled_s": time.monotonic() - churn_started, "validator_cpu_s": cpu_s(process.pid) - cpu_before,
                **settled,
            }
            figures["stage_requests"] = dict(stages.requests)
            stop(process)
            if "dispatch" not in args.skip:
                print("  a second validator process takes the ledger over and dispatches tasks", flush=True)
                figures["dispatch"] = await dispatch_row(args, tmp, db_url, model_dir, stages, session)
    finally:
        stop(process)
        await stages.stop()
    figures["load"] = os.getloadavg()


async def dispatch_row(args, tmp: Path, db_url: str, model_dir: Path, stages: StageServers,
                       session: aiohttp.ClientSession) -> dict:
    """Jobs dispatched per second: a new validator process on the ledger the registrations went to resumes its
    workers and groups (nobody registers again) and dispatches generated tasks to them; the simulated stage 0s
    take each job and stream its tokens at once. Counted at the stage servers over `--dispatch-seconds` from
    the first job, with the validator's CPU over the same window. A finished sequence then waits for its
    job's verdict, which never comes (no bundles are sent): those waits are part of the cost measured."""
    taken_before = len(stages.job_times)
    started = time.monotonic()
    process, base = start_validator(tmp, db_url, model_dir, "--allow-private-stage-urls", "--heartbeat-timeout", "3600",
                                    "--regroup-interval", "2", "--validation-workers", "0",
                                    "--tasks", f"gen:arithmetic:n={args.dispatch_tasks}", "--max-new-tokens", "4",
                                    profile=args.profile.with_suffix(".dispatch" + args.profile.suffix) if args.profile else None)
    try:
        while len(stages.job_times) == taken_before and time.monotonic() - started < args.settle_timeout:
            await asyncio.sleep(0.05)
        first = time.monotonic()
        resumed = await groups_view(session, base)
        cpu_before, ours_before = cpu_s(process.pid), cpu_s()
        await asyncio.sleep(args.dispatch_seconds)
        cpu, ours = cpu_s(process.pid) - cpu_before, cpu_s() - ours_before
        window_end = time.monotonic()
        jobs = sum(1 for t in stages.job_times[taken_before:] if first <= t <= window_end)
        async with session.get(base + "/v1/orchestrator/progress") as response:
            progress = json.loads(await response.read())
    finally:
        stop(process, 120.0 if args.profile else 15.0)  # a profiled process writes its stats on the way out
    return {"first_job_after_s": first - started, "seconds": window_end - first, "jobs": jobs,
            "per_s": jobs / (window_end - first), "validator_cpu_ms_each": 1000 * cpu / max(1, jobs),
            "validator_cores": cpu / (window_end - first), "stage_servers_cores": ours / (window_end - first),
            "groups": len(resumed["groups"]),
            "workers": len(resumed["workers"]), "progress_jobs": progress.get("jobs"),
            "tasks_done": progress.get("tasks_done")}


def grouping_row(n: int) -> dict:
    """form_groups over n workers of mixed memory in five regions, then regroup after 5 % of them drop."""
    rng = random.Random(5)
    gib = 1 << 30
    shape = ModelShape(num_layers=32, layer_bytes=gib // 2, edge_bytes=gib, head_layers=4.0)  # a 7B-class model
    candidates = [Candidate(f"0x{i:040x}",
                            rng.choice([4, 6, 8, 12, 16, 24]) * gib, rng.uniform(5e3, 5e4), rng.choice(REGIONS))
                  for i in range(n)]
    policy = GroupingPolicy(preferred_stages=3)
    started = time.perf_counter()
    first = form_groups(candidates, shape, policy)
    formed_s = time.perf_counter() - started
    gone = set(rng.sample([c.address for c in candidates], n // 20))
    alive = [c for c in candidates if c.address not in gone]
    started = time.perf_counter()
    second = regroup(first, alive, shape, policy)
    regroup_s = time.perf_counter() - started
    return {"workers": n, "groups": len(first.groups), "form_s": formed_s, "regroup_s": regroup_s,
            "after": len(second.groups), "repaired": len({r.new_group for r in second.replacements}),
            "dissolved": len(second.dissolved)}


async def epoch_row(db_url: str, entries: int, workers: int) -> dict:
    """Ingest `entries` journal entries (bench/ledger.py's mix), then close one epoch over them and anchor it."""
    from ledger.chain.client import ChainClient
    from ledger.store import Ledger

    batches, _ = _load("ledger").make_batches(entries, workers, 1000, seed=19)
    ledger = await Ledger.open(db_url)
    try:
        started = time.perf_counter()
        for batch in batches:
            await ledger.append(batch)
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        epoch = await ledger.close_epoch()
        close_s = time.perf_counter() - started
        chain = await asyncio.to_thread(ChainClient.embedded, unbonding_delay=60)
        validator = chain.dev_keys[0]
        started = time.perf_counter()
        receipt = await asyncio.to_thread(chain.signed_anchor, validator, [validator], epoch.number,
                                          epoch.entries_root, epoch.rewards_root, epoch.entry_count)
        await ledger.mark_anchored(epoch.number, receipt.tx_hash)
        anchor_s = time.perf_counter() - started
    finally:
        await ledger.close()
    return {"entries": epoch.entry_count, "ingest_per_s": entries / ingest_s, "close_s": close_s,
            "anchor_s": anchor_s, "anchor_gas": receipt.gas_used}


def intake_row(tmp: Path, pg_base: str, count: int, concurrency: int) -> dict:
    """Two `validator run --no-orchestration` processes on one PostgreSQL ledger, each sent half the bundles by
    its own client process (bench/validator.py's); their CPU per bundle from /proc. No replay: no validation
    workers, so what is counted is intake (parse, signatures, stake, the write)."""
    from node.pipeline.smollm2 import smollm2_dir
    from node.pipeline.weights import model_id
    from node.protocol.receipts import ReceiptDomain

    model_dir = smollm2_dir()  # the bundles' jobs are bench/validator.py's: SmolLM2's 30 layers, 3 stages
    bench_validator = _load("validator")
    domain = ReceiptDomain(CHAIN_ID, CONTRACT)
    bodies, keys = bench_validator.make_bundles(count, model_id(model_dir), domain)
    db_url, drop = bench_validator.pg_database(pg_base)
    processes = []
    try:
        asyncio.run(seed_stakes(db_url, [k.address for k in keys]))
        for _ in range(2):
            processes.append(start_validator(tmp, db_url, model_dir, "--no-orchestration", "--accept-unissued-jobs",
                                             "--validation-workers", "0"))
        files = []
        for index in range(2):
            path = tmp / f"bundles-{index}"
            path.write_bytes(b"\n".join(bodies[index::2]))
            files.append(path)
        before = [cpu_s(p.pid) for p, _ in processes]
        started = time.monotonic()
        clients = [subprocess.Popen([sys.executable, str(HERE / "validator.py"), "--client", url + "/v1/bundles",
                                     str(path), "--concurrency", str(concurrency)], stdout=subprocess.PIPE,
                                    cwd=HERE.parent, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
                   for (_, url), path in zip(processes, files)]
        results = [json.loads(c.communicate()[0].decode().strip().splitlines()[-1]) for c in clients]
        seconds = time.monotonic() - started
        cpu = [cpu_s(p.pid) - b for (p, _), b in zip(processes, before)]
    finally:
        for process, _ in processes:
            stop(process)
        drop()
    statuses: dict[str, int] = {}
    for result in results:
        for status, n in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {"bundles": count, "seconds": seconds, "per_s": count / seconds, "statuses": statuses,
            "cpu_ms_per_bundle": 1000 * sum(cpu) / count, "cpu_ms_each_process": [1000 * c / (count / 2) for c in cpu]}


# ------------------------------------------------------------------------------------------ report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 workers and 100,000 journal entries")
    parser.add_argument("--workers", type=int, help="simulated workers (10,000; --quick 1,000)")
    parser.add_argument("--rounds", type=int, default=3, help="heartbeat rounds of 5 s each")
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight from the simulated workers")
    parser.add_argument("--entries", type=int, help="journal entries in the epoch (1,000,000; --quick 100,000)")
    parser.add_argument("--bundles", type=int, help="bundles for the two-validator intake row (2,000; --quick 400)")
    parser.add_argument("--db", help="the validator's ledger (default: a fresh SQLite file)")
    parser.add_argument("--pg-url", default=os.environ.get("STAGEWISE_TEST_PG_URL"),
                        help="a PostgreSQL server for the two-validator intake row (a fresh database is made there)")
    parser.add_argument("--settle-timeout", type=float, default=300.0, help="longest wait for groups to settle")
    parser.add_argument("--phase-timeout", type=float, default=300.0,
                        help="registration stops sending after this many seconds (the rest of the rows use those registered)")
    parser.add_argument("--dispatch-seconds", type=float, default=15.0, help="how long the dispatch row counts jobs")
    parser.add_argument("--dispatch-tasks", type=int, default=50_000, help="generated tasks the dispatch row offers")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["validator", "dispatch", "grouping", "epoch", "intake"])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--logs", type=Path, help="keep the validators' logs in this directory")
    parser.add_argument("--profile", type=Path,
                        help="run the validators under cProfile, stats written here (the dispatch row's: NAME.dispatch.SUFFIX)")
    args = parser.parse_args(argv)
    args.workers = args.workers or (1_000 if args.quick else 10_000)
    args.entries = args.entries or (100_000 if args.quick else 1_000_000)
    args.bundles = args.bundles or (400 if args.quick else 2_000)
    return args


def row(name: str, measured: str, target: str, ok: bool | None, detail: str = "") -> bool:
    verdict = "" if ok is None else ("ok" if ok else "MISS")
    print(f"{name:44s} {measured:>16s}  {target:24s} {verdict:4s}  {detail}", flush=True)
    return ok is not False


def report(args, figures: dict) -> list[str]:
    misses = []
    n = args.workers
    if "registrations" in figures:
        r = figures["registrations"]
        n = r["workers"]
        ok = r["per_s"] >= TARGETS["registrations_per_s"] and r["statuses"] == {201: r["offered"]}
        if not row(f"registrations, {r['sent']:,} of {r['offered']:,} workers", f"{r['per_s']:,.0f}/s", f">= {TARGETS['registrations_per_s']}/s "
                   f"({r['per_s'] / TARGETS['registrations_per_s']:.2f}x)", ok,
                   f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, validator CPU {r['validator_cpu_ms_each']:.2f} ms "
                   f"each, statuses {r['statuses']}; all grouped {r['grouped_after_s']['seconds']:.1f} s later "
                   f"({r['grouped_after_s']['groups']} groups)"):
            misses.append("registrations")
        h = figures["heartbeats"]
        offered = n / HEARTBEAT_EVERY_S
        ok = h["achieved_per_s"] >= 0.95 * offered and h["statuses"] == {200: h["sent"]}
        if not row(f"heartbeats, {n:,} workers every 5 s", f"{h['achieved_per_s']:,.0f}/s",
                   f">= {offered:,.0f}/s ({h['achieved_per_s'] / offered:.2f}x)", ok,
                   f"{h['sent']:,} sent; statuses {h['statuses']}"):
            misses.append("heartbeat rate")
        ok = h["p99_ms"] <= TARGETS["heartbeat_p99_ms"]
        if not row("  heartbeat latency p99", f"{h['p99_ms']:.1f} ms", f"<= {TARGETS['heartbeat_p99_ms']} ms "
                   f"({h['p99_ms'] / TARGETS['heartbeat_p99_ms']:.2f}x)", ok,
                   f"p50 {h['p50_ms']:.1f} ms; generator late p99 {h['late_p99_ms']:.1f} ms"):
            misses.append("heartbeat p99")
        row("  validator CPU per heartbeat", f"{h['validator_cpu_ms_each']:.3f} ms", "reported", None,
            f"{h['validator_cpu_ms_each_over_idle']:.3f} ms over its idle {h['idle_cores']:.2f} cores; "
            f"{h['validator_cores']:.2f} cores busy; load generator {h['generator_cores']:.2f} cores")
        m = figures["memory"]
        row("resident memory per registered worker", f"{m['bytes_per_worker'] / 1024:.1f} KiB", "reported", None,
            f"VmRSS {m['rss_before'] >> 20} -> {m['rss_after'] >> 20} MiB")
        v = figures["validator_regroup"]
        row(f"validator regroup, {v['left']} of {n:,} leave", f"{v['settled_s']:.2f} s", "reported", None if v["settled"] else False,
            f"leaves answered in {v['leaves_s']:.2f} s, validator CPU {v['validator_cpu_s']:.1f} s, "
            f"{v['groups']} groups after; statuses {v['leave_statuses']}")
        if not v["settled"]:
            misses.append("validator regroup did not settle")
    if "dispatch" in figures:
        d = figures["dispatch"]
        row(f"job dispatch, {d['groups']} groups resumed", f"{d['per_s']:,.0f}/s", "reported", None if d["jobs"] else False,
            f"{d['jobs']:,} jobs in {d['seconds']:.0f} s; validator CPU {d['validator_cpu_ms_each']:.2f} ms each "
            f"({d['validator_cores']:.2f} cores; the simulated stages {d['stage_servers_cores']:.2f}); first job {d['first_job_after_s']:.1f} s after a new validator "
            f"process started on the ledger ({d['workers']:,} workers resumed)")
        if not d["jobs"]:
            misses.append("dispatch")
    if "grouping" in figures:
        g = figures["grouping"]
        for key, label in (("form_s", "form_groups"), ("regroup_s", "regroup after 5 % drop")):
            ok = g[key] <= TARGETS["grouping_s"] if g["workers"] >= 10_000 else None
            if not row(f"grouping: {label}, {g['workers']:,} workers", f"{1000 * g[key]:.0f} ms",
                       f"<= 1000 ms at 10,000 ({g[key] / TARGETS['grouping_s']:.2f}x)", ok,
                       f"{g['groups']} groups; after: {g['after']}, {g['repaired']} repaired, {g['dissolved']} dissolved"):
                misses.append(label)
    if "epoch" in figures:
        e = figures["epoch"]
        row(f"epoch close, {e['entries']:,} entries", f"{e['close_s']:.2f} s", "reported", None,
            f"ingested at {e['ingest_per_s']:,.0f} entries/s")
        row("  anchor (in-process EVM) + mark anchored", f"{1000 * e['anchor_s']:.0f} ms", "reported", None,
            f"{e['anchor_gas']:,} gas")
    if "intake" in figures:
        i = figures["intake"]
        ok = i["statuses"] == {"202": i["bundles"]}
        if not row("intake, 2 validators on one PostgreSQL", f"{i['cpu_ms_per_bundle']:.2f} ms CPU", "reported", ok,
                   f"per bundle (both processes); {i['per_s']:,.0f} bundles/s together; statuses {i['statuses']}"):
            misses.append("intake")
    return misses


def main(argv=None) -> int:
    args = parse_args(argv)
    figures: dict = {"workers": args.workers, "quick": args.quick, "cores": os.cpu_count()}
    print(f"scale bench: {args.workers:,} simulated workers, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}{' (quick)' if args.quick else ''}", flush=True)
    from node.pipeline.tiny import tiny_model_dir

    with tempfile.TemporaryDirectory(prefix="sw-scale-") as name:
        tmp = Path(name)
        model_dir = tiny_model_dir("llama", 19, tmp / "model")
        failed = []
        steps = {
            "grouping": lambda: figures.__setitem__("grouping", grouping_row(args.workers)),
            "validator": lambda: asyncio.run(validator_rows(args, tmp, model_dir, figures)),
            "intake": lambda: figures.__setitem__("intake", intake_row(tmp, args.pg_url, args.bundles, 32)),
            "epoch": lambda: figures.__setitem__(
                "epoch", asyncio.run(epoch_row(f"sqlite+aiosqlite:///{tmp}/epoch.db", args.entries, 10_000))),
        }
        for name, step in steps.items():
            if name in args.skip:
                continue
            if name == "intake" and not args.pg_url:
                print("intake: skipped, pass --pg-url or set STAGEWISE_TEST_PG_URL", flush=True)
                continue
            try:
                step()
            except Exception:  # the other rows still run and print; this one is a miss
                failed.append(name)
                traceback.print_exc()
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("validator-*.log"):
                shutil.copy(log, args.logs / log.name)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    misses = report(args, figures) + [f"{name} (failed)" for name in failed]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    if misses:
        print(f"MISSED: {', '.join(misses)}")
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
