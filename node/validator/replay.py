"""Replay a bundle: one prefill of the whole model, then every stage's proofs and the sampling (I4).

Each stage's chunks are also judged together, over the whole job (node/toploc/job_statistics.py,
`stage_job_check`): a stage whose every chunk passes but whose job mean does not is blamed (`job_figures`).

The validator feeds prompt + output[:-1] (the last sampled token is never fed back) through the full
model once (`node.pipeline.model.replay`), which yields the hidden states at every stage boundary and the
logits at every position. Each boundary tensor is split the way the stage proved it (the proof schedule
in INTERFACES.md: the prefill block, then decode rows in chunks of 32) and checked against the stage's
committed proofs; the logits of the positions that produced output tokens check the sampling.

`findings_of` returns the `Findings` that `verdict.decide` judges and the figures behind them, which go
into the evidence (node/validator/evidence.py) so that anyone can see why.

Defences (node/validator/defence.py), judged from the first stage on: the rows a stage handed in are
checked, over every entry, against what its predecessor honestly sends from what *it* received (its own
defence's rows when it handed one in, else the tokens; handoffs rounded to the wire dtype). Rows beyond the
tolerance convict the predecessor; rows within it are what the stage really computed on, and the replay
goes on from them for that stage and every later one (`replay_from`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Mapping, Sequence

from node.protocol.job import JobSpec
from node.protocol.receipts import processed_token_count
from node.toploc.thresholds import thresholds_for
from node.validator.verdict import Findings, Reason


@dataclass(frozen=True)
class ReplayReport:
    findings: Findings
    figures: dict[str, Any]
    seconds: float


def work_units_of(spec: JobSpec, output_token_ids: Sequence[int]) -> tuple[int, ...]:
    """What each stage did for this job: its layers times the tokens it processed."""
    tokens = processed_token_count(spec, output_token_ids)
    return tuple(stage.num_layers * tokens for stage in spec.stages)


def skipped_findings(spec: JobSpec, output_token_ids: Sequence[int]) -> Findings:
    """The findings of a job the spot-check draw left out of replay: nothing checked, the work as claimed."""
    return Findings((None,) * len(spec.stages), None, work_units_of(spec, output_token_ids), replay_skipped=True)


def findings_of(
    model: Any,
    spec: JobSpec,
    output_token_ids: Sequence[int],
    stage_proofs: Sequence[Sequence[bytes]],
    handoff_faults: Sequence[tuple[int, Any]] = (),
    defences: Mapping[int, Sequence[Any]] = {},
) -> ReplayReport:
    """Check every stage's proofs and the sampling of one job against one replay of `model`; the handoff
    faults found without a model (handoff_faults.py) go into the findings as they are, and `defences`
    (stage -> the ReceivedHandoffs it handed in) are judged where that stage's proofs fail."""
    import torch

    # torch: imported where used, to keep it out of start-up
    from node.pipeline.model import replay, replay_from
    from node.toploc.activation import verify_proofs
    from node.toploc.job_statistics import stage_job_check
    from node.toploc.sampling import verify_sampling
    from node.validator.defence import check_defence  # torch too
    from node.pipeline.wire import WIRE_DTYPES  # torch too  # isort: skip

    if model.dtype != WIRE_DTYPES[spec.precision]:
        raise ValueError(f"a job declared {spec.precision} is replayed in {spec.precision}, not in {model.dtype}")
    thresholds = thresholds_for(spec.precision)  # I8: the declared precision's bounds
    started = time.perf_counter()
    prompt = list(spec.prompt_token_ids)
    output = list(output_token_ids)
    boundaries = [stage.layer_end for stage in spec.stages]
    tokens = prompt + output[:-1]
    work_units = work_units_of(spec, output)
    timings: dict[str, float] = {}
    with torch.inference_mode():
        p = len(prompt)
        hidden, logits = replay(model, tokens, boundaries, logits_from=p - 1)  # logits[i] predicts output[i]
        timings["forward"] = time.perf_counter() - started
        proofs_ok: list[bool | None] = []
        jobs_ok: list[bool | None] = []
        stage_figures: list[Any] = []
        faults = list(handoff_faults)
        defence_figures: dict[str, Any] = {}
        inputs: dict[int, Any] = {}  # stage -> the rows it really received (from a defence that held)
        replayed = list(hidden)  # from the tokens; `hidden` follows the re-runs
        for stage, proofs in enumerate(stage_proofs):
            if stage in defences and stage > 0:
                handed = defences[stage]
                sent = _sent_by(model, spec, tokens, stage - 1, inputs, handed, replayed)
                defence = check_defence(handed, spec.stages[stage - 1].worker, stage_proofs[stage - 1], sent, p,
                                        thresholds.handoff)
                defence_figures[str(stage)] = defence.figures()
                if defence.valid:  # its real inputs: replay it and every later stage from them
                    if defence.altered:
                        faults.append((stage - 1, Reason.ALTERED_HANDOFF))
                    inputs[stage] = defence.inputs
                    rerun, logits = replay_from(model, defence.inputs, spec.stages[stage].layer_start,
                                                boundaries[stage:], logits_from=p - 1)
                    hidden[stage:] = rerun
            check = verify_proofs(hidden[stage][:p], hidden[stage][p:], list(proofs), thresholds.activation)
            job = stage_job_check(check.chunks, thresholds.job, thresholds.activation.short_rows)
            proofs_ok.append(bool(check.ok))
            jobs_ok.append(job.ok)
            stage_figures.append({**_jsonable(check), "job": _jsonable(job)})
        timings["proofs"] = time.perf_counter() - started - timings["forward"]
        sampling_ok: bool | None = None
        sampling_figures: Any = None
        if all(proofs_ok) and all(jobs_ok) and output:
            check = verify_sampling(logits, output, spec.sampling, spec.seed, first_position=p,
                                    margin=thresholds.sampling.logit_margin)
            sampling_ok = bool(check.ok)
            sampling_figures = _sampling_summary(check)
        elif all(proofs_ok) and all(jobs_ok):
            sampling_ok = True
    findings = Findings(tuple(proofs_ok), sampling_ok, work_units, tuple(faults), stage_jobs_ok=tuple(jobs_ok))
    seconds = time.perf_counter() - started
    timings["sampling"] = seconds - timings["forward"] - timings["proofs"]
    figures = {"precision": spec.precision, "stages": stage_figures, "sampling": sampling_figures, "replayed_tokens": len(tokens),
               "seconds": {k: round(v, 4) for k, v in timings.items()}}
    if defence_figures:
        figures["defences"] = defence_figures
    return ReplayReport(findings, figures, seconds)


