"""Follow the chain epochs other validators anchored, and propose the next one when it is this node's turn.

Validators with their own ledgers share one contract (PROTOCOL I7): epoch n's rewards root commits to every
worker's cumulative reward across all of their ledgers, so before proposing epoch n a validator must hold
epoch n-1's cumulative rewards. For an epoch it did not anchor it asks its peers for the epoch's entries
(`GET /v1/epochs/{n}/entries`; only the proposer holds them) and keeps them only when they hash to the roots
of the chain's Anchored event on top of epoch n-1's cumulative rewards, which it already holds: a peer can
delay a follower, never mislead it. An unanchored epoch of its own whose number another validator's anchor
took (after the grace, rotation.py) is given up, and its entries go into the next epoch it proposes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from ledger import epoch_package, json_input
from ledger.chain.events import Anchored
from ledger.queries import FollowedEpochRecord
from node.validator.rotation import may_propose

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 60.0
MAX_PACKAGE_BYTES = 64 << 20


def _roots(event: Anchored) -> epoch_package.EpochRoots:
    return epoch_package.EpochRoots("0x" + event.entries_root.hex(), "0x" + event.rewards_root.hex(), event.entry_count)


async def _package_from_peers(node: Any, event: Anchored, previous: dict[str, int]
                              ) -> tuple[str, dict[str, int]] | None:
    """(the peer URL, the epoch's cumulative rewards) from the first peer whose package checks out; None."""
    async with aiohttp.ClientSession() as session:
        for peer in node.config.peers:
            url = f"{peer.rstrip('/')}/v1/epochs/{event.epoch}/entries"
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
                    if response.status != 200:
                        continue
                    document = await json_input.read_json(response, max_bytes=MAX_PACKAGE_BYTES)
                package = epoch_package.parse(document, event.epoch)
                return peer, epoch_package.check(package, _roots(event), previous)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, json_input.JsonInputError) as error:
                log.debug("epoch %d: peer %s unreachable: %s", event.epoch, peer, error)
            except epoch_package.EpochPackageError as error:
                log.warning("epoch %d: peer %s serves entries that are not the anchored epoch: %s (%s)",
                            event.epoch, peer, error, error.code)
    return None


async def follow_chain(node: Any) -> int:
    """Bring the ledger up to the chain's latest epoch; returns the epochs followed. Stops at the first
    epoch no peer serves (tried again on the next call)."""
    chain, ledger = node.chain, node.ledger
    latest = (await asyncio.to_thread(chain.latest_anchor)).latest_epoch
    node.epoch_clock.waited(latest)  # the grace for the next epoch counts from when this node first saw it
    start = await ledger.first_unsettled_epoch()
    followed = 0
    for number in range(start, latest + 1):
        event = await asyncio.to_thread(chain.anchored, number)
        if event is None:
            log.warning("epoch %d is below the chain's latest (%d) but has no Anchored event", number, latest)
            return followed
        own = await ledger.epoch(number)
        if own is not None:
            if (own.entries_root, own.rewards_root) == (_roots(event).entries_root, _roots(event).rewards_root):
                if own.anchor_tx is None:
                    await ledger.mark_anchored(number, event.tx_hash)
                continue
            await ledger.abandon_epochs(number)
        elif await ledger.followed_epoch(number) is not None:
            continue
        previous = await ledger.epoch_cumulative(number - 1)
        if previous is None:  # cannot happen in order; a guard against a hand-edited ledger
            log.error("epoch %d cannot be followed: epoch %d is unknown here", number, number - 1)
            return followed
        found = await _package_from_peers(node, event, previous)
        if found is None:
            log.info("epoch %d (anchored by %s) is not served by any peer yet; this node waits to follow it",
                     number, event.validator)
            node.metrics.epochs_unfollowed.inc()
            return followed
        source, cumulative = found
        record = FollowedEpochRecord(number, event.validator, event.entry_count, _roots(event).entries_root,
                                     _roots(event).rewards_root, sum(cumulative.values()), event.tx_hash, source)
        if await ledger.follow_epoch(record, cumulative):
            node.metrics.epochs_followed.inc()
            followed += 1
    return followed


async def propose_epoch(node: Any) -> dict[str, Any] | None:
    """Close the next chain epoch when this node may propose it (rotation.py); None when it may not, or has
    nothing to close. Without a chain, epochs are numbered by this ledger alone."""
    if node.chain is None or node.chain_key is None:
        return await node.close_epoch()
    await follow_chain(node)
    latest = (await asyncio.to_thread(node.chain.latest_anchor)).latest_epoch
    known = await node.ledger.latest_known_epoch()
    if known < latest or await node.ledger.entries_waiting() == 0:
        return None  # still following, or nothing to anchor but the last anchor
    validators = await asyncio.to_thread(node.chain.validator_set)
    # Proposing past an epoch of its own not yet on chain is its turn only when the set is just itself.
    waited = node.epoch_clock.waited(latest) if known == latest else 0.0
    if not may_propose(node.chain_key.address, known + 1, validators, waited, node.config.proposer_grace_seconds):
        return None
    return await node.close_epoch(number=known + 1)
