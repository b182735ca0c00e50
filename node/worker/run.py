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
7. on SIGTERM/SIGINT: stop taking jobs, let in-flight sequences finish for a grace period, fail the rest
   with a log line each, finish pending bundle submissions, exit 0.

Signed receipts are also written to `<data dir>/receipts/<address>/<job id>.json`, so a worker that
restarts can still serve them to the stage that assembles the bundle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from ledger.amounts import ether_and_wei
from node import settings
from ledger import json_input
from node.http.limits import HttpLimits
from node.protocol.bundle import Bundle, BundleError, SignedStage, check_receipts, check_signers, parse_stage, sign_complaint
from node.protocol.job import JobSpec
from node.pipeline.handoff import INPUTS_ROUTE, ReceivedHandoff
from node.protocol.receipts import ReceiptDomain, ReceiptError, expected_receipt, proofs_digest, sign_receipt
from node.protocol.signing import SigningKey

log = logging.getLogger("stagewise.worker")

RECEIPT_ROUTE = "/v1/jobs/{job_id}/receipt"
T = TypeVar("T")


class WorkerError(Exception):
    """Why the worker cannot start or go on: one line a person can act on."""


class ValidatorUnreachable(WorkerError):
    """No answer from the validator (connection refused, timeout, not HTTP)."""


