"""Checkers: does a model's output answer the task? Pure functions `(output_text, reference) -> bool`.

* `math`: the PyPI package math-verify parses the reference and the output (a boxed answer first, else the
  last expression) and compares them symbolically: `\\boxed{\\frac{1}{2}}`, `0.5` and `1/2` are one answer.
  What the generated tasks (node.tasks.generators) use.
* `number`: the last number in the output (commas and a trailing `.0` tolerated) equals the reference, the
  GSM8K convention: models restate the question ("7 + 5 = 12") before the answer. One number, not any: a
  model that lists many numbers must not score by luck.
* `exact`: the stripped, case-folded output equals the reference.
* `contains`: the case-folded reference occurs in the output.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from fractions import Fraction

from math_verify import parse, verify

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


MATH_TAIL_CHARS = 4_000  # the answer is at the end; a long output costs the parser time, not the check
MATH_TIMEOUT_S = 5


def check_math(output: str, reference: str) -> bool:
    # math-verify bounds its parsing with SIGALRM, which only the main thread may set: elsewhere, no bound
    # beyond the output's tail
    timeout = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(reference, parsing_timeout=timeout)
    got = parse(output[-MATH_TAIL_CHARS:], parsing_timeout=timeout)
    return bool(gold) and bool(got) and verify(gold, got, timeout_seconds=timeout)


CHECKERS: dict[str, Callable[[str, str], bool]] = {
    "number": check_number,
    "exact": check_exact,
    "contains": check_contains,
    "math": check_math,
}
