"""Workers that keep getting blamed are kept out for a while (issue 18, item 1).

A blamed worker is dropped from its group at once (the orchestrator regroups without it); it may register
again, with the stake it has left. A second blame within `window_s` of the latest bans it for `first_s`,
and every further one doubles the ban, up to `max_s`. A worker the cross-job test flagged (its figures drifted
over its jobs: node/validator/drift.py) is kept out for `drift_s` after the flag. Bans are read from the ledger's
slash history and drift flags, so they hold across validator restarts and for every validator on a shared ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ledger.journal import checksum
from node.orchestration.batched_calls import BatchedCalls

BanLookup = Callable[[str], Awaitable[float | None]]


@dataclass(frozen=True)
class BanPolicy:
    first_s: float = 600.0
    max_s: float = 86_400.0
    window_s: float = 86_400.0
    history: int = 16  # slashes read per lookup: enough to reach max_s from first_s
    drift_s: float = 86_400.0


def banned_until(slash_times_s: Sequence[float], policy: BanPolicy = BanPolicy(),
                 drift_flagged_s: float | None = None) -> float | None:
    """When a worker's ban ends, from its slash times (seconds, any order) and its latest drift flag; None when
    it is not banned."""
    ends = [] if drift_flagged_s is None else [drift_flagged_s + policy.drift_s]
    if slash_times_s:
        latest = max(slash_times_s)
        recent = sum(1 for t in slash_times_s if t >= latest - policy.window_s)
        if recent >= 2:
            ends.append(latest + min(policy.max_s, policy.first_s * 2 ** (recent - 2)))
    return max(ends, default=None)


def ledger_bans(ledger, policy: BanPolicy = BanPolicy()) -> BanLookup:
    """A `BanLookup` over the ledger's slash history and drift flags; lookups that arrive together share one
    statement of each."""

    async def many(addresses: Sequence[str]) -> list[float | None]:
        times = await ledger.slash_times_ms(addresses, policy.history)
        flagged = await ledger.latest_drift_flag_ms(addresses)
        return [banned_until([ms / 1000 for ms in times.get(checksum(a), ())], policy,
                             flagged[checksum(a)] / 1000 if checksum(a) in flagged else None) for a in addresses]

    return BatchedCalls(many)
