"""Co-signing (PROTOCOL I7): a validator signs a peer's slash or anchor order only after judging it itself.

`POST /v1/cosign` carries `{"order": …, "proposer": URL, "job_id": …}` (job_id for a slash). The proposer
must be one of this node's `--peer` URLs: the co-signer fetches everything it judges from there, never from
an address a request names.

- A slash: the evidence (`GET {proposer}/v1/jobs/{job_id}/evidence`) must hash to the order's evidence hash,
  carry this node's tariff and a model it holds; the verdict is recomputed with `recompute`, the pure function
  `stagewise verify-evidence` runs (I5), and must reproduce the stored verdict, blame the order's worker and
  slash exactly the order's amount.
- An anchor: the epoch's entries (`GET {proposer}/v1/epochs/{n}/entries`) must hash-chain, give the order's
  entries root and count, and, added to the cumulative rewards the chain's latest root commits to, the
  order's rewards root; every slash in the epoch is judged as above, and a sample of the rewarded jobs
  (`--audit-rate`, drawn with this node's own secret) is replayed and must pay what the entries say.
- The order must be for the next epoch / an unused evidence hash and valid on this node's contract and chain.
- An anchor order carries its proposer's own signature (`proposer_signature`), and the proposer must be the
  validator whose turn the epoch is, or the chain must have waited `--proposer-grace` for it (rotation.py).

A refusal raises `Refused` with a short code and the reason; the API logs it and counts it in
`stagewise_cosign_refusals_total{kind, reason}` and answers 422. Nothing is signed on a refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import aiohttp

from ledger import epoch_package
from ledger import epochs as epoch_math
from ledger import journal, json_input
from ledger.chain.orders import (
    AnchorOrder,
    Order,
    OrderSignatureError,
    SlashOrder,
    order_from_json,
    sign_order,
    signer_of,
)
from ledger.errors import InvalidInput, StagewiseError
from node.protocol.job import JobSpec
from node.validator.evidence import EVIDENCE_MAX_BYTES, Evidence, EvidenceError, evidence_hash, needs_model, recompute
from node.validator.rotation import may_propose, proposer_of
from node.validator.spot_check import is_replayed
from node.validator.verdict import Outcome

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 60.0
MAX_ENTRIES_BYTES = 64 << 20
MIN_DEADLINE_LEFT_S = 600  # an order about to expire is not worth a signature


class Refused(StagewiseError):
    """This node will not sign the order: `code` (a metrics label) and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _peer_url(node: Any, proposer: Any) -> str:
    if not isinstance(proposer, str):
        raise Refused("unknown_proposer", "the request names no proposer URL")
    wanted = proposer.rstrip("/")
    if wanted not in {peer.rstrip("/") for peer in node.config.peers}:
        raise Refused("unknown_proposer", f"{proposer} is not one of this validator's peers (--peer)")
    return wanted


async def _fetch_json(url: str, max_bytes: int, what: str) -> Any:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
                if response.status != 200:
                    raise Refused(f"{what}_unavailable", f"the proposer answered HTTP {response.status} for {what}")
                return await json_input.read_json(response, max_bytes=max_bytes)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, json_input.JsonInputError) as error:
        raise Refused(f"{what}_unavailable", f"could not fetch {what} from the proposer: {type(error).__name__}: {error}") from None


