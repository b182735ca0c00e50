"""Forming groups of stage workers and running jobs through them: registry, grouping, dispatch,
rerouting, stage control, tasks, and the orchestrator API."""
