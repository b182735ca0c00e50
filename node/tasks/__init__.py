"""Reasoning tasks with checkable answers, bundled as package data.

`arithmetic.jsonl` holds 52 short arithmetic and word problems, one JSON object a line:
`{"id", "prompt", "answer", "checker"}`. A validator runs them with `--tasks arithmetic` (or any JSONL file
of the same shape, see `node.orchestration.tasks`), and `node.tasks.checkers` says whether an output is right.
`node.tasks.generators` makes verifiable math tasks from a seed (`--tasks gen:linear:n=200:seed=1`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_SETS = ("arithmetic",)


def bundled_path(name: str) -> Path:
    """The JSONL file of a bundled task set; raises KeyError naming the sets that exist."""
    if name not in BUNDLED_SETS:
        raise KeyError(f"no bundled task set {name!r}; bundled: {', '.join(BUNDLED_SETS)}")
    return Path(str(resources.files(__name__) / f"{name}.jsonl"))
