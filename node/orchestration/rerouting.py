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
* The interrupted job never gets a complete bundle: it is soft-invalidated at the deadline (PROTOCOL: pays
  nobody, slashes nobody; the orchestrator registers every job with `ValidatorNode.expect` before sending it,
  so the ledger records that too). So the dropped worker is paid nothing for the cut job, and nobody is paid twice for the
  prefix: the stages that stayed are paid for re-reading it as the continuation's prefill, not for the
  interrupted decode steps.
* The history comes from the interrupted job's last stage, which nobody will verify (its job is never
  bundled), and becomes the continuation's *prompt*, which the validator does not check. So before it is
  reused, the orchestrator checks it with the sampling proof over its own replay (`verified_prefix`): a
  stage that injects tokens and then drops out only loses the tokens after the first bad one.
* Who did which part is in the orchestrator's record of the sequence: the chain of job ids
  (`SequenceRun.job_ids`) and, per job, the stages' workers in its spec.

Paying stages for the decode work of the interrupted job would need a protocol change (a bundle for a
partial job, ending without a stop token or the token budget, and a way to link it to its continuation);
the report of issue 8 proposes it rather than changing PROTOCOL.md here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from node.orchestration.grouping import Group
from node.orchestration.tasks import Task
from node.protocol.job import JobSpec, SamplingParams, StageAssignment


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
    position: int = 0  # in the dispatcher's task list (one entry per sample): what saved progress counts

    def finished(self, stop_ids: tuple[int, ...]) -> bool:
        if len(self.generated) >= self.max_new_tokens:
            return True
        return bool(self.generated) and self.generated[-1] in stop_ids


def continuation_spec(run: SequenceRun, group: Group, model_id: str, sampling: SamplingParams,
                      precision: str = "fp32") -> JobSpec:
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
        attempt=len(run.groups),  # the jobs issued for this sequence so far: its every job has its own id
        precision=precision,
    )


HistoryCheck = Callable[["SequenceRun", SamplingParams], Awaitable[int]]


def verified_prefix(model: Any, run: SequenceRun, sampling: SamplingParams, precision: str = "fp32") -> int:
    """How many of `run.generated` pass the sampling proof against a replay of the whole model (blocking).

    One forward over prompt + history gives the logits that predicted every generated token; the first token
    the verifier rejects, and everything after it, is dropped. A stop token ends the history there.
    """
    import torch

    # torch: imported where used, to keep it out of start-up
    from node.pipeline.model import replay
    from node.toploc.sampling import verify_sampling
    from node.toploc.thresholds import thresholds_for

    history = list(run.generated)
    for index, token in enumerate(history):
        if token in sampling.stop_ids:
            history = history[: index + 1]
            break
    if not history:
        return 0
    vocab = model.config.vocab_size
    if any(not 0 <= t < vocab for t in history):
        history = history[: next(i for i, t in enumerate(history) if not 0 <= t < vocab)]
        if not history:
            return 0
    prompt = list(run.prompt_token_ids)
    _, logits = replay(model, prompt + history[:-1], [model.config.num_layers])
    check = verify_sampling(logits[len(prompt) - 1 :], torch.tensor(history), sampling, run.seed, len(prompt),
                            margin=thresholds_for(precision).sampling.logit_margin)
    return len(history) if check.ok else int(check.first_failure)
