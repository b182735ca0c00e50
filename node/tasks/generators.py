"""Task generators: verifiable math tasks made from a seed, named on the command line.

    --tasks gen:linear:n=200:seed=1

`gen:NAME[:n=N][:seed=S]` makes N tasks (default 100, at most 1,000,000) of the family NAME from seed S
(default 0): the same spec always gives the same tasks, ids `NAME-S-00001`, ... Every task asks for its
answer in `\\boxed{}` and is checked by `math` (math-verify: equivalent forms count, `1/2` = `0.5`).

Families:
* `arithmetic`: multi-step integer arithmetic with precedence and parentheses, `(a + b) * c - d`.
* `linear`: one linear equation `a x + b = c x + d` in x; the answer may be a fraction.
* `modular`: modular arithmetic, `(a * b + c) mod m` or `a^e mod m`.
* `word`: short word problems (shopping, sharing, speed) with a whole-number answer.

Pure functions of (family, n, seed): `random.Random` seeded with the family's name and the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

PREFIX = "gen:"
DEFAULT_COUNT = 100
MAX_COUNT = 1_000_000
BOXED = " Give the final answer as \\boxed{...}."


@dataclass(frozen=True)
class GeneratedTask:
    task_id: str
    prompt: str
    answer: str
    checker: str = "math"


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b, c, d, e = (rng.randint(2, 40) for _ in range(5))
    shape = rng.randrange(4)
    if shape == 0:
        text, value = f"({a} + {b}) * {c} - {d}", (a + b) * c - d
    elif shape == 1:
        text, value = f"{a} * {b} - {c} * {d} + {e}", a * b - c * d + e
    elif shape == 2:
        text, value = f"{a} + {b} * ({c} - {d})", a + b * (c - d)
    else:
        text, value = f"({a} - {b}) * ({c} + {d}) - {e}", (a - b) * (c + d) - e
    return f"Compute {text}.{BOXED}", str(value)


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _linear(rng: random.Random) -> tuple[str, str]:
    while True:
        a, c = rng.randint(-9, 9), rng.randint(-9, 9)
        if a != c and a != 0:
            break
    b, d = rng.randint(-30, 30), rng.randint(-30, 30)
    x = Fraction(d - b, a - c)

    def side(k: int, m: int) -> str:
        if k == 0:
            return str(m)
        term = "x" if k == 1 else "-x" if k == -1 else f"{k}x"
        return term if m == 0 else f"{term} {'+' if m > 0 else '-'} {abs(m)}"

    return f"Solve for x: {side(a, b)} = {side(c, d)}.{BOXED}", _fraction_text(x)


def _modular(rng: random.Random) -> tuple[str, str]:
    m = rng.randint(5, 97)
    if rng.random() < 0.5:
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(0, 99)
        return f"What is ({a} * {b} + {c}) mod {m}?{BOXED}", str((a * b + c) % m)
    a, e = rng.randint(2, 50), rng.randint(2, 30)
    return f"What is {a}^{e} mod {m}?{BOXED}", str(pow(a, e, m))


_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies")


def _word(rng: random.Random) -> tuple[str, str]:
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    shape = rng.randrange(3)
    if shape == 0:
        boxes, per, given = rng.randint(2, 9), rng.randint(3, 15), rng.randint(1, 10)
        text = (f"{name} buys {boxes} boxes of {item} with {per} {item} in each box, then gives {given} {item} "
                f"to {other}. How many {item} does {name} have left?")
        return text + BOXED, str(boxes * per - given)
    if shape == 1:
        people, each, left = rng.randint(2, 8), rng.randint(2, 12), rng.randint(0, 5)
        total = people * each + left
        text = (f"{name} shares {total} {item} equally among {people} friends and keeps the {left} left over. "
                f"How many {item} does each friend get?")
        return text + BOXED, str(each)
    speed, hours, extra = rng.randint(20, 90), rng.randint(2, 6), rng.randint(5, 60)
    text = (f"{name} drives at {speed} km per hour for {hours} hours, then {extra} km more. "
            f"How many km does {name} drive in total?")
    return text + BOXED, str(speed * hours + extra)


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": _arithmetic,
    "linear": _linear,
    "modular": _modular,
    "word": _word,
}


def is_generator_spec(text: str) -> bool:
    return text.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, int, int]:
    """(family, n, seed) of `gen:NAME[:n=N][:seed=S]`; ValueError says what is wrong (node.orchestration.tasks
    turns it into a TaskError: this package imports nothing of ours, the error tree's root included)."""
    parts = spec.removeprefix(PREFIX).split(":")
    family, options = parts[0], parts[1:]
    if family not in FAMILIES:
        raise ValueError(f"no task generator {family!r}; generators: {', '.join(FAMILIES)}")
    values = {"n": DEFAULT_COUNT, "seed": 0}
    for option in options:
        key, _, value = option.partition("=")
        if key not in values or not value.isdigit() or len(value) > 19:
            raise ValueError(f"{spec}: options are n=COUNT and seed=INTEGER, not {option!r}")
        values[key] = int(value)
    if not 1 <= values["n"] <= MAX_COUNT:
        raise ValueError(f"{spec}: n must be in [1, {MAX_COUNT}]")
    return family, values["n"], values["seed"]


def generate(spec: str) -> list[GeneratedTask]:
    """The tasks a `gen:` spec names, in order."""
    family, count, seed = parse_spec(spec)
    rng = random.Random(f"stagewise/{family}/{seed}")
    make = FAMILIES[family]
    return [GeneratedTask(f"{family}-{seed}-{i:05d}", *make(rng)) for i in range(1, count + 1)]
