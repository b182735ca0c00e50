"""Every verdict threshold of the TOPLOC checks, in one place, next to the figures they judge.

(Calibration figures are filled in by bench/calibrate_toploc.py; see docs/verification.md.)
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Protocol


class _Figures(Protocol):
    exp_mismatches: int
    sign_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    points: int


@dataclass(frozen=True)
class ActivationThresholds:
    """A chunk passes when every figure is at or below its bound. Counts are per 128 compared entries
    (scaled for the rare smaller chunk)."""

    max_exp_mismatches: int = 4
    max_sign_mismatches: int = 2
    max_mant_err_mean: float = 0.05
    max_mant_err_median: float = 0.5

    def chunk_passes(self, figures: _Figures) -> bool:
        scale = figures.points / 128
        return (
            figures.exp_mismatches <= self.max_exp_mismatches * scale
            and figures.sign_mismatches <= self.max_sign_mismatches * scale
            and figures.mant_err_mean <= self.max_mant_err_mean
            and figures.mant_err_median <= self.max_mant_err_median
        )


@dataclass(frozen=True)
class SamplingThresholds:
    """How far replayed logits may drift from the ones the last stage sampled from.

    `logit_margin` is in logit units: a claimed token passes when its perturbed score
    `logit/T + G` is within `logit_margin / T` of the best one (temperature 0: its logit within
    `logit_margin` of the largest), and it lies in the top-k / top-p set with the same slack.
    """

    logit_margin: float = 1e-3


ACTIVATION = ActivationThresholds()
SAMPLING = SamplingThresholds()
