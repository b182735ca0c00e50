"""Tiny random-init models shared by the toploc tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Directories of tiny llama (seeds 0 and 1) and qwen2 (seed 0) checkpoints."""
    from node.pipeline.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("toploc-tiny")
    torch.set_num_threads(1)
    return {
        "llama": tiny_model_dir("llama", 0, root / "llama"),
        "llama-other": tiny_model_dir("llama", 1, root / "llama-other"),
        "qwen2": tiny_model_dir("qwen2", 0, root / "qwen2"),
    }
