"""Bundle intake: every check that can refuse a bundle before it is written, cheapest first.

A refused bundle writes nothing and gets a JSON error naming why (I3). In order:

1. `read_bundle`, needing neither keys nor the database: the body parses as a bundle (400; a complaint's
   rows must hash to the digest it names, one complaint per receiving stage), its model is one this
   validator can replay, in the precision this validator declares for it (422 `wrong_precision`, I8), its
   tokens are in the vocabulary (422), the output obeys the spec's stop ids (422);
2. the node asks whether the job was issued (403 `unassigned_job`) and whether it already stored its bundle
   (409 `duplicate_bundle`, from memory): a made-up job or a resubmission costs no signature work (a
   duplicate first stored by another validator on the ledger is refused by the write, after it);
3. `authenticate`, off the event loop: every receipt is exactly the one the spec, output and proofs imply,
   so a job id that does not match its spec is refused (422), and every receipt, handoff claim and
   complaint recovers to the worker its stage assigns (403);
4. every signer and complainer has stake (403, checked by `IntakeWriter` with one query per batch).

Whether a complaint's evidence holds is not checked here: a false one is judged and costs the complainer.
What passes is stored; whether it is *true* is the replay's business, later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Awaitable, Callable

from ledger.db import insert
from ledger.models import JOB_PENDING, Job, StageReceipt
from node.http.json_errors import ApiError
from node.protocol.bundle import Bundle, BundleError, check_receipts, check_signers
from node.protocol.receipts import ReceiptDomain
from node.validator.deadlines import AWAITING


@dataclass(frozen=True)
class ReadBundle:
    """A bundle that parsed and says what its spec implies; nobody's signature is checked yet."""

    bundle: Bundle
    job_id: str
    text: str


@dataclass(frozen=True)
class Admitted:
    bundle: Bundle
    signers: tuple[str, ...]
    job_id: str  # computed once: hashing the spec is not free
    text: str  # the bundle exactly as submitted (valid, checked JSON): what the ledger keeps as evidence
    complainers: tuple[str, ...] = ()  # a complaint may cost its signer: it must have stake to lose

    @property
    def staked(self) -> tuple[str, ...]:
        """Every key whose stake the bundle puts at risk: receipt signers, then complainers."""
        return self.signers + self.complainers


StakeOf = Callable[[list[str]], Awaitable[dict[str, int]]]


def read_bundle(body: bytes, *, vocab_sizes: dict[str, int], precisions: dict[str, str] | None = None) -> ReadBundle:
    """Form, model, vocabulary, receipts and stop ids: what a bundle is refused for without keys or database."""
    if not body:
        raise ApiError(400, "malformed_json", "the request body is empty; send a bundle as JSON")
    try:
        bundle = Bundle.from_json(body)
    except BundleError as error:
        code = "malformed_json" if "not valid JSON" in str(error) or "nested too deeply" in str(error) else "malformed_bundle"
        raise ApiError(400, code, str(error)) from None
    spec = bundle.spec
    vocab = vocab_sizes.get(spec.model_id)
    if vocab is None:
        raise ApiError(422, "unknown_model", f"this validator cannot replay model {spec.model_id}")
    declared = (precisions or {}).get(spec.model_id)
    if declared is not None and spec.precision != declared:  # I8: the validator chooses a model's precision
        raise ApiError(422, "wrong_precision",
                       f"jobs on model {spec.model_id} declare {declared} at this validator, not {spec.precision}")
    if max(spec.prompt_token_ids) >= vocab or (bundle.output_token_ids and max(bundle.output_token_ids) >= vocab):
        raise ApiError(422, "token_out_of_vocabulary", f"a token id is not below the model's vocabulary size {vocab}")
    stops = set(spec.sampling.stop_ids)
    if stops and any(t in stops for t in bundle.output_token_ids[:-1]):
        raise ApiError(422, "output_after_stop", "the output continues past a stop token")
    return ReadBundle(bundle, bundle.job_id_hex, body.decode())


def authenticate(read: ReadBundle, domain: ReceiptDomain) -> Admitted:
    """Every receipt is the one the spec, output and proofs imply (422; handoff claims are signature checks
    too), and every receipt and complaint recovers to the worker its stage assigns (403): the costly checks,
    run only for a job that was issued and is awaited."""
    bundle = read.bundle
    try:
        check_receipts(bundle)
    except BundleError as error:
        raise ApiError(422, "receipt_mismatch", str(error)) from None
    try:
        signers = check_signers(bundle, domain)
    except BundleError as error:
        code = "bad_signature" if "signature:" in str(error) else "unassigned_signer"
        raise ApiError(403, code, str(error)) from None
    complainers = tuple(bundle.spec.stages[c.complainer_stage].worker for c in bundle.complaints)
    return Admitted(bundle, signers, read.job_id, read.text, complainers)


