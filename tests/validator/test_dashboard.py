"""The dashboard, loaded in headless Chromium against a running validator that has just slashed a cheater."""

import asyncio
import shutil

import pytest

from tests.validator.factory import run_job
from tests.validator.test_validation import PROMPT, submit_and_validate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def rendered_dom(url: str, profile) -> str:
    """What the page shows once its scripts ran: Chromium's DOM after a virtual-time budget."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode == 0
    return stdout.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.slow
async def test_the_dashboard_shows_the_leaderboard_and_the_slash(client, node, group, tmp_path):
    honest = group.spec(PROMPT, max_new_tokens=6, seed=1)
    cheating = group.spec(PROMPT, max_new_tokens=6, seed=2)
    await submit_and_validate(client, node, run_job(group, honest))
    blamed = await submit_and_validate(client, node, run_job(group, cheating, perturbed_stage=1))
    assert blamed["verdict"]["blamed_stage"] == 1

    dom = await rendered_dom(str(client.make_url("/")), tmp_path / "chromium")

    assert 'data-loaded="true"' in dom
    cheater = group.keys[1].address
    slashes = dom.split('id="slashes"')[1].split("</table>")[0]
    assert cheater[-6:] in slashes and "mantissa error" in slashes  # the verifier's figures, not raw JSON
    assert all(key.address[-6:] not in slashes for key in (group.keys[0], group.keys[2]))
    leaderboard = dom.split('id="leaderboard"')[1].split("</table>")[0]
    assert all(key.address[-6:] in leaderboard for key in group.keys)
    assert "could not load" not in dom
