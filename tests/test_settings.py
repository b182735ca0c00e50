"""node/settings.py is the one place that knows every STAGEWISE_* variable, and the command line shows them."""

import re
from pathlib import Path

import pytest

from node import settings
from node.cli.main import build_cli, main

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"STAGEWISE_[A-Z_]*[A-Z]")
ATTRIBUTE = re.compile(r"\bsettings\.([A-Z][A-Z_]*)\b")
HAND_READ = re.compile(r"os\.environ(?:\.get\(|\[)\s*[\"']STAGEWISE_")


def _sources():
    for top in ("node", "ledger"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != ROOT / "node" / "settings.py":
                yield path, path.read_text()


def test_every_variable_named_in_node_and_ledger_is_declared_in_settings():
    named = {(name, str(path.relative_to(ROOT))) for path, text in _sources() for name in NAME.findall(text)}
    unknown = sorted(f"{name} ({path})" for name, path in named if name not in settings.VARIABLES)
    assert not unknown, f"declare these in node/settings.py: {unknown}"


def test_settings_declares_nothing_unused():
    used = set()
    for _, text in _sources():  # by its name, or as settings.ATTRIBUTE
        used.update(NAME.findall(text))
        used.update(getattr(settings, attribute).name for attribute in ATTRIBUTE.findall(text)
                    if isinstance(getattr(settings, attribute, None), settings.Variable))
    unused = sorted(name for name in settings.VARIABLES if name not in used)
    assert not unused, f"node/settings.py declares variables nothing reads: {unused}"


def test_no_variable_is_read_by_hand():
    offenders = [str(path.relative_to(ROOT)) for path, text in _sources() if HAND_READ.search(text)]
    assert not offenders, f"read STAGEWISE_* variables through node.settings: {offenders}"


def test_every_variable_has_a_type_a_default_and_a_line_of_doc():
    for name, variable in settings.VARIABLES.items():
        assert name == variable.name and name.startswith("STAGEWISE_")
        assert variable.type in (str, int, float, bool, Path), name
        assert variable.doc and "\n" not in variable.doc, name
        assert variable.default is None or isinstance(variable.default, variable.type), name


def test_a_variable_reads_its_type_and_falls_back_on_its_default(monkeypatch):
    monkeypatch.setenv(settings.PORT.name, "9000")
    assert settings.PORT.get() == 9000
    monkeypatch.setenv(settings.PORT.name, "")
    assert settings.PORT.get() == 8700
    monkeypatch.setenv(settings.NO_CHAIN.name, "1")
    assert settings.NO_CHAIN.get() is True


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in build_cli().commands:
        assert re.search(rf"^\s+{re.escape(name)}\s", out, re.MULTILINE), name
    assert {"validator", "worker", "chain", "ledger", "wallet", "devnet", "generate", "stake", "claim"} <= set(build_cli().commands)


@pytest.mark.parametrize(
    "argv, variables",
    [
        (["worker", "run"], [settings.VALIDATOR_URL, settings.RPC_URL, settings.VALIDATOR_WAIT, settings.MAX_CONNECTIONS]),
        (["validator", "run"], [settings.PORT, settings.MODEL_DIRS, settings.TASKS, settings.ADMIN_TOKEN_FILE]),
        (["claim"], [settings.VALIDATOR_URL, settings.RPC_URL, settings.CONTRACT]),
        (["groups"], [settings.VALIDATOR_URL]),
    ],
)
def test_a_commands_help_names_the_env_var_of_its_options(capsys, argv, variables):
    assert main([*argv, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line: click wraps the text
    for variable in variables:
        assert variable.name in out, variable.name


def test_an_option_reads_its_env_var(monkeypatch):
    from node.cli.main import parse

    monkeypatch.setenv(settings.PORT.name, "9100")
    monkeypatch.setenv(settings.MODEL_DIRS.name, "/a::/b")
    monkeypatch.setenv(settings.NO_ORCHESTRATION.name, "1")
    _, values = parse(["validator", "run"])
    assert values["port"] == 9100 and list(values["model_dir"]) == ["/a", "/b"] and values["no_orchestration"] is True
    _, values = parse(["validator", "run", "--port", "1"])
    assert values["port"] == 1  # a flag wins over the environment


def test_usage_errors_exit_2_and_command_errors_print_one_line(capsys):
    assert main(["worker", "run", "--capacity", "lots"]) == 2
    assert "lots" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert main(["worker"]) == 2  # a group without its command prints its help
    assert "run" in capsys.readouterr().out
