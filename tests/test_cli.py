import subprocess
import sys

from node.cli.main import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0
    assert "stagewise" in capsys.readouterr().out


def test_no_command_prints_help_and_fails():
    result = subprocess.run([sys.executable, "-m", "node.cli.main"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "commands" in result.stdout


def test_start_up_errors_are_one_line_that_says_what_to_do(tmp_path):
    # Issue 18, item 4: a port in use or a database that does not answer printed 27 and 185 lines of traceback.
    import socket

    from node.pipeline.tiny import tiny_model_dir

    model_dir = tiny_model_dir("llama", seed=3, path=tmp_path / "model", num_layers=2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = [sys.executable, "-m", "node.cli.main", "--data-dir", str(tmp_path / "home")]
        run = ["validator", "run", "--model-dir", str(model_dir), "--no-chain", "--chain-id", "1",
               "--contract", "0x" + "ab" * 20, "--port", str(port)]
        cases = {
            "choose another --port": base + run,
            "check --db": base + ["--db", "postgresql://nobody@127.0.0.1:1/none"] + run,
        }
        for hint, argv in cases.items():
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            errors = [line for line in result.stderr.splitlines() if " INFO " not in line and " WARNING " not in line]
            assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
            assert errors[0].startswith("error: ") and hint in errors[0]
