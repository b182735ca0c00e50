"""The demo model converts from the packaged GGUF (once, into the node's cache) and answers sensibly."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.smollm2 import chat_prompt_ids, gguf_path, load_tokenizer, smollm2_dir
from node.pipeline.weights import load_stage


@pytest.mark.slow
def test_smollm2_answers_a_chat_prompt():
    assert gguf_path().is_file()
    model_dir = smollm2_dir()  # converts on first use (~45 s), later runs reuse the cache
    assert smollm2_dir() == model_dir
    tokenizer = load_tokenizer(model_dir)
    model = load_stage(model_dir)
    assert model.config.num_layers == 30 and model.config.tie_word_embeddings
    cache = model.new_cache()
    hidden = model(torch.tensor(chat_prompt_ids(tokenizer, "What is the capital of France?")), [cache])
    answer = []
    for _ in range(12):
        token = int(model.logits(hidden[-1:]).argmax(-1))
        if token in model.config.eos_token_ids:
            break
        answer.append(token)
        hidden = model(torch.tensor([token]), [cache])
    assert "Paris" in tokenizer.decode(answer)
