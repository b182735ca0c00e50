"""Pipeline-parallel inference: a model split into stages that stream hidden states to each other.

Public API (the full list grows with the stage servers; see the modules named):

- `node.pipeline.model`: `ModelConfig.from_dir(dir)`, `StageModel(config, layer_start, layer_end,
  attn_impl="sdpa"|"eager", dtype, device)` with `new_cache()`, `forward(inputs, caches, counts)` and
  `logits(hidden)`; `replay(model, token_ids, boundaries) -> (list[Tensor[T,H]], Tensor[T,V])` for validators.
- `node.pipeline.weights`: `load_stage(dir, layer_start, layer_end, ...)` reads only that stage's tensors;
  `model_id(dir) -> "0x…"`, the keccak256 of the weight manifest.
- `node.pipeline.tiny`: `tiny_model_dir(arch, seed, path, ...)`, random-init Llama/Qwen2 for tests and benches.
"""
