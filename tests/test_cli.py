import subprocess
import sys

from node.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0
    assert "stagewise" in capsys.readouterr().out


def test_no_command_prints_help_and_fails():
    result = subprocess.run([sys.executable, "-m", "node.cli"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "commands" in result.stdout
