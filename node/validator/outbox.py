"""Send what the ledger owes the chain (slashes, epoch anchors), each exactly once, each with a threshold of
validator signatures (PROTOCOL I7).

The outbox row is written in the same transaction as the decision (a verdict's slash, an epoch's close),
so nothing owed is forgotten; this loop delivers it. First the chain is asked whether the effect is
already there (`evidenceUsed(hash)` for a slash, `latestEpoch >= epoch` for an anchor), which covers a
crash between sending and marking the row sent; the contract itself refuses a second slash for one
evidence hash and any epoch but the next. Then the row's typed order gathers the contract's threshold of
validator signatures (signatures.py: this node's own and its peers'), kept in the row as they come; with
fewer the row waits, and it is never sent with fewer. While the chain is unreachable or signatures are
missing a row goes back to pending and is retried with a growing pause; a revert that will never succeed
(nothing left to slash) fails the row for good, with the reason kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ledger import json_input
from ledger.chain.errors import ContractRevert
from ledger.errors import StagewiseError
from ledger.outbox import OutboxRow
from node.validator.signatures import Waiting, gather

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class Permanent(StagewiseError):
    """A transaction that can never succeed; the row is failed with this reason."""


def _hex32(value: str) -> bytes:
    return json_input.hex_bytes(value, "hash", length=32)


def already_on_chain(chain: Any, row: OutboxRow) -> str | None:
    """The hash of the transaction that already carries this row's effect, or None; Permanent when the row can
    never take effect (nothing left to slash, the chain past the epoch without it)."""
    payload = row.payload
    if row.kind == "slash":
        evidence = _hex32(payload["evidence_hash"])
        if chain.evidence_used(evidence):
            found = chain.event_tx("Slashed", None, evidence)  # Slashed(worker, evidenceHash, validator, …)
            if found is None:
                raise Permanent("the evidence is used on chain but its Slashed event was not found")
            return found
        slashable = chain.stake_info(payload["worker"]).slashable
        if slashable <= 0:
            raise Permanent(f"{payload['worker']} has no stake left on chain to slash")
        if slashable < int(payload["amount"]):  # the contract takes what is left; the journal keeps the verdict's
            log.warning("slashing %s: %d wei of the %s the verdict set, all the stake it has left",
                        payload["worker"], slashable, payload["amount"])
        return None
    if row.kind == "anchor":
        epoch = int(payload["epoch"])
        latest = chain.latest_anchor()
        if latest.count and latest.latest_epoch >= epoch:
            found = chain.event_tx("Anchored", epoch.to_bytes(32, "big"))
            if found is None:
                raise Permanent(f"the chain is past epoch {epoch} ({latest.latest_epoch}) without anchoring it")
            if chain.entries_root_of(epoch) != _hex32(payload["entries_root"]):
                raise Permanent(f"epoch {epoch} is anchored on chain with other roots (another ledger's) by {found}")
            return found
        if epoch > latest.latest_epoch + 1:
            raise Waiting(f"epoch {latest.latest_epoch + 1} is not anchored yet; anchors go one epoch at a time")
        return None
    raise Permanent(f"unknown outbox kind {row.kind!r}")


async def deliver_row(node: Any, row: OutboxRow, threshold: int) -> str:
    """Deliver one outbox row; returns the hash of the transaction that carries its effect. Waiting while
    fewer than `threshold` validators signed its order."""
    found = await asyncio.to_thread(already_on_chain, node.chain, row)
    if found is not None:
        return found
    order, signatures = await gather(node, row, threshold)
    send = node.chain.slash if row.kind == "slash" else node.chain.anchor
    return (await asyncio.to_thread(send, node.chain_key, order, signatures)).tx_hash


async def deliver_once(node: Any) -> tuple[int, int]:
    """Take and send what is pending; returns (sent, failed attempts)."""
    rows = await node.ledger.take_outbox(10, stale_after_s=node.config.claim_lease_seconds)
    sent = failed = 0
    threshold: int | None = None  # read once a pass, when the chain answers
    for row in rows:
        try:
            if threshold is None:
                threshold = await asyncio.to_thread(node.chain.threshold)
            tx_hash = await deliver_row(node, row, threshold)
        except Waiting as waiting:
            log.info("outbox %s %s waits: %s", row.kind, row.key, waiting)
            await node.ledger.mark_failed(row.id, f"waiting: {waiting}", retry=True)
            node.metrics.orders_waiting.labels(row.kind).inc()
            failed += 1
            continue
        except Permanent as error:
            log.error("outbox %s %s failed for good: %s", row.kind, row.key, error)
            await node.ledger.mark_failed(row.id, str(error), retry=False)
            node.metrics.chain_errors.labels(row.kind).inc()
            failed += 1
            continue
        except ContractRevert as error:
            log.warning("outbox %s %s reverted (%s); will check the chain and retry", row.kind, row.key, error)
            await node.ledger.mark_failed(row.id, f"revert: {error}", retry=True)
            node.metrics.chain_errors.labels(row.kind).inc()
            failed += 1
            continue
        except Exception as error:  # unreachable chain, timeout, …: retry later
            log.warning("outbox %s %s: chain unreachable (%s: %s); will retry", row.kind, row.key, type(error).__name__, error)
            await node.ledger.mark_failed(row.id, f"{type(error).__name__}: {error}", retry=True)
            node.metrics.chain_errors.labels(row.kind).inc()
            failed += 1
            continue
        if row.kind == "anchor":
            await node.ledger.mark_anchored(int(row.payload["epoch"]), tx_hash)
            node.metrics.anchors.inc()
            await warn_if_pool_short(node, int(row.payload["epoch"]))
        await node.ledger.mark_sent(row.id, tx_hash)
        node.metrics.chain_transactions.labels(row.kind).inc()
        log.info("outbox %s %s on chain: %s", row.kind, row.key, tx_hash)
        sent += 1
    return sent, failed


async def warn_if_pool_short(node: Any, epoch: int) -> bool:
    """Warn (and return True) when the contract's reward pool holds less than the rewards an anchored epoch
    added: the workers' claims of them revert with InsufficientRewardPool until the pool is funded."""
    try:
        record, previous = await node.ledger.epoch(epoch), await node.ledger.epoch(epoch - 1) if epoch > 1 else None
        added = record.total_rewards - (previous.total_rewards if previous else 0)
        pool = await asyncio.to_thread(node.chain.reward_pool)
    except Exception as error:  # a warning must never hold up the outbox
        log.debug("could not compare the reward pool with epoch %d: %s", epoch, error)
        return False
    if pool >= added:
        return False
    log.warning(
        "the reward pool holds %d wei, less than the %d wei of rewards epoch %d added: claims revert until it is "
        "funded (`stagewise chain fund-rewards AMOUNT --keystore ...`)", pool, added, epoch,
    )
    return True


async def run_outbox(node: Any, *, poll_seconds: float = 0.5) -> None:
    backoff = poll_seconds
    while True:
        try:
            _, failed = await deliver_once(node)
            backoff = min(MAX_BACKOFF_S, backoff * 2) if failed else poll_seconds
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox pass failed")
            backoff = min(MAX_BACKOFF_S, backoff * 2)
        await asyncio.sleep(backoff)
