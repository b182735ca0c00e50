"""Deliberate misbehaviour, so that a devnet (and the tests) can show a cheater being caught.

Kinds:
- `perturb:SCALE` computes wrong and hides nothing: relative noise on its layers' weights, the cheapest way to
  pass off a different (smaller, quantized, fine-tuned) model as the one the job names. Its proofs match
  what it sends, so its neighbour accepts them; the validator's replay blames it (I4). In bf16 a noise of
  1e-3 moves few weights by a bf16 step and sits below honest drift: the bf16 devnet uses the next two.
- `int4:GROUP` and `sparse-2-4` load cheaper weights in place of the real ones (node/pipeline/weight_cheats.py):
  every matrix of its decoder layers rounded to 4-bit integers with one scale per GROUP inputs, or pruned to
  2:4 structured sparsity. What a worker would run to serve more for less; its proofs separate it from
  honest bf16 drift by 5-9x (issue 20's figures), so the replay blames it.
- The handoff lies of PROTOCOL I2, each one an attack on its neighbours that the protocol must turn back on
  the liar:
  - `quiet:FACTOR` scales every entry of its prefill block that its proof does not bind (outside the top-k)
    by FACTOR < 1:
    its proof stays byte for byte the honest one, and its successor, computing honestly on what it got,
    fails the replay. Its successor's defence (the sender-signed rows it received) convicts it.
  - `equivocate:SCALE` sends rows with relative noise SCALE and hands over proofs of those rows (so its
    successor accepts them), while its receipt commits to the proofs of the honest rows (so the replay
    passes it). Two proofs signed for one chunk convict it.
  - `false-complaint` receives honest rows and complains anyway, keeping the sender's genuine claim: the
    evidence proves the sender right and costs the complainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ledger.errors import InvalidInput

if TYPE_CHECKING:  # torch stays out of the CLI's start-up (the devnet parses --cheat with this module)
    import torch

    from node.pipeline.model import StageModel

KINDS = ("perturb", "int4", "sparse-2-4", "quiet", "equivocate", "false-complaint")
DEFAULTS = {"perturb": 1e-3, "int4": 128.0, "sparse-2-4": 1.0, "quiet": 0.9, "equivocate": 1e-2, "false-complaint": 1.0}
WEIGHT_KINDS = ("perturb", "int4", "sparse-2-4")  # the ones that change the stage's weights (the rest lie in handoffs)


class CheatError(InvalidInput):
    """A --cheat value that does not parse."""


@dataclass(frozen=True)
class Cheat:
    kind: str
    scale: float

    @classmethod
    def parse(cls, text: str) -> "Cheat":
        """`perturb:1e-3` -> relative noise of 1e-3 on every weight of the stage; see the module for the rest."""
        kind, _, scale = text.partition(":")
        if kind not in KINDS:
            raise CheatError(f"unknown cheat {kind!r}: one of {', '.join(KINDS)}")
        try:
            value = float(scale) if scale else DEFAULTS[kind]
        except ValueError:
            raise CheatError(f"cheat scale {scale!r} is not a number") from None
        if not value > 0 or kind == "quiet" and not value < 1 or kind == "int4" and value != int(value):
            raise CheatError("cheat scale must be > 0 (below 1 for quiet, a whole group size for int4)")
        return cls(kind, value)

    @property
    def equivocates(self) -> bool:
        return self.kind == "equivocate"

    @property
    def complains_falsely(self) -> bool:
        return self.kind == "false-complaint"

    def tamper(self) -> Callable[[str, int, int, Any], Any] | None:
        """What the stage does to the rows it sends (node.pipeline.engine.Tamper), if anything."""
        import torch

        if self.kind == "quiet":  # the prefill block is one whole chunk: its top-k is known when it is sent
            return lambda job, stage, start, rows: outside_top_k(rows, self.scale) if start == 0 else rows
        if self.kind == "equivocate":
            def noisy(job: str, stage: int, start: int, rows: torch.Tensor) -> torch.Tensor:
                generator = torch.Generator().manual_seed(start)
                noise = torch.randn(rows.shape, generator=generator, dtype=torch.float32)
                return (rows.float() * (1 + self.scale * noise)).to(rows.dtype)

            return noisy
        return None

    def apply(self, model: "StageModel", seed: int = 0) -> None:
        """Change the loaded stage in place: perturb, w <- w * (1 + scale * N(0, 1)), the same noise on every
        run; int4 or sparse-2-4, every matrix of its decoder layers replaced by its cheaper stand-in."""
        import torch

        if self.kind in ("int4", "sparse-2-4"):
            # torch: imported where used, to keep it out of the CLI's start-up
            from node.pipeline.weight_cheats import quantize_int4_per_group, sparsify_2_4

            cheaper = sparsify_2_4 if self.kind == "sparse-2-4" else lambda w: quantize_int4_per_group(w, int(self.scale))
            with torch.no_grad():
                for parameter in model.layers.parameters():
                    if parameter.dim() == 2:
                        parameter.copy_(cheaper(parameter))
            return
        if self.kind != "perturb":
            return
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.mul_(1 + self.scale * noise.to(parameter.dtype))


def outside_top_k(chunk: "torch.Tensor", factor: float, k: int = 128) -> "torch.Tensor":
    """`chunk` with every entry below its k-th largest magnitude in bf16 (what a proof ranks) scaled by
    `factor` < 1: a smaller entry only shrinks, so the chunk's top-k, and its proof, stay what they were."""
    import torch

    flat = chunk.float().flatten()
    magnitude = flat.to(torch.bfloat16).abs().float()
    kth = magnitude.topk(min(k, flat.numel())).values[-1]
    return torch.where(magnitude >= kth, flat, flat * factor).view_as(chunk).to(chunk.dtype)
