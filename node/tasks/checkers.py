"""Checkers: does a model's output answer the task? Pure functions `(output_text, reference) -> bool`.

* `number`: the last number in the output (commas and a trailing `.0` tolerated) equals the reference, the
  GSM8K convention: models restate the question ("7 + 5 = 12") before the answer. One number, not any: a
  model that lists many numbers must not score by luck.
* `exact`: the stripped, case-folded output equals the reference.
* `contains`: the case-folded reference occurs in the output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> Fraction | None:
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return Fraction(matches[-1].replace(",", ""))


def check_number(output: str, reference: str) -> bool:
    got = last_number(output)
    want = last_number(reference)
    return got is not None and want is not None and got == want


def check_exact(output: str, reference: str) -> bool:
    return output.strip().casefold() == reference.strip().casefold()


def check_contains(output: str, reference: str) -> bool:
    return reference.strip().casefold() in output.casefold()


CHECKERS: dict[str, Callable[[str, str], bool]] = {
    "number": check_number,
    "exact": check_exact,
    "contains": check_contains,
}
