"""Wiring orchestration into `stagewise validator run`: one object to build, start and stop.

Its flags (--tasks, --stages-per-group, ...) are `orchestration_options` in node/cli/validator.py; the
validator (node/launch/validator.py) does, in order:

    orchestration = build_orchestration(args, node, model_dir)   # after the ValidatorNode exists
    app = build_app(node, registrars=[orchestration.registrar])
    ... start the web server ...
    await orchestration.start()                               # regroup loop + task dispatch
    ...
    await orchestration.stop()

Workers register and groups form whether or not `--tasks` is given; with it, every task runs as jobs on the
groups (and the run's progress is at GET /v1/orchestrator/progress and in `stagewise groups`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.journal import hash32
from node import settings
from node.orchestration.api import orchestration_registrar
from node.orchestration.bans import ledger_bans
from node.orchestration.batched_calls import BatchedCalls
from node.orchestration.dispatch import Dispatcher, DispatchPolicy, SeedSchedule
from node.orchestration.grouping import PREFERRED_STAGES, GroupingPolicy, ModelShape
from node.orchestration.leadership import LEASE_S, Leadership
from node.orchestration.models import ModelOrchestrators
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.pipeline_driver import PipelineDriver
from node.orchestration.progress import Progress
from node.orchestration.registry import LEDGER_READS, Registry, RegistryPolicy, StakeLookup
from node.orchestration.rerouting import verified_prefix
from node.orchestration.resume import SavedOrchestration
from node.orchestration.saved_dispatch import SavedDispatch
from node.orchestration.stage_control import HttpPipelineDriver, stage_health
from node.orchestration.tasks import load_task_source, load_tokenizer
from node.protocol.job import SamplingParams
from node.validator.defence_client import StageDefences
from node.validator.issued_jobs import IssuedJobs, awaited_by_ledger
from node.validator.samples import checked_recorder

log = logging.getLogger(__name__)

PROGRESS_LOG_EVERY_S = 10.0  # without a terminal, task progress is a log line at most this often
KV_HEADROOM = 1.25  # a layer needs its weights plus room for the KV cache of the sequences in flight
BATCHED_READS = 100_000  # lookups waiting at once for a batched statement (each is one small future)


@dataclass
class Orchestration:
    orchestrator: Orchestrator
    dispatcher: Dispatcher | None
    issued: IssuedJobs
    leadership: Leadership | None = None  # with a ledger: orchestrate only while holding its lease
    new_dispatcher: Callable[[], Dispatcher] | None = None  # a fresh dispatcher for a later term as orchestrator
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _terms: int = 0
    _dispatched: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def registrar(self):
        return orchestration_registrar(self.orchestrator)

    async def start(self) -> None:
        if self.leadership is None:
            self._tasks.append(asyncio.create_task(self._lead(), name="orchestrate"))
        else:
            self.orchestrator.standing_by = "nobody yet (the lease is being read)"
            await self.leadership.step(self._lead)  # a lone validator leads from its first request on
            self._tasks.append(asyncio.create_task(self.leadership.run(self._lead), name="leadership"))

    async def _lead(self) -> None:
        """One term as this ledger's orchestrator: take back what the ledger keeps, regroup on a timer and
        dispatch the tasks, until cancelled (the process stops, or another took the lease)."""
        if self._terms and self.new_dispatcher is not None:
            self.dispatcher = self.new_dispatcher()
        self._terms += 1
        await self.orchestrator.resume()
        jobs = [self.orchestrator.run_forever()]
        if self.dispatcher is not None:
            jobs.append(self._dispatch())
        else:
            self._dispatched.set()
        await asyncio.gather(*jobs)

    async def _dispatch(self) -> None:
        figures = self.dispatcher.progress
        if sys.stderr is not None and sys.stderr.isatty():
            progress = await self._dispatch_with_a_bar(figures)
        else:  # a log file or a pipe: a bar there is carriage returns and block characters, so plain lines
            figures.listeners.append(_TaskLog(figures))
            progress = await self.dispatcher.run()
        log.info(
            "tasks finished: %d done, %d failed, %d/%d correct, %d tokens at %.1f tokens/s, %d reroutes",
            progress.tasks_done, progress.tasks_failed, progress.correct, progress.checked,
            progress.tokens, progress.tokens_per_s(), progress.reroutes,
        )
        self._dispatched.set()

    async def _dispatch_with_a_bar(self, figures: Progress) -> Progress:
        from tqdm import tqdm

        with tqdm(total=figures.tasks_total, desc="tasks", unit="task", dynamic_ncols=True, file=sys.stderr) as bar:

            def advance(result) -> None:
                bar.update(1)
                bar.set_postfix(correct=f"{figures.correct}/{figures.checked}", tok_s=f"{figures.tokens_per_s():.1f}",
                                reroutes=figures.reroutes, refresh=False)

            figures.listeners.append(advance)
            return await self.dispatcher.run()

    async def wait_dispatched(self) -> None:
        """Until every task is done (returns at once without --tasks)."""
        if self.dispatcher is None:
            return
        await self._dispatched.wait()

    async def stop(self) -> None:
        background = list(self.orchestrator._background)
        for task in self._tasks + background:
            task.cancel()
        await asyncio.gather(*self._tasks, *background, return_exceptions=True)
        self._tasks.clear()
        close = getattr(self.orchestrator.driver, "close", None)
        if close is not None:
            await close()


def build_orchestrations(args: Any, node: Any, model_dirs: list[Path]) -> list[Orchestration]:
    """One orchestration per model the validator serves (`build_orchestration`), sharing what the node holds
    once: the jobs issued (the spec guard accepts a bundle of any model's), the seed schedule (no two jobs
    share a seed) and the stage URLs a defence is asked at. With `--tasks`, every model runs every task
    `--samples-per-task` times, so each task gets a pass rate per model. Serve them with
    `orchestrations_registrar(orchestrations)`."""
    issued, seeds = IssuedJobs(), SeedSchedule(_seed_secret(getattr(args, "seed_secret_file", None)))
    built = [build_orchestration(args, node, model_dir, issued=issued, seeds=seeds) for model_dir in model_dirs]
    if len(built) > 1 and hasattr(node, "defence_source"):
        registries = [o.orchestrator.registry for o in built]
        node.defence_source = StageDefences(
            lambda worker: next((url for r in registries if (url := stage_url_of(r, worker)) is not None), None),
            deadline_s=getattr(args, "defence_seconds", 30.0))
    return built


def orchestrations_registrar(orchestrations: list[Orchestration]):
    """The API routes of every model's orchestrator (node/orchestration/api.py), for `build_app`."""
    return orchestration_registrar(ModelOrchestrators([o.orchestrator for o in orchestrations]))


