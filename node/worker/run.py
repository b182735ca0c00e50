"""A stage worker: one staked key serving one stage, signing a receipt for every job it computes.

What `stagewise worker run` does, in order, stopping with one clear message at the first thing that fails
(and undoing what it started, so nothing is left half-done):

1. unlock the keystore (node/wallet.py);
2. ask the validator which models it runs and where its chain is (GET /health: model ids, chain id,
   staking contract, minimum stake; flags override the chain), check that a `--model-dir` holds one of
   those models, and read this key's stake on chain: no stake, or too little, stops here with the amount
   missing and the command that stakes it;
3. start the stage server (node/pipeline) and add this worker's route to it:
   GET /v1/jobs/{job_id}/receipt -> this stage's signed receipt and proofs for that job; the server obeys
   control requests (assign, release, start a job) only when signed by the validator address that GET /health
   names ("validator") AND the staking contract lists as a validator (a URL alone proves nothing), re-read
   when the validator makes us register again (it may have restarted with another key);
4. register with the validator's orchestrator (POST /v1/workers/register, signed), which assigns a stage
   and prepares it on the stage server: the server loads only that stage's layers;
5. keep heartbeating (POST /v1/workers/heartbeat, signed; re-register if the validator forgot us) and log
   the assignment its answer carries (else GET /v1/workers/{address}/assignment);
6. at the end of every job, sign the stage's EIP-712 receipt from what the stage computed; the LAST stage
   collects every other stage's signed receipt and proofs from their workers and submits the bundle
   (POST /v1/bundles) with retries. The job id makes resubmission harmless (I3). A stage that refuses a
   job because its predecessor's activations do not match the proof it signed (I2) signs an EIP-712
   complaint and delivers a bundle holding it, so the validator blames that sender;
7. on SIGTERM/SIGINT: tell the validator (a signed Leave: the orchestrator repairs the group at once, a spare
   taking this stage with the same layers, and continues the in-flight sequences there from their history),
   stop taking jobs, let in-flight sequences finish for a grace period, fail the rest with a log line each,
   finish pending bundle submissions, exit 0.

Signed receipts are also written to `<data dir>/receipts/<address>/<job id>.json`, so a worker that
restarts can still serve them to the stage that assembles the bundle.
"""


from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from node import settings
from node.pipeline.started_jobs import StartedJobs
from node.protocol.bundle import Bundle, SignedStage
from node.protocol.job import JobSpec
from node.protocol.receipts import ReceiptDomain, ReceiptError
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import UNBOUND_VALIDATOR, Capacity, make_heartbeat, make_leave, make_registration
from node.worker.bundle_assembly import assemble_bundle, fetch_peer_stage
from node.worker.config import WorkerConfig
from node.worker.errors import WorkerError, short_error
from node.worker.receipt_book import ReceiptBook, SignedJob, receipt_routes
from node.worker.stake import (
    ChainInfo,
    StakeStatus,
    chain_info,
    controllers_of,
    read_stake,
    read_validator_role,
    unbacked_controller_error,
)
from node.worker.validator_client import ValidatorClient, ValidatorRefused, ValidatorUnreachable

log = logging.getLogger("stagewise.worker")


@dataclass
class WorkerState:
    """What the running worker knows; read by the heartbeat loop and the log."""

    assignment: dict[str, Any] | None = None
    submitted: int = 0
    failed_submissions: int = 0
    pending: set[asyncio.Task] = field(default_factory=set)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
            pass


def started_jobs(address: str) -> StartedJobs:
    """The job ids this worker's stage has started, kept beside its receipts across restarts."""
    directory = receipts_dir(address)
    directory.mkdir(parents=True, exist_ok=True)
    return StartedJobs(directory / "started-jobs.txt")


def receipts_dir(address: str) -> Path:
    return settings.data_dir() / "receipts" / address