class ValidatorRefused(WorkerError):
    """The validator answered with a JSON error."""

    def __init__(self, status: int, code: str, message: str, payload: Any = None) -> None:
        super().__init__(f"the validator refused ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.payload = payload


# ------------------------------------------------------------------------------------------------ stake


@dataclass(frozen=True)
class StakeStatus:
    address: str
    staked_wei: int
    required_wei: int
    chain_id: int
    contract: str
    rpc_url: str = ""

    @property
    def missing_wei(self) -> int:
        return max(self.required_wei - self.staked_wei, 0)

    @property
    def enough(self) -> bool:
        return self.staked_wei >= self.required_wei and self.staked_wei > 0

    def explain(self, keystore: Path | str | None = None) -> str:
        if self.enough:
            return f"{self.address} stakes {ether_and_wei(self.staked_wei)} on chain {self.chain_id} (minimum {ether_and_wei(self.required_wei)})"
        have = "no stake" if self.staked_wei == 0 else f"only {ether_and_wei(self.staked_wei)} staked"
        return (
            f"{self.address} has {have} on chain {self.chain_id} (contract {self.contract}); "
            f"{ether_and_wei(max(self.missing_wei, 1))} more is needed (minimum {ether_and_wei(self.required_wei)}). "
            f"Stake it with: stagewise stake {max(self.missing_wei, 1)}wei --keystore {keystore or 'KEYSTORE'}"
            f" --rpc-url {self.rpc_url or 'RPC_URL'} --contract {self.contract}"
        )


def read_stake(rpc_url: str, contract: str, address: str, required_wei: int) -> StakeStatus:
    """The key's active stake on the staking contract (blocking; web3). WorkerError when the chain cannot
    be reached or holds no such contract."""
    return _read_contract(
        rpc_url, contract,
        lambda chain: StakeStatus(address, chain.stake_of(address), required_wei, chain.chain_id, chain.address, rpc_url),
    )


def read_validator_role(rpc_url: str, contract: str, address: str) -> bool:
    """Whether `address` is in the staking contract's validator set (blocking; web3)."""
    return _read_contract(rpc_url, contract, lambda chain: chain.is_validator(address))


def _read_contract(rpc_url: str, contract: str, read: Callable[[Any], T]) -> T:
    """`read(chain)` on a fresh connection; every failure is one WorkerError that names the chain."""
    from ledger.chain.client import ChainClient
    from ledger.chain.errors import ChainError

    try:
        return read(ChainClient.connect(rpc_url, address=contract, request_timeout=10.0))
    except ChainError as error:
        raise WorkerError(f"chain at {rpc_url}: {error}") from None
    except Exception as error:  # requests/web3 connection errors come in many classes
        raise WorkerError(f"cannot reach the chain at {rpc_url}: {_short(error)}") from None


def unbacked_controller_error(validator_url: str, address: str, contract: str) -> WorkerError:
    return WorkerError(
        f"the validator at {validator_url} signs stage control as {address}, which is not a validator on the staking "
        f"contract {contract}: the contract would refuse its slashes and anchors, and a stage server obeys only a "
        "validator the contract backs (check --validator, or have the contract's owner add that address)"
    )


# --------------------------------------------------------------------------------- validator client


class ValidatorClient:
    """The worker's side of the validator's HTTP API (routes in INTERFACES.md)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def request(
        self, method: str, path: str, body: Any = None, *, data: bytes | None = None, timeout_s: float | None = None
    ) -> Any:
        url = self.base_url + path
        timeout = self.timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        kwargs: dict[str, Any] = {"timeout": timeout}
        if data is not None:
            kwargs["data"] = data
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        try:
            async with self.session.request(method, url, **kwargs) as response:
                raw = await json_input.read_bytes(response.content)
                status = response.status
        except asyncio.TimeoutError:
            raise ValidatorUnreachable(
                f"the validator at {self.base_url} did not answer {method} {path} within {timeout.total:.0f}s"
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            raise ValidatorUnreachable(f"cannot reach the validator at {self.base_url}: {_short(error)}") from None
        except json_input.JsonInputError as error:
            raise ValidatorUnreachable(f"{url} answered {error}; is {self.base_url} a stagewise validator?") from None
        try:
            payload = json_input.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status >= 400:
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                raise ValidatorRefused(status, str(error.get("code", "error")), str(error.get("message", "")), payload)
            raise ValidatorRefused(status, "http_error", raw[:200].decode("utf-8", "replace"), payload)
        if payload is None and raw:
            raise ValidatorUnreachable(f"{url} did not answer JSON; is {self.base_url} a stagewise validator?")
        return payload

    async def health(self) -> dict[str, Any]:
        try:
            payload = await self.request("GET", "/health")
        except ValidatorRefused as refused:
            if refused.status == 503 and isinstance(refused.payload, dict):  # degraded still says where its chain is
                log.warning("the validator reports itself degraded: %s", refused.payload.get("ledger_error", "no reason given"))
                return refused.payload
            raise
        return payload if isinstance(payload, dict) else {}

    async def register(self, signed: Any, timeout_s: float = 600.0) -> Any:
        """Registering may take long: the orchestrator prepares a new group (every stage loads its layers)
        before it answers."""
        return await self.request("POST", "/v1/workers/register", signed.to_json(), timeout_s=timeout_s)

    async def heartbeat(self, signed: Any) -> Any:
        return await self.request("POST", "/v1/workers/heartbeat", signed.to_json())

    async def assignment(self, address: str) -> dict[str, Any]:
        return await self.request("GET", f"/v1/workers/{address}/assignment")

    async def stage_urls(self) -> dict[str, str]:
        """Worker address -> stage server URL, from GET /v1/groups."""
        payload = await self.request("GET", "/v1/groups")
        workers = payload.get("workers", []) if isinstance(payload, dict) else []
        return {w["address"]: w["stage_url"] for w in workers if isinstance(w, dict) and "stage_url" in w}

    async def submit_bundle(
        self, bundle: Bundle, attempts: int = 8, first_delay_s: float = 0.5, max_delay_s: float = 30.0
    ) -> dict[str, Any]:
        """POST the bundle until the validator has it. Retries only what a retry can fix (unreachable, 5xx,
        429); a 409 (already recorded) counts as delivered; other refusals are final."""
        body = bundle.to_json().encode()
        delay = first_delay_s
        for attempt in range(1, attempts + 1):
            try:
                result = await self.request("POST", "/v1/bundles", data=body)
                return result if isinstance(result, dict) else {}
            except ValidatorRefused as refused:
                if refused.status == 409 and refused.code == "duplicate_bundle":
                    return {"job_id": bundle.job_id_hex, "status": "duplicate"}
                if refused.status < 500 and refused.status != 429:
                    raise
                problem: WorkerError = refused
            except ValidatorUnreachable as unreachable:
                problem = unreachable
            if attempt == attempts:
                raise WorkerError(f"bundle {bundle.job_id_hex} not delivered after {attempts} attempts: {problem}")
            log.warning("bundle %s: attempt %d/%d failed (%s); retrying in %.1fs", bundle.job_id_hex, attempt, attempts, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
        raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------- receipts


@dataclass(frozen=True)
class SignedJob:
    """A receipt this worker signed, with what it needs to assemble the bundle if it is the last stage."""

    spec: JobSpec
    stage: SignedStage
    output_token_ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.spec.job_id_hex,
            "spec": self.spec.to_dict(),
            "stage": self.stage.to_json(),
            "output_token_ids": list(self.output_token_ids),
        }


class ReceiptBook:
    """Signs this worker's receipts and keeps them by job id: the latest `keep_in_memory` in memory, and
    all of them on disk when given a folder (files older than `keep_days` are removed on start).

    It also keeps the rows the stage received for each job, with the claims its predecessor signed over
    them: the stage's defence if the validator's replay blames it (PROTOCOL I2). On disk beside the receipt
    when given a folder (`{job}.inputs.json`), else the latest `keep_in_memory` jobs' in memory."""

    def __init__(
        self,
        key: SigningKey,
        domain: ReceiptDomain,
        directory: Path | None = None,
        *,
        keep_in_memory: int = 4096,
        keep_days: float = 14.0,
    ) -> None:
        self.key = key
        self.domain = domain
        self.directory = directory
        self.keep_in_memory = keep_in_memory
        self._jobs: dict[str, SignedJob] = {}  # insertion-ordered: the oldest go first
        self._inputs: dict[str, dict[str, Any]] = {}  # without a folder: the defences, the oldest first
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            cutoff = time.time() - keep_days * 86400
            for path in directory.glob("0x*.json"):
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)

    def sign(
        self, spec: JobSpec, stage_index: int, output_token_ids: Sequence[int], proofs: Sequence[bytes],
        handoffs: Sequence[ReceivedHandoff] = (),
    ) -> SignedJob:
        """Sign the one receipt the spec, output, proofs and received handoffs imply, after checking this
        stage is ours. The handoff claims are kept with it (the bundle needs them if the previous stage's
        receipt names other proofs than it handed over)."""
        if not 0 <= stage_index < len(spec.stages):
            raise WorkerError(f"job {spec.job_id_hex}: no stage {stage_index} in a {len(spec.stages)}-stage job")
        if spec.stages[stage_index].worker != self.key.address:
            raise WorkerError(
                f"job {spec.job_id_hex}: stage {stage_index} is assigned to {spec.stages[stage_index].worker}, not to us"
            )
        received = tuple(replace(handoff, rows=b"") for handoff in handoffs)
        receipt = expected_receipt(spec, stage_index, output_token_ids, proofs,
                                   received_proofs=[handoff.claim.proof for handoff in received])
        signed = SignedJob(
            spec,
            SignedStage(receipt, sign_receipt(self.key, receipt, self.domain), tuple(proofs), received),
            tuple(output_token_ids),
        )
        if handoffs:  # the defence first: a receipt that is out never lacks the rows behind it
            defence = {"job_id": spec.job_id_hex, "stage_index": stage_index,
                       "handoffs": [handoff.to_json() for handoff in handoffs]}
            if self.directory is None:
                self._inputs[spec.job_id_hex] = defence
                while len(self._inputs) > self.keep_in_memory:
                    del self._inputs[next(iter(self._inputs))]
            self._write(f"{spec.job_id_hex}.inputs.json", defence)
        self._keep(spec.job_id_hex, signed)
        self._write(f"{spec.job_id_hex}.json", signed.to_json())
        return signed

    def inputs(self, job_id_hex: str) -> dict[str, Any] | None:
        """The rows this stage received for the job, as the validator asks for them (None if not kept)."""
        job_id_hex = job_id_hex.lower()
        if self.directory is None:
            return self._inputs.get(job_id_hex)
        path = self.directory / f"{job_id_hex}.inputs.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _write(self, name: str, document: dict[str, Any]) -> None:
        if self.directory is not None:
            path = self.directory / name
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(document))
            os.replace(tmp, path)

    def get(self, job_id_hex: str) -> SignedJob | None:
        job_id_hex = job_id_hex.lower()
        found = self._jobs.get(job_id_hex)
        if found is None and self.directory is not None:
            path = self.directory / f"{job_id_hex}.json"
            if path.exists():
                found = _parse_signed_job(json.loads(path.read_text()))
                self._keep(job_id_hex, found)
        return found

    def _keep(self, job_id_hex: str, signed: SignedJob) -> None:
        self._jobs[job_id_hex] = signed
        while len(self._jobs) > self.keep_in_memory:
            del self._jobs[next(iter(self._jobs))]

    def __len__(self) -> int:
        return len(self._jobs)