async def _recomputed_verdict(node: Any, proposer: str, job_id: str) -> tuple[Evidence, Any, JobSpec]:
    """Fetch a job's evidence from the proposer and recompute its verdict here; refuse unless it reproduces."""
    document = await _fetch_json(f"{proposer}/v1/jobs/{job_id}/evidence", EVIDENCE_MAX_BYTES, "evidence")
    try:
        evidence = Evidence.from_dict(document)
        spec = JobSpec.from_dict(evidence.bundle["spec"])
    except (EvidenceError, InvalidInput, KeyError, TypeError, ValueError) as error:
        raise Refused("evidence_malformed", f"the evidence of job {job_id} does not parse: {error}") from None
    if spec.job_id_hex != job_id:
        raise Refused("evidence_malformed", f"the evidence served for job {job_id} is for job {spec.job_id_hex}")
    if evidence.tariff != node.config.tariff:
        raise Refused("tariff", f"the evidence prices work and faults at {evidence.tariff.to_dict()}, this validator at "
                                f"{node.config.tariff.to_dict()}")
    model = None
    if needs_model(evidence):
        if evidence.model_id not in node.models.ids:
            raise Refused("model", f"this validator does not hold model {evidence.model_id}")
        model = await node.models.get(evidence.model_id)
    try:
        check = await asyncio.to_thread(recompute, evidence, model)
    except (EvidenceError, InvalidInput, KeyError, TypeError, ValueError) as error:
        raise Refused("evidence_malformed", f"the evidence of job {job_id} cannot be replayed: {error}") from None
    node.metrics.replay_seconds.observe(check.replay_seconds)
    if not check.matches:
        raise Refused("not_reproduced", f"job {job_id}: {check.explain()}")
    return evidence, check.recomputed, spec


async def judge_slash(node: Any, order: SlashOrder, proposer: str, job_id: Any) -> None:
    job_id = journal.hash32(job_id, "job_id") if isinstance(job_id, str) else None
    if job_id is None:
        raise Refused("malformed", "a slash order comes with the job id of its evidence")
    if await asyncio.to_thread(node.chain.evidence_used, order.evidence_hash):
        raise Refused("evidence_used", "this evidence has already slashed on chain")
    evidence, verdict, spec = await _recomputed_verdict(node, proposer, job_id)
    if evidence_hash(evidence) != order.evidence_hash:
        raise Refused("evidence_hash", "the evidence the proposer serves does not hash to the order's evidence hash")
    _require_blame(verdict, spec, order.worker, order.amount)


def _require_blame(verdict: Any, spec: JobSpec, worker: str, amount: int) -> None:
    if verdict.outcome is not Outcome.BLAMED:
        raise Refused("not_blamed", f"the recomputed verdict is {verdict.outcome.value}: nobody is to be slashed")
    blamed = spec.stages[verdict.blamed_stage].worker
    if blamed.lower() != worker.lower():
        raise Refused("worker", f"the recomputed verdict blames stage {verdict.blamed_stage} ({blamed}), not {worker}")
    if verdict.slash_wei != amount:
        raise Refused("amount", f"the recomputed verdict slashes {verdict.slash_wei} wei, the order {amount}")


async def _require_turn(node: Any, order: AnchorOrder, proposer_signature: Any, latest_epoch: int) -> None:
    """The order's proposer (whose own signature it carries) may propose its epoch now (rotation.py)."""
    try:
        signature = json_input.hex_bytes(proposer_signature, "proposer_signature", length=65)
        proposer = signer_of(order, node.chain.domain, signature)
    except (InvalidInput, OrderSignatureError) as error:
        raise Refused("turn", f"an anchor order comes with its proposer's own signature: {error}") from None
    validators = await asyncio.to_thread(node.chain.validator_set)
    waited = node.epoch_clock.waited(latest_epoch)
    if not may_propose(proposer, order.epoch, validators, waited, node.config.proposer_grace_seconds):
        raise Refused("turn", f"epoch {order.epoch} is {proposer_of(order.epoch, validators)}'s to propose, not "
                              f"{proposer}'s, for {node.config.proposer_grace_seconds - waited:.0f} s more")