class _TaskLog:
    """The progress bar's figures as a log line: after the first task, at most every `every_s` seconds, and
    after the last."""

    def __init__(self, figures: Progress, every_s: float = PROGRESS_LOG_EVERY_S) -> None:
        self.figures = figures
        self.every_s = every_s
        self.last: float | None = None

    def __call__(self, result) -> None:
        figures, now = self.figures, time.monotonic()
        finished = figures.tasks_done + figures.tasks_failed
        if self.last is not None and now - self.last < self.every_s and finished < figures.tasks_total:
            return
        self.last = now
        log.info("tasks: %d/%d finished (%d failed), %d/%d correct, %.1f tokens/s, %d reroutes", finished,
                 figures.tasks_total, figures.tasks_failed, figures.correct, figures.checked, figures.tokens_per_s(),
                 figures.reroutes)


def build_orchestration(
    args: Any,
    node: Any,
    model_dir: Path,
    *,
    driver: PipelineDriver | None = None,
    stake_of: StakeLookup | None = None,
    issued: IssuedJobs | None = None,
    seeds: SeedSchedule | None = None,
) -> Orchestration:
    """Everything orchestration needs, from the parsed flags and the validator node (ledger stakes, min stake).

    Installs the node's `spec_guard` so bundles of jobs this orchestrator did not issue are refused, and its
    `defence_source`, which asks a registered worker's stage server for the rows its stage received.
    """
    # torch: imported where used, to keep it out of start-up
    from node.pipeline.weights import model_id

    model_dir = Path(model_dir)
    shape = shape_of_model(model_dir)
    precision = getattr(args, "precision", "fp32")  # what this model's jobs declare (PROTOCOL I8)
    ledger_reads = LEDGER_READS
    if stake_of is None:
        stake_of = _ledger_stake(node)
        ledger_reads = BATCHED_READS  # stakes and bans: one statement in flight at a time however many wait
    registry = Registry(
        stake_of,
        RegistryPolicy(
            min_stake_wei=int(getattr(node.config, "min_stake_wei", 1)),
            heartbeat_timeout_s=args.heartbeat_timeout,
            validator=getattr(node, "address", None),
            chain_id=node.domain.chain_id if getattr(node, "address", None) else None,
            allow_private_urls=getattr(args, "allow_private_stage_urls", True),
        ),
        banned_until=ledger_bans(node.ledger) if getattr(node, "ledger", None) is not None else None,
        ledger_reads=ledger_reads,
    )
    if driver is None:
        key = getattr(node, "chain_key", None)
        if key is None:
            raise ValueError("orchestrating stage servers needs the validator's key: stage servers obey only "
                             "requests signed by the address their validator's GET /health names")
        driver = HttpPipelineDriver(model_dir, key=key, precision=precision)
    served_model = model_id(model_dir)
    orchestrator = Orchestrator(
        registry,
        driver,
        served_model,
        shape,
        GroupingPolicy(stages_per_group=args.stages_per_group, max_stages=args.max_stages,
                       preferred_stages=getattr(args, "preferred_stages", PREFERRED_STAGES),
                       short_group_wait_s=getattr(args, "short_group_wait", 0.0)),
        regroup_interval_s=args.regroup_interval,
        stage_alive=stage_answers_as,
        saved=SavedOrchestration(node.ledger, served_model) if getattr(node, "ledger", None) is not None else None,
        precision=precision,
    )
    if hasattr(node, "on_blamed"):
        node.on_blamed.append(orchestrator.worker_blamed)
    issued = issued if issued is not None else IssuedJobs()
    if hasattr(node, "spec_guard"):
        node.spec_guard = _spec_guard(node, issued)
    if hasattr(node, "defence_source"):
        node.defence_source = StageDefences(lambda worker: stage_url_of(registry, worker),
                                            deadline_s=getattr(args, "defence_seconds", 30.0))
    new_dispatcher = None
    if args.tasks:
        from node.pipeline.model import ModelConfig  # torch: imported where used, to keep it out of start-up

        tasks = load_task_source(args.tasks)
        tokenizer = load_tokenizer(model_dir, ModelConfig.from_dir(model_dir).vocab_size)
        seeds = seeds if seeds is not None else SeedSchedule(_seed_secret(args.seed_secret_file))
        ledger = getattr(node, "ledger", None)
        new_dispatcher = lambda: Dispatcher(  # noqa: E731 (one per term as orchestrator: leadership.py)
            orchestrator,
            tasks,
            tokenizer,
            seeds,
            DispatchPolicy(
                sequences_per_group=args.sequences_per_group,
                wait_for_groups=args.wait_for_groups,
                max_new_tokens=args.max_new_tokens,
                sampling=SamplingParams(
                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens, stop_ids=_stop_ids(model_dir),
                ),
                samples_per_task=getattr(args, "samples_per_task", 1) or 1,
            ),
            on_job=_on_job(node, issued),
            results_path=args.results,
            history_check=_history_check(node, orchestrator.model_id, model_dir, precision),
            verdict_of=_verdict_of(node),
            on_sample=_on_sample(node),
            saved=SavedDispatch(ledger, orchestrator.model_id) if ledger is not None else None,
        )
        log.info("%d tasks from %s", len(tasks), args.tasks)
    leadership = None
    if getattr(node, "ledger", None) is not None and getattr(getattr(node, "config", None), "validator_id", None):
        leadership = Leadership(orchestrator, node.ledger, node.config.validator_id,
                                lease_s=getattr(args, "orchestrator_lease", LEASE_S))
    return Orchestration(orchestrator, new_dispatcher() if new_dispatcher else None, issued, leadership, new_dispatcher)


