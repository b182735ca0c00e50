"""What the previous stage sent and this stage has not yet applied, bounded in bytes.

The link's reader appends frames and control messages; the compute loop takes them in order. A reader that
finds the inbox over `max_bytes` stops reading (TCP holds the sender back) until the compute loop has made
room; a sender that keeps it full longer than `stall_s` is dropped. So a neighbour, however fast or
hostile, never makes this stage hold more than `max_bytes` plus one message of its rows.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from ledger.errors import StagewiseError

DEFAULT_MAX_BYTES = 512 << 20
DEFAULT_STALL_S = 60.0


class InboxFull(StagewiseError):
    """The sender kept the inbox over its limit for longer than the stage waits."""


class Inbox:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, stall_s: float = DEFAULT_STALL_S) -> None:
        self.max_bytes, self.stall_s = max_bytes, stall_s
        self.bytes = 0
        self.peak_bytes = 0
        self._items: collections.deque[tuple[str, Any, int]] = collections.deque()
        self._room = asyncio.Event()
        self._room.set()

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, kind: str, payload: Any, size: int = 0) -> None:
        self._items.append((kind, payload, size))
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        if self.bytes > self.max_bytes:
            self._room.clear()

    def peek(self) -> tuple[str, Any]:
        kind, payload, _ = self._items[0]
        return kind, payload

    def popleft(self) -> tuple[str, Any]:
        kind, payload, size = self._items.popleft()
        self._taken(size)
        return kind, payload

    def clear(self) -> None:
        self._items.clear()
        self._taken(self.bytes)

    async def wait_for_room(self) -> None:
        """Return once the inbox is within its limit; InboxFull if it stays over for `stall_s`."""
        if self._room.is_set():
            return
        try:
            await asyncio.wait_for(self._room.wait(), self.stall_s)
        except asyncio.TimeoutError:
            raise InboxFull(
                f"{self.bytes} bytes waited unapplied for {self.stall_s:g} s (the limit is {self.max_bytes})"
            ) from None

    def _taken(self, size: int) -> None:
        self.bytes -= size
        if self.bytes <= self.max_bytes:
            self._room.set()
