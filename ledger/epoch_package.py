"""An epoch as one validator serves it to another (`GET /v1/epochs/{n}/entries`), and the checks that tie it
to the roots an anchor order or the chain names.

The package is `{"epoch": n, "entries": [Entry.to_json()...], "previous_cumulative": {worker: wei}}`. Whoever
reads one, a co-signer judging an anchor order or a validator following an epoch another anchored, trusts
nothing in it: `check` rebuilds the hash chain, the entries root and the rewards root, the latter from a
cumulative the reader already holds against the chain (the previous epoch's), never from the package's own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger import epochs as epoch_math
from ledger import journal
from ledger.errors import InvalidInput, StagewiseError


class EpochPackageError(StagewiseError):
    """The package is not the epoch it should be: `code` (a metrics label) and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class EpochPackage:
    epoch: int
    entries: tuple[journal.Entry, ...]
    previous_cumulative: Mapping[str, int]


@dataclass(frozen=True)
class EpochRoots:
    """What the package must produce: an anchor order's or an Anchored event's figures."""

    entries_root: str
    rewards_root: str
    entry_count: int


def parse(document: Any, epoch: int) -> EpochPackage:
    if not isinstance(document, dict) or document.get("epoch") != epoch or not isinstance(document.get("entries"), list):
        raise EpochPackageError("entries_malformed", f"the answer is not the entries of epoch {epoch}")
    try:
        entries = tuple(journal.Entry.from_json(item) for item in document["entries"])
        previous = {journal.checksum(w): int(a) for w, a in (document.get("previous_cumulative") or {}).items()}
    except (InvalidInput, KeyError, TypeError, ValueError, AttributeError) as error:
        raise EpochPackageError("entries_malformed", f"an entry of epoch {epoch} does not parse: {error}") from None
    return EpochPackage(epoch, entries, previous)


def cumulative_after(previous: Mapping[str, int], entries: Sequence[journal.Entry]) -> dict[str, int]:
    """Every worker's cumulative reward once `entries` are added to `previous` (a slash never lowers it)."""
    cumulative: dict[str, int] = defaultdict(int, previous)
    for entry in entries:
        if entry.kind == journal.REWARD:
            cumulative[entry.worker] += entry.amount
    return {worker: amount for worker, amount in cumulative.items() if amount > 0}


def check(package: EpochPackage, roots: EpochRoots, previous: Mapping[str, int]) -> dict[str, int]:
    """The cumulative rewards the epoch closes with, when its entries hash-chain to `roots.entries_root` and,
    added to `previous`, give `roots.rewards_root`; EpochPackageError naming the first thing that does not hold."""
    entries = package.entries
    for before, entry in zip([None, *entries], entries):
        if before is not None and (entry.seq != before.seq + 1 or entry.prev_hash != before.entry_hash):
            raise EpochPackageError("entries_root", f"entry {entry.seq} does not follow entry {before.seq} in the hash chain")
        if journal.hash_fields(journal.fields_of(entry), entry.seq, entry.at_ms, entry.prev_hash) != entry.entry_hash:
            raise EpochPackageError("entries_root", f"entry {entry.seq}'s hash is not the hash of its fields")
    if len(entries) != roots.entry_count:
        raise EpochPackageError("entries_root", f"the epoch has {len(entries)} entries, {roots.entry_count} are expected")
    if epoch_math.entries_root([e.entry_hash for e in entries]) != roots.entries_root:
        raise EpochPackageError("entries_root", f"epoch {package.epoch}'s entries do not have the expected entries root")
    cumulative = cumulative_after(previous, entries)
    if epoch_math.rewards_root(cumulative) != roots.rewards_root:
        raise EpochPackageError("rewards_root", f"epoch {package.epoch}'s rewards, added to epoch {package.epoch - 1}'s, "
                                                "do not give the expected rewards root")
    return cumulative
