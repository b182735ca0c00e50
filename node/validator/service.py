"""The validator node: what the API calls, and the loops that validate, close epochs and reach the chain.

One `ValidatorNode` per process. Its state lives in the ledger (several processes may share one), so a
node can be killed at any point: a bundle is stored before the API answers, a claimed job is taken again
after the claim's lease, and a verdict is written in one transaction with its journal entries and the
chain transactions it owes (outbox), which are sent afterwards, exactly once (outbox.py).

Loops started by `start()` (each a task; `stop()` cancels them):
- validation (`validators` of them): claim a job, replay it in a thread, decide, commit;
- deadlines (deadlines.py): soft-invalidate issued jobs whose bundle did not arrive in time;
- epochs (epochs.py): close an epoch every `epoch_seconds` or `epoch_entries` entries, owe its anchor;
- outbox (outbox.py): send owed slashes and anchors, retry while the chain is unreachable;
- chain sync (ledger/chain/sync.py): follow staking events into the ledger's worker stakes and journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from ledger.chain.sync import ChainSync
from ledger.models import JOB_DONE, JOB_PENDING, Job
from ledger.models import Verdict as VerdictRow
from ledger.models import Worker
from ledger.store import Ledger
from node.http.json_errors import ApiError
from node.protocol.bundle import Bundle
from node.protocol.job import JobSpec
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.validator import insight
from node.validator.config import ValidatorConfig
from node.validator.deadlines import expect, expect_many, run_deadlines
from node.validator.drift import add_to_running_tests, flags_json, stages_to_ask
from node.validator.epochs import run_epochs
from node.validator.evidence import Evidence, evidence_hash
from node.validator.handoff_faults import findings_without_replay, handoff_faults
from node.validator.intake import IntakeWriter, authenticate, read_bundle
from node.validator.metrics import ValidatorMetrics
from node.validator.outbox import run_outbox
from node.validator.queue import ClaimedJob, JobQueue, utcnow
from node.validator.replay import findings_of, skipped_findings
from node.validator.replay_models import ReplayModels
from node.validator.rotation import LatestEpochClock
from node.validator.settle import settle
from node.validator.spot_check import is_replayed
from node.validator.verdict import Outcome, Reason, Verdict, decide

log = logging.getLogger(__name__)

INTAKE_CPU_SLOTS = 2  # bundles parsed or authenticated at once; more wait their turn
INLINE_PARSE_BYTES = 64 << 10  # smaller bodies are parsed on the event loop (a typical bundle is ~6 KB)
STORED_JOBS_KEPT = 100_000  # job ids intake remembers to refuse a resubmission before its signature work

STATUS_NAMES = {JOB_PENDING: "queued", "validating": "validating", JOB_DONE: "done", "awaiting": "awaiting_bundle"}
SpecGuard = Callable[[JobSpec], Awaitable[str | None]]
DefenceSource = Callable[..., Awaitable[tuple[Any, ...] | None]]  # (spec, stage, byte limit, deadline_s=None)
# Verdicts a receiving stage may answer with the rows it received: its proofs (per chunk or over the job), its
# sampling, or its handoff.
AUDIT_DEADLINE_S = 5.0  # how long a passing low-precision job waits for stage 1's received rows (handoff audit)
DEFENSIBLE = (Reason.PROOF, Reason.JOB_FIGURES, Reason.SAMPLING, Reason.ALTERED_HANDOFF)


def defence_limit(spec: JobSpec, model: Any) -> int:
    """The most bytes an honest defence of this job can take: every position's row in fp32, as hex, and room."""
    rows = len(spec.prompt_token_ids) + spec.sampling.max_new_tokens
    return rows * model.config.hidden_size * 4 * 2 + rows * 1024 + (1 << 16)


