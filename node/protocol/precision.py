"""The precision a job's stages compute in (PROTOCOL I8): declared in the job spec, signed in every receipt.

`fp32` is the default and what a spec that names no precision means (its job id is the one it always was).
A validator chooses one precision per model; a worker says at registration which precisions its device can
compute, the stages compute and hand over their activations in the declared one, and the validator replays
in it and judges with the thresholds calibrated for it (node/toploc/thresholds.py `thresholds_for`).
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEFAULT_PRECISION: Precision = "fp32"


def check_precision(value: object, what: str = "precision") -> str:
    """`value` when it is one of PRECISIONS, else ValueError naming `what`."""
    if value not in PRECISIONS:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(PRECISIONS)}")
    return value  # type: ignore[return-value]
