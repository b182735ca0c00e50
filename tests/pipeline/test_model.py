"""Our decoder against transformers: same logits, same greedy tokens, and stages that compose."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from node.pipeline.model import ModelConfig, StageModel, replay
from node.pipeline.tiny import tiny_model_dir
from node.pipeline.weights import WeightsError, load_stage, model_id

TOKENS = torch.tensor([1, 17, 99, 3, 250, 42, 42, 7, 180, 64, 5, 200, 33])


def reference(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_logits_match_transformers(model_dir, attn_impl):
    ours = load_stage(model_dir, attn_impl=attn_impl)
    with torch.no_grad():
        expected = reference(model_dir)(TOKENS[None], output_hidden_states=True)
    hidden, logits = replay(ours, TOKENS, [2, 4, 6])
    torch.testing.assert_close(logits, expected.logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden[0], expected.hidden_states[2][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden[1], expected.hidden_states[4][0], atol=1e-4, rtol=1e-4)
    assert logits.std() > 0.5  # a model with clear winners, so greedy parity means something


def test_greedy_tokens_match_transformers_generate(model_dir):
    ours = load_stage(model_dir)
    prompt = TOKENS[:6]
    with torch.no_grad():
        expected = reference(model_dir).generate(prompt[None], max_new_tokens=12, do_sample=False, eos_token_id=None)
    cache = ours.new_cache()
    hidden = ours(prompt, [cache])
    generated = []
    for _ in range(12):
        token = ours.logits(hidden[-1:]).argmax(-1)
        generated.append(int(token))
        hidden = ours(token, [cache])
    assert generated == expected[0, 6:].tolist()


def test_stages_compose_into_the_whole_model(llama_dir):
    whole = load_stage(llama_dir)
    stages = [load_stage(llama_dir, a, b) for a, b in [(0, 2), (2, 5), (5, 6)]]
    caches = [s.new_cache() for s in stages]
    x = TOKENS
    for stage, cache in zip(stages, caches):
        x = stage(x, [cache])
    _, logits = replay(whole, TOKENS, [6])
    torch.testing.assert_close(stages[-1].logits(x), logits)
    assert stages[0].lm_head is None and stages[1].embed_tokens is None and stages[2].norm is not None


def test_ragged_batch_equals_one_sequence_at_a_time(qwen2_dir):
    model = load_stage(qwen2_dir)
    prompts = [TOKENS[:3], TOKENS[2:10], TOKENS[5:6]]
    alone = []
    for prompt in prompts:
        cache = model.new_cache()
        rows = [model(prompt, [cache])[-1]]
        rows.append(model(torch.tensor([9]), [cache])[0])
        alone.append(torch.stack(rows))
    caches = [model.new_cache() for _ in prompts]
    first = model(torch.cat(prompts), caches, [len(p) for p in prompts])
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    second = model(torch.tensor([9, 9, 9]), caches, [1, 1, 1])
    for i in range(3):
        torch.testing.assert_close(first[ends[i]], alone[i][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(second[i], alone[i][1], atol=1e-5, rtol=1e-5)
    assert [c.length for c in caches] == [4, 9, 2]


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
    model_dir = tiny_model_dir("llama", seed=3, path=tmp_path, num_layers=2, rope_scaling=scaling)
    assert ModelConfig.from_dir(model_dir).rope.kind == "llama3"
    with torch.no_grad():
        expected = reference(model_dir)(TOKENS[None]).logits[0]
    _, logits = replay(load_stage(model_dir), TOKENS, [2])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_a_stage_loads_only_its_own_tensors(llama_dir):
    middle = load_stage(llama_dir, 2, 4)
    names = {name for name, _ in middle.named_parameters()}
    assert all(name.startswith("layers.") for name in names)
    whole = sum(p.numel() for p in load_stage(llama_dir).parameters())
    assert sum(p.numel() for p in middle.parameters()) < whole / 2


def test_model_id_is_the_manifest_hash(llama_dir, tmp_path):
    first = model_id(llama_dir)
    assert first.startswith("0x") and len(first) == 66 and model_id(llama_dir) == first
    other = tiny_model_dir("llama", seed=99, path=tmp_path)
    assert model_id(other) != first


def test_bad_inputs_are_refused(llama_dir, tmp_path):
    stage = load_stage(llama_dir, 0, 3)
    with pytest.raises(ValueError, match="token ids"):
        stage(torch.tensor([1000]), [stage.new_cache()])
    with pytest.raises(ValueError, match="do not split"):
        stage(torch.tensor([1, 2]), [stage.new_cache()], [3])
    with pytest.raises(ValueError, match="config.json does not exist"):
        load_stage(tmp_path)
    (tmp_path / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(WeightsError, match="no \\*.safetensors"):
        load_stage(tmp_path)
    with pytest.raises(ValueError):
        StageModel(ModelConfig.from_dir(llama_dir), 4, 9)


def test_a_model_is_found_by_path_or_in_the_local_hub_cache_only(llama_dir):
    from node.pipeline.weights import resolve_model_dir

    assert resolve_model_dir(str(llama_dir)) == llama_dir
    with pytest.raises(WeightsError, match="local Hugging Face cache"):
        resolve_model_dir("nobody/no-such-model")
