"""Generated tasks: the same spec gives the same tasks, and each one's reference answer is right by its checker."""

import re
from fractions import Fraction

import pytest

from node.orchestration.tasks import TaskError, load_task_source
from node.tasks.checkers import check_math
from node.tasks.generators import FAMILIES, generate


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_generator_is_a_pure_function_of_its_spec_and_its_answers_check(family):
    tasks = load_task_source(f"gen:{family}:n=200:seed=1")
    assert len(tasks) == 200 and len({t.task_id for t in tasks}) == 200
    assert tasks == load_task_source(f"gen:{family}:n=200:seed=1")
    assert tasks != load_task_source(f"gen:{family}:n=200:seed=2")
    assert len({t.prompt for t in tasks}) > 150  # varied, not one task 200 times
    for task in tasks[:40]:
        assert task.checker == "math" and task.source == f"gen:{family}:n=200:seed=1" and "\\boxed" in task.prompt
        assert task.check(f"So the answer is \\boxed{{{task.answer}}}.")
        assert not task.check(f"So the answer is \\boxed{{{Fraction(task.answer) + 1}}}.")


def test_generated_answers_are_the_true_values():
    for task in generate("gen:arithmetic:n=50:seed=3"):
        expression = re.search(r"Compute (.*)\. Give", task.prompt).group(1)
        assert str(eval(expression)) == task.answer  # integers only: the generator's own text
    for task in generate("gen:linear:n=50:seed=3"):
        left, right = re.search(r"Solve for x: (.*) = (.*)\. Give", task.prompt).groups()

        def value(side, x):
            side = re.sub(r"(\d)x", r"\1*x", side)
            return eval(side.replace("x", f"({x})"), {"Fraction": Fraction})

        x = Fraction(task.answer)
        assert value(left, f"Fraction({x.numerator}, {x.denominator})") == value(right, f"Fraction({x.numerator}, {x.denominator})")
    for task in generate("gen:modular:n=50:seed=3"):
        found = re.search(r"What is \((\d+) \* (\d+) \+ (\d+)\) mod (\d+)", task.prompt)
        if found:
            a, b, c, m = map(int, found.groups())
            assert int(task.answer) == (a * b + c) % m
        else:
            a, e, m = map(int, re.search(r"What is (\d+)\^(\d+) mod (\d+)", task.prompt).groups())
            assert int(task.answer) == pow(a, e, m)


def test_the_math_checker_takes_equivalent_forms_and_not_other_numbers():
    assert check_math("\\boxed{\\frac{1}{2}}", "1/2")
    assert check_math("so x = 0.5", "1/2")
    assert check_math("The answer is -3.", "-3")
    assert not check_math("x = 4", "3")
    assert not check_math("it is 1, 2, 7 or 8", "7")  # the last one counts, not any
    assert not check_math("I do not know", "3")


@pytest.mark.parametrize("spec, words", [
    ("gen:calculus:n=3", "no task generator 'calculus'"),
    ("gen:linear:n=0", "n must be in"),
    ("gen:linear:count=3", "options are n=COUNT and seed=INTEGER"),
    ("gen:linear:seed=-1", "options are"),
])
def test_a_bad_generator_spec_says_what_is_wrong(spec, words):
    with pytest.raises(TaskError, match=re.escape(words)):
        load_task_source(spec)


def test_files_and_the_bundled_set_keep_their_source(tmp_path):
    assert {t.source for t in load_task_source("arithmetic")} == {"arithmetic"}
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "a", "prompt": "1 + 1?", "answer": "2", "checker": "number"}\n')
    assert load_task_source(str(path))[0].source == str(path)
