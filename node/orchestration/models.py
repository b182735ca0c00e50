"""A validator serving several models runs one orchestrator per model, each with its own workers, groups and
task dispatch; `ModelOrchestrators` sends what a worker says to the right one.

A registration goes to the orchestrator of the model it names (`Registration.model_id`; a registration that
names none, from a worker older than the field, to the first model's). Heartbeats, leaves and assignment
lookups go to the orchestrator that has the worker registered.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.orchestration.orchestrator import Orchestrator
from node.orchestration.registry import RegistrationRefused
from node.protocol.worker_messages import SignedRegistration


class ModelOrchestrators:
    def __init__(self, orchestrators: Sequence[Orchestrator]) -> None:
        ids = [o.model_id for o in orchestrators]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError("one orchestrator per model, at least one")
        self.all = tuple(orchestrators)
        self.first = self.all[0]
        self._by_model = {o.model_id: o for o in self.all}

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(self._by_model)

    def of_model(self, model_id: str | None) -> Orchestrator:
        """The orchestrator of `model_id` (the first model's for None); RegistrationRefused (409 unknown_model)
        for a model this validator does not run."""
        if model_id is None:
            return self.first
        found = self._by_model.get(model_id.lower())
        if found is None:
            raise RegistrationRefused(
                "unknown_model", f"this validator runs {', '.join(self.model_ids)}, not model {model_id}", 409)
        return found

    def for_registration(self, signed: SignedRegistration) -> Orchestrator:
        return self.of_model(signed.message.model_id)

    def of_worker(self, address: str) -> Orchestrator:
        """The orchestrator that has `address` registered; the first model's when none has (it answers
        `not_registered`)."""
        return next((o for o in self.all if o.registry.get(address) is not None), self.first)
