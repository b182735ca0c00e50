import subprocess
import sys

import pytest

from ledger import json_input
from ledger.json_input import JsonInputError, nesting_problem


def test_plain_json_parses():
    assert json_input.loads(b'{"a": [1, {"b": "[[[[not brackets]"}]}') == {"a": [1, {"b": "[[[[not brackets]"}]}


@pytest.mark.parametrize(
    "text, depth, ok",
    [("[]", 1, True), ("[[]]", 1, False), ("[[]]", 2, True), ('{"a":[{"b":[]}]}', 4, True), ('{"a":[{"b":[]}]}', 3, False),
     ("[[[", 32, False), ("[}", 32, False), ('["\\"]"]', 1, True), ("[[[]]]", 3, True), ("[[[]]]", 2, False)],
)
def test_nesting_is_measured_outside_strings(text, depth, ok):
    assert (nesting_problem(text, depth) is None) is ok


def test_a_deep_body_is_an_error_not_a_crash():
    # With web3 imported the recursion limit is 100,000 and json.loads itself would overflow the C stack.
    code = (
        "import web3, sys; from ledger import json_input\n"
        "assert sys.getrecursionlimit() >= 100000\n"
        "try:\n    json_input.loads('[' * 200000 + ']' * 200000)\nexcept json_input.JsonInputError as e:\n    print('refused:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: nested more than 32 levels" in result.stdout


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "{", b"\xff"])
def test_non_json_is_refused(text):
    with pytest.raises(JsonInputError):
        json_input.loads(text)


def test_brackets_inside_strings_never_count_with_or_without_escapes():
    from ledger.json_input import nesting_problem

    assert nesting_problem('{"a": "[[[[[[", "b": [1]}', 2) is None  # no escapes: the byte-translate path
    assert nesting_problem('{"a": "\\"[[[[[[", "b": [1]}', 2) is None  # an escaped quote: the regex path
    assert nesting_problem('[[["]]]"]]]', 2) == "nested more than 2 levels deep"
    assert nesting_problem('["[" ]]', 4) == "brackets do not match"


def test_hex_from_outside_is_read_by_one_function_that_names_the_field():
    from ledger.json_input import JsonInputError, hex_bytes

    assert hex_bytes("0x0aff", "proof") == b"\x0a\xff"
    for value, why in ((b"0x00", "0x-prefixed"), ("0aff", "0x-prefixed"), ("0xzz", "not valid hex"),
                       ("0x00", "must be 2 bytes"), ("0x" + "00" * 5000, "at most 64 bytes")):
        with pytest.raises(JsonInputError, match=why):
            hex_bytes(value, "proof", length=2 if why == "must be 2 bytes" else None, max_length=64)
