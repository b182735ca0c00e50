"""Validated wire types: where pydantic meets the protocol, once.

Everything that arrives from outside is first parsed by the one bounded JSON parser (ledger/json_input.py);
the object it returns is then validated by a type declared here or next to its value class
(node/protocol/job.py, worker_messages.py, node/pipeline/assignment.py). A field's rule lives on the field
(`Field(ge=...)`, a validator), so the check and the OpenAPI schema (node/validator/openapi.py, generated
from these types) cannot drift apart.

`validated_dataclass(SomeError)` makes a frozen pydantic dataclass whose constructor raises `SomeError`
(a ValueError) with one readable line instead of pydantic's multi-line dump; `parse(type, data, SomeError)`
does the same for untrusted data. `explain` writes that line: the field's place (`stages[1].worker`) and
what is wrong with it, or `unknown field(s) [...]` / `missing field(s) [...]`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from eth_utils import is_address, to_checksum_address
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
HEX32_PATTERN = r"^0x[0-9a-fA-F]{64}$"
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}\Z")

T = TypeVar("T")

_EXTRA = frozenset({"extra_forbidden", "unexpected_keyword_argument"})
_MISSING = frozenset({"missing", "missing_argument", "missing_keyword_only_argument", "missing_positional_only_argument"})


@functools.lru_cache(maxsize=65536)
def checksummed(address: str) -> str | None:
    """The checksummed form of an address, None if it is not one (cached: the same workers sign job after job)."""
    return to_checksum_address(address) if is_address(address) else None


def _short(value: str) -> str:
    """A value for an error line: quoted, and cut where it is longer than any valid one."""
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."


def address(what: str = "address") -> Any:
    """An Ethereum address in any case that is one (mixed case must carry a valid EIP-55 checksum), kept
    checksummed; `what` names it in the error ("stage worker '0x12' is not an Ethereum address")."""

    def check(value: str) -> str:
        result = checksummed(value)
        if result is None:
            raise ValueError(f"{what} {_short(value)} is not an Ethereum address")
        return result

    return Annotated[str, Strict(), AfterValidator(check), WithJsonSchema({"type": "string", "pattern": ADDRESS_PATTERN})]


def _hex32(value: str) -> str:
    if not _HEX32.match(value):
        raise ValueError(f"{_short(value)} is not a 0x-prefixed 32-byte hex string")
    return value.lower()


Address = address()
# 32 bytes as 0x-hex (a model id), kept lowercase.
Hex32 = Annotated[str, Strict(), AfterValidator(_hex32), WithJsonSchema({"type": "string", "pattern": HEX32_PATTERN})]
# A non-negative integer; never a bool, a float or a string of digits.
UInt = Annotated[int, Strict(), Field(ge=0)]


def bounded_uint(most: int) -> Any:
    return Annotated[int, Strict(), Field(ge=0, le=most)]


def max_items(most: int, message: str) -> BeforeValidator:
    """Refuse a list longer than `most` before its items are validated, with `message` (formatted with n)."""

    def check(value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) > most:
            raise ValueError(message.format(n=len(value)))
        return value

    return BeforeValidator(check)


def validated_dataclass(error: type[ValueError], **config: Any):
    """A frozen pydantic dataclass (unknown fields refused) whose constructor raises `error`, not ValidationError.

    Values built from already validated parts (a nested dataclass instance) are taken as they are."""

    def wrap(cls: type[T]) -> type[T]:
        cls = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", **config))(cls)
        init = cls.__init__
        names = [f.name for f in dataclasses.fields(cls)]

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as invalid:
                raise error(explain(invalid, names)) from None

        cls.__init__ = __init__
        return cls

    return wrap


@functools.lru_cache(maxsize=None)
def adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def parse(kind: type[T], data: Any, error: type[ValueError], where: str = "") -> T:
    """Validate an untrusted object (already parsed by ledger/json_input) as `kind`, or raise `error`."""
    validator = getattr(kind, "__pydantic_validator__", None) or adapter(kind).validator
    try:
        return validator.validate_python(data)
    except ValidationError as invalid:
        line = explain(invalid)
        raise error(f"{where}: {line}" if where else line) from None


def place(loc: Sequence[Any], names: Sequence[str] = ()) -> str:
    """('stages', 1, 'worker') -> 'stages[1].worker'; a leading positional index becomes its field's name."""
    text = ""
    for depth, part in enumerate(loc):
        if isinstance(part, int):
            if depth == 0 and part < len(names):
                text = names[part]
            else:
                text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def explain(invalid: ValidationError, names: Sequence[str] = ()) -> str:
    """One readable line for a validation failure: unknown or missing fields first, else the first error as
    `place: pydantic's sentence`, or our own sentence (a validator's ValueError) followed by `(at place)`."""
    errors = invalid.errors(include_url=False, include_input=False)
    for kinds, what in ((_EXTRA, "unknown"), (_MISSING, "missing")):
        grouped: dict[str, list[str]] = {}
        for item in errors:
            if item["type"] in kinds and item["loc"]:
                grouped.setdefault(place(item["loc"][:-1], names), []).append(str(place(item["loc"][-1:], names)))
        for where, keys in grouped.items():
            return f"{where + ': ' if where else ''}{what} field(s) {sorted(keys)}"
    first = errors[0]
    context = first.get("ctx") or {}
    where = place(first["loc"], names)
    if first["type"] == "value_error" and "error" in context:
        message = str(context["error"])
        return f"{message} (at {where})" if where and where not in message else message
    return f"{where}: {first['msg']}" if where else first["msg"]
