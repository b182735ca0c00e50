"""docker-compose.yml: valid for Docker's own parser, and every stagewise command in it parses."""

import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from node.cli.main import parse

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_every_stagewise_service_command_parses():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    stagewise = {name: s for name, s in services.items() if s.get("image") == "stagewise:local" and "command" in s}
    assert {"validator", "worker-1", "worker-2", "worker-3"} <= set(stagewise)
    for name, service in stagewise.items():
        command, _ = parse(service["command"])
        assert not isinstance(command, click.Group), name  # a command that runs, not a group's help


def test_the_stack_has_every_part():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"postgres", "anvil", "validator", "prometheus", "grafana"} <= set(services)
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["validator:8700"]
