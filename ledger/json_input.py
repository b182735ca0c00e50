"""The one parser for JSON that arrives from outside the process: bodies, answers, frames, files from others.

Importing py-evm or py_ecc (both come with web3) raises Python's recursion limit to 100,000, and
CPython's C JSON decoder trusts that limit: a body of 100,000 `[` then overflows the C stack and kills
the whole process instead of raising an error. Every API of the node therefore measures how deep a body
nests, at C speed, before decoding it, and reads no more of an answer than `max_bytes` (a peer that
streams an endless body is cut off, not buffered). `tests/test_hostile_peers.py` checks that nothing
else in `node/` or `ledger/` decodes JSON from the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from ledger.errors import InvalidInput

MAX_DEPTH = 32
MAX_BYTES = 16 << 20  # the largest answer any of our clients expects (a receipt with its proofs is ~100 KiB)

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_QUOTED_BYTES = re.compile(rb'"[^"]*"')


class JsonInputError(InvalidInput):
    """Input that is not JSON, too deep, or uses NaN/Infinity: the message says which."""


def hex_bytes(
    value: Any, what: str, *, length: int | None = None, max_length: int | None = None,
    error: type[Exception] = JsonInputError,
) -> bytes:
    """Bytes from a 0x-prefixed hex string of untrusted origin; `error` (a ValueError by default) naming
    `what` and the rule it breaks otherwise. The one hex reader of values from outside."""
    if not (isinstance(value, str) and value.startswith("0x")):
        raise error(f"{what} must be a 0x-prefixed hex string")
    if max_length is not None and len(value) > 2 + 2 * max_length:
        raise error(f"{what} must be at most {max_length} bytes, got {(len(value) - 2) // 2}")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise error(f"{what} is not valid hex") from None
    if length is not None and len(raw) != length:
        raise error(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


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


def loads(
    text: str | bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES, unique_keys: bool = False, **options: Any
) -> Any:
    """json.loads for untrusted input: JsonInputError (a ValueError) on anything but plain, shallow JSON.
    `unique_keys` also refuses an object that names a key twice (signed documents must mean one thing)."""
    if len(text) > max_bytes:
        raise JsonInputError(f"more than {max_bytes} bytes")
    text = checked_text(text, max_depth)
    options.setdefault("parse_constant", _no_constants)
    if unique_keys:
        options.setdefault("object_pairs_hook", _no_duplicate_keys)
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


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise JsonInputError(f"the key {duplicate!r} appears twice")
    return data


async def read_bytes(stream: aiohttp.StreamReader, max_bytes: int = MAX_BYTES) -> bytes:
    """The rest of `stream`, or JsonInputError as soon as it passes `max_bytes` (nothing more is read)."""
    chunks, size = [], 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise JsonInputError(f"more than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(response: aiohttp.ClientResponse, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON body of an HTTP answer from a peer (any content type), within the limits."""
    if response.content_length is not None and response.content_length > max_bytes:
        raise JsonInputError(f"an answer of {response.content_length} bytes is more than {max_bytes}")
    return loads(await read_bytes(response.content, max_bytes), max_depth=max_depth, max_bytes=max_bytes)


async def read_json_lines(response: aiohttp.ClientResponse, *, max_depth: int = MAX_DEPTH) -> AsyncIterator[Any]:
    """Each JSON line of a streamed answer (NDJSON); blank lines are skipped. A line longer than the reader's
    limit (512 KiB) or one that is not JSON raises JsonInputError."""
    try:
        async for line in response.content:
            if line.strip():
                yield loads(line, max_depth=max_depth)
    except LineTooLong as error:
        raise JsonInputError(f"a line of more than {error.args[-1] if error.args else 'the limit of'} bytes") from None


def read_json_file(file: BinaryIO, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON in a blocking stream (a urllib answer, a file someone sent), reading at most `max_bytes` + 1."""
    data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JsonInputError(f"more than {max_bytes} bytes")
    return loads(data, max_depth=max_depth, max_bytes=max_bytes)
