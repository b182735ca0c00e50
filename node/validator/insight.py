"""Read-only views for the dashboard and other clients: the journal over time, slashes per worker, a worker's jobs
and what it can claim.

Each reads a bounded number of indexed rows (the newest journal entries by `seq`, one worker's rows by
`ix_journal_worker_seq`, the workers table) and never writes. Amounts are wei as decimal strings, as everywhere
in the API; the dashboard shows them in ether.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import case, func, select

from ledger import journal
from ledger.models import ChainOutbox, EpochReward, Job, JournalEntry, StageReceipt, Verdict, Worker
from ledger.store import Ledger

SERIES_ENTRIES = 5000  # the newest journal entries a time series looks at
_J = JournalEntry.__table__
_W = Worker.__table__
_R = StageReceipt.__table__
_V = Verdict.__table__
_JOBS = Job.__table__
_O = ChainOutbox.__table__


async def series(ledger: Ledger, bucket_s: int, buckets: int) -> dict[str, Any]:
    """Rewards, slashes, jobs and tokens per `bucket_s` seconds over the newest `buckets` buckets that have any.

    Tokens are the generated tokens of the jobs rewarded or slashed in the bucket (their last stage's count),
    so `tokens_per_s` is the throughput the validator verified, bucket by bucket."""
    async with ledger.reading() as conn:
        rows = (
            await conn.execute(
                select(_J.c.kind, _J.c.amount, _J.c.job_id, _J.c.at_ms)
                .where(_J.c.kind.in_([journal.REWARD, journal.SLASH]))
                .order_by(_J.c.seq.desc())
                .limit(SERIES_ENTRIES)
            )
        ).all()
        job_ids = sorted({r.job_id for r in rows if r.job_id})
        tokens: dict[str, int] = {}
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            found = await conn.execute(
                select(_R.c.job_id, func.max(_R.c.token_count)).where(_R.c.job_id.in_(chunk)).group_by(_R.c.job_id)
            )
            tokens.update({job_id: int(count or 0) for job_id, count in found.all()})
    width = bucket_s * 1000
    table: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"rewards": 0, "reward_entries": 0, "slashes": 0, "slashed": 0, "jobs": set()}
    )
    for row in rows:
        bucket = table[row.at_ms // width * width]
        if row.kind == journal.REWARD:
            bucket["rewards"] += row.amount
            bucket["reward_entries"] += 1
        else:
            bucket["slashes"] += 1
            bucket["slashed"] += row.amount
        if row.job_id:
            bucket["jobs"].add(row.job_id)
    items = []
    for start_ms in sorted(table)[-buckets:]:
        bucket = table[start_ms]
        generated = sum(tokens.get(job_id, 0) for job_id in bucket["jobs"])
        items.append({
            "start_ms": start_ms,
            "jobs": len(bucket["jobs"]),
            "tokens": generated,
            "tokens_per_s": round(generated / bucket_s, 3),
            "rewards_wei": str(bucket["rewards"]),
            "reward_entries": bucket["reward_entries"],
            "slashes": bucket["slashes"],
            "slashed_wei": str(bucket["slashed"]),
        })
    return {"bucket_s": bucket_s, "items": items}


async def standings(ledger: Ledger, offset: int, limit: int) -> dict[str, Any]:
    """The leaderboard with slashed workers below clean ones: clean workers first, then the slashed; within each, by
    total reward (ties: by address). `net_wei` is rewards less the amount slashed."""
    slashed = case((_W.c.slashes > 0, 1), else_=0)
    async with ledger.reading() as conn:
        total = (await conn.execute(select(func.count()).select_from(_W))).scalar_one()
        rows = (
            await conn.execute(
                select(_W).order_by(slashed, _W.c.rewards.desc(), _W.c.address.desc()).offset(offset).limit(limit)
            )
        ).all()
    items = [
        {
            "rank": offset + i + 1,
            "address": r.address,
            "rewards": str(r.rewards),
            "slashed_amount": str(r.slashed_amount),
            "net_wei": str(r.rewards - r.slashed_amount),
            "accepted_jobs": r.accepted_jobs,
            "work_units": r.work_units,
            "slashes": r.slashes,
            "stake": str(r.stake),
        }
        for i, r in enumerate(rows)
    ]
    return {"items": items, "total": total, "offset": offset, "limit": limit, "order": "clean first, then by rewards"}


async def slashed_workers(ledger: Ledger, offset: int, limit: int) -> dict[str, Any]:
    """Slashes collapsed per worker: how many, how much, and the latest (when, which job, why); most slashed first."""
    async with ledger.reading() as conn:
        where = _W.c.slashes > 0
        total = (await conn.execute(select(func.count()).select_from(_W).where(where))).scalar_one()
        workers = (
            await conn.execute(
                select(_W.c.address, _W.c.slashes, _W.c.slashed_amount)
                .where(where)
                .order_by(_W.c.slashes.desc(), _W.c.address)
                .offset(offset)
                .limit(limit)
            )
        ).all()
        items = []
        for worker in workers:
            last = (
                await conn.execute(
                    select(_J.c.seq, _J.c.job_id, _J.c.stage, _J.c.at_ms, _J.c.data, _V.c.reason, _O.c.status, _O.c.tx_hash)
                    .select_from(
                        _J.outerjoin(_V, _V.c.job_id == _J.c.job_id)
                        .outerjoin(_O, (_O.c.kind == "slash") & (_O.c.key == _J.c.evidence_hash))
                    )
                    .where(_J.c.worker == worker.address, _J.c.kind == journal.SLASH)
                    .order_by(_J.c.seq.desc())
                    .limit(1)
                )
            ).one_or_none()
            items.append({
                "worker": worker.address,
                "count": worker.slashes,
                "amount_wei": str(worker.slashed_amount),
                "last_seq": last.seq if last else None,
                "last_at_ms": last.at_ms if last else None,
                "last_job_id": last.job_id if last else None,
                "last_stage": last.stage if last else None,
                "last_reason": _why(last.data, last.reason) if last else None,
                "last_chain_status": last.status if last else None,  # the slash sent to the contract: pending, sent
                "last_chain_tx": last.tx_hash if last else None,
            })
    return {"items": items, "total": total, "offset": offset, "limit": limit}


async def worker_jobs(ledger: Ledger, address: str, offset: int, limit: int) -> dict[str, Any]:
    """The jobs a worker served a stage of, newest first: its stage, the verdict, the verifier's one-line why, and
    what the verdict paid it or took from it."""
    async with ledger.reading() as conn:
        where = _R.c.worker == address
        total = (await conn.execute(select(func.count()).select_from(_R).where(where))).scalar_one()
        rows = (
            await conn.execute(
                select(_R.c.job_id, _R.c.stage, _R.c.token_count, _R.c.work_units, _JOBS.c.received_at,
                       _JOBS.c.group_id, _V.c.outcome, _V.c.blamed_stage, _V.c.reason, _V.c.decided_at)
                .select_from(_R.join(_JOBS, _JOBS.c.job_id == _R.c.job_id).outerjoin(_V, _V.c.job_id == _R.c.job_id))
                .where(where)
                .order_by(_JOBS.c.received_at.desc(), _R.c.job_id)
                .offset(offset)
                .limit(limit)
            )
        ).all()
        paid: dict[tuple[str, str], int] = defaultdict(int)
        figures: dict[str, Any] = {}
        if rows:
            entries = await conn.execute(
                select(_J.c.job_id, _J.c.kind, _J.c.amount, _J.c.data).where(
                    _J.c.worker == address, _J.c.job_id.in_([r.job_id for r in rows]),
                    _J.c.kind.in_([journal.REWARD, journal.SLASH]),
                )
            )
            for job_id, kind, amount, data in entries.all():
                paid[(job_id, kind)] += amount
                if kind == journal.SLASH:
                    figures[job_id] = data  # the evidence: the verifier's figures and its one-line reason
    items = [
        {
            "job_id": r.job_id,
            "group_id": r.group_id,
            "stage": r.stage,
            "token_count": r.token_count,
            "work_units": r.work_units,
            "received_at": r.received_at.isoformat(),
            "outcome": r.outcome,
            "blamed": r.blamed_stage is not None and r.blamed_stage == r.stage,
            "blamed_stage": r.blamed_stage,
            "reason": _why(figures.get(r.job_id), r.reason),
            "decided_at": r.decided_at.isoformat() if r.decided_at else None,
            "reward_wei": str(paid[(r.job_id, journal.REWARD)]),
            "slashed_wei": str(paid[(r.job_id, journal.SLASH)]),
        }
        for r in rows
    ]
    return {"items": items, "total": total, "offset": offset, "limit": limit}


async def claimable(ledger: Ledger, address: str, rewards: int) -> dict[str, Any]:
    """What a worker can claim: the cumulative amount in the latest closed epoch it has a leaf in (the contract pays
    that less what it already paid out), and what it earned since, claimable once the next epoch closes."""
    t = EpochReward.__table__
    async with ledger.reading() as conn:
        row = (
            await conn.execute(select(t.c.epoch, t.c.cumulative).where(t.c.worker == address).order_by(t.c.epoch.desc()).limit(1))
        ).one_or_none()
    cumulative = row.cumulative if row else 0
    return {
        "epoch": row.epoch if row else None,
        "cumulative_wei": str(cumulative),
        "pending_wei": str(max(0, rewards - cumulative)),
    }


async def slash_reason(ledger: Ledger, evidence_hash: str) -> str | None:
    """The verifier's one-line reason for the slash resting on this evidence (None: no such slash)."""
    async with ledger.reading() as conn:
        row = (
            await conn.execute(select(_J.c.data).where(_J.c.evidence_hash == evidence_hash, _J.c.kind == journal.SLASH))
        ).one_or_none()
    return None if row is None else _why(row.data, None)


def _why(data: Any, reason: str | None) -> str | None:
    """The verifier's one-line reason: the evidence figures' `reason`, else the verdict's."""
    if isinstance(data, dict):
        figures = data.get("figures") if isinstance(data.get("figures"), dict) else {}
        line = figures.get("reason") or data.get("reason")
        if isinstance(line, str):
            return line
    return reason
