"""The package's build metadata as setuptools makes it: the licence is an SPDX expression (the
TOML-table form is deprecated and warns at every install)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def test_metadata_builds_without_warnings_and_names_the_licence(repo_root, tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX licence expressions (77)")
    src = tmp_path / "src"  # a copy: building metadata writes an egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / name, src)
    shutil.copytree(repo_root / "cryovae_nb", src / "cryovae_nb", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-W", "error", "-c", code, str(tmp_path)], cwd=src,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "deprecat" not in (r.stdout + r.stderr).lower(), r.stderr[-2000:]
    meta = (tmp_path / r.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: MIT" in meta.splitlines()
