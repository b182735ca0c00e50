"""Every verdict threshold of the TOPLOC checks, in one place.

(Calibration figures are filled in by bench/calibrate_toploc.py; see docs/verification.md.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingThresholds:
    """How far replayed logits may drift from the ones the last stage sampled from.

    `logit_margin` is in logit units: a claimed token passes when its perturbed score
    `logit/T + G` is within `logit_margin / T` of the best one (temperature 0: its logit within
    `logit_margin` of the largest), and it lies in the top-k / top-p set with the same slack.
    """

    logit_margin: float = 0.05


SAMPLING = SamplingThresholds()
