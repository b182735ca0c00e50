"""Workers that keep getting blamed are kept out for a while (issue 18, item 1).

A blamed worker is dropped from its group at once (the orchestrator regroups without it); it may register
again, with the stake it has left. A second blame within `window_s` of the latest bans it for `first_s`,
and every further one doubles the ban, up to `max_s`. The ban is read from the ledger's slash history,
so it holds across validator restarts and for every validator on a shared ledger.
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


def banned_until(slash_times_s: Sequence[float], policy: BanPolicy = BanPolicy()) -> float | None:
    """When a worker's ban ends, from its slash times (seconds, any order); None when it is not banned."""
    if not slash_times_s:
        return None
    latest = max(slash_times_s)
    recent = sum(1 for t in slash_times_s if t >= latest - policy.window_s)
    if recent < 2:
        return None
    return latest + min(policy.max_s, policy.first_s * 2 ** (recent - 2))


def ledger_bans(ledger, policy: BanPolicy = BanPolicy()) -> BanLookup:
    """A `BanLookup` over the ledger's slash history; lookups that arrive together share one statement."""

    async def many(addresses: Sequence[str]) -> list[float | None]:
        times = await ledger.slash_times_ms(addresses, policy.history)
        return [banned_until([ms / 1000 for ms in times.get(checksum(a), ())], policy) for a in addresses]

    return BatchedCalls(many)
