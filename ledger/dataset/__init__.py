"""The verified dataset: the ledger's accepted samples as rows, each with the proof that puts it on chain.

- `rows`: the row's fields and their Arrow schema, the same for Parquet and JSONL.
- `export.export_dataset(ledger, out, fmt)`: stream every accepted sample of an anchored epoch into
  `OUT/samples.{parquet,jsonl}`, with `OUT/pass_at_k.*` (per task and model) and the dataset card `OUT/README.md`.
- `verify.verify_dataset(out, roots)`: check each row's digest, journal entry and Merkle path against the entries
  root its epoch anchored on chain (`ChainRoots`: one RPC call per epoch).
- `passk.pass_at_k(n, c, k)`: the unbiased estimator.
"""
