"""The embedded chain: an in-process EVM (py-evm via eth-tester) and its JSON-RPC face over loopback HTTP.

The devnet keeps its chain inside the validator's process (`ChainClient.embedded()`); worker processes reach
it by URL through `ChainServer`, which passes each JSON-RPC request to the same provider that the in-process
client uses. Two things make eth-tester behave like a node here:

- `EmbeddedProvider` serializes every request under one lock (eth-tester is not thread-safe, and the server
  answers from worker threads while the validator calls from its own), and answers a revert the way geth and
  anvil do (error code 3, the revert bytes in `data`), so web3 raises the contract's custom error instead of
  eth-tester's opaque `TransactionFailed`. It also understands `evm_increaseTime`, like anvil (in process;
  the server refuses test-only methods unless told otherwise).
- The server runs requests through web3's eth-tester formatting middleware, exactly as an in-process `Web3`
  would, then encodes numbers and bytes as JSON-RPC hex, so a remote `Web3.HTTPProvider` reads the answers
  as from any node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from eth_account import Account
from web3 import EthereumTesterProvider
from web3.middleware import combine_middleware
from web3.providers.eth_tester.middleware import default_transaction_fields_middleware, ethereum_tester_middleware

from ledger import json_input  # the one parser of outside bytes; see the note in json_input

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
PUBLIC_NAMESPACES = frozenset({"eth", "net", "web3"})  # what any node serves; evm_*, testing_* move its clock
TESTER_CHAIN_ID = 131277322940537  # eth-tester's py-evm chain
ANVIL_CHAIN_ID = 31337
MAX_REQUEST_BYTES = 8 << 20


class EmbeddedProvider(EthereumTesterProvider):
    """A fresh py-evm chain (ten prefunded accounts, Prague rules) behind a lock, answering like a node."""

    def __init__(self) -> None:
        # eth-tester (py-evm) only for an in-process chain: a client of a JSON-RPC node never loads it.
        from eth_tester import EthereumTester, PyEVMBackend

        super().__init__(EthereumTester(PyEVMBackend()))
        self.lock = threading.RLock()
        self._ids = itertools.count()

    def make_request(self, method, params):
        from eth_tester.exceptions import TransactionFailed  # see __init__: loaded with the chain only

        request_id = next(self._ids)
        with self.lock:
            if method == "evm_increaseTime":
                return self._increase_time(
                    int(params[0], 16) if isinstance(params[0], str) else int(params[0]), request_id
                )
            namespace, _, endpoint = method.partition("_")
            delegator = self.api_endpoints.get(namespace, {}).get(endpoint)
            if delegator is None:
                return _error(request_id, -32601, f"method not found: {method}")
            try:
                result = delegator(self.ethereum_tester, params)
            except NotImplementedError:
                return _error(request_id, -32601, f"method not implemented: {method}")
            except TransactionFailed as failure:
                return _revert(request_id, failure)
            except Exception as error:  # noqa: BLE001 - an invalid request: report it, keep the chain up
                return _error(request_id, -32602, f"{type(error).__name__}: {error}")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _increase_time(self, seconds: int, request_id: int):
        tester = self.ethereum_tester
        pending = tester.get_block_by_number("pending")["timestamp"]
        tester.time_travel(pending + max(1, seconds))
        return {"jsonrpc": "2.0", "id": request_id, "result": hex(seconds)}


def _error(request_id: Any, code: int, message: str, data: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _revert(request_id: Any, failure: Exception) -> dict[str, Any]:
    """eth-tester's TransactionFailed carries the raw revert bytes (sometimes wrapped in another exception)."""
    reason = failure.args[0] if failure.args else b""
    if isinstance(reason, Exception):
        reason = reason.args[0] if reason.args else b""
    if isinstance(reason, (bytes, bytearray)):
        return _error(request_id, 3, "execution reverted", "0x" + bytes(reason).hex())
    return _error(request_id, 3, f"execution reverted: {reason}")


# ------------------------------------------------------------------------------------------------ server


