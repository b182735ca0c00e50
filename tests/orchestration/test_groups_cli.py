"""`stagewise groups` against a live validator app: the table a person reads."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from node.cli.groups import render
from node.cli.main import main

GROUPS = {
    "model_id": "0x" + "ab" * 32,
    "num_layers": 10,
    "groups": [
        {
            "group_id": "g-0123456789ab",
            "regions": ["eu"],
            "estimated_tokens_per_s": 1333.3,
            "measured_tokens_per_s": 41.5,
            "stages": [
                {"index": 0, "worker": "0x" + "11" * 20, "layer_start": 0, "layer_end": 6, "region": "eu", "layer_tokens_per_s": 8000.0},
                {"index": 1, "worker": "0x" + "22" * 20, "layer_start": 6, "layer_end": 10, "region": "eu", "layer_tokens_per_s": 6000.0},
            ],
        }
    ],
    "spares": ["0x" + "33" * 20],
    "workers": [{"address": "0x" + "44" * 20, "healthy": False}],
}
PROGRESS = {"tasks_total": 52, "tasks_done": 10, "tasks_failed": 0, "checked": 10, "correct": 3, "accuracy": 0.3,
            "tokens": 320, "tokens_per_s": 41.5, "reroutes": 1}


def test_render_shows_stages_ranges_throughput_spares_and_progress():
    text = render(GROUPS, PROGRESS)
    assert "group g-0123456789ab" in text and "measured 41.5 tok/s" in text
    assert "[0,6)" in text and "[6,10)" in text
    assert "spares: 0x" + "33" * 20 in text
    assert "missing heartbeats: 0x" + "44" * 20 in text
    assert "tasks 10/52 done" in text and "correct 3/10 (30%)" in text


def test_groups_command_reads_a_running_validator(capsys):
    app = web.Application()
    app.router.add_get("/v1/groups", lambda request: web.json_response(GROUPS))
    app.router.add_get("/v1/orchestrator/progress", lambda request: web.json_response(PROGRESS))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert main(["groups", "--validator", f"http://127.0.0.1:{port}"]) == 0
        assert "[6,10)" in capsys.readouterr().out
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_groups_command_says_when_no_validator_answers(capsys):
    assert main(["groups", "--validator", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "cannot read http://127.0.0.1:9/v1/groups" in capsys.readouterr().err


def test_a_validator_of_several_models_is_shown_one_model_at_a_time_saying_which_others_it_runs():
    other = "0x" + "cd" * 32
    text = render({**GROUPS, "models": [GROUPS["model_id"], other]}, PROGRESS)
    assert f"also runs {other}: --model-id" in text
    assert "also runs" not in render({**GROUPS, "models": [GROUPS["model_id"]]}, PROGRESS)
