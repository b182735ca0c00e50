"""A dataset row is what the validator accepted, not what the orchestrator was told.

The orchestrator's tokens arrive from the group while it runs; the validator judged the bundle a stage
submitted. A last stage could stream one completion to the orchestrator and submit another, honest one:
the job is accepted, and without this check the dataset would carry tokens nobody verified. So before a
sample reaches the ledger (`Ledger.record_sample`), `checked_recorder` compares it with the accepted bundle:
the model, the seed, the prompt (for a rerouted sequence, the continuation's prompt is the task's prompt and
the tokens generated before the reroute) and the output tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ledger.journal import Entry
from ledger.models import ACCEPTED
from ledger.samples import SampleError, SampleRecord
from node.protocol.bundle import Bundle


def sample_problem(bundle: Bundle, sample: SampleRecord) -> str | None:
    """Why `sample` is not what the accepted `bundle` computed; None when it is."""
    spec, output = bundle.spec, tuple(bundle.output_token_ids)
    completion, prompt = tuple(sample.completion_token_ids), tuple(sample.prompt_token_ids)
    if sample.model_id.lower() != spec.model_id.lower():
        return f"the sample names model {sample.model_id}, the job ran {spec.model_id}"
    if int(sample.seed) != spec.seed:
        return f"the sample's seed {sample.seed} is not the job's {spec.seed}"
    if len(completion) < len(output) or completion[len(completion) - len(output):] != output:
        return "its completion's last tokens are not the output tokens of the accepted bundle"
    if prompt + completion[:len(completion) - len(output)] != tuple(spec.prompt_token_ids):
        return "its prompt (and the tokens before a reroute) is not the accepted job's prompt"
    return None


def checked_recorder(ledger: Any) -> Callable[[SampleRecord], Awaitable[Entry | None]]:
    """`Ledger.record_sample`, for a sample that matches its job's accepted bundle (SampleError otherwise)."""

    async def record(sample: SampleRecord) -> Entry | None:
        verdict = await ledger.verdict(sample.job_id)
        job = await ledger.job(sample.job_id)
        if verdict is None or verdict.outcome != ACCEPTED or job is None:
            raise SampleError(f"job {sample.job_id} was not accepted: its output is no dataset row")
        problem = sample_problem(Bundle.from_json(job.bundle), sample)
        if problem is not None:
            raise SampleError(f"job {sample.job_id}: {problem}; the sample is not recorded")
        return await ledger.record_sample(sample)

    return record
