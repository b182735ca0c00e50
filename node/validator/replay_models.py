"""The models a validator can replay, by model id, loaded once and kept.

A model is a value (PROTOCOL "A job"): its id is the hash of its weight manifest, so the validator
computes the id of each directory it is given and refuses bundles for any other id at intake. The whole
model is loaded on first use, in a thread, and then shared by every replay.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)


class ReplayModels:
    def __init__(self, model_dirs: Iterable[Path]) -> None:
        # torch: imported where used, to keep it out of start-up
        from node.pipeline.model import ModelConfig
        from node.pipeline.weights import model_id

        self.dirs: dict[str, Path] = {}
        self.vocab_sizes: dict[str, int] = {}
        for path in model_dirs:
            path = Path(path)
            identity = model_id(path)
            self.dirs[identity] = path
            self.vocab_sizes[identity] = ModelConfig.from_dir(path).vocab_size
        self._loaded: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.dirs)

    def load(self, model_id: str) -> Any:
        """The whole model (a StageModel over every layer), loaded on first use (blocking)."""
        if model_id not in self._loaded:
            # torch: imported where used, to keep it out of start-up
            from node.pipeline.weights import load_stage

            log.info("loading model %s from %s for replay", model_id, self.dirs[model_id])
            self._loaded[model_id] = load_stage(self.dirs[model_id])
        return self._loaded[model_id]

    async def get(self, model_id: str) -> Any:
        if model_id in self._loaded:
            return self._loaded[model_id]
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self.load, model_id)
