"""Shared fixtures.

Real files written by other software live outside the repository, in ../shared/data (their licence
does not let us ship them; CRYOVAE_SHARED_DATA points elsewhere). Tests on them skip when they are
absent; tests/data/quirks/ covers each of their quirks with files the project writes itself.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Keep TensorFlow quiet and single-threaded enough to share 2 cores with pytest-xdist workers.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CRYOVAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        # a fresh clone has no ../shared: skip (CI, which has it, still runs these tests)
        pytest.skip(f"outside test data not found at {SHARED_DATA} (set CRYOVAE_SHARED_DATA); "
                    "tests/data/quirks covers their file-format quirks")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark_smoke: runs a benchmark script (--help, or its smallest "
                                       "configuration: about 2 min in all); -m 'not benchmark_smoke' skips them")


@pytest.fixture(scope="session", autouse=True)
def subprocess_temporary_files(tmp_path_factory):
    """The processes the tests start keep their temporary files in this session's folder, not /tmp.

    TensorFlow's autograph writes a module per converted function to the temporary folder
    (``__autograph_generated_file*.py``) and deletes it only at a normal exit: every trainer the
    fault tests SIGKILL left its files in /tmp for good. Under pytest's folder they go with it
    (pytest keeps the last three sessions'). Only the children's TMPDIR changes: this process's
    own stays where it is (its autograph files go at its exit, and test_packaging hands its
    folders to an unprivileged user, who cannot enter pytest's).
    """
    tempfile.gettempdir()  # this process's: fixed before TMPDIR changes
    folder = tmp_path_factory.mktemp("subprocess_tmp")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
