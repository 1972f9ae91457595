"""Shared fixtures.

Real files written by other software live outside the repository, in ../shared/data (their licence
does not let us ship them; CRYOVAE_SHARED_DATA points elsewhere). Tests on them skip when they are
absent; tests/data/quirks/ covers each of their quirks with files the project writes itself.
"""
from __future__ import annotations

import os
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

