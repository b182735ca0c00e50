"""Close epochs on a schedule: every `epoch_seconds`, or sooner once `epoch_entries` entries wait, when it is
this validator's turn to propose the chain's next epoch (follow.py, rotation.py); follow the epochs other
validators anchor meanwhile.

Closing an epoch and owing its anchor happen in one ledger transaction (ValidatorNode.close_epoch); the
outbox sends the anchor. Several validators on one ledger may all run this loop: closing takes the
journal head's lock, so they close one epoch after another, never the same one twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from node.validator.follow import follow_chain, propose_epoch

log = logging.getLogger(__name__)


async def run_epochs(node: Any, *, poll_seconds: float = 0.5, follow_seconds: float = 2.0) -> None:
    config = node.config
    last_close = last_follow = time.monotonic()
    while True:
        await asyncio.sleep(min(poll_seconds, config.epoch_seconds))
        try:
            if node.chain is not None and time.monotonic() - last_follow >= follow_seconds:
                last_follow = time.monotonic()
                await follow_chain(node)  # claim proofs against other validators' anchors stay current
            waiting = await node.ledger.entries_waiting()
            due = time.monotonic() - last_close >= config.epoch_seconds
            if waiting == 0 or (not due and waiting < config.epoch_entries):
                continue
            if await propose_epoch(node) is not None:
                last_close = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an unreachable chain, most often: said once a pass, the traceback at -v
            log.warning("following or closing an epoch failed (%s: %s); will retry", type(error).__name__, error)
            log.debug("the failure", exc_info=True)
