"""The dataset card: README.md beside the data, with the YAML header the Hugging Face Hub reads (two configs,
`samples` and `pass_at_k`), the fields, the counts, the models and how to verify every row against the chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.dataset import rows as layout


def _model_lines(pass_rows: Sequence[dict[str, Any]], k: int) -> list[str]:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in pass_rows:
        by_model.setdefault(row["model_id"], []).append(row)
    lines = [f"| model id | tasks | samples | correct | mean pass@1 | mean pass@{k} |", "|---|---|---|---|---|---|"]
    for model, rows in sorted(by_model.items()):
        scored = [r for r in rows if r["pass_at_1"] is not None]
        at_k = [r["pass_at_k"] for r in scored if r["pass_at_k"] is not None]
        mean1 = f"{sum(r['pass_at_1'] for r in scored) / len(scored):.3f}" if scored else "-"
        mean_k = f"{sum(at_k) / len(at_k):.3f}" if at_k else "-"
        lines.append(f"| `{model}` | {len(rows)} | {sum(r['n'] + r['unchecked'] for r in rows)} "
                     f"| {sum(r['correct'] for r in rows)} | {mean1} | {mean_k} |")
    return lines


def write_card(report: Any, pass_rows: Sequence[dict[str, Any]]) -> None:
    """Write `report.out`/README.md for the export `report` (an ExportReport) with its pass@k rows."""
    fmt = report.fmt
    fields = "\n".join(f"| `{name}` | {layout.SAMPLE_SCHEMA.field(name).type} | {note} |"
                       for name, note in layout.FIELD_NOTES.items())
    unanchored = (f"\n{report.unanchored_rows} of them come from epochs not anchored on chain "
                  "(`--include-unanchored`): `verify` fails those rows.\n" if report.unanchored_rows else "")
    text = f"""---
configs:
- config_name: samples
  data_files: {layout.SAMPLES}.{fmt}
  default: true
- config_name: pass_at_k
  data_files: {layout.PASS_AT_K}.{fmt}
---

# stagewise verified dataset

Reasoning traces produced by a stagewise network: each row is the output of one job that the validator
replayed (or spot-checked) and **accepted**, with the proof that the row is part of the ledger whose epoch
roots are anchored on chain. Blamed and soft-invalidated jobs are never exported.

* {report.rows:,} rows in `{layout.SAMPLES}.{fmt}` over {report.epochs} epochs; {report.tasks:,} tasks, {len(report.models)} model(s).
* {report.pairs:,} rows in `{layout.PASS_AT_K}.{fmt}`: per (task, model) `n` checked samples, `correct`, pass@1 and
  pass@{report.k} (the unbiased estimator 1 - C(n-c, k)/C(n, k); null when n < k), `unchecked` samples
  without a checker.
{unanchored}
## Models

{chr(10).join(_model_lines(pass_rows, report.k))}

## Fields of `{layout.SAMPLES}`

| field | type | meaning |
|---|---|---|
{fields}

## Load

```python
import datasets
rows = datasets.load_dataset("parquet", data_files="{layout.SAMPLES}.parquet", split="train")
```

## Verify

```sh
stagewise dataset verify DIR --rpc-url URL --contract 0xSTAKING_CONTRACT
```

For every row: `digest = keccak256("stagewise/sample/v1" ‖ keccak256(prompt_token_ids) ‖
keccak256(completion_token_ids) ‖ canonical JSON of the other committed fields)`, token ids packed as uint64
little-endian, the JSON with sorted keys and no spaces (job, task, model, prompt and completion texts,
sampling, seed, answer, checker, result, verdict and figures: `ledger/samples.py`); the row's `sample` journal entry, rebuilt from that digest, `journal_seq`,
`journal_at_ms` and `journal_prev_hash`, must hash to `entry_hash`; `merkle_proof` must lead from
`entry_hash` to the entries root the contract's `entriesRootOf(epoch)` holds. One RPC call per epoch.
A changed completion, a dropped proof or a row of a job that was not accepted fails, and the command
names the row.
"""
    (report.out / "README.md").write_text(text, encoding="utf-8")