class Worker:
    """One running worker: the stage server, the receipt book, registration, heartbeats and submissions."""

    def __init__(self, config: WorkerConfig, key: SigningKey, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.key = key
        self.session = session
        self.validator = ValidatorClient(config.validator_url, session)
        self.state = WorkerState()
        self.book: ReceiptBook | None = None
        self.domain: ReceiptDomain | None = None
        self.server: Any = None
        self.stage_url: str | None = None
        self.model_id: str | None = None  # the model it registers for (check_models): its first the validator runs
        self.controllers: tuple[str, ...] = ()  # the validator addresses whose control requests the stage obeys
        self.chain: ChainInfo | None = None  # where the stake and the validator set live (set by check_stake)

    # ----------------------------------------------------------------- start-up checks

    async def validator_health(self) -> dict[str, Any]:
        """The validator's /health, waiting for it with backoff (1 s doubling to 30 s) for up to
        `validator_wait_s`: a worker started before its validator waits for it, and says so."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.config.validator_wait_s, 1.0
        while True:
            try:
                return await self.validator.health()
            except ValidatorUnreachable as unreachable:
                left = deadline - loop.time()
                if left <= 0:
                    raise WorkerError(f"{unreachable}; gave up after waiting {self.config.validator_wait_s:g} s "
                                      "(--validator-wait)") from None
                log.warning("%s; trying again in %.0f s", unreachable, min(delay, left))
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 30.0)

    async def check_stake(self) -> tuple[StakeStatus, ReceiptDomain]:
        health = await self.validator_health()
        self.controllers = controllers_of(health, self.config.validator_url)
        await self.check_models(health)
        info = chain_info(self.config, health)
        status = await asyncio.to_thread(read_stake, info.rpc_url, info.contract, self.key.address, info.min_stake_wei)
        if info.chain_id is not None and info.chain_id != status.chain_id:
            raise WorkerError(
                f"the validator is on chain {info.chain_id} but {info.rpc_url} is chain {status.chain_id}: check --rpc-url"
            )
        if not status.enough:
            raise WorkerError(status.explain(self.config.keystore))
        # /health only names the validator; the contract says whether it is one (its URL may be a stranger's)
        for controller in self.controllers:
            if not await asyncio.to_thread(read_validator_role, info.rpc_url, info.contract, controller):
                raise unbacked_controller_error(self.config.validator_url, controller, info.contract)
        self.chain = info
        return status, ReceiptDomain(status.chain_id, status.contract)

    # ----------------------------------------------------------------- lifecycle

    async def check_models(self, health: dict[str, Any]) -> None:
        """At least one of our model directories holds a model the validator runs (by model id)."""
        from node.pipeline.weights import model_id  # imports torch: kept out of start-up

        if not self.config.model_dirs:
            raise WorkerError("no model: pass --model-dir DIR (repeatable) or --model smollm2")
        ours = {}
        for directory in self.config.model_dirs:
            if not (Path(directory) / "config.json").is_file():
                raise WorkerError(f"{directory} is not a model directory (no config.json)")
            try:
                ours[await asyncio.to_thread(model_id, directory)] = directory
            except Exception as error:
                raise WorkerError(f"cannot read the model in {directory}: {short_error(error)}") from None
        wanted = health.get("models")
        runs = {str(m).lower() for m in wanted} if isinstance(wanted, list) and wanted else set(ours)
        served = [m for m in ours if m in runs]
        if not served:
            raise WorkerError(
                f"none of this worker's models ({', '.join(sorted(ours))}) is one the validator runs ({', '.join(wanted)})"
            )
        self.model_id = served[0]  # a validator of several models groups workers per model

    async def start(self) -> None:
        """Everything up to a registered worker; on failure, whatever was started is stopped again."""
        status, self.domain = await self.check_stake()
        log.info("%s", status.explain())
        if self.config.layer_tokens_per_s is None:
            self.config = replace(self.config, layer_tokens_per_s=await self.measure_throughput())
        self.book = ReceiptBook(self.key, self.domain, receipts_dir(self.key.address))
        self.server = await start_stage_server(
            self.config, self.key, self._on_stage_result, receipt_routes(self.book), self._on_complaint,
            controllers=self.controllers,
        )
        self.stage_url = self.config.public_url or self.server.url
        try:
            await self.register()
        except BaseException:
            await self.server.stop()
            raise

    async def measure_throughput(self) -> float:
        from node.pipeline.throughput import measure_layer_tokens_per_s  # imports torch: kept out of start-up

        model_dir = self.config.model_dirs[0]
        speed = round(await asyncio.to_thread(measure_layer_tokens_per_s, model_dir, self.config.device), 1)
        log.info("measured %g layer-tokens/s (one layer of %s decoding on %s; --throughput overrides)",
                 speed, Path(model_dir).name, self.config.device)
        return speed

    async def register(self) -> None:
        offered = self._offered_precisions()
        signed = self._registration(offered)
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.config.validator_wait_s, 1.0
        while True:
            try:
                await self.validator.register(signed, timeout_s=self.config.register_timeout_s)
                break
            except ValidatorRefused as refused:  # 503: no validator orchestrates yet, or the stake cannot be read
                if refused.status != 503 or loop.time() + delay > deadline:
                    raise
                log.warning("%s; registering again in %.0f s", refused, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                signed = self._registration(offered)  # a fresh nonce and timestamp
        log.info("registered with %s as %s, stage server %s", self.validator.base_url, self.key.address, self.stage_url)

    def _offered_precisions(self) -> tuple[str, ...]:
        """What this worker offers to compute in (PROTOCOL I8): --precision, else all its device computes."""
        from node.pipeline.devices import DeviceError, supported_precisions  # imports torch: kept out of start-up

        try:
            computes = supported_precisions(self.config.device)
        except DeviceError as error:
            raise WorkerError(f"{error}; pass --device cpu or a device torch lists") from None
        offered = computes if self.config.precisions is None else self.config.precisions
        missing = [p for p in offered if p not in computes]
        if missing:
            raise WorkerError(f"--precision {', '.join(missing)}: {self.config.device} computes "
                              f"{', '.join(computes)} only; offer those")
        return tuple(offered)

    def _registration(self, offered: tuple[str, ...]):
        return make_registration(
            self.key,
            Capacity(self.config.memory_bytes, self.config.layer_tokens_per_s),
            self.config.region,
            self.stage_url,
            # for the validator whose /health named it (the contract backs it) on this chain, and no other
            validator=self.controllers[0] if self.controllers else UNBOUND_VALIDATOR,
            chain_id=self.domain.chain_id if self.domain else 0,
            device=self.config.device,
            precisions=tuple(offered),
            model_id=self.model_id,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat and follow the assignment until `stop` is set, then shut down cleanly."""
        try:
            while not stop.is_set():
                await self._beat()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.config.heartbeat_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.shutdown()

    async def _beat(self) -> None:
        try:
            answer = await self.validator.heartbeat(make_heartbeat(self.key, in_flight=self._in_flight()))
        except ValidatorRefused as refused:
            if refused.code == "not_registered":
                log.warning("the validator forgot this worker (restarted?); registering again")
                await self._refresh_controllers()
                await self.register()
            elif refused.code == "insufficient_stake":
                raise WorkerError(f"stake fell below the validator's minimum: {refused.message}") from None
            else:
                log.warning("heartbeat refused: %s", refused)
            return
        except ValidatorUnreachable as unreachable:
            log.warning("heartbeat: %s (retrying)", unreachable)
            return
        assignment = answer.get("assignment") if isinstance(answer, dict) else None
        if not isinstance(assignment, dict):
            try:
                assignment = await self.validator.assignment(self.key.address)
            except WorkerError as error:
                log.debug("assignment: %s", error)
                return
        if assignment != self.state.assignment:
            self.state.assignment = assignment
            if assignment.get("status") == "assigned":
                log.info(
                    "assigned: group %s stage %s, layers [%s, %s)", assignment.get("group_id"),
                    assignment.get("stage_index"), assignment.get("layer_start"), assignment.get("layer_end"),
                )
            else:
                log.info("no stage for now (%s); waiting for the orchestrator", assignment.get("status"))

    async def _refresh_controllers(self) -> None:
        """A restarted validator may sign with another key (a throwaway one when it runs without a chain)."""
        try:
            controllers = controllers_of(await self.validator.health(), self.config.validator_url)
        except WorkerError as error:
            log.warning("cannot re-read the validator's address: %s", error)
            return
        if controllers != self.controllers:
            for controller in controllers:
                try:
                    backed = await asyncio.to_thread(read_validator_role, self.chain.rpc_url, self.chain.contract, controller)
                except WorkerError as error:
                    log.warning("cannot check the validator's new address on chain, keeping the old one: %s", error)
                    return
                if not backed:
                    log.error("%s; still obeying only %s", unbacked_controller_error(
                        self.config.validator_url, controller, self.chain.contract), ", ".join(self.controllers))
                    return
            log.warning("the validator now signs stage control as %s (was %s)", ", ".join(controllers), ", ".join(self.controllers))
            self.controllers = controllers
            control = getattr(self.server, "control", None)
            if control is not None:
                control.trust(controllers)

    def _in_flight(self) -> int:
        count = getattr(self.server, "in_flight", 0)
        return int(count() if callable(count) else count)

    async def shutdown(self) -> None:
        """Stop taking jobs; give in-flight sequences `grace_s` to finish, fail the rest; deliver bundles."""
        log.info("stopping: %d sequence(s) in flight, %d bundle(s) being delivered", self._in_flight(), len(self.state.pending))
        await self._leave()
        if self.server is not None:
            await self.server.stop(grace_s=self.config.grace_s)
        if self.state.pending:
            done, pending = await asyncio.wait(self.state.pending, timeout=self.config.grace_s)
            for task in pending:
                task.cancel()
                log.error("bundle delivery abandoned at shutdown: %s", task.get_name())
        log.info("stopped: %d bundle(s) delivered, %d failed", self.state.submitted, self.state.failed_submissions)

    async def _leave(self) -> None:
        """Say goodbye (signed), so that the orchestrator repairs our group now rather than after our heartbeat
        times out; it moves the in-flight sequences to the repaired group. Best effort: a validator that does not
        answer finds out from the missing heartbeats."""
        try:
            await self.validator.leave(make_leave(self.key), timeout_s=min(10.0, max(1.0, self.config.grace_s)))
            log.info("told the validator this worker is leaving")
        except ValidatorRefused as refused:
            log.info("leave: %s", refused)  # not registered (any more): nothing to repair
        except WorkerError as error:  # unreachable, or an answer we cannot read
            log.warning("could not tell the validator this worker is leaving: %s", error)

    # ----------------------------------------------------------------- jobs

    def _on_stage_result(self, result: Any) -> None:
        """The stage server finished a job: sign our receipt; the last stage also delivers the bundle."""
        assert self.book is not None
        spec: JobSpec = result.spec
        try:
            signed = self.book.sign(spec, result.stage_index, result.output_token_ids, result.proofs, result.handoffs)
        except (WorkerError, ReceiptError) as error:
            log.error("job %s: not signing: %s", spec.job_id_hex, error)
            return
        log.info("job %s: stage %d signed (%d proofs)", spec.job_id_hex, result.stage_index, len(result.proofs))
        if result.stage_index == len(spec.stages) - 1:
            task = asyncio.get_running_loop().create_task(self._deliver(signed, result.stage_index), name=spec.job_id_hex)
            self.state.pending.add(task)
            task.add_done_callback(self.state.pending.discard)

    def _on_complaint(self, complaint: Any) -> None:
        """Our stage refused a job because the proof it rebuilt from the bytes it received differs from the one
        the sender signed over those bytes (I2): sign the evidence for this chain and deliver it; the validator
        judges it without a model and blames the sender."""
        assert self.domain is not None
        job_id_hex = "0x" + complaint.job_id.hex()
        seq = getattr(self.server, "sequences", {}).get(job_id_hex)
        if seq is None:
            log.error("job %s: complaint about stage %d, but the job is unknown here", job_id_hex, complaint.sender_stage)
            return
        signed = complaint.signed(self.key, self.domain)
        output = tuple(seq.output)[: seq.spec.sampling.max_new_tokens]
        bundle = Bundle(seq.spec, (), output, (signed,))
        log.warning("job %s: stage %d sent activations that do not match its proof; complaint signed", job_id_hex, complaint.sender_stage)
        task = asyncio.get_running_loop().create_task(self._submit(bundle), name=job_id_hex)
        self.state.pending.add(task)
        task.add_done_callback(self.state.pending.discard)

    async def _submit(self, bundle: Bundle) -> None:
        try:
            result = await self.validator.submit_bundle(bundle, attempts=self.config.submit_attempts)
            self.state.submitted += 1
            log.info("job %s: bundle delivered (%s)", bundle.job_id_hex, result.get("status", "accepted"))
        except WorkerError as error:
            self.state.failed_submissions += 1
            log.error("job %s: bundle not delivered: %s", bundle.job_id_hex, error)

    async def _deliver(self, signed: SignedJob, stage_index: int) -> None:
        assert self.domain is not None
        spec = signed.spec
        try:
            urls = await self._stage_urls(spec)

            async def fetch(index: int) -> SignedStage:
                return await fetch_peer_stage(self.session, urls[index], spec.job_id_hex, wait_s=self.config.peer_wait_s)

            bundle = await assemble_bundle(signed, stage_index, fetch, self.domain)
        except WorkerError as error:
            self.state.failed_submissions += 1
            log.error("job %s: bundle not assembled: %s", spec.job_id_hex, error)
            return
        await self._submit(bundle)

    async def _stage_urls(self, spec: JobSpec) -> dict[int, str]:
        known = getattr(self.server, "peer_urls", None)
        urls: dict[str, str] = dict(known() if callable(known) else known or {})
        missing = [s.worker for s in spec.stages if s.worker not in urls and s.worker != self.key.address]
        if missing:
            urls.update(await self.validator.stage_urls())
        result = {}
        for index, stage in enumerate(spec.stages):
            if stage.worker == self.key.address:
                continue
            if stage.worker not in urls:
                raise WorkerError(f"no stage server URL known for stage {index} ({stage.worker})")
            result[index] = urls[stage.worker]
        return result


async def run_worker(
    config: WorkerConfig, key: SigningKey, stop: asyncio.Event | None = None, *, handle_signals: bool = True
) -> None:
    """Start (all checks first), then serve until SIGTERM/SIGINT or `stop`."""
    stop = stop or asyncio.Event()
    if handle_signals:
        install_stop_signals(stop)
    async with aiohttp.ClientSession() as session:
        worker = Worker(config, key, session)
        starting = asyncio.create_task(worker.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # SIGTERM while starting (registration can wait on a model load)
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("stopped before the worker was registered")
            return
        stopping.cancel()
        starting.result()
        await worker.run(stop)


async def start_stage_server(
    config: WorkerConfig,
    key: SigningKey,
    on_result: Callable[[Any], None],
    routes: list[Any],
    on_complaint: Callable[[Any], None] | None = None,
    *,
    controllers: Sequence[str] = (),
) -> Any:
    """Start node/pipeline's stage server with our hooks and route; it loads only the layers of the stage
    the orchestrator assigns it (PUT /v1/assignment, signed by one of `controllers`)."""
    from node.pipeline.server import StageServer  # imports torch: loaded only once the checks have passed

    server = StageServer(
        key, host=config.host, port=config.port, model_dirs=config.model_dirs, device=config.device,
        on_result=on_result, extra_routes=routes, on_complaint=on_complaint, public_url=config.public_url,
        tamper=config.tamper or (config.cheat.tamper() if config.cheat is not None else None), cheat=config.cheat,
        on_loaded=config.cheat.apply if config.cheat is not None else None,
        controllers=controllers, started=started_jobs(key.address), http_limits=config.http_limits,
    )
    try:
        await server.start()
    except OSError as error:
        raise WorkerError(f"cannot listen on {config.host}:{config.port}: {error.strerror or error}") from None
    return server
