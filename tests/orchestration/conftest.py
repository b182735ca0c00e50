"""A tiny model and five workers of unequal capacity, shared by the orchestration tests."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.tiny import tiny_model_dir
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import Capacity

MIB = 1 << 20


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tiny_model_dir("llama", seed=8, path=tmp_path_factory.mktemp("tiny-llama"), num_layers=10)


@pytest.fixture(scope="session")
def worker_keys() -> list[SigningKey]:
    return [SigningKey(bytes([0x40 + i]) * 32) for i in range(5)]


# memory in MiB and throughput in layer-tokens/s: unequal on purpose
CAPACITIES = [
    Capacity(64 * MIB, 8000.0),
    Capacity(64 * MIB, 6000.0),
    Capacity(64 * MIB, 4000.0),
    Capacity(64 * MIB, 2000.0),
    Capacity(64 * MIB, 1000.0),
]


def ran_to_its_end(output_token_ids, max_new_tokens: int, stop_ids) -> bool:
    """A sequence ends at its length, or earlier at a stop token the sampler drew. Orchestrator seeds come from
    a fresh random secret unless one is given, so which of the two happens differs from run to run."""
    output = list(output_token_ids)
    return len(output) == max_new_tokens or (0 < len(output) < max_new_tokens and output[-1] in set(stop_ids))