def _sent_by(model: Any, spec: JobSpec, tokens: list[int], stage: int, inputs: Mapping[int, Any],
             handed: Sequence[Any], hidden_replay: Sequence[Any]) -> Any:
    """What `stage` honestly sends, as far as the validator knows what it and the stages before it received:
    from the latest stage at or before it whose defence held (its real inputs), else from the tokens, every
    handoff between rounded to the wire dtype the claims name, as the pipeline computed."""
    import torch

    # torch: imported where used, to keep it out of start-up
    from node.pipeline.model import boundary_as_sent
    from node.pipeline.wire import WIRE_DTYPES

    dtypes = {handoff.claim.dtype for handoff in handed}
    wire = WIRE_DTYPES[dtypes.pop()] if len(dtypes) == 1 else torch.float32
    known = max((s for s in inputs if s <= stage), default=None)
    if known is None and wire == torch.float32:
        return hidden_replay[stage]  # the replay itself, computed before any re-run replaced a later boundary
    first = 0 if known is None else known
    start = tokens if known is None else inputs[known]
    ends = [s.layer_end for s in spec.stages[first : stage + 1]]
    return boundary_as_sent(model, start, spec.stages[first].layer_start, ends, wire).to(torch.float32)


def _sampling_summary(check: Any) -> dict[str, Any]:
    gaps = list(check.score_gaps)
    return {
        "ok": bool(check.ok),
        "first_failure": check.first_failure,
        "reason": check.reason,
        "margin": check.margin,
        "max_gap": max(gaps) if gaps else None,
        "failing_gap": gaps[check.first_failure] if check.first_failure is not None else None,
    }


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None  # JSON has neither NaN nor infinity (an unbounded threshold: fp32's short-chunk bounds)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)
