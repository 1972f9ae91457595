"""Write the small files under tests/data/quirks/ that carry the quirks of files other software writes.

The real examples (RELION 3.0/3.1/5 STAR files, stamp-less stacks) live outside the repository
under a licence we cannot ship, so the project writes its own: tiny, deterministic (no timestamps,
no random generator whose stream could change), and each with exactly the quirk named in
``QUIRKS``. ``python tests/data/make_quirk_fixtures.py`` rewrites them; ``test_io_quirks.py``
checks that the committed files are what this script writes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

HERE = Path(__file__).resolve().parent / "quirks"

QUIRKS = {
    "relion31.star + relion31_nostamp.mrcs": "RELION 3.1 optics block; stack without 'MAP ' stamp, zero machine stamp",
    "relion30.star + relion30_zero_voxel.mrc": "RELION 3.0 (no optics block, pixel size only from "
                                              "rlnDetectorPixelSize/rlnMagnification); '.mrc' stack with voxel size 0",
    "relion5.star + relion5_datadir/": "RELION 5 optics (premultiplied flag, Zernike lists, mag matrix, "
                                       "rlnImageSize 448 that disagrees with the 12 px images); image paths "
                                       "relative to a data directory, not to the STAR file; two stacks interleaved",
    "extra_column.star + projections_nostamp.mrcs": "non-RELION '_dummyVariable' column, no '#N' column "
                                                    "numbers, a comment line, trailing blanks; no 'MAP ' stamp",
}

# RELION 3.0: detector pixel 5 um at magnification 38168 -> 5e4 / 38168 = 1.3100 Å
DETECTOR_PIXEL_UM, MAGNIFICATION = 5.0, 38168


def images(n: int, box: int, seed: int) -> np.ndarray:
    """Deterministic float32 images from integer arithmetic only (bit-identical on every machine)."""
    i = np.arange(n * box * box, dtype=np.int64)
    return (((i * 7919 + seed * 104729) % 2003 - 1001) / 64.0).astype(np.float32).reshape(n, box, box)


def write_mrc(path: Path, data: np.ndarray, voxel: float, *, stamp: bool = True) -> None:
    """A mode-2 MRC written header-first by hand: no creation-time label, optional stamps."""
    n, ny, nx = data.shape
    h = np.zeros((), dtype=HEADER_DTYPE)
    h["nx"], h["ny"], h["nz"], h["mode"] = nx, ny, n, 2
    h["mx"], h["my"], h["mz"] = nx, ny, n
    h["cella"]["x"], h["cella"]["y"], h["cella"]["z"] = nx * voxel, ny * voxel, n * voxel
    h["cellb"]["alpha"] = h["cellb"]["beta"] = h["cellb"]["gamma"] = 90.0
    h["mapc"], h["mapr"], h["maps"] = 1, 2, 3
    h["ispg"] = 0  # an image stack
    h["dmin"], h["dmax"], h["dmean"] = data.min(), data.max(), data.mean(dtype=np.float64)
    h["rms"] = data.std(dtype=np.float64)
    if stamp:
        h["map"] = b"MAP "
        h["machst"] = np.frombuffer(b"\x44\x44\x00\x00", dtype="u1")
        h["nversion"] = 20140
    # else: older writers leave 'map' and the machine stamp as zero bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(h.tobytes() + np.ascontiguousarray(data, dtype="<f4").tobytes())


def star_loop(block: str, columns: list[str], rows: list[list], *, numbered: bool = True,
              version: str | None = None) -> str:
    head = [f"# version {version}", ""] if version else []
    cols = [f"_{c} #{k}" if numbered else f"_{c}" for k, c in enumerate(columns, 1)]
    body = [" ".join(str(v) for v in r) for r in rows]
    return "\n".join(head + [f"data_{block}", "", "loop_"] + cols + body) + "\n\n"


def relion31(out: Path) -> None:
    n, box = 5, 16
    write_mrc(out / "relion31_nostamp.mrcs", images(n, box, 1), 1.0, stamp=False)
    optics = star_loop("optics", ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast",
                                  "rlnSphericalAberration", "rlnVoltage", "rlnImagePixelSize",
                                  "rlnMicrographOriginalPixelSize", "rlnImageSize", "rlnImageDimensionality"],
                       [[1, "opticsGroup1", "0.100000", "0.010000", "300.000000", "2.806000", "1.403000",
                         box, 2]], version="30001")
    rows = []
    for k in range(n):
        rows.append([f"{k + 1:06d}@relion31_nostamp.mrcs", f"{11000 + 250 * k:.6f}", f"{10800 + 240 * k:.6f}",
                     f"{12.5 + 30 * k:.6f}", "0.000000", "0.000000", f"{-170 + 71.3 * k:.6f}",
                     f"{20 + 33.1 * k:.6f}", f"{-90 + 41.7 * k:.6f}", f"{(k - 2) * 1.403:.6f}",
                     f"{(2 - k) * 0.7015:.6f}", 1, "1.000000"])
    parts = star_loop("particles", ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                                    "rlnCtfBfactor", "rlnPhaseShift", "rlnAngleRot", "rlnAngleTilt",
                                    "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup",
                                    "rlnNormCorrection"], rows, version="30001")
    (out / "relion31.star").write_text("\n" + optics + parts)


def relion30(out: Path) -> None:
    n, box = 7, 20
    write_mrc(out / "relion30_zero_voxel.mrc", images(n, box, 2), 0.0)
    rows = [[f"{k + 1}@relion30_zero_voxel.mrc", k + 1, f"{15300.0 + 11 * k:.1f}", f"{14900.0 + 9 * k:.1f}",
             "5.28", 300, 2.7, 0.07, MAGNIFICATION, int(DETECTOR_PIXEL_UM)] for k in range(n)]
    (out / "relion30.star").write_text(star_loop(
        "", ["rlnImageName", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
             "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
             "rlnDetectorPixelSize"], rows))


RELION5_ORDER = [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 1), ("a", 2), ("b", 3)]


def relion5(out: Path) -> None:
    box = 12
    write_mrc(out / "relion5_datadir" / "images_a.mrcs", images(4, box, 3), 1.0)
    write_mrc(out / "relion5_datadir" / "images_b.mrcs", images(3, box, 4), 1.0)
    optics = star_loop("optics", [
        "rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
        "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
        "rlnImageDimensionality", "rlnCtfDataAreCtfPremultiplied", "rlnBeamTiltX", "rlnBeamTiltY",
        "rlnOddZernike", "rlnEvenZernike", "rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"],
        [["opticsGroup1", 1, "0.890000", "100.000000", "1.600000", "0.100000", "0.890000", 448, 2, 0,
          "0.043489", "0.014097", "[0.068,0.098,-1.79,0,0,-1.36]", "[45.4,-1.53,67.4,14.4,-0.33,-0.52,22.1,4.96,-5.07]",
          "1.001833", "-7.04404e-04", "-8.23335e-04", "1.000381"]], version="50001")
    rows = []
    for k, (stack, idx) in enumerate(RELION5_ORDER):
        rows.append([f"{idx}@images_{stack}.mrcs", f"{1000 + 37 * k:.6f}", f"{200 + 53 * k:.6f}",
                     f"{11900 + 13 * k:.6f}", f"{11750 + 12 * k:.6f}", "49.059993", "0.000000", "1.000000",
                     "0.000", f"{-150 + 43.2 * k:.6f}", f"{10 + 21.5 * k:.6f}", f"{-160 + 47.9 * k:.6f}",
                     f"{(k % 3 - 1) * 0.89:.6f}", f"{(1 - k % 2) * 1.78:.6f}", 1, 1 + k % 2])
    parts = star_loop("particles", [
        "rlnImageName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV",
        "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift", "rlnAngleRot",
        "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup",
        "rlnRandomSubset"], rows, version="50001")
    (out / "relion5.star").write_text("\n" + optics + parts)


def extra_column(out: Path) -> None:
    n, box = 6, 10
    write_mrc(out / "projections_nostamp.mrcs", images(n, box, 5), 1.0, stamp=False)
    rows = [[f"{k + 1:06d}@projections_nostamp.mrcs", "0.000000", "0.000000", 0, 300, 0.1, 0.001, 90,
             42 if k >= 3 else k + 1] for k in range(n)]
    text = star_loop("images", ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                                "rlnVoltage", "rlnAmplitudeContrast", "rlnSphericalAberration",
                                "rlnPhaseShift", "dummyVariable"], rows, numbered=False)
    text = text.replace("90 3\n", "90 3 \n")  # a trailing blank, as some writers leave
    (out / "extra_column.star").write_text("# Created by a tool that adds its own columns\n" + text)


def write_all(out: str | os.PathLike = HERE) -> Path:
    out = Path(out)
    for make in (relion31, relion30, relion5, extra_column):
        make(out)
    return out


if __name__ == "__main__":
    print(write_all(sys.argv[1] if len(sys.argv) > 1 else HERE))
