"""The demo model converts from the packaged GGUF (once, into the node's cache) and a 3-stage pipeline
answers a chat prompt with sensible text from the command line."""

from __future__ import annotations

import pytest

from node.cli.main import main
from node.pipeline.model import ModelConfig
from node.pipeline.smollm2 import gguf_path, smollm2_dir


@pytest.mark.slow
def test_three_stage_smollm2_answers_from_the_command_line(capsys):
    assert gguf_path().is_file()
    model_dir = smollm2_dir()  # converts on first use (~45 s), later runs reuse the cache
    assert smollm2_dir() == model_dir
    config = ModelConfig.from_dir(model_dir)
    assert (config.arch, config.num_layers, config.tie_word_embeddings) == ("llama", 30, True)
    status = main(["generate", "--stages", "3", "--max-new-tokens", "12", "--prompt", "What is the capital of France?"])
    captured = capsys.readouterr()
    assert status == 0
    assert "Paris" in captured.out
    assert "layers [0,13), [13,26), [26,30)" in captured.err


def test_generate_explains_a_directory_without_a_tokenizer(llama_dir, capsys):
    assert main(["generate", "--model-dir", str(llama_dir), "--prompt", "hi"]) == 1
    assert "no tokenizer" in capsys.readouterr().err
