"""Whose turn it is to propose a chain epoch (PROTOCOL I7, validators with their own ledgers on one contract).

Epoch n's proposer is the contract's validator n mod k, the set in ascending address order: it closes its
ledger's entries as epoch n on top of epoch n-1's cumulative rewards and gathers co-signatures. Once epoch
n-1 has been on chain for `grace` seconds without epoch n, any validator of the set may propose n, so a
proposer that is down, has nothing to anchor or only co-signs delays the chain by at most `grace`. Co-signers
apply the same rule to the proposer whose signature an anchor order carries, each by its own clock: the
moment it first saw epoch n-1 as the chain's latest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def proposer_of(epoch: int, validators: Sequence[str]) -> str | None:
    """The validator whose turn epoch `epoch` is; None for an empty set."""
    return validators[epoch % len(validators)] if validators else None


def may_propose(address: str, epoch: int, validators: Sequence[str], waited_s: float, grace_s: float) -> bool:
    """Whether `address` may propose `epoch`, the chain having sat at epoch - 1 for `waited_s` seconds."""
    lowered = [v.lower() for v in validators]
    if address.lower() not in lowered:
        return False
    return proposer_of(epoch, lowered) == address.lower() or waited_s >= grace_s


@dataclass
class LatestEpochClock:
    """When this node first saw each chain epoch as the latest: how long the chain has waited for the next."""

    now: Callable[[], float] = time.monotonic
    _seen: tuple[int, float] | None = field(default=None, init=False)

    def waited(self, latest_epoch: int) -> float:
        """Seconds since this node first saw `latest_epoch` as the chain's latest (0 the first time)."""
        now = self.now()
        if self._seen is None or self._seen[0] != latest_epoch:
            self._seen = (latest_epoch, now)
        return now - self._seen[1]
