"""Parsing JSON that arrives from the network.

Importing py-evm or py_ecc (both come with web3) raises Python's recursion limit to 100,000, and
CPython's C JSON decoder trusts that limit: a body of 100,000 `[` then overflows the C stack and kills
the whole process instead of raising an error. Every API of the node therefore measures how deep a body
nests, at C speed, before decoding it.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_QUOTED_BYTES = re.compile(rb'"[^"]*"')


class JsonInputError(ValueError):
    """Input that is not JSON, too deep, or uses NaN/Infinity: the message says which."""


def nesting_problem(text: str, max_depth: int = MAX_DEPTH) -> str | None:
    """None when every bracket of `text` is matched within `max_depth` levels (strings ignored), else why not.

    Peels the innermost `[]`/`{}` pairs, one level per pass, so the cost is a few passes over the
    brackets alone, whatever the document's size.
    """
    if "\\" not in text:
        # No escapes: strings are plain quote pairs. Keep only quotes and brackets (one C-speed pass over
        # the bytes; a bundle is mostly long hex strings), then drop the quoted pairs and a stray quote.
        structure = text.encode("utf-8", "surrogatepass").translate(None, _NOT_STRUCTURE)
        brackets = _QUOTED_BYTES.sub(b"", structure).replace(b'"', b"").decode("ascii")
    else:
        brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(max_depth + 1):
        if not brackets:
            return None
        peeled = _INNERMOST_PAIR.sub("", brackets)
        if peeled == brackets:
            return "brackets do not match"
        brackets = peeled
    return f"nested more than {max_depth} levels deep"


def checked_text(text: str | bytes, max_depth: int = MAX_DEPTH) -> str:
    """`text` as a str once it is UTF-8 and nests at most `max_depth` levels: safe to give json.loads."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise JsonInputError(f"not UTF-8 ({error.reason})") from None
    problem = nesting_problem(text, max_depth)
    if problem:
        raise JsonInputError(problem)
    return text


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, **options: Any) -> Any:
    """json.loads for untrusted input: JsonInputError (a ValueError) on anything but plain, shallow JSON."""
    text = checked_text(text, max_depth)
    options.setdefault("parse_constant", _no_constants)
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise JsonInputError("nested too deeply") from None
    except JsonInputError:
        raise
    except ValueError as error:
        raise JsonInputError(str(error)) from None


def _no_constants(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON number")