class IntakeWriter:
    """Group commit for bundles that passed `authenticate`: every bundle admitted while the previous write was in
    progress goes into the next single ledger transaction, with one stake query for all their signers.

    Each caller still gets its own answer only after its bundle is committed (or refused), so "stored
    before the response" holds; under load, many bundles share one commit instead of queueing for one
    each. A signer below the minimum stake refuses only its own bundle.
    """

    def __init__(self, ledger, stakes_of: StakeOf, min_stake_wei: int, max_batch: int = 256) -> None:
        self.ledger = ledger
        self.stakes_of = stakes_of
        self.min_stake_wei = min_stake_wei
        self.max_batch = max_batch
        self._pending: list[tuple[Admitted, "asyncio.Future[bool]"]] = []
        self._flushing = False

    async def store(self, admitted: Admitted) -> bool:
        """True when stored, False when the job was already known (nothing written)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((admitted, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush_all())
        return await future

    async def _flush_all(self) -> None:
        try:
            await asyncio.sleep(0)  # let the requests already in flight join this batch
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                await self._flush(batch)
        finally:
            self._flushing = False

    async def _flush(self, batch) -> None:
        try:
            signers = sorted({s for admitted, _ in batch for s in admitted.staked})
            stakes = await self.stakes_of(signers)
            writable = []
            for admitted, future in batch:
                short = [signer for signer in admitted.staked if stakes.get(signer, 0) < self.min_stake_wei]
                if short:
                    signer = short[0]
                    role = f"stage {admitted.signers.index(signer)} signer" if signer in admitted.signers else "complainer"
                    future.set_exception(
                        ApiError(
                            403,
                            "unstaked_signer",
                            f"{role} {signer} has stake {stakes.get(signer, 0)} wei, needs {self.min_stake_wei}",
                        )
                    )
                else:
                    writable.append((admitted, future))
            results = await self._write(writable) if writable else []
            for (_, future), stored in zip(writable, results):
                future.set_result(stored)
        except Exception as error:  # the ledger is unreachable or refused the batch: nothing of it was stored
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        ApiError(503, "ledger_unavailable", f"the bundle could not be stored, try again: {type(error).__name__}")
                    )

    async def _write(self, writable) -> list[bool]:
        """One transaction, one multi-row insert per table: the jobs (conflicts skipped: a job already
        known stays as it was) and the receipts of the jobs that were new. Same rows as
        `LedgerTx.record_bundle` writes one by one."""
        now = dt.datetime.now(dt.timezone.utc)
        rows, seen = [], set()
        for admitted, _ in writable:
            bundle = admitted.bundle
            if admitted.job_id in seen:
                continue
            seen.add(admitted.job_id)
            rows.append(
                {
                    "job_id": admitted.job_id,
                    "group_id": bundle.spec.group_id[:66],
                    "model_id": bundle.spec.model_id,
                    "stage_count": len(bundle.stages),
                    "bundle": admitted.text,
                    "submitted_by": None,
                    "received_at": now,
                    "status": JOB_PENDING,
                    "attempts": 0,
                }
            )
        async with self.ledger.transaction() as tx:
            inserted = await self._insert_jobs(tx, rows)
            receipts = [
                {
                    "job_id": admitted.job_id,
                    "stage": index,
                    "worker": signer,
                    "layer_start": stage.receipt.layer_start,
                    "layer_end": stage.receipt.layer_end,
                    "token_count": stage.receipt.token_count,
                    "work_units": stage.receipt.work_units,
                    "signature": "0x" + stage.signature.hex(),
                }
                for admitted, _ in writable
                if admitted.job_id in inserted
                for index, (stage, signer) in enumerate(zip(admitted.bundle.stages, admitted.signers))
            ]
            if receipts:
                await tx.conn.execute(StageReceipt.__table__.insert(), receipts)
        answered: set[str] = set()
        results = []
        for admitted, _ in writable:
            job_id = admitted.job_id
            results.append(job_id in inserted and job_id not in answered)
            answered.add(job_id)
        return results

    async def _insert_jobs(self, tx, rows) -> set[str]:
        """Insert the new jobs and fill in the ones the orchestrator registered as awaiting their bundle
        (deadlines.py); a job that already has a bundle stays as it was. Returns the ids written."""
        from sqlalchemy import bindparam, select, update

        ids = [row["job_id"] for row in rows]
        known = dict((await tx.conn.execute(select(Job.job_id, Job.status).where(Job.job_id.in_(ids)))).all())
        fresh = [row for row in rows if row["job_id"] not in known]
        written: set[str] = set()
        if fresh:  # RETURNING: a job another validator stored a moment ago is not ours to complete
            statement = insert(self.ledger.dialect, Job.__table__).on_conflict_do_nothing().returning(Job.__table__.c.job_id)
            written = set((await tx.conn.execute(statement, fresh)).scalars())
        awaited = [row for row in rows if known.get(row["job_id"]) == AWAITING]
        if awaited:
            await tx.conn.execute(
                update(Job.__table__)
                .where(Job.__table__.c.job_id == bindparam("b_job_id"), Job.__table__.c.status == AWAITING)
                .values(bundle=bindparam("bundle"), status=bindparam("status"), received_at=bindparam("received_at"),
                        stage_count=bindparam("stage_count")),
                [{"b_job_id": r["job_id"], "bundle": r["bundle"], "status": r["status"], "received_at": r["received_at"],
                  "stage_count": r["stage_count"]} for r in awaited],
            )
        return written | {row["job_id"] for row in awaited}