def _parse_signed_job(data: dict[str, Any]) -> SignedJob:
    spec = JobSpec.from_dict(data["spec"])
    return SignedJob(spec, parse_signed_stage(data["stage"]), tuple(data["output_token_ids"]))


def parse_signed_stage(data: Any) -> SignedStage:
    """A peer's stage entry (same shape as in a bundle); BundleError when malformed."""
    return parse_stage(data)


def receipt_routes(book: ReceiptBook) -> list[Any]:
    """The worker's own routes on its stage server: GET /v1/jobs/{job_id}/receipt, and /inputs (the rows its
    stage received, its defence when the validator's replay blames it)."""
    from aiohttp import web

    def job_id_of(request: web.Request) -> str | None:
        job_id = request.match_info["job_id"]
        return job_id if job_id.startswith("0x") and len(job_id) == 66 else None

    async def get_receipt(request: web.Request) -> web.Response:
        if (job_id := job_id_of(request)) is None:
            return _error(400, "bad_job_id", "a job id is 0x and 64 hex digits")
        signed = book.get(job_id)
        if signed is None:
            return _error(404, "unknown_job", f"no receipt for job {job_id} (yet)")
        return web.json_response(signed.to_json())

    async def get_inputs(request: web.Request) -> web.Response:
        if (job_id := job_id_of(request)) is None:
            return _error(400, "bad_job_id", "a job id is 0x and 64 hex digits")
        inputs = await asyncio.to_thread(book.inputs, job_id)
        if inputs is None:
            return _error(404, "unknown_job", f"no received rows kept for job {job_id}")
        return web.json_response(inputs)

    return [web.get(RECEIPT_ROUTE, get_receipt), web.get(INPUTS_ROUTE, get_inputs)]