def _on_job(node: Any, issued: IssuedJobs):
    """Before a job reaches its group: remember it (the spec guard) and tell the node to expect its bundle,
    so a job that never completes (a stage died and the sequence went on as a continuation) is
    soft-invalidated at the deadline: nobody paid, nobody slashed."""
    expect = getattr(node, "expect", None)
    if hasattr(node, "expect_many"):  # jobs issued together are written in one transaction

        async def expect_together(specs) -> list[None]:
            await node.expect_many(list(specs))
            return [None] * len(specs)

        expect = BatchedCalls(expect_together)

    async def on_job(spec) -> None:
        await issued.record(spec)
        if expect is not None:
            await expect(spec)

    return on_job


async def stage_answers_as(url: str, address: str) -> bool:
    """Whether the stage server at `url` answers /health as `address` (within 3 s)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        health = await stage_health(session, url, 3.0)
    return health is not None and str(health.get("address", "")).lower() == address.lower()


def _verdict_of(node: Any):
    """The outcome of a job's verdict in the node's ledger, for the dispatcher (None: a node without one).
    Every finished sequence asks until its verdict comes: asked together, they share one statement."""
    ledger = getattr(node, "ledger", None)
    if ledger is not None and hasattr(ledger, "verdict_outcomes"):

        async def outcomes(job_ids) -> list[str | None]:
            found = await ledger.verdict_outcomes(job_ids)
            return [found.get(hash32(j, "job_id")) for j in job_ids]

        return BatchedCalls(outcomes)
    if not hasattr(node, "job"):
        return None

    async def outcome(job_id: str) -> str | None:
        verdict = ((await node.job(job_id)) or {}).get("verdict")
        return verdict.get("outcome") if verdict else None

    return outcome


def _on_sample(node: Any):
    """Record an accepted sample as a dataset row in the node's ledger, once checked against the bundle the
    validator accepted (node.validator.samples); None for a node without a ledger."""
    ledger = getattr(node, "ledger", None)
    return None if ledger is None else checked_recorder(ledger)


def _spec_guard(node: Any, issued: IssuedJobs):
    """Accept a bundle of a job this orchestrator issued, or one the shared ledger awaits (issued by another
    validator's orchestrator, or by this one before a restart); refuse any other spec (I1)."""

    ledger = getattr(node, "ledger", None)
    awaited = awaited_by_ledger(ledger) if ledger is not None else None

    async def guard(spec) -> str | None:
        reason = await issued.guard(spec)
        if reason is None or (awaited is not None and await awaited(spec) is None):
            return None
        return reason

    return guard


def shape_of_model(model_dir: Path) -> ModelShape:
    """Layer count and bytes per layer (weights as stored, plus KV headroom) read from the safetensors headers."""
    from safetensors import safe_open

    # torch: imported where used, to keep it out of start-up
    from node.pipeline.model import ModelConfig
    from node.pipeline.weights import weight_files

    config = ModelConfig.from_dir(model_dir)
    layer_bytes = [0] * config.num_layers
    edge_bytes = 0
    for path in weight_files(model_dir):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                size = _element_bytes(piece.get_dtype())
                for dim in piece.get_shape():
                    size *= dim
                parts = name.split(".")
                if "layers" in parts:
                    index = int(parts[parts.index("layers") + 1])
                    layer_bytes[index] += size
                else:
                    edge_bytes += size
    per_layer = max(1, int(max(layer_bytes) * KV_HEADROOM))
    return ModelShape(num_layers=config.num_layers, layer_bytes=per_layer, edge_bytes=edge_bytes,
                      head_layers=config.head_layers)


def _element_bytes(dtype: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}.get(dtype.upper(), 4)


def _stop_ids(model_dir: Path) -> tuple[int, ...]:
    # torch: imported where used, to keep it out of start-up
    from node.pipeline.weights import read_generation_defaults

    try:
        eos = read_generation_defaults(model_dir).get("eos_token_id")
    except Exception:
        return ()
    if eos is None:
        return ()
    return tuple(int(t) for t in (eos if isinstance(eos, list) else [eos]))


def _seed_secret(path: Path | None) -> bytes | None:
    if path is not None:
        data = path.read_bytes().strip()
        if len(data) < 16:
            raise ValueError(f"{path}: a seed secret needs at least 16 bytes")
        return data
    value = settings.SEED_SECRET.get()
    if value:
        return bytes.fromhex(value.removeprefix("0x"))
    return None


def _history_check(node: Any, model_id: str, model_dir: Path, precision: str = "fp32"):
    """Check an interrupted job's tokens with the validator's own copy of the model before reusing them."""
    models = getattr(node, "models", None)
    loaded: dict[str, Any] = {}

    async def check(run, sampling) -> int:
        if models is not None and model_id in getattr(models, "ids", ()):
            model = await models.get(model_id, precision)
        else:
            if "model" not in loaded:
                # torch: imported where used, to keep it out of start-up
                from node.pipeline.weights import load_stage
                from node.pipeline.wire import WIRE_DTYPES

                loaded["model"] = await asyncio.to_thread(load_stage, model_dir, dtype=WIRE_DTYPES[precision])
            model = loaded["model"]
        return await asyncio.to_thread(verified_prefix, model, run, sampling, precision)

    return check


def _ledger_stake(node: Any) -> StakeLookup:
    """Stake as the ledger follows it from chain events; when that says too little and the node has a chain,
    the chain itself (a worker that staked a moment ago registers before the ledger has caught up). Reads
    that arrive together share one statement (batched_calls.py): every heartbeat reads its worker's stake."""
    minimum = int(getattr(node.config, "min_stake_wei", 1))
    chain_reads = asyncio.Semaphore(LEDGER_READS)

    async def stakes_in_order(addresses) -> list[int]:
        stakes = await node.stakes_of(list(dict.fromkeys(addresses)))
        lowered = {a.lower(): v for a, v in stakes.items()}
        return [int(stakes.get(a, lowered.get(a.lower(), 0))) for a in addresses]

    read = BatchedCalls(stakes_in_order)

    async def stake_of(address: str) -> int:
        stake = await read(address)
        chain = getattr(node, "chain", None)
        if stake < minimum and chain is not None:
            async with chain_reads:
                stake = int(await asyncio.to_thread(chain.stake_of, address))
        return stake

    return stake_of


def stage_url_of(registry: Registry, worker: str) -> str | None:
    record = registry.get(worker)
    return record.stage_url if record is not None else None