class ValidatorNode:
    def __init__(
        self,
        config: ValidatorConfig,
        ledger: Ledger,
        *,
        domain: ReceiptDomain,
        models: ReplayModels,
        chain: Any = None,
        chain_key: SigningKey | None = None,
        rpc_url: str | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.domain = domain
        self.models = models
        self.chain = chain
        self.chain_key = chain_key
        self.rpc_url = rpc_url  # what workers are told (GET /health) to reach the chain
        self.metrics = ValidatorMetrics()
        self.epoch_clock = LatestEpochClock()  # how long the chain has sat at its latest epoch (rotation.py)
        self.queue = JobQueue(ledger.write_engine, config.validator_id, config.claim_lease_seconds)
        self.intake = IntakeWriter(ledger, self.stakes_of, config.min_stake_wei)
        self._intake_slots = asyncio.Semaphore(INTAKE_CPU_SLOTS)
        self._stored_jobs: dict[str, None] = {}  # job ids whose bundle is in, newest last (intake's cheap 409)
        # Set by orchestration: refuse a spec the orchestrator never issued (a reason string) or accept (None).
        self.spec_guard: SpecGuard | None = None
        # Told of every blamed worker once its verdict is committed (orchestration evicts it): (worker, reason).
        self.on_blamed: list[Callable[[str, str], Awaitable[None]]] = []
        # Set by orchestration (it knows the stage servers): the rows an accused stage received, or None.
        self.defence_source: DefenceSource | None = None
        self.wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._started = time.monotonic()

    @property
    def address(self) -> str | None:
        return self.chain_key.address if self.chain_key else None

    # ------------------------------------------------------------------ intake

    async def submit_bundle(self, body: bytes) -> dict[str, Any]:
        """Intake (intake.py), cheapest refusal first: parse (off the loop), issued (the spec guard), not
        already stored by this node (in memory), then signatures (off the loop), then stake and the write. At most `_intake_slots` bundles use a
        CPU at once, so a flood of bundles queues instead of starving /health and the verdicts."""
        if len(body) <= INLINE_PARSE_BYTES:  # a few milliseconds at most: not worth a thread hop
            read = read_bundle(body, vocab_sizes=self.models.vocab_sizes, precisions=self.models.precisions)
        else:
            async with self._intake_slots:
                read = await asyncio.to_thread(read_bundle, body, vocab_sizes=self.models.vocab_sizes,
                                             precisions=self.models.precisions)
        if self.spec_guard is not None:
            reason = await self.spec_guard(read.bundle.spec)
            if reason:
                raise ApiError(403, "unassigned_job", reason)
        if read.job_id in self._stored_jobs:  # the write refuses any other duplicate, after the signatures
            raise ApiError(409, "duplicate_bundle", f"job {read.job_id} was already submitted; nothing changed")
        async with self._intake_slots:
            admitted = await asyncio.to_thread(authenticate, read, self.domain)
        bundle = admitted.bundle
        stored = await self.intake.store(admitted)
        self._stored_jobs[read.job_id] = None
        while len(self._stored_jobs) > STORED_JOBS_KEPT:
            del self._stored_jobs[next(iter(self._stored_jobs))]
        if not stored:
            raise ApiError(409, "duplicate_bundle", f"job {admitted.job_id} was already submitted; nothing changed")
        self.metrics.bundles_queued.inc()
        self.wake.set()
        log.debug("bundle for job %s queued (%d stages)", admitted.job_id, len(bundle.stages))
        return {"job_id": admitted.job_id, "status": "queued"}

    async def expect(self, spec: JobSpec) -> bool:
        """The orchestrator issued this job (call before any worker sees it): without a complete bundle
        within `bundle_deadline_seconds` it is soft-invalidated (deadlines.py)."""
        return await expect(self, spec)

    async def expect_many(self, specs: list[JobSpec]) -> None:
        """`expect` for many jobs, in one transaction."""
        await expect_many(self, specs)

    async def stakes_of(self, addresses: list[str]) -> dict[str, int]:
        """Stakes as the ledger follows them from chain events."""
        async with self.ledger.reading() as conn:
            rows = (await conn.execute(select(Worker.address, Worker.stake).where(Worker.address.in_(addresses)))).all()
        return {row.address: row.stake for row in rows}

    # ------------------------------------------------------------------ validation

    async def validate_next(self, *, reclaim_own: bool = False) -> str | None:
        """Validate one job if there is one; returns its id (None when the queue is empty)."""
        claimed = await self.queue.claim(reclaim_own=reclaim_own)
        if claimed is None:
            return None
        try:
            verdict, evidence = await self._judge(claimed)
        except Exception as error:  # not the bundle's fault (it passed intake): give the job back
            log.exception("validation of %s failed; released for another try", claimed.job_id)
            await self.queue.release(claimed.job_id, f"{type(error).__name__}: {error}")
            raise
        await self._commit(claimed, verdict, evidence)
        return claimed.job_id

    async def _judge(self, claimed: ClaimedJob) -> tuple[Verdict, Evidence]:
        bundle = Bundle.from_json(claimed.bundle_json)
        spec = bundle.spec
        faults = await asyncio.to_thread(handoff_faults, bundle)  # pure, no model: complaints, equivocation (I2)
        # A bundle whose handoff evidence convicts someone is always judged in full, never sampled out.
        replayed = bool(faults) or is_replayed(bundle.job_id, self.config.sample_secret, self.config.sample_rate)
        figures: dict[str, Any] = {}
        defences: dict[int, tuple[Any, ...]] = {}
        if bundle.complaints:
            # The receiver refused the job (I2): its evidence blames the sender or itself; nobody is paid.
            findings = findings_without_replay(bundle, faults)
            verdict = decide(findings, self.config.tariff)
            replayed = False
        elif not replayed:
            findings = skipped_findings(spec, bundle.output_token_ids)
            verdict = decide(findings, self.config.tariff)
            self.metrics.sampled_out.inc()
        else:
            model = await self.models.get(spec.model_id, spec.precision)  # I8: replayed as declared
            proofs = [stage.proofs for stage in bundle.stages]
            asked: set[int] = set()
            checked: set[int] = set()  # asked for their rows without being accused (the audit, the cross-job test)
            withheld: set[int] = set()  # of those, the ones that did not hand them in
            limit = defence_limit(spec, model)
            while True:
                report = await asyncio.to_thread(findings_of, model, spec, bundle.output_token_ids, proofs, faults, defences)
                self.metrics.replay_seconds.observe(report.seconds)
                findings, figures = report.findings, report.figures
                verdict = decide(findings, self.config.tariff)
                accused = verdict.blamed_stage
                if self.defence_source is None:
                    break
                if accused is not None:
                    # A receiving stage blamed for what it computed may have computed honestly on inputs its
                    # predecessor altered where the proofs do not look (I2): the verdict waits for its defence.
                    if verdict.reason not in DEFENSIBLE or accused == 0 or accused in asked:
                        break  # stage 0 received nothing: it has no defence
                    asked.add(accused)
                    handed = await self.defence_source(spec, accused, limit)
                    if handed is None:
                        break  # nothing new to judge: the verdict stands
                    log.info("job %s: stage %d handed in its %d received chunks as its defence", spec.job_id_hex,
                             accused, len(handed))
                    defences[accused] = handed
                    continue
                # A job that would pass. In low precision the proofs can miss what stage 0 embedded (a changed prompt
                # token, docs/verification.md): stage 1's received rows are asked for on every such job (the handoff
                # audit). The cross-job test counts only figures of a stage's own (node/validator/drift.py): a stage
                # whose figures from the tokens lean towards a cheat is asked for the rows it received.
                wanted = [1] if 1 not in asked and self._audits_first_handoff(spec) else []
                async with self.ledger.reading() as conn:
                    wanted += [s for s in await stages_to_ask(conn, spec, figures) if s not in asked and s not in wanted]
                handed_in = False
                for stage in wanted:  # not accused: a worker gone since the job does not hold the verdict for long
                    asked.add(stage)
                    checked.add(stage)
                    handed = await self.defence_source(spec, stage, limit, deadline_s=AUDIT_DEADLINE_S)
                    if handed is None:
                        withheld.add(stage)
                        continue
                    log.info("job %s: stage %d handed in its %d received chunks (%s)", spec.job_id_hex, stage,
                             len(handed), "handoff audit" if stage == 1 else "cross-job test")
                    defences[stage] = handed
                    handed_in = True
                if not handed_in:
                    break
            # A stage asked for its rows that did not hand them in is judged on the figures the validator has.
            figures["rows_withheld"] = sorted(withheld)
            # Only defences that held are evidence; rows asked of stages nobody accused only when the job was not
            # accepted (they convicted someone): an accepted job's verdict stands without them, and they would only
            # weigh on the ledger.
            defences = {stage: handed for stage, handed in defences.items()
                        if (figures.get("defences") or {}).get(str(stage), {}).get("valid")
                        and not (verdict.outcome is Outcome.ACCEPTED and stage in checked)}
        evidence = Evidence(
            model_id=spec.model_id,
            bundle=bundle.to_dict(),
            tariff=self.config.tariff,
            findings=findings,
            figures=figures,
            verdict=verdict,
            replayed=replayed,
            defences=defences,
        )
        return verdict, evidence

    def _audits_first_handoff(self, spec: JobSpec) -> bool:
        """Whether a job that passes is held until stage 1 hands in the rows stage 0 sent it: low-precision jobs of
        several stages, when stages can be asked (an orchestrating validator)."""
        return self.defence_source is not None and spec.precision != "fp32" and len(spec.stages) > 1

    async def _commit(self, claimed: ClaimedJob, verdict: Verdict, evidence: Evidence) -> None:
        spec = JobSpec.from_dict(evidence.bundle["spec"])
        job_id = claimed.job_id
        digest = "0x" + evidence_hash(evidence).hex()
        stored = {k: v for k, v in evidence.to_dict().items() if k != "bundle"}
        stored["evidence_hash"] = digest
        blamed_figures = None
        if verdict.blamed_stage is not None:
            blamed_figures = (evidence.figures.get("stages") or [None] * len(spec.stages))[verdict.blamed_stage]
        settlement = settle(verdict, spec, digest, work_units=evidence.findings.work_units, blamed_figures=blamed_figures)
        async with self.ledger.transaction() as tx:
            if not await self.queue.finish(tx.conn, job_id):
                log.warning("job %s: our claim lapsed and another validator took it; verdict dropped", job_id)
                return
            written = await tx.record_verdict(
                job_id,
                verdict.outcome.value,
                blamed_stage=verdict.blamed_stage,
                reason=verdict.reason.value if verdict.reason else None,
                figures=stored,
                validator=self.address,
            )
            if not written:
                log.warning("job %s already has a verdict; nothing more written", job_id)
                return
            await tx.append(list(settlement.entries))
            for order in settlement.orders:
                await tx.enqueue(order.kind, order.key, order.payload)
            drifted = None
            if verdict.accepted and evidence.replayed:  # the cross-job test (I8): this job counts once, here
                drifted = await add_to_running_tests(tx.conn, spec, job_id, evidence.figures, int(time.time() * 1000))
        self.metrics.verdicts.labels(verdict.outcome.value, verdict.reason.value if verdict.reason else "").inc()
        self.metrics.verdict_latency.observe((utcnow() - _aware(claimed.received_at)).total_seconds())
        slash_payload = settlement.slashed
        if slash_payload is not None:
            self.metrics.slashes.inc()
            await self._evict(job_id, slash_payload["worker"], verdict.reason.value)
        if drifted is not None:
            log.warning("job %s: %s's figures at stage %d drifted over its last %d job(s) (the cross-job test); "
                        "it is kept out of the groups", job_id, drifted.worker, drifted.stage, drifted.jobs)
            await self._evict(job_id, drifted.worker, "drift")
        log.info(
            "job %s: %s%s", job_id, verdict.outcome.value,
            f", stage {verdict.blamed_stage} blamed ({verdict.reason.value})" if verdict.blamed_stage is not None else "",
        )

    async def _evict(self, job_id: str, worker: str, reason: str) -> None:
        for hook in self.on_blamed:
            try:
                await hook(worker, reason)
            except Exception:  # the verdict is committed; a failed eviction must not undo or repeat it
                log.exception("job %s: could not act on the blame of %s", job_id, worker)

    async def run_validation(self, *, idle_seconds: float = 1.0) -> None:
        """Validate jobs until cancelled; reclaims this validator id's own unfinished jobs first."""
        reclaim = True
        while True:
            try:
                job_id = await self.validate_next(reclaim_own=reclaim)
            except asyncio.CancelledError:
                raise
            except Exception:
                job_id = None
                await asyncio.sleep(idle_seconds)
            reclaim = False
            if job_id is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), idle_seconds)
                except asyncio.TimeoutError:
                    pass

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, validators: int = 1) -> None:
        loop = asyncio.get_running_loop()
        if self.config.cosign_only:  # a co-signer only answers POST /v1/cosign; it owes the chain nothing
            return
        for _ in range(validators):
            self._tasks.append(loop.create_task(self.run_validation(), name="validation"))
        self._tasks.append(loop.create_task(run_epochs(self), name="epochs"))
        self._tasks.append(loop.create_task(run_deadlines(self), name="deadlines"))
        if self.chain is not None:
            self._tasks.append(loop.create_task(run_outbox(self), name="outbox"))
            self._tasks.append(loop.create_task(ChainSync(self.chain, self.ledger).run(interval=1.0), name="chain-sync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # ------------------------------------------------------------------ epochs

    async def close_epoch(self, *, number: int | None = None, force: bool = False) -> dict[str, Any] | None:
        """Close an epoch over the entries since the last one and owe its anchor, in one transaction: chain
        epoch `number` (default: the one after the latest this ledger closed or followed)."""
        async with self.ledger.transaction() as tx:
            record = await tx.close_epoch(number)
            if record is None:
                return None
            await tx.enqueue(
                "anchor",
                str(record.number),
                {
                    "epoch": record.number,
                    "entries_root": record.entries_root,
                    "rewards_root": record.rewards_root,
                    "entry_count": record.entry_count,
                },
            )
        log.info("epoch %d closed (%d entries); anchor owed", record.number, record.entry_count)
        return record.to_json()

    async def epoch_entries(self, number: int) -> dict[str, Any] | None:
        """Epoch `number`'s entries in full and the cumulative rewards epoch `number - 1` closed with."""
        record = await self.ledger.epoch(number)
        if record is None:
            return None
        entries = await self.ledger.entries(record.first_seq - 1, record.last_seq - record.first_seq + 1)
        previous = await self.ledger.epoch_cumulative(number - 1) or {}
        return {"epoch": number, "entries": [e.to_json() for e in entries],
                "previous_cumulative": {w: str(a) for w, a in previous.items()}}

    # ------------------------------------------------------------------ reads

    async def job(self, job_id: str) -> dict[str, Any] | None:
        record = await self.ledger.job(job_id)
        if record is None:
            return None
        verdict = await self.ledger.verdict(job_id)
        receipts = await self.ledger.receipts(job_id)
        return {
            "job_id": record.job_id,
            "status": STATUS_NAMES.get(record.status, record.status),
            "model_id": record.model_id,
            "group_id": record.group_id,
            "received_at": record.received_at.isoformat(),
            "attempts": record.attempts,
            "stages": [
                {
                    "stage": r.stage,
                    "worker": r.worker,
                    "layer_start": r.layer_start,
                    "layer_end": r.layer_end,
                    "token_count": r.token_count,
                    "work_units": r.work_units,
                }
                for r in receipts
            ],
            "verdict": None if verdict is None else await self._verdict_with_why(verdict),
        }

    async def _verdict_with_why(self, verdict: Any) -> dict[str, Any]:
        """The verdict, and for a slash the verifier's one line (which chunk failed, by how much) as `why`."""
        data = _verdict_json(verdict)
        if verdict.outcome == "blamed" and data["evidence_hash"]:
            data["why"] = await insight.slash_reason(self.ledger, data["evidence_hash"])
        return data

    async def jobs(self, *, limit: int, status: str | None, offset: int = 0) -> list[dict[str, Any]]:
        wanted = {v: k for k, v in STATUS_NAMES.items()}.get(status) if status else None
        query = (
            select(Job.job_id, Job.status, Job.group_id, Job.received_at, VerdictRow.outcome, VerdictRow.blamed_stage)
            .select_from(Job.__table__.outerjoin(VerdictRow.__table__, VerdictRow.job_id == Job.job_id))
            .order_by(Job.received_at.desc())
            .offset(offset)
            .limit(limit)
        )
        if wanted:
            query = query.where(Job.status == wanted)
        async with self.ledger.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "job_id": r.job_id,
                "status": STATUS_NAMES.get(r.status, r.status),
                "group_id": r.group_id,
                "received_at": r.received_at.isoformat(),
                "outcome": r.outcome,
                "blamed_stage": r.blamed_stage,
            }
            for r in rows
        ]

    async def evidence(self, job_id: str) -> dict[str, Any] | None:
        return await evidence_document(self.ledger, job_id)

    async def leaderboard(self, *, limit: int, offset: int = 0) -> dict[str, Any]:
        """A page: `items`, `total`, `offset`, `limit`."""
        return (await self.ledger.leaderboard(offset, limit)).to_json()

    async def slashes(self, *, limit: int, offset: int = 0, worker: str | None = None) -> dict[str, Any]:
        """A page of slashes (all workers', or one's), each with its chain transaction once sent."""
        page = (await self.ledger.slashes(offset, limit, worker)).to_json()
        items = page["items"]
        sent = {row.key: row for row in await self.ledger.outbox() if row.kind == "slash"}
        for item in items:
            row = sent.get(item["evidence_hash"])
            item["chain_status"] = row.status if row else None
            item["chain_tx"] = row.tx_hash if row else None
        return page

    async def worker(self, address: str) -> dict[str, Any] | None:
        standing = await self.ledger.worker(address)
        if standing is None:
            return None
        history = await self.ledger.worker_history(address, 0, 20)
        flags = await self.ledger.drift_flags(worker=address, limit=20)
        return {**standing.to_json(), "recent_entries": [e.to_json() for e in history.items],
                "drift_flags": flags_json(flags)}

    async def epochs(self, *, limit: int, offset: int = 0) -> dict[str, Any]:
        """A page: `items`, `total`, `offset`, `limit`."""
        return (await self.ledger.epochs(offset, limit)).to_json()

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": "ok",
            "validator": self.address,
            "validator_id": self.config.validator_id,
            "models": sorted(self.models.ids),
            "min_stake_wei": str(self.config.min_stake_wei),
            "chain": {
                "chain_id": self.domain.chain_id,
                "staking_contract": self.domain.verifying_contract,
                "rpc_url": self.rpc_url,
                "min_stake_wei": str(self.config.min_stake_wei),
            },
            "uptime_s": round(time.monotonic() - self._started, 1),
        }
        try:
            report["queue_depth"] = await self.queue.depth()
            report["journal_seq"] = (await self.ledger.head())[0]
            report["entries_waiting"] = await self.ledger.entries_waiting()  # not yet in a closed epoch (anchors aside)
        except Exception as error:
            report.update(status="degraded", ledger_error=f"{type(error).__name__}: {error}")
        return report

    async def refresh_gauges(self) -> None:
        try:
            self.metrics.queue_depth.set(await self.queue.depth())
        except Exception:
            pass


async def evidence_document(ledger: Ledger, job_id: str) -> dict[str, Any] | None:
    """The evidence of a job's verdict (node/validator/evidence.py): the stored bundle plus what the verdict kept."""
    record = await ledger.job(job_id)
    verdict = await ledger.verdict(job_id)
    if record is None or verdict is None or not verdict.figures or "tariff" not in verdict.figures:
        return None  # unknown, undecided, or soft-invalidated (no bundle: nothing was computed)
    document = {k: v for k, v in verdict.figures.items() if k != "evidence_hash"}
    document["bundle"] = Bundle.from_json(record.bundle).to_dict()  # canonical, as the evidence hash saw it
    return document


def _verdict_json(record: Any) -> dict[str, Any]:
    figures = record.figures or {}
    stored = figures.get("verdict") or {}
    return {
        "outcome": record.outcome,
        "blamed_stage": record.blamed_stage,
        "reason": record.reason,
        "rewards_wei": stored.get("rewards_wei"),
        "slash_wei": stored.get("slash_wei"),
        "replayed": figures.get("replayed"),
        "evidence_hash": figures.get("evidence_hash"),
        "validator": record.validator,
        "decided_at": record.decided_at.isoformat(),
    }


def _aware(value):
    import datetime as dt

    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
