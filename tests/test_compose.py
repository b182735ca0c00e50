"""docker-compose.yml: valid for Docker's own parser, and every stagewise command in it parses."""

import json
import os
import re
import shutil
import subprocess
import sys
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


# ------------------------------------------------------------------ issue 18, item 11: safe to run twice, in production

ONE_SHOT = {"setup"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict:
    return _compose()["services"]


def _words(service: dict) -> list[str]:
    words = []
    for field in ("command", "entrypoint"):
        value = service.get(field) or []
        words += [value] if isinstance(value, str) else [str(v) for v in value]
    return words


def test_every_long_running_service_restarts_and_has_a_health_check():
    for name, service in _services().items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name  # a set-up that failed must stay failed, and say so
            continue
        assert service.get("restart") in ("always", "unless-stopped"), name
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert not service["healthcheck"].get("disable"), name


def test_every_dependency_waits_for_health_or_for_the_set_up_to_succeed():
    services = _services()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a list"
        for dependency, spec in depends.items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert spec == {"condition": wanted}, (name, dependency)
    workers = [name for name in services if name.startswith("worker-")]
    assert len(workers) >= 2
    for name in workers:
        assert services[name]["depends_on"]["validator"] == {"condition": "service_healthy"}
    assert {"postgres", "anvil", "setup"} <= set(services["validator"]["depends_on"])
    assert set(services["setup"]["depends_on"]) == {"anvil"}


def test_images_are_pinned():
    for name, service in _services().items():
        image = service["image"]
        if image == "stagewise:local":  # built here from the Dockerfile, whose base is pinned below
            continue
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert "@sha256:" in image or (repository and re.search(r"\d+\.\d+", tag)), f"{name}: {image} is not pinned"
        assert ":latest" not in image, name
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert re.search(r":\d+\.\d+\.\d+", base), base


def test_nothing_but_the_validators_api_is_published_beyond_this_host():
    for name, service in _services().items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            if name == "validator" and parts[-1] == "8700":
                continue
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: {port} is published to every interface"
    anvil_ports = _services()["anvil"].get("ports", [])
    assert all(str(p).startswith("127.0.0.1:") for p in anvil_ports)


def test_secrets_come_from_files_and_nowhere_else():
    compose = _compose()
    declared = compose["secrets"]
    for name, spec in declared.items():
        assert set(spec) == {"file"} and spec["file"] == f"./secrets/{name}", name
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()
    assert not (ROOT / "secrets").exists() or not subprocess.run(
        ["git", "ls-files", "secrets"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip(), "secrets are never committed"
    used = set()
    for name, service in compose["services"].items():
        used.update(service.get("secrets", []))
        assert set(service.get("secrets", [])) <= set(declared), name
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable) and not variable.endswith("FILE"):
                assert variable == "POSTGRES_HOST_AUTH_METHOD", f"{name}: {variable} is a secret in plain text"
            if variable.endswith("_FILE") or variable.endswith("__FILE"):
                secret = str(value).removeprefix("/run/secrets/")
                assert str(value).startswith("/run/secrets/") and secret in service["secrets"], (name, variable)
        for word in _words(service):
            if word.startswith(("--password-file=", "--seed-secret-file=")):
                secret = word.split("=", 1)[1].removeprefix("/run/secrets/")
                assert secret in service["secrets"], (name, word)
    assert used == set(declared), "every declared secret is used, every used one declared"
    # the script that writes them: random, never overwriting, one file each
    script = (ROOT / "deploy/secrets.sh").read_text()
    assert all(name in script for name in declared) and "/dev/urandom" in script


def test_postgres_asks_for_a_password_and_the_validator_gives_it_from_a_file():
    services = _services()
    postgres = services["postgres"]["environment"]
    assert postgres.get("POSTGRES_HOST_AUTH_METHOD") == "scram-sha-256"
    assert postgres["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    validator = services["validator"]["environment"]
    assert validator["STAGEWISE_DB"] == "postgresql://stagewise@postgres:5432/stagewise"  # no password in it
    assert validator["STAGEWISE_DB_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert validator["STAGEWISE_ADMIN_TOKEN_FILE"] == "/run/secrets/admin-token"  # admin actions enabled, by token


def test_no_command_hides_a_failure():
    for name, service in _services().items():
        assert not any("|| true" in word or "||true" in word for word in _words(service)), name
    setup = (ROOT / "deploy/setup.sh").read_text()
    assert "|| true" not in setup and "set -eu" in setup


def test_the_workers_form_one_multi_stage_group_each_with_its_own_key():
    services = _services()
    workers = {name: service for name, service in services.items() if name.startswith("worker-")}
    _, validator = parse(services["validator"]["command"])
    assert validator["stages_per_group"] == len(workers) >= 2  # one group of all of them, not one each
    volumes, passwords = set(), set()
    for name, service in workers.items():
        _, worker = parse(service["command"])
        assert str(worker["keystore"]) == "/data/keys/worker.json"
        assert str(worker["password_file"]) == f"/run/secrets/{name}-password"
        assert service["secrets"] == [f"{name}-password"]
        (volume,) = [v for v in service["volumes"] if v.endswith(":/data")]
        volumes.add(volume)
        passwords.add(str(worker["password_file"]))
        assert f"{volume.split(':')[0]}:/workers/{name}" in services["setup"]["volumes"]
    assert len(volumes) == len(passwords) == len(workers)
    assert "validator-data:/data" in services["validator"]["volumes"]


def test_anvil_keeps_its_chain_across_down_and_up():
    anvil = _services()["anvil"]
    state = next(word for word in anvil["entrypoint"] if word.startswith("--state="))
    directory = state.split("=", 1)[1].rsplit("/", 1)[0]
    assert any(volume.endswith(f":{directory}") for volume in anvil["volumes"])


def _run_setup(env: dict, anvil_url: str) -> str:
    result = subprocess.run(["sh", str(ROOT / "deploy/setup.sh")], capture_output=True, text=True, timeout=300,
                            env={**env, "STAGEWISE_RPC_URL": anvil_url})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_set_up_script_is_safe_to_run_again_and_after_the_chain_restarted_empty(tmp_path):
    """deploy/setup.sh itself, with the real `stagewise` command, against anvil: the first run makes keys,
    deploys, funds and stakes; the second sends no deploy and no stake; after anvil restarted without its
    state it deploys again (same owner key) and stakes again. Any failure fails the script."""
    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import AnvilNode

    secrets = tmp_path / "secrets"
    made = subprocess.run(["sh", str(ROOT / "deploy/secrets.sh"), str(secrets)], capture_output=True, text=True)
    assert made.returncode == 0 and len(list(secrets.iterdir())) == len(_compose()["secrets"]), made.stderr
    before = {path.name: path.read_text() for path in secrets.iterdir()}
    again = subprocess.run(["sh", str(ROOT / "deploy/secrets.sh"), str(secrets)], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == ""
    assert before == {path.name: path.read_text() for path in secrets.iterdir()}  # never overwritten
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"

    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "SECRETS": str(secrets),
        "STAGEWISE_HOME": str(tmp_path / "validator"), "WORKERS_DIR": str(tmp_path / "workers"),
        "WORKERS": "worker-1", "SCRYPT_N": "2", "STAGEWISE_KEYSTORE_PASSWORD": "ignored",
    }
    with AnvilNode(accounts=1) as anvil:
        first = _run_setup(env, anvil.url)
        assert "deployed StagewiseStaking" in first and "staked 1 ETH" in first
        second = _run_setup(env, anvil.url)
        assert "already deployed" in second and "nothing staked" in second and "deployed StagewiseStaking" not in second
        contract = json.loads((tmp_path / "validator/chain.json").read_text())["contract"]
    with AnvilNode(accounts=1) as fresh:
        third = _run_setup(env, fresh.url)
        assert f"the remembered {contract} has no code" in third and "staked 1 ETH" in third
        chain = ChainClient.connect(fresh.url, address=json.loads((tmp_path / "validator/chain.json").read_text())["contract"])
        worker = subprocess.run([str(Path(sys.executable).parent / "stagewise"), "wallet", "address", "--keystore",
                                 str(tmp_path / "workers/worker-1/keys/worker.json")], capture_output=True, text=True,
                                env=env).stdout.strip()
        assert chain.stake_info(worker).active == 10**18

    (secrets / "worker-1-password").write_text("not the keystore's password\n")  # a wrong secret stops it loudly
    with AnvilNode(accounts=1) as anvil:
        result = subprocess.run(["sh", str(ROOT / "deploy/setup.sh")], capture_output=True, text=True, timeout=300,
                                env={**env, "STAGEWISE_RPC_URL": anvil.url})
        assert result.returncode != 0 and "does not open keystore" in result.stderr
