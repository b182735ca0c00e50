"""The validator node: bundle intake, a durable queue, replay and verdicts, and their consequences.

`app.build_app` assembles the HTTP API (routes from `api`, orchestration routes added by registrars);
`queue` hands jobs to validation workers; `replay` + `verdict` decide; `outbox` carries slashes and epoch
anchors to the chain exactly once.
"""
