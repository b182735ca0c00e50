"""Send what the ledger owes the chain (slashes, epoch anchors), each exactly once.

The outbox row is written in the same transaction as the decision (a verdict's slash, an epoch's close),
so nothing owed is forgotten; this loop delivers it. Never twice: before every send the chain is asked
whether the effect is already there (`evidenceUsed(hash)` for a slash, `latestEpoch >= epoch` for an
anchor), which covers a crash between sending and marking the row sent; the contract itself refuses a
second slash for one evidence hash and a non-increasing epoch. While the chain is unreachable a row goes
back to pending and is retried with a growing pause; a revert that will never succeed (nothing left to
slash) fails the row for good, with the reason kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ledger import json_input
from ledger.chain.errors import ContractRevert
from ledger.errors import StagewiseError
from ledger.outbox import OutboxRow

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class Permanent(StagewiseError):
    """A transaction that can never succeed; the row is failed with this reason."""


def _hex32(value: str) -> bytes:
    return json_input.hex_bytes(value, "hash", length=32)


def send_row(chain: Any, key: Any, row: OutboxRow) -> str:
    """Deliver one outbox row (blocking); returns the hash of the transaction that carries its effect."""
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
        return chain.signed_slash(key, [key], payload["worker"], int(payload["amount"]), evidence).tx_hash
    if row.kind == "anchor":
        epoch = int(payload["epoch"])
        latest = chain.latest_anchor()
        if latest.count and latest.latest_epoch >= epoch:
            found = chain.event_tx("Anchored", epoch.to_bytes(32, "big"))
            if found is None:
                raise Permanent(f"the chain is past epoch {epoch} ({latest.latest_epoch}) without anchoring it")
            return found
        return chain.signed_anchor(
            key, [key], epoch, _hex32(payload["entries_root"]), _hex32(payload["rewards_root"]), int(payload["entry_count"])
        ).tx_hash
    raise Permanent(f"unknown outbox kind {row.kind!r}")


async def deliver_once(node: Any) -> tuple[int, int]:
    """Take and send what is pending; returns (sent, failed attempts)."""
    rows = await node.ledger.take_outbox(10, stale_after_s=node.config.claim_lease_seconds)
    sent = failed = 0
    for row in rows:
        try:
            tx_hash = await asyncio.to_thread(send_row, node.chain, node.chain_key, row)
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
