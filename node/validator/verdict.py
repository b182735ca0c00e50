"""Where a verdict is made: the verdict on one job, a pure function of what the replay found (PROTOCOL I4,
I5). What it pays and slashes is named in settle.py.

Nothing here touches a model, a database or a clock. The replay turns a bundle into `Findings` (did each
stage's proofs hold, did the sampling hold, which stages the handoff evidence convicts, see
handoff_faults.py); `decide` turns findings and a `Tariff` into a `Verdict`. Because it is pure, anyone holding the evidence recomputes
the same verdict (`stagewise verify-evidence`).

Blame (I4): stages are checked in order 0..S-1 and the first faulty one is blamed. A stage is faulty when
its proofs do not match the replay, when its figures over the whole job do not (every chunk under the per-chunk
bounds, their mean over the job not: node/toploc/job_statistics.py), or when the handoff evidence convicts it (I2): as a sender whose signed
bytes do not have the proof it signed, as a sender that signed two different proofs for one chunk, as a
complainer whose evidence proves nothing, or as a sender whose signed bytes differ from the replay of its
layers when its receiver defends itself. Only when every stage's proofs hold is the sampling proof
consulted; a sampling failure blames the last stage, which sampled.

Pay: when all holds every stage earns `work_units * wei_per_work_unit`. When a stage is blamed it is
slashed; the stages before it proved their work correct and are paid for it (an honest stage is never
punished for a neighbour's lie); the stages after it are neither paid nor slashed, since what they
computed depended on a faulty input.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    BLAMED = "blamed"  # hard invalidation: a stage is blamed and slashed
    SOFT_INVALIDATED = "soft_invalidated"  # incomplete by the deadline: nobody paid, nobody slashed


class Reason(str, Enum):
    PROOF = "proof"  # the stage's activation proofs do not match the replay
    COMPLAINT = "complaint"  # the next stage holds bytes this stage signed whose proof is not the one it signed
    FALSE_COMPLAINT = "false_complaint"  # this stage complained with evidence that proves nothing
    EQUIVOCATION = "equivocation"  # this stage signed two different proofs for one chunk
    FALSE_INPUTS = "false_inputs"  # this stage's receipt names handoff proofs its predecessor never signed
    ALTERED_HANDOFF = "altered_handoff"  # bytes this stage signed and sent differ from the replay of its layers
    JOB_FIGURES = "job_figures"  # each chunk passed, the stage's figures over the whole job do not
    SAMPLING = "sampling"  # an output token is not what the seeded sampler would pick
    INCOMPLETE = "incomplete"  # receipts missing by the deadline


@dataclass(frozen=True)
class Tariff:
    """What a unit of verified work earns and what a proven fault costs, in wei."""

    wei_per_work_unit: int = 10**9
    slash_wei: int = 10**16

    def __post_init__(self) -> None:
        if self.wei_per_work_unit < 0 or self.slash_wei < 0:
            raise ValueError("a tariff is non-negative")

    def to_dict(self) -> dict[str, str]:
        return {"wei_per_work_unit": str(self.wei_per_work_unit), "slash_wei": str(self.slash_wei)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tariff":
        return cls(int(data["wei_per_work_unit"]), int(data["slash_wei"]))


@dataclass(frozen=True)
class Findings:
    """What checking a bundle against the replay found, stage by stage.

    `stage_proofs_ok[s]` is None for a stage whose proofs were not checked (nothing to check against,
    e.g. after a complaint stopped the job). `sampling_ok` is None when the sampling was not checked.
    `handoff_faults` are (stage, reason) pairs the handoff evidence proves (handoff_faults.py).
    `stage_jobs_ok[s]`: did stage s's figures over the whole job hold (node/toploc/job_statistics.py); empty
    when no job-level test was run (a complaint judged without replay), else one per stage.
    `replay_skipped`: the spot-check draw left this job out of replay (sample rate below 1); nothing was
    checked, and the work is paid as its receipts claim it (the chance of a replay is the deterrent).
    """

    stage_proofs_ok: tuple[bool | None, ...]
    sampling_ok: bool | None
    work_units: tuple[int, ...]
    handoff_faults: tuple[tuple[int, Reason], ...] = ()
    replay_skipped: bool = False
    stage_jobs_ok: tuple[bool | None, ...] = ()

    def __post_init__(self) -> None:
        if len(self.stage_proofs_ok) != len(self.work_units):
            raise ValueError("one proof check and one work figure per stage")
        if self.stage_jobs_ok and len(self.stage_jobs_ok) != len(self.work_units):
            raise ValueError("one job-level check per stage, or none")
        if any(not 0 <= s < len(self.work_units) for s, _ in self.handoff_faults):
            raise ValueError("a handoff fault names a stage outside the group")
        if any(w < 0 for w in self.work_units):
            raise ValueError("work units are non-negative")
        if self.replay_skipped and (self.handoff_faults or any(ok is not None for ok in self.stage_proofs_ok + self.stage_jobs_ok)):
            raise ValueError("a job left out of replay has nothing checked; handoff evidence is always judged")

    @property
    def num_stages(self) -> int:
        return len(self.work_units)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    blamed_stage: int | None
    reason: Reason | None
    rewards_wei: tuple[int, ...]  # one per stage; 0 for a stage that is not paid
    slash_wei: int  # taken from the blamed stage's worker; 0 unless blamed

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "blamed_stage": self.blamed_stage,
            "reason": self.reason.value if self.reason else None,
            "rewards_wei": [str(r) for r in self.rewards_wei],
            "slash_wei": str(self.slash_wei),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(
            outcome=Outcome(data["outcome"]),
            blamed_stage=data["blamed_stage"],
            reason=Reason(data["reason"]) if data.get("reason") else None,
            rewards_wei=tuple(int(r) for r in data["rewards_wei"]),
            slash_wei=int(data["slash_wei"]),
        )


def first_faulty_stage(findings: Findings) -> tuple[int, Reason] | None:
    """The first stage, in pipeline order, whose proofs or whole-job figures failed, or whom the handoff evidence
    convicts."""
    convicted: dict[int, Reason] = {}
    for stage, reason in findings.handoff_faults:
        convicted.setdefault(stage, reason)
    for stage, proof_ok in enumerate(findings.stage_proofs_ok):
        if stage in convicted:
            return stage, convicted[stage]
        if proof_ok is False:
            return stage, Reason.PROOF
        if findings.stage_jobs_ok and findings.stage_jobs_ok[stage] is False:
            return stage, Reason.JOB_FIGURES
    return None


def decide(findings: Findings, tariff: Tariff) -> Verdict:
    """Accept and pay every stage, or blame the first faulty stage (I4)."""
    n = findings.num_stages
    if findings.replay_skipped:
        return Verdict(Outcome.ACCEPTED, None, None, tuple(w * tariff.wei_per_work_unit for w in findings.work_units), 0)
    fault = first_faulty_stage(findings)
    if fault is None:
        if any(ok is None for ok in findings.stage_proofs_ok) or findings.sampling_ok is None:
            raise ValueError("a clean verdict needs every stage's proofs and the sampling checked")
        if not findings.sampling_ok:
            fault = (n - 1, Reason.SAMPLING)
    if fault is None:
        rewards = tuple(w * tariff.wei_per_work_unit for w in findings.work_units)
        return Verdict(Outcome.ACCEPTED, None, None, rewards, 0)
    blamed, reason = fault
    rewards = tuple(
        findings.work_units[s] * tariff.wei_per_work_unit if s < blamed and findings.stage_proofs_ok[s] else 0
        for s in range(n)
    )
    return Verdict(Outcome.BLAMED, blamed, reason, rewards, tariff.slash_wei)


def soft_invalidation(num_stages: int) -> Verdict:
    """A job whose bundle did not complete by its deadline: nobody paid, nobody slashed."""
    return Verdict(Outcome.SOFT_INVALIDATED, None, Reason.INCOMPLETE, (0,) * num_stages, 0)
