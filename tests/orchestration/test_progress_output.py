"""Issue 18, item 10: the task progress bar (tqdm) wrote carriage returns and bar characters into the
validator's log file. A bar only where stderr is a terminal; a plain log line otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys

from node.orchestration.progress import Progress, TaskResult
from node.orchestration import setup
from node.orchestration.setup import Orchestration

TASKS = 3


class _Dispatcher:
    """Finishes TASKS tasks, as the real dispatcher reports them."""

    def __init__(self) -> None:
        self.progress = Progress(tasks_total=TASKS)

    async def run(self) -> Progress:
        for index in range(TASKS):
            self.progress.job_started("g0")
            self.progress.job_ended("g0", 4)
            self.progress.task_finished(TaskResult(f"t{index}", (1, 2, 3, 4), "42", index != 1, ("0x01",), ("g0",), 0))
            await asyncio.sleep(0)
        return self.progress


def test_without_a_terminal_progress_is_plain_log_lines(tmp_path, monkeypatch):
    log_path = tmp_path / "validator.log"
    with open(log_path, "w") as log_file:  # `stagewise validator run 2> validator.log`: stderr is not a TTY
        assert not log_file.isatty()
        monkeypatch.setattr(sys, "stderr", log_file)
        handler = logging.StreamHandler(log_file)
        logger = logging.getLogger(setup.__name__)  # as it is whatever other tests did to logging
        logger.addHandler(handler)
        level = logger.level
        logger.setLevel(logging.INFO)  # setLevel, not an assignment: it clears the logger's isEnabledFor cache
        monkeypatch.setattr(logger, "disabled", False)
        try:
            asyncio.run(Orchestration(orchestrator=None, dispatcher=_Dispatcher(), issued=None)._dispatch())
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    text = log_path.read_text()
    assert "\r" not in text and "█" not in text and "it/s" not in text and "task/s" not in text, repr(text)
    lines = text.splitlines()
    assert "tasks: 3/3 finished (0 failed), 2/3 correct" in lines[-2], lines
    assert lines[-1].startswith("tasks finished: 3 done, 0 failed, 2/3 correct"), lines
