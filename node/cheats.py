"""Deliberate misbehaviour, so that a devnet (and the tests) can show a cheater being caught.

A cheating worker behaves like an honest one on the wire: it signs its hellos, its chunk proofs and its
receipt, and its proofs match what it sends (so its neighbours accept them, PROTOCOL I2). What it
computes is wrong: `perturb` adds relative noise to its layers' weights, the cheapest way to pass off a
different (smaller, quantized, fine-tuned) model as the one the job names. Only the validator's replay
catches it, and blames that stage (I4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from node.pipeline.model import StageModel

KINDS = ("perturb",)


class CheatError(ValueError):
    """A --cheat value that does not parse."""


@dataclass(frozen=True)
class Cheat:
    kind: str
    scale: float

    @classmethod
    def parse(cls, text: str) -> "Cheat":
        """`perturb:1e-3` -> relative noise of 1e-3 on every weight of the stage."""
        kind, _, scale = text.partition(":")
        if kind not in KINDS:
            raise CheatError(f"unknown cheat {kind!r}: one of {', '.join(KINDS)}")
        try:
            value = float(scale or "1e-3")
        except ValueError:
            raise CheatError(f"cheat scale {scale!r} is not a number") from None
        if not value > 0:
            raise CheatError("cheat scale must be > 0")
        return cls(kind, value)

    def apply(self, model: StageModel, seed: int = 0) -> None:
        """Change the loaded stage in place: w <- w * (1 + scale * N(0, 1)), the same noise on every run."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.mul_(1 + self.scale * noise.to(parameter.dtype))