async def judge_anchor(node: Any, order: AnchorOrder, proposer: str, proposer_signature: Any = None) -> None:
    latest = await asyncio.to_thread(node.chain.latest_anchor)
    if order.epoch != latest.latest_epoch + 1:
        raise Refused("epoch", f"the chain's next epoch is {latest.latest_epoch + 1}, the order's {order.epoch}")
    await _require_turn(node, order, proposer_signature, latest.latest_epoch)
    document = await _fetch_json(f"{proposer}/v1/epochs/{order.epoch}/entries", MAX_ENTRIES_BYTES, "entries")
    roots = epoch_package.EpochRoots("0x" + order.entries_root.hex(), "0x" + order.rewards_root.hex(), order.entry_count)
    try:
        package = epoch_package.parse(document, order.epoch)
        previous = package.previous_cumulative
        if latest.count == 0 and previous:
            raise Refused("rewards_root", "before the first anchor nobody has a cumulative reward")
        if latest.count and epoch_math.rewards_root(previous) != "0x" + latest.rewards_root.hex():
            raise Refused("rewards_root", "the cumulative rewards served are not the ones the chain's latest root commits to")
        epoch_package.check(package, roots, previous)
    except epoch_package.EpochPackageError as error:
        raise Refused(error.code, str(error)) from None
    entries = package.entries
    for entry in entries:
        if entry.kind == journal.SLASH:
            if entry.job_id is None:
                # A slash the ledger followed from the chain (ledger/chain/sync.py): t validators signed it there.
                if not await asyncio.to_thread(node.chain.evidence_used, bytes.fromhex(entry.evidence_hash[2:])):
                    raise Refused("slash_entry", f"slash entry {entry.seq} names no job and never happened on chain")
                continue
            evidence, verdict, spec = await _recomputed_verdict(node, proposer, entry.job_id)
            if "0x" + evidence_hash(evidence).hex() != entry.evidence_hash:
                raise Refused("slash_entry", f"slash entry {entry.seq}: its evidence does not hash to its evidence hash")
            _require_blame(verdict, spec, entry.worker, entry.amount)
    rewarded: dict[str, list[journal.Entry]] = defaultdict(list)
    for entry in entries:
        if entry.kind == journal.REWARD:
            rewarded[entry.job_id].append(entry)
    for job_id, paid in rewarded.items():
        if not is_replayed(bytes.fromhex(job_id[2:]), node.config.audit_secret, node.config.audit_rate):
            continue
        _, verdict, spec = await _recomputed_verdict(node, proposer, job_id)
        for entry in paid:
            due = verdict.rewards_wei[entry.stage] if entry.stage < len(verdict.rewards_wei) else 0
            if spec.stages[entry.stage].worker.lower() != entry.worker.lower() or due != entry.amount:
                raise Refused("audit", f"job {job_id} stage {entry.stage}: the entries pay {entry.amount} wei to "
                                       f"{entry.worker}, the recomputed verdict {due}")
        node.metrics.cosign_audited.inc()


async def cosign(node: Any, body: Any) -> dict[str, Any]:
    """Judge a co-sign request; the signature when the order holds, else Refused (already logged and counted)."""
    kind = body.get("order", {}).get("kind") if isinstance(body, dict) and isinstance(body.get("order"), dict) else None
    kind = kind if kind in ("slash", "anchor") else "unknown"
    try:
        if node.chain is None or node.chain_key is None:
            raise Refused("no_chain", "this validator has no chain key to sign with")
        try:
            order: Order = order_from_json(body["order"])
        except (InvalidInput, KeyError, TypeError) as error:
            raise Refused("malformed", f"not an order: {error}") from None
        proposer = _peer_url(node, body.get("proposer"))
        if order.deadline < await asyncio.to_thread(node.chain.timestamp) + MIN_DEADLINE_LEFT_S:
            raise Refused("deadline", "the order expires too soon")
        if isinstance(order, SlashOrder):
            await judge_slash(node, order, proposer, body.get("job_id"))
        else:
            await judge_anchor(node, order, proposer, body.get("proposer_signature"))
    except Refused as refusal:
        node.metrics.cosign_refusals.labels(kind, refusal.code).inc()
        log.warning("refused to co-sign a %s order from %s: %s (%s)", kind,
                    body.get("proposer") if isinstance(body, dict) else "?", refusal, refusal.code)
        raise
    signature = sign_order(node.chain_key, order, node.chain.domain)
    node.metrics.cosign_signed.labels(kind).inc()
    log.info("co-signed %s order %s for %s", kind, order.key, proposer)
    return {"signer": node.chain_key.address, "signature": "0x" + signature.hex(), "order": order.to_json()}
