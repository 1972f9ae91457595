"""The benchmarks still run: every script answers ``--help``, and the four that carry the project's
targets (training throughput, the L-shape and heterogeneity quality, the decoders) run end to end
at their smallest sizes. benchmarks/quality_lshape.py was broken for a whole stop and nothing
noticed: a benchmark is only run by hand, so a renamed function or option breaks it silently.

Each script runs as a user runs it: a subprocess of this Python, on this checkout. The figures
they print are not checked (too few steps to mean anything, and the machine's load sets the
speeds); that they run and print their tables is.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    # the timeout only keeps a hung script from hanging the suite; no speed is asserted
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_smoke_runs_name_existing_scripts():
    names = {p.name for p in BENCHMARKS}
    assert len(names) >= 10 and set(SMOKE) <= names  # a renamed script fails here, not silently


@pytest.mark.benchmark_smoke
@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_answers_help(script, tmp_path):
    r = _run([str(script), "--help"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("usage:"), r.stdout[:500]


# the smallest real configuration of each: tiny box, few particles, a step or two
SMOKE = {
    "train_throughput.py": (["--box", "16", "--batch", "8", "--latent", "2", "--steps", "1", "--rounds", "1",
                             "--projectors", "fourier", "--no-jit", "--threads", "1"],
                            ["training throughput (median of rounds):", "inference decode:"]),
    "quality_lshape.py": (["--box", "16", "--n-particles", "100", "--budget", "1", "--batch-size", "16",
                           "--latent-dim", "2", "--no-jit", "--workdir", "{tmp}", "--known-poses", "searched"],
                          ["pose search against the true L", "FSC0.5_px", "target FSC0.143 <= 3 px:"]),
    "quality_heterogeneity.py": (["--box", "16", "--n-particles", "120", "--budget", "1", "--max-steps", "2",
                                  "--no-oracle", "--workdir", "{tmp}", "--variant", "tiny:latent_dim=2,batch_size=16"],
                                 ["final, side by side:", "tiny: hinge known target"]),
    "decoders.py": (["quality", "--box", "16", "--budget", "1", "--n-particles", "100", "--decoders", "dense",
                     "--workdir", "{tmp}"],
                    ["FSC0.5 Å", "dense   16"]),
}


@pytest.mark.benchmark_smoke
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_its_smallest_configuration(script, tmp_path):
    args, expected = SMOKE[script]
    r = _run([str(REPO / "benchmarks" / script), *(a.replace("{tmp}", str(tmp_path / "work")) for a in args)],
             tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    missing = [e for e in expected if e not in r.stdout]
    assert not missing, (missing, r.stdout[-3000:])


@pytest.mark.benchmark_smoke
def test_decoders_resolution_gives_each_box_its_rate(tmp_path):
    # the half box trains at --learning-rate-small, the full box at --learning-rate (the rate sets
    # Adam's per-voxel noise floor: README "Decoders for larger boxes"); read from each Trainer's config.
    # dense: conv3d's grid needs the half box >= 16 px, and the routing does not depend on the decoder
    r = _run([str(REPO / "benchmarks" / "decoders.py"), "resolution", "--box", "16", "--budget", "1",
              "--eval-every", "1", "--n-particles", "100", "--decoder", "dense", "--learning-rate", "3e-6",
              "--learning-rate-small", "1e-5", "--workdir", str(tmp_path / "work")], tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert {row["box"]: row["learning_rate"] for row in rows} == {8: 1e-5, 16: 3e-6}, r.stdout[-3000:]
