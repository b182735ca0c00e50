"""The compute side of a stage: run one micro-batch step over the sequences that have input ready.

`StageEngine.step` is synchronous (the stage server runs it on its compute thread while the event loop keeps
the links moving). For every sequence in the step it checks the input's position, rebuilds the proof of what
the previous stage sent (PROTOCOL I2), runs the layers once over all rows together, rounds the output to the
wire dtype, adds it to this stage's own proofs (signing each completed chunk), and on the last stage samples
the next token with the Gumbel sampler. A problem with one sequence fails that sequence only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from node.pipeline.assignment import Assignment
from node.pipeline.model import StageModel
from node.pipeline.sequence import FAILED, ChunkRows, SequenceFailed, SequenceState, StageResult
from node.pipeline.wire import cast_for_wire, dtype_name, wire_bytes
from node.protocol.complaints import Complaint
from node.protocol.handoff import HandoffClaim, ReceivedHandoff, rows_digest
from node.protocol.job import JobSpec
from node.protocol.signing import SigningKey
from node.toploc.activation import ProofBuilder
from node.toploc.sampling import sample_next

# tamper(job id hex, stage index, start position, rows) -> rows actually sent. Only for tests and the devnet's
# cheater: it changes what goes on the wire *after* the honest proof was built (the claim's digest covers the
# bytes really sent, so the receiver holds signed evidence of the lie).
Tamper = Callable[[str, int, int, torch.Tensor], torch.Tensor]


def new_proof_builder():
    return ProofBuilder()


@dataclass
class StepInput:
    seq: SequenceState
    start: int
    inputs: torch.Tensor  # token ids [n] on stage 0, received rows [n, hidden] elsewhere


@dataclass
class StepOutput:
    seq: SequenceState
    start: int
    rows: torch.Tensor | None = None  # what to send on (None on the last stage)
    claims: list[tuple[HandoffClaim, bytes]] = field(default_factory=list)  # (claim, signature) to send
    token: int | None = None  # last stage: the sampled token
    failure: SequenceFailed | None = None


@dataclass
class EngineStats:
    steps: int = 0
    rows: int = 0
    compute_s: float = 0.0  # the layers (and the LM head on the last stage)
    sample_s: float = 0.0  # the Gumbel sampler, per sequence (last stage)
    proof_s: float = 0.0  # building our proofs and rebuilding our predecessor's
    check_s: float = 0.0  # signatures and comparisons of claimed proofs (on the event loop)


class StageEngine:
    def __init__(self, model: StageModel, assignment: Assignment, key: SigningKey, tamper: Tamper | None = None,
                 cheat: Any = None):
        """`tamper` and `cheat` (node.worker.cheats.Cheat: `equivocates`, `complains_falsely`) only for tests and the
        devnet's cheater: the handoff lies the protocol must turn back on the liar."""
        self.model, self.assignment, self.key, self.tamper = model, assignment, key, tamper
        self.equivocates = bool(cheat is not None and cheat.equivocates)
        self.complains_falsely = bool(cheat is not None and cheat.complains_falsely)
        self._handed: dict[str, Any] = {}  # equivocation: a proof builder over what is really sent, per job
        self.stats = EngineStats()

    def open(self, spec: JobSpec) -> SequenceState:
        limit = self.model.config.max_position_embeddings
        if len(spec.prompt_token_ids) + spec.sampling.max_new_tokens > limit:
            raise SequenceFailed(f"prompt + max_new_tokens exceeds the model's {limit} positions")
        if self.assignment.is_first and max(spec.prompt_token_ids) >= self.model.config.vocab_size:
            raise SequenceFailed(f"prompt token id out of the vocabulary [0, {self.model.config.vocab_size})")
        return SequenceState(
            spec=spec, job_id=spec.job_id, cache=self.model.new_cache(), outbound=new_proof_builder(),
            inbound=None if self.assignment.is_first else new_proof_builder(),
        )

    # ------------------------------------------------------------------------------------------ one step

    def step(self, items: list[StepInput]) -> list[StepOutput]:
        outputs: list[StepOutput] = []
        live: list[tuple[StepInput, StepOutput]] = []
        started = time.perf_counter()
        for item in items:
            out = StepOutput(item.seq, item.start)
            outputs.append(out)
            try:
                self._check_input(item)
                if not self.assignment.is_first:
                    self._rebuild(item)
                live.append((item, out))
            except SequenceFailed as failure:
                out.failure = failure
        self.stats.proof_s += time.perf_counter() - started
        if not live:
            return outputs
        compute_started = time.perf_counter()
        inputs = torch.cat([item.inputs for item, _ in live])
        hidden = self.model(inputs, [item.seq.cache for item, _ in live], [item.inputs.shape[0] for item, _ in live])
        logits = None
        if self.assignment.is_last:
            last_rows = torch.tensor([item.inputs.shape[0] for item, _ in live]).cumsum(0) - 1
            logits = self.model.logits(hidden[last_rows])
        self.stats.compute_s += time.perf_counter() - compute_started
        self.stats.steps += 1
        self.stats.rows += inputs.shape[0]
        offset = 0
        for index, (item, out) in enumerate(live):
            count = item.inputs.shape[0]
            rows = hidden[offset : offset + count]
            offset += count
            seq = item.seq
            seq.rows_done += count
            seq.last_progress = time.monotonic()
            proof_started = time.perf_counter()
            sent = rows if self.assignment.is_last else cast_for_wire(rows, self.assignment.wire_dtype)
            if not self.assignment.is_last:
                out.rows = self.tamper(seq.job_id_hex, self.assignment.stage_index, item.start, sent) if self.tamper else sent
                dtype = self.assignment.wire_dtype
                seq.out_tape.add(item.start, count, dtype, wire_bytes(out.rows, dtype))
            handed = self._prove_sent(seq, item.start, out.rows) if self.equivocates and out.rows is not None else None
            for index_in_step, (chunk, proof) in enumerate(self._prove(seq, item.start, sent)):
                seq.proofs.append(proof)
                if not self.assignment.is_last:
                    out.claims.append(self._claim(seq, chunk, handed[index_in_step] if handed else proof))
            self.stats.proof_s += time.perf_counter() - proof_started
            if self.assignment.is_last:
                sample_started = time.perf_counter()
                out.token = self._sample(seq, logits[index : index + 1], position=seq.cache.length)
                self.stats.sample_s += time.perf_counter() - sample_started
        return outputs

    def _claim(self, seq: SequenceState, chunk: int, proof: bytes) -> tuple[HandoffClaim, bytes]:
        """Sign the chunk just closed: its positions, the digest of the bytes sent for it and its proof."""
        rows = seq.out_tape.close()
        claim = HandoffClaim(seq.job_id, self.assignment.stage_index, chunk, rows.start, rows.count, rows.dtype,
                             rows_digest(rows.data), proof)
        return claim, claim.sign(self.key)

    def _check_input(self, item: StepInput) -> None:
        seq, count = item.seq, item.inputs.shape[0]
        if item.start != seq.cache.length:
            raise SequenceFailed(f"received position {item.start}, expected {seq.cache.length}")
        if item.start == 0 and count != seq.prompt_len:
            raise SequenceFailed(f"prefill of {count} rows for a {seq.prompt_len}-token prompt")
        if item.start > 0 and count != 1:
            raise SequenceFailed(f"decode step of {count} rows (one expected)")
        if item.start + count > seq.prompt_len + seq.spec.sampling.max_new_tokens - 1:
            raise SequenceFailed(f"position {item.start + count - 1} is past the job's token budget")

    def _rebuild(self, item: StepInput) -> None:
        """Hash and prove what the previous stage sent, chunk by chunk, exactly as it arrived."""
        seq = item.seq
        rows = item.inputs
        dtype = dtype_name(rows.dtype)
        seq.in_tape.add(item.start, rows.shape[0], dtype, wire_bytes(rows, dtype))
        proof = seq.inbound.add_prefill(rows) if item.start == 0 else seq.inbound.add_decode_row(rows[0])
        if proof is not None:
            seq.rebuilt.append(proof)
            seq.received.append(seq.in_tape.close())

    def _prove(self, seq: SequenceState, start: int, rows: torch.Tensor) -> list[tuple[int, bytes]]:
        chunk = len(seq.proofs)
        if start == 0:
            return [(chunk, seq.outbound.add_prefill(rows))]
        proof = seq.outbound.add_decode_row(rows[0])
        return [] if proof is None else [(chunk, proof)]

    def _prove_sent(self, seq: SequenceState, start: int, rows: torch.Tensor) -> list[bytes]:
        """Equivocation: proofs of the rows really sent, for the claims (the receipt keeps the honest ones)."""
        builder = self._handed.setdefault(seq.job_id_hex, new_proof_builder())
        if start == 0:
            return [builder.add_prefill(rows)]
        proof = builder.add_decode_row(rows[0])
        return [] if proof is None else [proof]

    def _sample(self, seq: SequenceState, logits: torch.Tensor, position: int) -> int:
        token = sample_next(logits, seq.spec.sampling, seq.spec.seed, torch.tensor([position]))
        return int(token[0])

    # ------------------------------------------------------------------------------------------ handoff checks

    def record_claim(self, seq: SequenceState, chunk: int, proof: bytes, digest: bytes, signature: bytes) -> None:
        """A signed chunk claim from the previous stage; it is checked once the chunk's rows are all here."""
        if chunk in seq.claimed:
            raise SequenceFailed(f"chunk {chunk} proof sent twice")
        if chunk > len(seq.rebuilt) + 1:
            raise SequenceFailed(f"chunk {chunk} proof arrived before chunk {len(seq.rebuilt)} was complete")
        seq.claimed[chunk] = (proof, digest, signature)

    def check_claims(self, seq: SequenceState) -> None:
        """Judge every chunk both received and claimed (PROTOCOL I2). A claim that is not the sender's over the
        positions and dtype received, or whose digest is not that of the bytes received, refuses the job
        (no evidence against anyone); a signed digest that matches with a proof that does not raises with the
        evidence (`Complaint`)."""
        started = time.perf_counter()
        a = self.assignment
        sender = a.stages[a.stage_index - 1].worker
        try:
            while seq.checked_chunks < len(seq.rebuilt) and seq.checked_chunks in seq.claimed:
                chunk = seq.checked_chunks
                proof, digest, signature = seq.claimed[chunk]
                rows: ChunkRows = seq.received[chunk]
                claim = HandoffClaim(seq.job_id, a.stage_index - 1, chunk, rows.start, rows.count, rows.dtype, digest, proof)
                if not claim.signed_by(signature, sender):
                    raise SequenceFailed(
                        f"chunk {chunk} claim is not signed by stage {a.stage_index - 1} ({sender}) for positions "
                        f"[{rows.start}, {rows.start + rows.count}) in {rows.dtype}"
                    )
                if rows_digest(rows.data) != digest:
                    raise SequenceFailed(f"the bytes received for chunk {chunk} are not the bytes stage {a.stage_index - 1} signed")
                if seq.rebuilt[chunk] != proof or self.complains_falsely:
                    raise SequenceFailed(
                        f"stage {a.stage_index - 1} sent activations that do not match its signed proof for chunk {chunk}",
                        Complaint(a.stage_index, claim, signature, rows.data),
                    )
                seq.handoffs.append(ReceivedHandoff(claim, signature, rows.data))
                seq.checked_chunks += 1
        finally:
            self.stats.check_s += time.perf_counter() - started

    def finish_inbound(self, seq: SequenceState) -> None:
        """At the job's end: close the rebuild and demand that every chunk was claimed and matched."""
        if seq.inbound is not None:
            proof = seq.inbound.finish()
            if proof is not None:
                seq.rebuilt.append(proof)
                seq.received.append(seq.in_tape.close())
            self.check_claims(seq)
            if seq.checked_chunks != len(seq.rebuilt) or len(seq.claimed) != len(seq.rebuilt):
                raise SequenceFailed(
                    f"stage {self.assignment.stage_index - 1} claimed {len(seq.claimed)} chunk proofs for "
                    f"{len(seq.rebuilt)} chunks it sent"
                )

    def finish_outbound(self, seq: SequenceState) -> tuple[HandoffClaim, bytes] | None:
        """Close this stage's own proofs; the last partial chunk's signed claim if there is one (none is sent
        on from the last stage, which hands over tokens, not rows)."""
        proof = seq.outbound.finish()
        if proof is None:
            return None
        chunk = len(seq.proofs)
        seq.proofs.append(proof)
        if self.assignment.is_last:
            return None
        handed = self._handed.pop(seq.job_id_hex, None)
        return self._claim(seq, chunk, handed.finish() if handed is not None else proof)

    def result(self, seq: SequenceState) -> StageResult:
        a = self.assignment
        output = tuple(seq.output)
        expected_rows = seq.prompt_len + max(len(output) - 1, 0)
        if seq.rows_done != expected_rows:
            raise SequenceFailed(f"ran {seq.rows_done} positions, a {len(output)}-token output needs {expected_rows}")
        return StageResult(
            job_id=seq.job_id_hex, spec=seq.spec, stage_index=a.stage_index,
            layer_start=a.me.layer_start, layer_end=a.me.layer_end, proofs=tuple(seq.proofs),
            consumed_token_ids=tuple(seq.spec.prompt_token_ids) if a.is_first else (),
            produced_token_ids=output if a.is_last else (), output_token_ids=output,
            token_count=seq.rows_done, work_units=seq.rows_done * (a.me.layer_end - a.me.layer_start),
            finish_reason=seq.finish_reason or "", handoffs=tuple(seq.handoffs),
        )


def finish_reason(seq: SequenceState, token: int) -> str | None:
    """Why the job ends after `token` (its stop ids or its token budget), or None to go on."""
    if token in seq.spec.sampling.stop_ids:
        return "stop"
    if len(seq.output) >= seq.spec.sampling.max_new_tokens:
        return "length"
    return None


def fail(seq: SequenceState, reason: str) -> None:
    seq.status, seq.error = FAILED, reason
