"""A real chain for worker tests: the embedded EVM with the staking contract, served over loopback JSON-RPC."""

from collections.abc import Iterator

import pytest

from node import wallet
from node.protocol.signing import SigningKey


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama of four layers: two stages of two (a module may want another and define its own)."""
    from node.pipeline.tiny import tiny_model_dir

    return tiny_model_dir("llama", seed=21, path=tmp_path_factory.mktemp("tiny"), num_layers=4)


@pytest.fixture(scope="module")
def served_chain() -> Iterator[tuple]:
    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import ThreadedChainServer

    chain = ChainClient.embedded()
    with ThreadedChainServer(chain.w3) as server:
        yield chain, server.url


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(wallet.PASSWORD_ENV, raising=False)


@pytest.fixture
def worker_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def keystore(tmp_path, worker_key):
    path = tmp_path / "worker.json"
    wallet.create_keystore(path, "pw", key=worker_key, scrypt_n=1024)
    password = tmp_path / "pw.txt"
    password.write_text("pw\n")
    return path, password
