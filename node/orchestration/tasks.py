"""Where the orchestrator's work comes from: a JSONL file of prompts, each with an optional checker.

One JSON object a line:
    {"id": "t1", "prompt": "What is 6 * 7?", "answer": "42", "checker": "number", "max_new_tokens": 16}
`prompt` is text (encoded with the model's tokenizer and, when it has one, its chat template) or
`prompt_token_ids` a list of ids (used as is). `answer` and `checker` (one of node.tasks.checkers.CHECKERS)
come together or not at all; `id` defaults to the line number; `max_new_tokens` overrides the run's default.
A malformed line fails the whole load with its line number: a task set is checked before any job runs.

`--tasks arithmetic` names the bundled set (node/tasks/arithmetic.jsonl); `--tasks gen:linear:n=200:seed=1` a
generator (node/tasks/generators.py). `load_task_source` takes any of the three; each task remembers its
source, which the dataset's rows carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ledger import json_input
from ledger.errors import InvalidInput
from node.tasks import BUNDLED_SETS, bundled_path
from node.tasks.checkers import CHECKERS
from node.tasks.generators import generate, is_generator_spec

_FIELDS = {"id", "prompt", "prompt_token_ids", "answer", "checker", "max_new_tokens"}


class TaskError(InvalidInput):
    """A task file or line that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    answer: str | None = None
    checker: str | None = None
    max_new_tokens: int | None = None
    source: str = ""

    def check(self, output_text: str) -> bool | None:
        """True or False when the task has a checker; None when nothing can be said."""
        if self.checker is None or self.answer is None:
            return None
        return CHECKERS[self.checker](output_text, self.answer)


class Tokenizer(Protocol):
    def encode_prompt(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids (folded into the vocabulary): for tiny test models that have no tokenizer."""

    vocab_size: int

    def encode_prompt(self, text: str) -> list[int]:
        return [byte % self.vocab_size for byte in text.encode()] or [0]

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")


class HfTokenizer:
    """A transformers tokenizer loaded from the model directory (offline), chat template when present."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    def encode_prompt(self, text: str) -> list[int]:
        if getattr(self._tokenizer, "chat_template", None):
            ids = self._tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self._tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)


def load_tokenizer(model_dir: Path, vocab_size: int) -> Tokenizer:
    """The model's own tokenizer when its directory has one, else bytes (tiny random test models)."""
    if (Path(model_dir) / "tokenizer.json").exists() or (Path(model_dir) / "tokenizer_config.json").exists():
        return HfTokenizer(Path(model_dir))
    return ByteTokenizer(vocab_size)


def resolve_task_file(name_or_path: str) -> Path:
    """A bundled set's name (`arithmetic`) or a path to a JSONL file."""
    if name_or_path in BUNDLED_SETS:
        return bundled_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise TaskError(f"no task file {path} (and no bundled set of that name: {', '.join(BUNDLED_SETS)})")
    return path


def load_task_source(spec: str) -> tuple[Task, ...]:
    """The tasks `--tasks` names: a generator (`gen:NAME:n=N:seed=S`), a bundled set, or a JSONL file."""
    if is_generator_spec(spec):
        try:
            made = generate(spec)
        except ValueError as error:
            raise TaskError(str(error)) from None
        return tuple(Task(t.task_id, t.prompt, None, t.answer, t.checker, None, spec) for t in made)
    return load_tasks(resolve_task_file(spec), source=spec if len(spec) <= 256 else Path(spec).name[-256:])


def load_tasks(path: Path, source: str | None = None) -> tuple[Task, ...]:
    """Every task in a JSONL file (their `source`: `source`, else the path); blank lines are skipped; any bad
    line raises TaskError with its number."""
    tasks: list[Task] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                task = parse_task(json_input.loads(line), default_id=f"line-{number}", source=source or str(path))
            except (ValueError, TaskError) as error:
                raise TaskError(f"{path}:{number}: {error}") from None
            if task.task_id in seen:
                raise TaskError(f"{path}:{number}: duplicate task id {task.task_id!r}")
            seen.add(task.task_id)
            tasks.append(task)
    if not tasks:
        raise TaskError(f"{path} holds no tasks")
    return tuple(tasks)


def parse_task(data: Any, default_id: str, source: str = "") -> Task:
    if not isinstance(data, dict):
        raise TaskError("a task is a JSON object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise TaskError(f"unknown field(s) {sorted(unknown)}; a task has {sorted(_FIELDS)}")
    task_id = data.get("id", default_id)
    if not (isinstance(task_id, str) and 0 < len(task_id) <= 128):
        raise TaskError("id must be a non-empty string of at most 128 characters")
    prompt = data.get("prompt")
    ids = data.get("prompt_token_ids")
    if (prompt is None) == (ids is None):
        raise TaskError("give exactly one of prompt (text) or prompt_token_ids")
    if prompt is not None and not (isinstance(prompt, str) and prompt.strip()):
        raise TaskError("prompt must be non-empty text")
    if ids is not None:
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)):
            raise TaskError("prompt_token_ids must be a non-empty list of non-negative integers")
        ids = tuple(ids)
    answer, checker = data.get("answer"), data.get("checker")
    if (answer is None) != (checker is None):
        raise TaskError("answer and checker come together")
    if answer is not None and not isinstance(answer, str):
        raise TaskError("answer must be a string")
    if checker is not None and checker not in CHECKERS:
        raise TaskError(f"checker must be one of {sorted(CHECKERS)}")
    limit = data.get("max_new_tokens")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 1 << 16):
        raise TaskError("max_new_tokens must be an integer in [1, 65536]")
    return Task(task_id, prompt, ids, answer, checker, limit, source)
