"""The set-up promises: README's two commands, CI calling them, binder matching pyproject."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement


def _reqs(lines):
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            out[(r.name.lower().replace("_", "-"), str(r.marker))] = str(r.specifier)
    return out


def test_binder_lists_the_same_dependencies_as_pyproject(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    # binder is a CPU machine: the runtime dependencies and the cpu extra's TensorFlow
    want = _reqs(project["dependencies"] + project["optional-dependencies"]["cpu"])
    have = _reqs((repo_root / "binder" / "requirements.txt").read_text().splitlines())
    front_ends = {k for k in have if k[0] in ("jupyterlab", "notebook")}
    assert {k: v for k, v in have.items() if k not in front_ends} == want
    post = (repo_root / "binder" / "postBuild").read_text()
    assert "pip install" in post and "." in post


def test_readme_leads_with_the_two_commands(repo_root):
    text = (repo_root / "README.md").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", text, flags=re.M)
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command(repo_root):
    ci = (repo_root / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, flags=re.M)
    make = (repo_root / "Makefile").read_text()
    assert re.search(r"^test:", make, flags=re.M) and re.search(r"^demo:", make, flags=re.M)


def test_console_script_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "--help"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0
    for cmd in ("simulate", "preprocess", "train", "encode", "generate", "demo"):
        assert cmd in out.stdout


def test_cli_help_does_not_import_tensorflow():
    code = ("import sys; from cryovae_nb import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_unknown_command_is_a_clear_usage_error():
    out = subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "frobnicate"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_cpu_and_gpu_extras_never_install_two_tensorflows(repo_root):
    """tensorflow-cpu and tensorflow own the same tensorflow/ folder: the base dependencies name
    neither, each extra names one, and `make` installs the cpu one."""
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def tf_names(reqs):
        return {Requirement(r).name for r in reqs if Requirement(r).name.startswith("tensorflow")}

    assert tf_names(project["dependencies"]) == set()
    linux = {"sys_platform": "linux"}
    for extra, want in (("cpu", {"tensorflow-cpu"}), ("gpu", {"tensorflow"})):
        on_linux = {Requirement(r).name for r in extras[extra]
                    if Requirement(r).marker is None or Requirement(r).marker.evaluate(linux)}
        assert on_linux & {"tensorflow", "tensorflow-cpu"} == want, extra
    assert "and-cuda" in "".join(extras["gpu"])
    for extra in set(extras) - {"cpu", "gpu"}:
        assert tf_names(extras[extra]) == set(), extra
    make = (repo_root / "Makefile").read_text()
    installs = re.findall(r'pip install[^\n]*-e "\.\[([^\]]*)\]"', make)
    assert installs and all("cpu" in i.split(",") and "gpu" not in i.split(",") for i in installs), installs
