"""The job ids a stage has started: it starts none twice (PROTOCOL I2).

A stage signs one handoff claim per chunk of a job. If it ran a job id twice on different inputs (a
neighbour can re-send a job over the link), it would sign two claims for one chunk, and its successor could
present the older one as equivocation. So every job id a stage opens is recorded before any row is computed,
on disk when the stage has a folder (a line per job, appended; kept `keep_s` seconds, like the receipts),
and never forgotten to make room: a flood of jobs cannot push an old id out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class StartedJobs:
    def __init__(self, path: Path | None = None, keep_s: float = 14 * 86400) -> None:
        self.path = path
        self._seen: set[str] = set()
        if path is not None and path.exists():
            cutoff = time.time() - keep_s
            kept = []
            for line in path.read_text().splitlines():
                job, _, when = line.partition(" ")
                if job and when.replace(".", "", 1).isdigit() and float(when) >= cutoff:
                    self._seen.add(job)
                    kept.append(line)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def __contains__(self, job_id_hex: str) -> bool:
        return job_id_hex.lower() in self._seen

    def add(self, job_id_hex: str) -> None:
        job = job_id_hex.lower()
        self._seen.add(job)
        if self.path is not None:  # flushed to the OS (a crashed process loses nothing); no fsync on the loop
            with open(self.path, "a") as file:
                file.write(f"{job} {time.time():.0f}\n")
