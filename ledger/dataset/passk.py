"""pass@k per (task, model): the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code": with n samples of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k), the chance that
at least one of k samples drawn without replacement is correct. Computed as a product, which stays exact in
floating point where the binomials would overflow."""

from __future__ import annotations

from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """The unbiased pass@k of n samples with c correct; None when k > n (the estimator needs k samples)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, not n={n} c={c} k={k}")
    if k > n:
        return None
    if n - c < k:
        return 1.0
    failing_all = 1.0
    for i in range(n - c + 1, n + 1):
        failing_all *= 1.0 - k / i
    return 1.0 - failing_all


@dataclass
class TaskTally:
    """Samples of one task on one model, and how many the checker passed (None results are not counted)."""

    task_id: str
    task_source: str
    model_id: str
    n: int = 0
    correct: int = 0
    unchecked: int = 0

    def add(self, correct: bool | None, times: int = 1) -> None:
        if correct is None:
            self.unchecked += times
            return
        self.n += times
        self.correct += times * int(correct)

    def row(self, k: int) -> dict:
        return {
            "task_id": self.task_id,
            "task_source": self.task_source,
            "model_id": self.model_id,
            "n": self.n,
            "correct": self.correct,
            "unchecked": self.unchecked,
            "k": k,
            "pass_at_1": pass_at_k(self.n, self.correct, 1) if self.n else None,
            "pass_at_k": pass_at_k(self.n, self.correct, k) if self.n else None,
        }
