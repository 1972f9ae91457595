"""What a selection back to RELION costs on a realistically sized STAR file (issue #12).

A RELION 3.1 ``run_data.star`` of ``--rows`` particles (two optics groups, 22 particle columns as
Refine3D writes them) whose rows point at a small stack (rows repeat its images: only the STAR
file's size matters here) is preprocessed to 16 px; then timed, best of ``--repeat``:

- ``sha256``: hashing the original (done once at preprocessing, and at every selection);
- ``preprocess``: the whole preprocessing run, which includes that hash and the provenance column;
- ``select 10%``: ``write_selection`` of a random tenth of the particles (check the original,
  parse it, write the subset and the indices).

    python benchmarks/selection_speed.py [--rows 100000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryovae_nb.io import file_sha256, write_stack
from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
from cryovae_nb.selection import write_selection


def make_star(folder: Path, rows: int, images: int = 256, box: int = 32) -> Path:
    rng = np.random.default_rng(0)
    write_stack(folder / "parts.mrcs", rng.normal(size=(images, box, box)).astype(np.float32), 1.1)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["og1", "og2"],
                           "rlnAmplitudeContrast": [0.1, 0.1], "rlnSphericalAberration": [2.7, 2.7],
                           "rlnVoltage": [300.0, 300.0], "rlnImagePixelSize": [1.1, 1.1],
                           "rlnImageSize": [box, box], "rlnImageDimensionality": [2, 2]})
    cols = {
        "rlnCoordinateX": rng.uniform(0, 4000, rows), "rlnCoordinateY": rng.uniform(0, 4000, rows),
        "rlnImageName": [f"{i % images + 1:06d}@parts.mrcs" for i in range(rows)],
        "rlnMicrographName": [f"MotionCorr/job002/Movies/mic_{i // 300:05d}.mrc" for i in range(rows)],
        "rlnDefocusU": rng.uniform(5000, 30000, rows), "rlnDefocusV": rng.uniform(5000, 30000, rows),
        "rlnDefocusAngle": rng.uniform(0, 180, rows), "rlnCtfBfactor": np.zeros(rows),
        "rlnCtfScalefactor": np.ones(rows), "rlnPhaseShift": np.zeros(rows),
        "rlnCtfMaxResolution": rng.uniform(3, 6, rows), "rlnCtfFigureOfMerit": rng.uniform(0, 1, rows),
        "rlnOpticsGroup": 1 + (np.arange(rows) % 2), "rlnGroupNumber": 1 + np.arange(rows) // 1000,
        "rlnAngleRot": rng.uniform(-180, 180, rows), "rlnAngleTilt": rng.uniform(0, 180, rows),
        "rlnAnglePsi": rng.uniform(-180, 180, rows), "rlnOriginXAngst": rng.normal(size=rows),
        "rlnOriginYAngst": rng.normal(size=rows), "rlnClassNumber": np.ones(rows, int),
        "rlnNormCorrection": np.ones(rows), "rlnRandomSubset": 1 + np.arange(rows) % 2,
    }
    path = folder / "run_data.star"
    starfile.write({"optics": optics, "particles": pd.DataFrame(cols)}, path, float_format="%.6f")
    return path


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        star = make_star(folder, args.rows)
        mb = star.stat().st_size / 1e6
        t_hash = best(lambda: file_sha256(star), args.repeat)
        out = {}

        def prep():
            out["pre"] = preprocess_stack(star, folder / "pre" / "p", PreprocessConfig(box=16), progress=False)

        t_pre = best(prep, 1)
        pick = np.random.default_rng(1).random(args.rows) < 0.1
        t_sel = best(lambda: write_selection(out["pre"], pick, folder / "sel"), args.repeat)
        print(f"{args.rows} rows, {mb:.1f} MB STAR: sha256 {t_hash:.2f} s; preprocess to 16 px "
              f"{t_pre:.1f} s (hash and provenance column included); select 10% "
              f"({int(pick.sum())} rows) {t_sel:.2f} s")


if __name__ == "__main__":
    main()
