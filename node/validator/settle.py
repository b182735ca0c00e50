"""Where money moves: a verdict turned into the journal entries and chain orders it implies (PROTOCOL I4).

`decide` (verdict.py) says who is paid and who is blamed; `settle` names every balance change that follows,
and nothing else writes one. It is pure, like the state transition of the Ethereum execution specs: no
database, no chain, no clock. The validator writes what it returns in the transaction that records the
verdict, so a verdict and its money are committed together or not at all.

- accepted, or blamed for stages before the blamed one: a `reward` entry per paid stage;
- blamed: a `slash` entry against the blamed stage's worker and a `slash` order for the chain, both keyed
  by the evidence hash (the chain and the ledger point at the same document, and neither takes it twice);
- soft-invalidated: a `soft_invalidation` entry, nobody paid and nobody slashed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger import journal
from node.protocol.job import JobSpec
from node.validator.verdict import Outcome, Verdict

SLASH_ORDER = "slash"  # the outbox kind the chain sender turns into StagewiseStaking.slash


@dataclass(frozen=True)
class ChainOrder:
    """A transaction the chain is owed: `kind` names the contract call, `key` makes it idempotent."""

    kind: str
    key: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Settlement:
    entries: tuple[journal.NewEntry, ...]
    orders: tuple[ChainOrder, ...]

    @property
    def slashed(self) -> dict[str, Any] | None:
        """The slash order's payload (worker, amount, evidence hash, job, stage), when the verdict blames."""
        return next((order.payload for order in self.orders if order.kind == SLASH_ORDER), None)


def settle(
    verdict: Verdict,
    spec: JobSpec,
    evidence_hash: str | None,
    *,
    work_units: Sequence[int],
    blamed_figures: Any = None,
    soft_reason: str | None = None,
) -> Settlement:
    """The balance changes `verdict` on the job `spec` implies. `work_units[s]` is what stage s did (layers x
    tokens), journaled beside its reward; `blamed_figures` the replay's figures for the blamed stage, kept in
    the slash entry; `soft_reason` why a soft invalidation happened, when the caller knows."""
    if len(verdict.rewards_wei) != len(spec.stages) or len(work_units) != len(spec.stages):
        raise ValueError("a verdict and its work name every stage of the job")
    if verdict.outcome is Outcome.BLAMED and not evidence_hash:
        raise ValueError("a slash names the evidence it rests on")
    job_id = spec.job_id_hex
    entries = [
        journal.reward(spec.stages[stage].worker, amount, job_id=job_id, stage=stage, work_units=work_units[stage])
        for stage, amount in enumerate(verdict.rewards_wei)
        if amount > 0
    ]
    orders: list[ChainOrder] = []
    if verdict.outcome is Outcome.BLAMED:
        blamed = spec.stages[verdict.blamed_stage].worker
        entries.append(
            journal.slash(
                blamed,
                verdict.slash_wei,
                evidence_hash=evidence_hash,
                job_id=job_id,
                stage=verdict.blamed_stage,
                data={"reason": verdict.reason.value, "figures": blamed_figures},
            )
        )
        orders.append(
            ChainOrder(
                SLASH_ORDER,
                evidence_hash,
                {
                    "worker": blamed,
                    "amount": str(verdict.slash_wei),
                    "evidence_hash": evidence_hash,
                    "job_id": job_id,
                    "stage": verdict.blamed_stage,
                },
            )
        )
    elif verdict.outcome is Outcome.SOFT_INVALIDATED:
        entries.append(journal.soft_invalidation(job_id, data={"reason": soft_reason} if soft_reason else None))
    return Settlement(tuple(entries), tuple(orders))
