"""The models a validator can replay, by model id, each in the precision it declares for it, loaded once and kept.

A model is a value (PROTOCOL "A job"): its id is the hash of its weight manifest, so the validator
computes the id of each directory it is given and refuses bundles for any other id at intake. The validator
chooses the precision its jobs on each model declare (`--precision`, PROTOCOL I8) and refuses bundles that
declare another; a replay always runs in the precision the job's spec declares (a job queued before a restart
with another `--precision` is still judged in its own), on this validator's `device`. A model is loaded on
first use, in a thread, and then shared by every replay.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Iterable

from node.protocol.precision import DEFAULT_PRECISION, check_precision

log = logging.getLogger(__name__)


class ReplayModels:
    def __init__(self, model_dirs: Iterable[Path], precision: str = DEFAULT_PRECISION, device: str = "cpu") -> None:
        # torch: imported where used, to keep it out of start-up
        from node.pipeline.model import ModelConfig
        from node.pipeline.weights import model_id

        check_precision(precision)
        self.device = device
        self.dirs: dict[str, Path] = {}
        self.vocab_sizes: dict[str, int] = {}
        self.precisions: dict[str, str] = {}  # model id -> the precision its jobs declare
        for path in model_dirs:
            path = Path(path)
            identity = model_id(path)
            self.dirs[identity] = path
            self.vocab_sizes[identity] = ModelConfig.from_dir(path).vocab_size
            self.precisions[identity] = precision
        self._loaded: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.dirs)

    def load(self, model_id: str, precision: str | None = None) -> Any:
        """The whole model (a StageModel over every layer) in `precision` (by default the one declared for it),
        loaded on first use (blocking)."""
        wanted = (model_id, precision or self.precisions[model_id])
        if wanted not in self._loaded:
            # torch: imported where used, to keep it out of start-up
            from node.pipeline.weights import load_stage
            from node.pipeline.wire import WIRE_DTYPES

            log.info("loading model %s from %s for replay in %s on %s", model_id, self.dirs[model_id], wanted[1],
                     self.device)
            self._loaded[wanted] = load_stage(self.dirs[model_id], dtype=WIRE_DTYPES[wanted[1]], device=self.device)
        return self._loaded[wanted]

    async def get(self, model_id: str, precision: str | None = None) -> Any:
        wanted = (model_id, precision or self.precisions[model_id])
        if wanted in self._loaded:
            return self._loaded[wanted]
        lock = self._locks.setdefault(wanted, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self.load, *wanted)
