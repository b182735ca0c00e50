"""What the orchestrator has done so far: tasks finished and answered right, tokens, reroutes, throughput.

Plain counters updated by the dispatcher, read by GET /v1/orchestrator/progress, `stagewise groups` and
the run's progress bar. Throughput is measured, not estimated: tokens generated over wall-clock time, for
the whole run and per group (from the first job a group started to the last it finished).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RECENT_RESULTS = 50


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    output_token_ids: tuple[int, ...]
    output_text: str
    correct: bool | None
    job_ids: tuple[str, ...]
    groups: tuple[str, ...]
    reroutes: int
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "output_token_ids": list(self.output_token_ids),
            "output_text": self.output_text,
            "correct": self.correct,
            "job_ids": list(self.job_ids),
            "groups": list(self.groups),
            "reroutes": self.reroutes,
            "error": self.error,
        }


@dataclass
class GroupThroughput:
    tokens: int = 0
    jobs: int = 0
    first_start: float | None = None
    last_end: float | None = None

    def tokens_per_s(self) -> float:
        if self.first_start is None or self.last_end is None or self.last_end <= self.first_start:
            return 0.0
        return self.tokens / (self.last_end - self.first_start)


@dataclass
class Progress:
    tasks_total: int = 0
    clock: Callable[[], float] = time.monotonic
    tasks_done: int = 0
    tasks_failed: int = 0
    checked: int = 0
    correct: int = 0
    tokens: int = 0
    jobs: int = 0
    reroutes: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    groups: dict[str, GroupThroughput] = field(default_factory=dict)
    results: deque = field(default_factory=lambda: deque(maxlen=RECENT_RESULTS))
    listeners: list = field(default_factory=list)  # called with each TaskResult (a progress bar, a log)

    def job_started(self, group_id: str) -> None:
        now = self.clock()
        if self.started_at is None:
            self.started_at = now
        self.jobs += 1
        group = self.groups.setdefault(group_id, GroupThroughput())
        group.jobs += 1
        if group.first_start is None:
            group.first_start = now

    def job_ended(self, group_id: str, new_tokens: int) -> None:
        self.tokens += new_tokens
        group = self.groups.setdefault(group_id, GroupThroughput())
        group.tokens += new_tokens
        group.last_end = self.clock()

    def task_finished(self, result: TaskResult) -> None:
        self.results.append(result)
        if result.error is not None:
            self.tasks_failed += 1
        else:
            self.tasks_done += 1
            if result.correct is not None:
                self.checked += 1
                self.correct += int(result.correct)
        self.reroutes += result.reroutes
        if self.tasks_done + self.tasks_failed >= self.tasks_total:
            self.finished_at = self.clock()
        for listener in self.listeners:
            listener(result)

    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or self.clock()) - self.started_at

    def tokens_per_s(self) -> float:
        elapsed = self.elapsed_s()
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def to_json(self, recent: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tasks_total": self.tasks_total,
            "tasks_done": self.tasks_done,
            "tasks_failed": self.tasks_failed,
            "checked": self.checked,
            "correct": self.correct,
            "accuracy": round(self.correct / self.checked, 4) if self.checked else None,
            "tokens": self.tokens,
            "jobs": self.jobs,
            "reroutes": self.reroutes,
            "elapsed_s": round(self.elapsed_s(), 3),
            "tokens_per_s": round(self.tokens_per_s(), 3),
            "groups": {
                group_id: {"tokens": g.tokens, "jobs": g.jobs, "tokens_per_s": round(g.tokens_per_s(), 3)}
                for group_id, g in self.groups.items()
            },
        }
        if recent:
            data["recent"] = [result.to_json() for result in self.results]
        return data
