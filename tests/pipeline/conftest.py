"""Tiny random-init models shared by the pipeline tests (written once per session)."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.tiny import tiny_model_dir


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return tiny_model_dir("llama", seed=1, path=tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return tiny_model_dir("qwen2", seed=2, path=tmp_path_factory.mktemp("tiny-qwen2"), tie_word_embeddings=True)


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def model_dir(request, llama_dir, qwen2_dir):
    return llama_dir if request.param == "llama" else qwen2_dir