def _to_json_rpc(value: Any) -> Any:
    """eth-tester answers with Python ints and bytes; JSON-RPC speaks hex quantities and hex data."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _to_json_rpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_rpc(v) for v in value]
    return value


class ChainServer:
    """Serve an `EmbeddedProvider` as JSON-RPC over HTTP on a loopback port.

    `async with ChainServer(client.w3) as server: server.url` (port 0 picks a free one). Start it inside a
    running event loop; requests run in a thread so the loop never waits on the EVM.
    """

    def __init__(self, w3, host: str = DEFAULT_HOST, port: int = 0, *, test_methods: bool = False):
        """`test_methods`: also serve the chain's test-only methods (evm_*, testing_*: moving its clock,
        snapshots). Off by default: over the network they let anyone, a worker with stake for one, skip its
        unbonding delay."""
        if not isinstance(w3.provider, EmbeddedProvider):
            raise TypeError("ChainServer serves the embedded chain (ChainClient.embedded().w3)")
        self.host = host
        self.port = port
        self.test_methods = test_methods
        self._request = combine_middleware(
            middleware=(default_transaction_fields_middleware, ethereum_tester_middleware),
            w3=w3,
            provider_request_fn=w3.provider.make_request,
        )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/", self._handle)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port actually bound when 0 was asked
        log.info("embedded chain serving JSON-RPC at %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "ChainServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = json_input.loads(await request.read(), max_bytes=MAX_REQUEST_BYTES)
        except json_input.JsonInputError:
            return web.json_response(_error(None, -32700, "parse error: body is not JSON"))
        loop = asyncio.get_running_loop()
        if isinstance(body, list):
            if not body:
                return web.json_response(_error(None, -32600, "empty batch"))
            answers = [await loop.run_in_executor(None, self._answer, item) for item in body]
            return web.json_response(answers)
        return web.json_response(await loop.run_in_executor(None, self._answer, body))

    def _answer(self, call: Any) -> dict[str, Any]:
        if not isinstance(call, dict) or not isinstance(call.get("method"), str):
            return _error(call.get("id") if isinstance(call, dict) else None, -32600, "invalid request")
        request_id = call.get("id")
        params = call.get("params") or []
        if not self.test_methods and call["method"].partition("_")[0] not in PUBLIC_NAMESPACES:
            return _error(request_id, -32601, f"method not available on this node: {call['method']}")
        try:
            response = self._request(call["method"], params)
        except Exception as error:  # noqa: BLE001 - a formatter rejected the params: a client error
            return _error(request_id, -32602, f"{type(error).__name__}: {error}")
        if "error" in response:
            return {"jsonrpc": "2.0", "id": request_id, "error": response["error"]}
        return {"jsonrpc": "2.0", "id": request_id, "result": _to_json_rpc(response.get("result"))}


class ThreadedChainServer:
    """A ChainServer on its own event loop in a daemon thread, for callers without a loop (CLI, tests)."""

    def __init__(self, w3, host: str = DEFAULT_HOST, port: int = 0, *, test_methods: bool = False):
        self.server = ChainServer(w3, host, port, test_methods=test_methods)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chain-server", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "ThreadedChainServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ anvil

ANVIL_BIN = Path(__file__).resolve().parents[2] / "contracts" / "node_modules" / ".bin" / "anvil"
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's public dev mnemonic


def anvil_keys(count: int = 10, mnemonic: str = ANVIL_MNEMONIC) -> list:
    """The prefunded dev accounts anvil derives from `mnemonic` (m/44'/60'/0'/0/i)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}") for i in range(count)
    ]


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class AnvilNode:
    """An anvil process on a free loopback port (the npm-pinned binary from contracts/node_modules).

    `with AnvilNode() as node: ChainClient.connect(node.url, dev_keys=node.keys)`; stopped on exit.
    """

    def __init__(self, *, accounts: int = 4, binary: Path = ANVIL_BIN, host: str = DEFAULT_HOST):
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: run `cd contracts && npm ci`")
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.accounts = accounts
        self.process: subprocess.Popen | None = None
        self.keys = anvil_keys(accounts)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--accounts",
                str(self.accounts),
                "--mnemonic",
                ANVIL_MNEMONIC,
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited: {self.process.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"anvil did not listen on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "AnvilNode":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