def _error(status: int, code: str, message: str):
    from aiohttp import web

    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# --------------------------------------------------------------------------------- bundle assembly


StageFetcher = Callable[[int], Awaitable[SignedStage]]


async def fetch_peer_stage(
    session: aiohttp.ClientSession, stage_url: str, job_id_hex: str, *, wait_s: float = 30.0, poll_s: float = 0.2
) -> SignedStage:
    """A peer stage's signed receipt for a job, waiting up to `wait_s` for it to finish signing."""
    url = stage_url.rstrip("/") + RECEIPT_ROUTE.format(job_id=job_id_hex)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last = "no answer"
    while True:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status == 200:
                    return parse_signed_stage((await json_input.read_json(response))["stage"])
                last = f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as error:
            last = _short(error)
        if loop.time() >= deadline:
            raise WorkerError(f"no signed receipt for job {job_id_hex} from {stage_url} within {wait_s:.0f}s ({last})")
        await asyncio.sleep(poll_s)


async def assemble_bundle(own: SignedJob, own_index: int, fetch: StageFetcher, domain: ReceiptDomain) -> Bundle:
    """Our signed stage plus every other stage's, fetched concurrently, checked as the validator will."""
    spec = own.spec
    others = [i for i in range(len(spec.stages)) if i != own_index]
    fetched = dict(zip(others, await asyncio.gather(*(fetch(i) for i in others))))
    fetched[own_index] = own.stage
    stages = [fetched[i] for i in range(len(spec.stages))]
    for i in range(1, len(stages)):  # the claims a stage received travel only where its inputs are in question
        if stages[i].receipt.inputs_digest == proofs_digest(stages[i - 1].proofs):
            stages[i] = replace(stages[i], received=())
    bundle = Bundle(spec, tuple(stages), own.output_token_ids)
    try:
        check_receipts(bundle)
        check_signers(bundle, domain)
    except BundleError as error:
        raise WorkerError(f"bundle {spec.job_id_hex} does not hold together: {error}") from None
    return bundle


# ----------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class WorkerConfig:
    keystore: Path
    validator_url: str
    password_file: Path | None = None
    rpc_url: str | None = None
    contract: str | None = None
    min_stake_wei: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    public_url: str | None = None
    memory_bytes: int = 8 << 30
    layer_tokens_per_s: float | None = 1000.0
    """What the orchestrator splits layers by; None: measured at start (node/pipeline/throughput.py)."""
    region: str = "local"
    model_dirs: tuple[Path, ...] = ()
    device: str = "cpu"
    heartbeat_s: float = 5.0
    grace_s: float = 30.0
    submit_attempts: int = 14
    """Backoff 0.5 s doubling to 30 s: 14 attempts span about 6 minutes, inside the validator's default
    10-minute bundle deadline (after which the job is soft-invalidated and the bundle no longer pays)."""
    peer_wait_s: float = 60.0
    register_timeout_s: float = 600.0
    validator_wait_s: float = 600.0
    """How long a starting worker waits for an unreachable validator before it gives up."""
    tamper: Any = None
    """node.pipeline.engine.Tamper: changes what this stage SENDS after its honest proof was built. Only for
    tests; never set by `stagewise worker run`."""
    cheat: Any = None
    """node.worker.cheats.Cheat: changes the stage's weights once loaded or lies in its handoffs (`--cheat`, the
    devnet's cheater)."""
    http_limits: HttpLimits = HttpLimits()
    """What one client may cost the stage server (node/http/limits.py)."""


