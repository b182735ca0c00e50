"""Evidence of a verdict, and recomputing the verdict from it alone (PROTOCOL I5).

Evidence is a JSON document: the bundle exactly as submitted, the model id, the tariff in force, the
findings and figures the validator saw, and the verdict it wrote. `check_evidence` replays the bundle on a
model whose manifest hashes to that model id, judges the findings with the same pure rule
(node/validator/verdict.py) and says whether the stored verdict is the one the evidence implies.
`evidence_hash` is the keccak256 of the canonical encoding: the on-chain slash carries it, so the chain
and the ledger point at the same document.

Command line: `stagewise verify-evidence FILE --model-dir DIR` (node/cli/validator.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eth_hash.auto import keccak

from ledger.errors import InvalidInput
from node.protocol.bundle import Bundle
from node.protocol.handoff import handoff_from_json
from node.protocol.job import JobSpec
from node.validator.handoff_faults import findings_without_replay, handoff_faults
from node.validator.replay import findings_of
from node.validator.verdict import Findings, Outcome, Reason, Tariff, Verdict, decide

EVIDENCE_VERSION = 2  # 2: handoff faults (complaints judged by their evidence, equivocation)
EVIDENCE_MAX_BYTES = 256 << 20  # an evidence file holds the job's receipts and any complaint rows; far below this


class EvidenceError(InvalidInput):
    """A document that is not evidence this version can read."""


@dataclass(frozen=True)
class Evidence:
    model_id: str
    bundle: dict[str, Any]
    tariff: Tariff
    findings: Findings | None  # None only in a soft invalidation (no bundle came to find anything in)
    figures: dict[str, Any]
    verdict: Verdict
    replayed: bool
    defences: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # stage -> ReceivedHandoffs it handed in

    @property
    def job_id(self) -> str:
        return JobSpec.from_dict(self.bundle["spec"]).job_id_hex

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": EVIDENCE_VERSION,
            "model_id": self.model_id,
            "bundle": self.bundle,
            "tariff": self.tariff.to_dict(),
            "findings": None
            if self.findings is None
            else {
                "stage_proofs_ok": list(self.findings.stage_proofs_ok),
                "sampling_ok": self.findings.sampling_ok,
                "work_units": list(self.findings.work_units),
                "handoff_faults": [[stage, reason.value] for stage, reason in self.findings.handoff_faults],
                **({"replay_skipped": True} if self.findings.replay_skipped else {}),
                **({"stage_jobs_ok": list(self.findings.stage_jobs_ok)} if self.findings.stage_jobs_ok else {}),
            },
            "figures": self.figures,
            "verdict": self.verdict.to_dict(),
            "replayed": self.replayed,
            **({"defences": {str(stage): [h.to_json() for h in handoffs] for stage, handoffs in self.defences.items()}}
               if self.defences else {}),
        }

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Any) -> "Evidence":
        if not isinstance(data, dict) or data.get("version") != EVIDENCE_VERSION:
            raise EvidenceError(f"not stagewise evidence of version {EVIDENCE_VERSION}")
        try:
            raw = data["findings"]
            findings = (
                None
                if raw is None
                else Findings(
                    tuple(raw["stage_proofs_ok"]),
                    raw["sampling_ok"],
                    tuple(int(w) for w in raw["work_units"]),
                    tuple((int(stage), Reason(reason)) for stage, reason in raw["handoff_faults"]),
                    replay_skipped=raw.get("replay_skipped") is True,
                    stage_jobs_ok=tuple(raw.get("stage_jobs_ok") or ()),
                )
            )
            return cls(
                model_id=str(data["model_id"]),
                bundle=data["bundle"],
                tariff=Tariff.from_dict(data["tariff"]),
                findings=findings,
                figures=data.get("figures") or {},
                verdict=Verdict.from_dict(data["verdict"]),
                replayed=bool(data["replayed"]),
                defences=_defences(data),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EvidenceError(f"malformed evidence: {error!r}") from None


def _defences(data: dict[str, Any]) -> dict[int, tuple[Any, ...]]:
    raw = data.get("defences") or {}
    if not raw:
        return {}
    job = JobSpec.from_dict(data["bundle"]["spec"]).job_id_hex
    return {int(stage): tuple(handoff_from_json(job, int(stage) - 1, item) for item in items) for stage, items in raw.items()}


def evidence_hash(evidence: Evidence) -> bytes:
    """keccak256 of the canonical evidence: the id of a slash on chain and in the ledger."""
    return keccak(evidence.canonical_bytes())


@dataclass(frozen=True)
class EvidenceCheck:
    stored: Verdict
    recomputed: Verdict
    findings: Findings
    replay_seconds: float

    @property
    def matches(self) -> bool:
        return self.stored == self.recomputed

    def explain(self) -> str:
        if self.matches:
            return f"verdict reproduced: {_describe(self.recomputed)}"
        return f"verdict NOT reproduced: stored {_describe(self.stored)}, the evidence gives {_describe(self.recomputed)}"


def _describe(verdict: Verdict) -> str:
    if verdict.outcome is Outcome.BLAMED:
        return f"blamed stage {verdict.blamed_stage} ({verdict.reason.value}), slash {verdict.slash_wei} wei"
    if verdict.outcome is Outcome.ACCEPTED:
        return f"accepted, rewards {list(verdict.rewards_wei)} wei"
    return "soft-invalidated (incomplete)"


def recompute(evidence: Evidence, model: Any) -> EvidenceCheck:
    """Judge the evidence's bundle again with the same rule: its handoff evidence without a model, then (unless
    a complaint stopped the job) a replay on `model`, the whole model."""
    if evidence.verdict.outcome is Outcome.SOFT_INVALIDATED:
        findings = evidence.findings or Findings((None,) * len(evidence.verdict.rewards_wei), None, (0,) * len(evidence.verdict.rewards_wei))
        return EvidenceCheck(evidence.verdict, evidence.verdict, findings, 0.0)
    bundle = Bundle.from_dict(evidence.bundle)
    faults = handoff_faults(bundle)
    if bundle.complaints:
        findings = findings_without_replay(bundle, faults)
        return EvidenceCheck(evidence.verdict, decide(findings, evidence.tariff), findings, 0.0)
    if model is None:
        raise EvidenceError("this verdict rests on a replay: give the model (--model-dir)")
    report = findings_of(model, bundle.spec, bundle.output_token_ids, [stage.proofs for stage in bundle.stages], faults,
                         evidence.defences)
    return EvidenceCheck(evidence.verdict, decide(report.findings, evidence.tariff), report.findings, report.seconds)


def needs_model(evidence: Evidence) -> bool:
    """Whether recomputing this verdict needs a replay (a complaint or a soft invalidation needs none)."""
    return evidence.verdict.outcome is not Outcome.SOFT_INVALIDATED and not evidence.bundle.get("complaints")


def check_evidence(evidence: Evidence, model_dir: str | None) -> EvidenceCheck:
    """Load the whole model from `model_dir` (when the verdict needs one) in the precision the job declared,
    make sure it is the evidence's model, recompute."""
    # torch: imported where used, to keep it out of start-up
    from node.pipeline.weights import load_stage, model_id
    from node.pipeline.wire import WIRE_DTYPES

    if not needs_model(evidence):
        return recompute(evidence, None)
    if model_dir is None:
        raise EvidenceError("this verdict rests on a replay: give the model (--model-dir)")
    found = model_id(model_dir)
    if found != evidence.model_id.lower():
        raise EvidenceError(f"{model_dir} is model {found}, the evidence is for {evidence.model_id}")
    precision = Bundle.from_dict(evidence.bundle).spec.precision
    return recompute(evidence, load_stage(model_dir, dtype=WIRE_DTYPES[precision]))
