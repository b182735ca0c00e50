"""Rerouting a sequence whose stage dropped out: continue it, on a repaired group, with the same tokens.

A sequence is a task's prompt, its orchestrator seed (I1) and the tokens generated so far. When a stage of
its group fails, the group gets a replacement for that stage (grouping.regroup) and the sequence goes on as
a **continuation job**: a new `JobSpec` whose prompt is the original prompt followed by the tokens already
generated, with the same seed and the remaining token budget, on the repaired group. The replacement
rebuilds its KV cache from that history in the continuation's prefill (so do the others: one parallel
prefill, cheap next to decoding), and the job produces the same tokens the uninterrupted run would have:

* sampling noise is keyed by (seed, absolute position) (node/toploc/sampling.py), and a continuation samples
  position P+k exactly where the first job would have, with the same seed;
* the logits at P+k are a function of the same token prefix through the same weights.

Receipts and the ledger, with the JobSpec as it is (no protocol change):

* The continuation is an ordinary job: its spec names the replacement in the failed stage's place, so the
  replacement's receipt covers the positions it served, including the history it re-read (work units =
  layers x tokens of the continuation), and every other stage signs the continuation's receipts for its part.
  The validator checks it like any job: one replay over prompt+history+output, proofs per stage.
* The interrupted job never gets a complete bundle: it is soft-invalidated (PROTOCOL: pays nobody,
  slashes nobody). So the dropped worker is paid nothing for the cut job, and nobody is paid twice for the
  prefix: the stages that stayed are paid for re-reading it as the continuation's prefill, not for the
  interrupted decode steps.
* Who did which part is in the orchestrator's record of the sequence: the chain of job ids
  (`SequenceRun.job_ids`) and, per job, the stages' workers in its spec.

Paying stages for the decode work of the interrupted job would need a protocol change (a bundle for a
partial job, ending without a stop token or the token budget, and a way to link it to its continuation);
the report of issue 8 proposes it rather than changing PROTOCOL.md here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.job import JobSpec, SamplingParams, StageAssignment
from node.validator.grouping import Group
from node.validator.tasks import Task


@dataclass
class SequenceRun:
    """One task being generated: mutable history, immutable identity (task, prompt, seed, budget)."""

    task: Task
    prompt_token_ids: tuple[int, ...]
    seed: int
    max_new_tokens: int
    generated: list[int] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    reroutes: int = 0

    def finished(self, stop_ids: tuple[int, ...]) -> bool:
        if len(self.generated) >= self.max_new_tokens:
            return True
        return bool(self.generated) and self.generated[-1] in stop_ids


def continuation_spec(run: SequenceRun, group: Group, model_id: str, sampling: SamplingParams) -> JobSpec:
    """The job that carries `run` on from its history on `group` (the first job when there is no history)."""
    remaining = run.max_new_tokens - len(run.generated)
    if remaining < 1:
        raise ValueError("the sequence is already complete")
    return JobSpec(
        model_id=model_id,
        prompt_token_ids=run.prompt_token_ids + tuple(run.generated),
        sampling=SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=remaining,
            stop_ids=sampling.stop_ids,
        ),
        seed=run.seed,
        group_id=group.group_id,
        stages=tuple(StageAssignment(s.worker, s.layer_start, s.layer_end) for s in group.stages),
    )
