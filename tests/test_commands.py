"""The command modules of ``cryovae_nb.commands``: each one's shape, ``--help`` without TensorFlow,
the one error policy, and the launch supervisor's entry without the console script."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryovae_nb import cli
from cryovae_nb.commands import preprocess as preprocess_command

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "umap", "horovod", "ipywidgets")


def _python(*args, **kwargs) -> subprocess.CompletedProcess:
    # the checkout's package, whatever the venv has installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env,
                          **kwargs)


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_module_has_help_arguments_and_run(command):
    module = cli._command(command)
    assert isinstance(module.HELP, str) and module.HELP and "\n" not in module.HELP
    assert callable(module.add_arguments) and callable(module.run)
    assert cli._help_line(command) == module.HELP  # what `cryovae --help` lists, read without importing


def test_top_help_lists_every_command_with_its_help():
    out = _python("-m", "cryovae_nb.cli", "--help")
    assert out.returncode == 0
    for command in cli.COMMANDS:
        assert f"  {command:<11} {cli._command(command).HELP}" in out.stdout


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in cli.COMMANDS],
                         ids=lambda a: " ".join(a))
def test_help_exits_0_without_tensorflow(argv):
    code = ("import sys\nfrom cryovae_nb import cli\n"
            f"try:\n    rc = cli.main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = _python("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize("command", ["train", "preprocess"])
def test_console_script_help_exits_0(command):
    out = _python("-m", "cryovae_nb.cli", command, "--help")
    assert out.returncode == 0 and f"cryovae {command}" in out.stdout


def test_normalize_is_an_alias_of_normalise():
    parser = argparse.ArgumentParser()
    preprocess_command.add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "normalise"]
    assert action.option_strings == ["--normalise", "--normalize"]
    for spelling in ("--normalise", "--normalize"):
        assert parser.parse_args(["in.star", "-o", "out", spelling, "zscore"]).normalise == "zscore"
    assert parser.parse_args(["in.star", "-o", "out"]).normalise == "auto"  # tanh, or standardise for CTF data


def test_no_command_has_its_own_error_policy():
    # cli.run_command is the one place a CryoVAEError / OSError becomes a line and an exit status
    for path in (REPO / "cryovae_nb" / "commands").glob("*.py"):
        text = path.read_text()
        assert "except CryoVAEError" not in text and "except OSError" not in text, path.name


def test_training_entry_uses_the_error_policy(tmp_path):
    out = _python("-m", "cryovae_nb.training", "--config", str(tmp_path / "absent.yaml"),
                  "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m cryovae_nb.training: error:"), out.stderr
    assert "absent.yaml" in lines[0]


def test_training_entry_bad_argument_is_one_line():
    out = _python("-m", "cryovae_nb.training", "--max-steps", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("python -m cryovae_nb.training: error:")


def test_launch_module_does_not_import_the_console_script():
    code = "import sys, cryovae_nb.launch\nprint('cryovae_nb.cli' in sys.modules)"
    out = _python("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_supervisor_entry_usage_and_run(tmp_path):
    bad = _python("-m", "cryovae_nb.launch", "config.yaml", "--run-dir", str(tmp_path))
    assert bad.returncode == 2 and "usage: python -m cryovae_nb.launch _supervise" in bad.stderr
    ok = _python("-m", "cryovae_nb.launch", "_supervise", str(tmp_path), "--", sys.executable, "-c", "print('hi')")
    assert ok.returncode == 0, ok.stderr
    assert "hi" in (tmp_path / "launch.log").read_text()
    assert (tmp_path / "exit.json").is_file()
