"""Compiled contracts and their ABIs: `Artifact` (contracts/build/, written by `make contracts`), the
canonical signatures that selectors and event topics hash, and `ErrorDecoder` for revert data."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from ledger.chain.errors import ChainError, ContractRevert

BUILD_DIR = Path(__file__).resolve().parents[2] / "contracts" / "build"
STAKING = "StagewiseStaking"


@dataclass(frozen=True)
class Artifact:
    """A compiled contract from contracts/build/ (written by `make contracts`)."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str

    @classmethod
    def load(cls, name: str = STAKING, build_dir: Path = BUILD_DIR) -> "Artifact":
        """`name` is the contract name, optionally with its folder: "StagewiseStaking", "test/ReentrantAttacker"."""
        path = build_dir / f"{name}.json"
        if not path.exists():
            raise ChainError(f"no compiled contract at {path}: run `make contracts`")
        data = json.loads(path.read_text())
        return cls(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"])


def abi_signature(entry: dict[str, Any]) -> str:
    """`name(type,...)` of an ABI entry: what its selector or event topic is the keccak256 of."""
    return f"{entry['name']}({','.join(abi_type(i) for i in entry['inputs'])})"


def abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + param["type"][5:]
    return param["type"]


class ErrorDecoder:
    """Maps 4-byte revert selectors to custom errors of every ABI it has been shown."""

    def __init__(self) -> None:
        self._errors: dict[bytes, dict[str, Any]] = {}

    def add_abi(self, abi: Iterable[dict[str, Any]]) -> None:
        for entry in abi:
            if entry.get("type") == "error":
                self._errors[keccak(abi_signature(entry).encode())[:4]] = entry

    def decode(self, data: bytes, function: str = "") -> ContractRevert:
        selector = data[:4]
        entry = self._errors.get(selector)
        if entry is not None:
            types = [abi_type(i) for i in entry["inputs"]]
            try:
                values = abi_decode(types, data[4:])
            except Exception:  # noqa: BLE001 - malformed payload: report the raw selector below
                values = None
            if values is not None:
                args = {i["name"]: _normalize(i["type"], v) for i, v in zip(entry["inputs"], values)}
                return ContractRevert(entry["name"], args, data, function)
        if selector == bytes.fromhex("08c379a0"):
            return ContractRevert("Error", {"reason": abi_decode(["string"], data[4:])[0]}, data, function)
        if selector == bytes.fromhex("4e487b71"):
            return ContractRevert("Panic", {"code": abi_decode(["uint256"], data[4:])[0]}, data, function)
        return ContractRevert("UnknownError", {"data": data}, data, function)


def _normalize(kind: str, value: Any) -> Any:
    if kind == "address":
        return to_checksum_address(value)
    return value
