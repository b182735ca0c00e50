"""What travels on a stage link: binary activation frames, and small JSON control messages.

An activation frame carries the rows of one or more sequences (a micro-batch) in one tensor:

    magic "SWA1" | dtype u8 | reserved u8 | hidden u32 | entries u16
    entries x (job id 32 bytes | start position u32 | row count u32)
    rows: sum(counts) x hidden values, little-endian, in the frame's dtype (fp32, fp16 or bf16)

Each entry's rows are the hidden states of positions [start, start + count) of that job. Everything else
(a job starting, a chunk proof with its signature, the sampled tokens, the end of a job, an abort) is a JSON
text frame with a "type". Decoding never trusts the sender: a short, oversized or inconsistent frame raises
`FrameError` and is never half-applied.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import torch

from ledger import json_input
from ledger.errors import InvalidInput
from node.protocol.handoff import DTYPE_SIZES

MAGIC = b"SWA1"
_HEADER = struct.Struct("<4sBBIH")
_ENTRY = struct.Struct("<32sII")
WIRE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CODES = {"fp32": 0, "fp16": 1, "bf16": 2}
_NAMES = {code: name for name, code in _CODES.items()}
MAX_FRAME_ROWS = 1 << 16
MAX_JSON_BYTES = 1 << 22


class FrameError(InvalidInput):
    """A frame that cannot be decoded: the message says what is wrong with it."""


@dataclass(frozen=True)
class FrameEntry:
    job_id: bytes
    start: int
    count: int


@dataclass(frozen=True)
class ActivationFrame:
    """Rows of several sequences: entry i owns rows [offset_i, offset_i + count_i) of `rows` [N, hidden]."""

    entries: tuple[FrameEntry, ...]
    rows: torch.Tensor
    dtype: str

    def split(self) -> list[tuple[FrameEntry, torch.Tensor]]:
        out, offset = [], 0
        for entry in self.entries:
            out.append((entry, self.rows[offset : offset + entry.count]))
            offset += entry.count
        return out


def cast_for_wire(rows: torch.Tensor, dtype: str) -> torch.Tensor:
    """The values the receiver will see: rows rounded to the wire dtype (what a sender must prove)."""
    return rows.to(WIRE_DTYPES[dtype])


def encode_frame(entries: list[tuple[bytes, int, torch.Tensor]], dtype: str) -> bytes:
    """entries: (job id, start position, rows [count, hidden]) already in the wire dtype or castable to it."""
    if dtype not in _CODES:
        raise ValueError(f"wire dtype must be one of {sorted(_CODES)}, got {dtype!r}")
    if not entries:
        raise ValueError("a frame carries at least one entry")
    hidden = entries[0][2].shape[1]
    parts = [_HEADER.pack(MAGIC, _CODES[dtype], 0, hidden, len(entries))]
    for job_id, start, rows in entries:
        parts.append(_ENTRY.pack(job_id, start, rows.shape[0]))
    for _, _, rows in entries:
        parts.append(wire_bytes(rows, dtype))
    return b"".join(parts)


def wire_bytes(rows: torch.Tensor, dtype: str) -> bytes:
    """Rows as a frame carries them: `dtype`, little-endian, row after row (what a handoff claim digests)."""
    return rows.detach().to("cpu", WIRE_DTYPES[dtype]).contiguous().view(torch.uint8).numpy().tobytes()


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in WIRE_DTYPES.items() if value == dtype)


def decode_frame(data: bytes, hidden_size: int) -> ActivationFrame:
    if len(data) < _HEADER.size:
        raise FrameError(f"frame of {len(data)} bytes is shorter than its header")
    magic, code, _, hidden, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if code not in _NAMES:
        raise FrameError(f"unknown dtype code {code}")
    if hidden != hidden_size:
        raise FrameError(f"frame hidden size {hidden}, this model's is {hidden_size}")
    if count == 0:
        raise FrameError("frame has no entries")
    offset = _HEADER.size
    if len(data) < offset + count * _ENTRY.size:
        raise FrameError("frame is shorter than its entry table")
    entries = []
    for _ in range(count):
        job_id, start, rows = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        if rows == 0:
            raise FrameError("frame entry with zero rows")
        entries.append(FrameEntry(job_id, start, rows))
    total = sum(e.count for e in entries)
    if total > MAX_FRAME_ROWS:
        raise FrameError(f"frame of {total} rows exceeds {MAX_FRAME_ROWS}")
    dtype = _NAMES[code]
    itemsize = torch.empty((), dtype=WIRE_DTYPES[dtype]).element_size()
    if len(data) - offset != total * hidden * itemsize:
        raise FrameError(f"frame payload is {len(data) - offset} bytes, header says {total * hidden * itemsize}")
    rows = torch.frombuffer(bytearray(data[offset:]), dtype=WIRE_DTYPES[dtype]).view(total, hidden)
    if not torch.isfinite(rows).all():
        raise FrameError("frame carries non-finite values")
    return ActivationFrame(tuple(entries), rows, dtype)


def frame_job_ids(data: bytes) -> list[bytes]:
    """The job ids a frame's entry table names, as far as it can be read (to fail just those on a bad frame)."""
    try:
        _, _, _, _, count = _HEADER.unpack_from(data)
        return [_ENTRY.unpack_from(data, _HEADER.size + i * _ENTRY.size)[0] for i in range(count)]
    except struct.error:
        return []


def encode_message(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def decode_message(text: str) -> dict[str, Any]:
    if len(text) > MAX_JSON_BYTES:
        raise FrameError("control message too large")
    try:
        message = json_input.loads(text)
    except json_input.JsonInputError as error:
        raise FrameError(f"control message is not JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("control message must be an object with a string 'type'")
    return message


def hex_bytes(value: Any, what: str, length: int | None = None) -> bytes:
    return json_input.hex_bytes(value, what, length=length, error=FrameError)


def rows_tensor(rows: bytes, dtype: str, count: int) -> torch.Tensor:
    """Wire bytes back to the [count, hidden] tensor they carry (ValueError when they are not `count` rows)."""
    if count <= 0 or len(rows) % (count * DTYPE_SIZES[dtype]):
        raise ValueError(f"{len(rows)} bytes are not {count} rows of {dtype}")
    return torch.frombuffer(bytearray(rows), dtype=WIRE_DTYPES[dtype]).view(count, -1)