@dataclass(frozen=True)
class ChainInfo:
    rpc_url: str
    chain_id: int | None
    contract: str
    min_stake_wei: int


def chain_info(config: WorkerConfig, health: dict[str, Any]) -> ChainInfo:
    """Where the stake lives: flags first, then what the validator's /health says about its chain."""
    chain = health.get("chain") if isinstance(health.get("chain"), dict) else {}
    rpc_url = config.rpc_url or chain.get("rpc_url")
    contract = config.contract or chain.get("staking_contract") or chain.get("contract")
    if not rpc_url:
        raise WorkerError("no chain to check the stake on: pass --rpc-url (the validator does not publish one)")
    if not contract:
        raise WorkerError("no staking contract: pass --contract (the validator does not publish one)")
    minimum = config.min_stake_wei
    if minimum is None:
        minimum = int(health.get("min_stake_wei") or chain.get("min_stake_wei") or 1)
    chain_id = chain.get("chain_id")
    return ChainInfo(rpc_url, int(chain_id) if chain_id is not None else None, contract, minimum)


def controllers_of(health: dict[str, Any], validator_url: str) -> tuple[str, ...]:
    """The address whose signed control requests our stage server obeys: the validator's (GET /health)."""
    from eth_utils import is_address, to_checksum_address

    address = health.get("validator")
    if not (isinstance(address, str) and is_address(address)):
        raise WorkerError(
            f"the validator at {validator_url} names no address in GET /health (\"validator\": {address!r}), so the "
            "stage server could not tell its control requests from a stranger's; run the validator with its key"
        )
    return (to_checksum_address(address),)


@dataclass
class WorkerState:
    """What the running worker knows; read by the heartbeat loop and the log."""

    assignment: dict[str, Any] | None = None
    submitted: int = 0
    failed_submissions: int = 0
    pending: set[asyncio.Task] = field(default_factory=set)


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
            pass


def started_jobs(address: str) -> Any:
    """The job ids this worker's stage has started, kept beside its receipts across restarts."""
    from node.pipeline.started_jobs import StartedJobs

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
        from node.pipeline.weights import model_id

        if not self.config.model_dirs:
            raise WorkerError("no model: pass --model-dir DIR (repeatable) or --model smollm2")
        ours = {}
        for directory in self.config.model_dirs:
            if not (Path(directory) / "config.json").is_file():
                raise WorkerError(f"{directory} is not a model directory (no config.json)")
            try:
                ours[await asyncio.to_thread(model_id, directory)] = directory
            except Exception as error:
                raise WorkerError(f"cannot read the model in {directory}: {_short(error)}") from None
        wanted = health.get("models")
        if isinstance(wanted, list) and wanted and not set(ours) & {str(m).lower() for m in wanted}:
            raise WorkerError(
                f"none of this worker's models ({', '.join(sorted(ours))}) is one the validator runs ({', '.join(wanted)})"
            )

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
        from node.pipeline.throughput import measure_layer_tokens_per_s

        model_dir = self.config.model_dirs[0]
        speed = round(await asyncio.to_thread(measure_layer_tokens_per_s, model_dir, self.config.device), 1)
        log.info("measured %g layer-tokens/s (one layer of %s decoding on %s; --throughput overrides)",
                 speed, Path(model_dir).name, self.config.device)
        return speed

    async def register(self) -> None:
        from node.protocol.worker_messages import UNBOUND_VALIDATOR, Capacity, make_registration

        signed = make_registration(
            self.key,
            Capacity(self.config.memory_bytes, self.config.layer_tokens_per_s),
            self.config.region,
            self.stage_url,
            # for the validator whose /health named it (the contract backs it) on this chain, and no other
            validator=self.controllers[0] if self.controllers else UNBOUND_VALIDATOR,
            chain_id=self.domain.chain_id if self.domain else 0,
        )
        await self.validator.register(signed, timeout_s=self.config.register_timeout_s)
        log.info("registered with %s as %s, stage server %s", self.config.validator_url, self.key.address, self.stage_url)

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
        from node.protocol.worker_messages import make_heartbeat

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
        if self.server is not None:
            await self.server.stop(grace_s=self.config.grace_s)
        if self.state.pending:
            done, pending = await asyncio.wait(self.state.pending, timeout=self.config.grace_s)
            for task in pending:
                task.cancel()
                log.error("bundle delivery abandoned at shutdown: %s", task.get_name())
        log.info("stopped: %d bundle(s) delivered, %d failed", self.state.submitted, self.state.failed_submissions)

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
        signed = sign_complaint(self.key, self.domain, complaint)
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
    from node.pipeline.server import StageServer

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
