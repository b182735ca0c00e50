"""Reading the staking contract's event log: every event in a block range, and the few the node looks up by
topic (the transaction of a slash or an anchor, an epoch's Anchored event, the validator set).

`EventLog` is a part of `ChainClient` (ledger/chain/client.py), which provides `w3`, `address`,
`block_number` and `events` (the contract's EventDecoder).
"""

from __future__ import annotations

from typing import Any

from ledger.chain.events import Anchored, ChainEvent, ValidatorAdded, ValidatorRemoved


class EventLog:
    w3: Any
    address: str
    events: Any
    contract: Any
    block_number: int

    def events_since(self, from_block: int, to_block: int | None = None, *, chunk: int = 5_000) -> list[ChainEvent]:
        """Every event of the staking contract in blocks [from_block, to_block] (default: latest), in order."""
        last = self.block_number if to_block is None else int(to_block)
        events: list[ChainEvent] = []
        start = max(0, int(from_block))
        while start <= last:
            end = min(last, start + chunk - 1)
            logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": start, "toBlock": end})
            events.extend(e for e in (self._decode_log(entry) for entry in logs) if e is not None)
            start = end + 1
        events.sort(key=lambda e: (e.block_number, e.log_index))
        return events

    def event_tx(self, name: str, *indexed: bytes | None) -> str | None:
        """The hash of the first transaction that emitted event `name` with these indexed arguments (in
        declaration order; None matches any), from one topic-filtered log query over the whole chain:
        the node searches its log index instead of this process reading every event since block 0."""
        topic0 = self.events.topic(name)
        if topic0 is None:
            raise ValueError(f"the staking contract has no event {name!r}")
        padded = (None if value is None else "0x" + bytes(value).rjust(32, b"\0").hex() for value in indexed)
        topics = ["0x" + topic0.hex(), *padded]
        logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": 0, "toBlock": "latest", "topics": topics})
        return "0x" + bytes(logs[0]["transactionHash"]).hex() if logs else None

    def anchored(self, epoch: int) -> Anchored | None:
        """The Anchored event of chain epoch `epoch` (its roots and who sent it), from one topic-filtered log
        query; None while the epoch is not anchored."""
        topics = ["0x" + self.events.topic("Anchored").hex(), "0x" + int(epoch).to_bytes(32, "big").hex()]
        logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": 0, "toBlock": "latest", "topics": topics})
        events = [e for e in (self._decode_log(entry) for entry in logs) if isinstance(e, Anchored)]
        return events[0] if events else None

    def validator_set(self) -> list[str]:
        """The contract's validators, in ascending address order (the order proposers take turns in), from its
        ValidatorAdded and ValidatorRemoved events."""
        topics = [["0x" + self.events.topic(name).hex() for name in ("ValidatorAdded", "ValidatorRemoved")]]
        logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": 0, "toBlock": "latest", "topics": topics})
        events = sorted((e for e in (self._decode_log(entry) for entry in logs) if e is not None),
                        key=lambda e: (e.block_number, e.log_index))
        members: set[str] = set()
        for event in events:
            if isinstance(event, ValidatorAdded):
                members.add(event.validator)
            elif isinstance(event, ValidatorRemoved):
                members.discard(event.validator)
        return sorted(members, key=lambda address: int(address, 16))

    def _decode_log(self, entry: Any) -> ChainEvent | None:
        return self.events.decode(self.contract, entry)
