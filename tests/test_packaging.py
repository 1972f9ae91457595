"""The set-up promises: README's two commands, CI calling them, binder matching pyproject."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
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


# --- what `make demo` and `make test` install (dry runs against a venv that does not exist yet) ---

def _dry_run(repo_root, tmp_path, target: str) -> str:
    """The commands `make TARGET` would run on a fresh machine."""
    out = subprocess.run(["make", "-n", "-C", str(repo_root), target, f"VENV={tmp_path / 'fresh-venv'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _extras_installed(commands: str) -> set[str]:
    found = re.findall(r'pip install[^\n]*-e "\.\[([^\]]*)\]"', commands)
    assert found, commands
    return {e.strip() for extras in found for e in extras.split(",")}


def _distributions(project: dict, extras: set[str]) -> set[str]:
    """Every distribution the base dependencies and ``extras`` name, following the extras' references
    to the project itself (``cryovae_nb[notebooks]``), as pip resolves them on Linux."""
    own = project["name"].lower().replace("_", "-")
    names, todo, seen = set(), list(extras), set()
    for r in project["dependencies"]:
        names.add(Requirement(r).name.lower())
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, project["optional-dependencies"][extra]):
            if r.marker is not None and not r.marker.evaluate({"sys_platform": "linux", "extra": extra}):
                continue
            if r.name.lower().replace("_", "-") == own:
                todo.extend(r.extras)
            else:
                names.add(r.name.lower())
    return names


def test_make_demo_installs_the_notebook_runner_and_no_test_extras(repo_root, tmp_path):
    """`make demo` runs `cryovae demo` headless: TensorFlow and the notebook runner, not pytest,
    JupyterLab or Playwright (hundreds of MB); `make test` adds those."""
    from cryovae_nb.tutorial.notebooks import RUNNER_MODULES

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    demo_extras = _extras_installed(_dry_run(repo_root, tmp_path, "demo"))
    test_extras = _extras_installed(_dry_run(repo_root, tmp_path, "test"))
    assert "test" not in demo_extras and "test" in test_extras
    demo = _distributions(project, demo_extras)
    test = _distributions(project, test_extras)
    test_only = {"pytest", "jupyterlab", "notebook", "playwright"}
    assert test_only <= test and not demo & test_only, demo & test_only
    assert set(RUNNER_MODULES) <= demo and set(RUNNER_MODULES) <= test
    assert "tensorflow-cpu" in demo
    # a second `make demo` (venv and stamp newer than pyproject.toml) installs nothing
    venv = tmp_path / "fresh-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".stamps").mkdir()
    (venv / ".stamps" / "runtime").touch()
    again = _dry_run(repo_root, tmp_path, "demo")
    assert "pip install" not in again and "cryovae_nb.cli demo" in again, again


def test_browser_target_without_root_or_sudo_goes_on_and_says_the_tests_skip(repo_root):
    """`make test` on a machine where apt-get needs root and there is neither root nor sudo: the
    Chromium step says so and succeeds (the browser tests then skip with their reason), and writes
    no stamp, so a later `make test` with root installs it."""
    # not pytest's tmp_path: its parents are private to the user, and the make below may run as nobody
    with tempfile.TemporaryDirectory() as tmp:
        _browser_target_unprivileged(repo_root, Path(tmp))


def _browser_target_unprivileged(repo_root, tmp_path):
    bin_dir = tmp_path / "bin"          # a PATH with apt-get but no sudo
    bin_dir.mkdir()
    for tool in ("bash", "sh", "id", "mkdir", "touch", "env", "apt-get"):
        where = shutil.which(tool)
        if where is None:
            if tool == "apt-get":
                pytest.skip("no apt-get on this machine: the Makefile's Debian branch cannot be run")
            raise AssertionError(f"{tool} not found")
        (bin_dir / tool).symlink_to(where)
    stamps = tmp_path / "stamps"
    # a copy of the Makefile: the checkout may sit where the unprivileged user cannot enter (/root)
    shutil.copy(repo_root / "Makefile", tmp_path / "Makefile")
    (tmp_path / "Makefile").chmod(0o644)
    cmd = ["make", "-s", "-C", str(tmp_path), "browser", f"STAMPS={stamps}",
           f"CHROMIUM={tmp_path / 'no-chromium'}"]
    if os.getuid() == 0:                # run as nobody
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop to an unprivileged user")
        tmp_path.chmod(0o777)
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    make = shutil.which("make")
    cmd[cmd.index("make")] = make
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not root and no sudo" in out.stdout and "browser tests will skip" in out.stdout
    assert not (stamps / "browser").exists()


def test_demo_without_the_notebook_runner_is_one_line_before_any_work(tmp_path):
    """A bare `pip install .[cpu]` lacks the runner: `cryovae demo` says what to install at once,
    not after minutes of training."""
    code = ("import sys\n"
            "sys.modules['nbclient'] = None  # as if not installed: find_spec gives None\n"
            "from cryovae_nb.cli import main\n"
            f"sys.exit(main(['demo', '--quick', '--out', {str(tmp_path / 'out')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nbclient" in lines[0] and ".[cpu,notebooks]" in lines[0], out.stderr
    assert not (tmp_path / "out").exists()


def test_tutorial_notebooks_say_how_much_memory_they_need(repo_root):
    """binder gives 2 GB in all and a TensorFlow kernel takes up to 1.5 GB: each notebook says its
    figure (benchmarks/notebook_memory.py) in its first cell, where a user reads before running."""
    import json

    for name in ("01_preprocess", "02_train", "03_cluster_training", "04_evaluate", "05_latent_landscape"):
        first = json.loads((repo_root / "notebooks" / f"{name}.ipynb").read_text())["cells"][0]
        text = "".join(first["source"])
        assert first["cell_type"] == "markdown" and re.search(r"\*\*Memory:\*\*[^\n]*\d GB", text), name
