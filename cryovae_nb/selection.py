"""Selections back to RELION: a set of preprocessed particles written as rows of the user's own STAR.

Every selection the toolkit makes (the explorer's lasso, a k-means cluster, a latent range, the
screening's keep / reject) is a set of rows of the *preprocessed* particles, whose images are
cropped, normalised and masked. RELION needs the *original* particles: ``write_selection`` maps the
rows through the provenance ``cryovae preprocess`` recorded (``io.star``: each row's index in the
input STAR, the input's path and SHA-256) and writes

- ``OUT.star``: those rows of the original STAR file, every block as it was (the optics table
  whole, every column in its order, the original image names and pixel size; a RELION 3.0 file
  stays 3.0), rows in the original's order: the original's own lines (``subset_text``), so each
  number keeps the original's text (300.000000 is not rewritten as 300) and its comments stay;
- ``OUT_indices.npy``: their 0-based rows in the original (int64, no pickle).

Both are published atomically; neither may be the original, nor the preprocessed STAR. An original
that is missing or changed since preprocessing (its hash differs) is refused with one line: the
rows recorded would no longer be the user's particles. Image names are written as the original
has them: RELION resolves them from its project folder, which is where the subset belongs.

``learned_poses`` turns poses in the preprocessed box into poses for the original (angles as they
are, shifts back through the Fourier crop and coarsening); ``write_selection(..., poses=)`` writes
them into the copy (``cryovae encode --original-star``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import InputError
from cryovae_nb.geometry import shift_to_relion_origin
from cryovae_nb.io import Particles, Poses, file_sha256, read_particles, write_particles_star
from cryovae_nb.preprocess import original_shifts

_FLOAT_FORMAT = "%.12g"  # as io.star writes: every digit of the original's values survives
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


@dataclass
class Selection:
    """What ``write_selection`` wrote: the two files and the original's rows."""

    star: Path
    indices_file: Path
    indices: np.ndarray       # rows of the original STAR (0-based, ascending)
    original: Path            # the original STAR file

    def __len__(self) -> int:
        return len(self.indices)


def selection_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``sel`` / ``sel.star`` -> (``sel.star``, ``sel_indices.npy``)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() == ".star" else out
    return stem.with_name(stem.name + ".star"), stem.with_name(stem.name + "_indices.npy")


def as_rows(indices, n: int, what: str = "selection") -> np.ndarray:
    """A boolean mask of length ``n`` or integer rows -> unique ascending int64 rows in 0..n-1."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise InputError(f"{what}: a mask of {idx.size} entries for {n} particles")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        if not (np.isfinite(idx.astype(np.float64)).all() and (idx == np.round(idx)).all()):
            raise InputError(f"{what}: indices must be integers")
    idx = np.unique(idx.astype(np.int64).ravel())
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise InputError(f"{what}: indices outside 0..{n - 1}")
    return idx


def original_of(particles: Particles) -> tuple[Path, np.ndarray]:
    """(the original STAR file, each particle's row in it), checked: the file is there and is
    byte for byte the one preprocessed. One-line ``InputError`` otherwise."""
    where = particles.source
    if particles.provenance is None or particles.source_rows() is None:
        raise InputError("these particles record no original STAR file (not written by cryovae preprocess, "
                         "or by a version before provenance was recorded): rerun cryovae preprocess on "
                         "your STAR file", where)
    rec = particles.provenance
    original = Path(str(rec["cryovaeSourceStar"]))
    if not original.is_file():
        raise InputError(f"the original STAR file {original} these particles were preprocessed from is "
                         "missing; restore it, or rerun cryovae preprocess on the file you have", where)
    if file_sha256(original) != str(rec["cryovaeSourceSha256"]):
        raise InputError(f"the original STAR file {original} changed since preprocessing (its SHA-256 "
                         "differs), so the recorded rows may no longer be these particles; rerun "
                         "cryovae preprocess on it", where)
    return original, particles.source_rows()


def learned_poses(particles: Particles, poses: Poses) -> Poses:
    """Poses of the preprocessed ``particles`` (shifts in their box's pixels) as poses of the
    original images: the same rotations, shifts in the original box's pixels."""
    rec = particles.provenance or {}
    box = int(rec.get("cryovaeSourceBox", 0))
    if box <= 0:
        raise InputError("the recorded original has no box size: rerun cryovae preprocess", particles.source)
    shifts = original_shifts(poses.shifts, box, int(rec.get("cryovaeSourceCoarsen", 1)), particles.box)
    return Poses(poses.rotations, poses.euler, shifts)


def _particle_block(blocks: dict, path: Path) -> str:
    loops = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns]
    if not loops:
        raise InputError("no particle block (rlnImageName) in the original STAR file", path)
    return "particles" if "particles" in loops else loops[0]


def _pose_columns(columns, poses: Poses, pixel_size: float, path: Path) -> dict[str, np.ndarray]:
    """The columns ``poses`` set in a copy of a particle table with ``columns``: the Euler angles
    and the origins (pixels in a RELION 3.0 table, Å otherwise)."""
    out = {col: poses.euler[:, i] for i, col in enumerate(_ANGLES)}
    origin = shift_to_relion_origin(poses.shifts)  # px of the original box
    if "rlnOriginX" in columns and "rlnOriginXAngst" not in columns:
        out["rlnOriginX"], out["rlnOriginY"] = origin[:, 0], origin[:, 1]  # RELION 3.0: pixels
    else:
        if not pixel_size > 0:
            raise InputError("the original's pixel size is unknown: cannot write origins in Å", path)
        out["rlnOriginXAngst"], out["rlnOriginYAngst"] = origin[:, 0] * pixel_size, origin[:, 1] * pixel_size
    return out


def _is_row(stripped: str) -> bool:
    return bool(stripped) and not stripped.startswith(("#", "data_", "loop_", "_"))


def subset_text(text: str, block: str, rows: np.ndarray, n_rows: int,
                values: dict[str, np.ndarray] | None = None) -> str | None:
    """The original STAR file's ``text`` with only the data lines ``rows`` (ascending) of block
    ``block``'s loop: every other line as it was (comments, the optics table, each number as the
    original wrote it: 300.000000 stays 300.000000, not 300), so RELION reads the same values.
    ``values``: column -> one value per kept row, replacing that column's field (a column the loop
    lacks is appended). None when the text is not one row per line of ``n_rows`` rows with one
    plain field per column (quoted fields, a row over several lines): the caller writes the table."""
    lines = text.splitlines(keepends=True)
    current, columns, header_end, row_lines, loops = None, [], None, [], 0
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("data_"):
            current = s.split()[0][5:]
            continue
        if current != block:
            continue
        if s.startswith("loop_"):
            loops += 1
        elif s.startswith("_"):
            if row_lines:  # a label after the rows: a second table in the block
                return None
            if loops:  # (before the loop: one of the block's name-value pairs, kept as it is)
                columns.append(s.split()[0][1:])
                header_end = i
        elif _is_row(s):
            if not columns or len(s.split()) != len(columns) or "'" in s or '"' in s:
                return None
            row_lines.append(i)
    if loops != 1 or len(row_lines) != n_rows or not row_lines:
        return None
    values = values or {}
    keep = dict(zip((row_lines[r] for r in rows), range(len(rows))))
    drop = set(row_lines) - set(keep)
    added = [c for c in values if c not in columns]
    numbered = bool(re.search(r"#\s*\d+\s*$", lines[header_end]))
    eol = lines[header_end][len(lines[header_end].rstrip("\r\n")):] or "\n"
    at = {c: columns.index(c) for c in values if c in columns}
    out = []
    for i, line in enumerate(lines):
        if i in drop:
            continue
        if i in keep and values:
            body = line.rstrip("\r\n")
            lead, trail = body[:len(body) - len(body.lstrip())], body[len(body.rstrip()):]
            parts = re.split(r"(\s+)", body.strip())  # fields at even places, their separators between
            sep = parts[1] if len(parts) > 1 else " "
            k = keep[i]
            for c, j in at.items():
                parts[2 * j] = _FLOAT_FORMAT % values[c][k]
            parts += [p for c in added for p in (sep, _FLOAT_FORMAT % values[c][k])]
            line = lead + "".join(parts) + trail + line[len(body):]
        out.append(line)
        if i == header_end:
            out += [f"_{c} #{len(columns) + n + 1}{eol}" if numbered else f"_{c}{eol}" for n, c in enumerate(added)]
    return "".join(out)


def write_selection(particles: Particles | str | os.PathLike, indices, out: str | os.PathLike, *,
                    poses: Poses | None = None) -> Selection:
    """Write the particles at ``indices`` (rows of ``particles``, a preprocessed STAR file or its
    ``Particles``; a boolean mask works too) as ``OUT.star``, a subset of the original STAR, and
    ``OUT_indices.npy`` (see the module docstring). ``poses`` (one per particle of
    ``particles``, in the preprocessed box, our convention) replace the angles and origins of the copy at the original
    pixel size. Returns the ``Selection``."""
    if not isinstance(particles, Particles):
        particles = read_particles(particles)
    star, index_file = selection_paths(out)
    rows = as_rows(indices, len(particles))
    if rows.size == 0:
        raise InputError("nothing selected: refusing to write an empty STAR file", star)
    original, source_rows = original_of(particles)
    inputs = {original.resolve()} | ({Path(particles.source).resolve()} if particles.source else set())
    clash = [p for p in (star, index_file) if p.resolve() in inputs]
    if clash:
        raise InputError(f"refusing to overwrite an input file ({clash[0]}); choose another output name", star)
    picked = source_rows[rows]
    order = np.argsort(picked, kind="stable")
    picked = picked[order]
    if np.any(np.diff(picked) == 0):
        raise InputError("two selected particles come from the same original row", particles.source)

    if original.suffix.lower() != ".star":  # a bare stack was preprocessed: its images as a STAR file
        subset = read_particles(original).subset(picked)
        if poses is not None:
            sub = learned_poses(particles, _take_poses(poses, len(particles), rows, order, star))
            subset.poses = sub
        with atomic_path(index_file) as tmp, open(tmp, "wb") as f:
            np.save(f, picked, allow_pickle=False)
        write_particles_star(star, subset, poses=subset.poses if poses is not None else None)
        return Selection(star, index_file, picked, original)

    try:
        blocks = starfile.read(original, always_dict=True)
    except Exception as e:  # starfile raises assorted parser errors; the user needs the file name
        raise InputError(f"cannot parse STAR file ({type(e).__name__}: {e})", original) from None
    name = _particle_block(blocks, original)
    table = blocks[name].reset_index(drop=True)
    expected = int(particles.provenance["cryovaeSourceRows"])
    if len(table) != expected:  # the hash matched, so this is a parser disagreement, not an edit
        raise InputError(f"the original holds {len(table)} particles, {expected} were recorded", original)
    subset = table.iloc[picked].reset_index(drop=True)
    values = None
    if poses is not None:
        sub = learned_poses(particles, _take_poses(poses, len(particles), rows, order, star))
        values = _pose_columns(subset.columns, sub, float(particles.provenance.get("cryovaeSourcePixelSize", 0.0)),
                               original)
    try:  # bytes decoded as they are: a file with CRLF line ends keeps them
        text = subset_text(original.read_bytes().decode("utf-8"), name, picked, len(table), values)
    except UnicodeDecodeError:
        text = None
    with atomic_path(index_file) as tmp, open(tmp, "wb") as f:
        np.save(f, picked, allow_pickle=False)
    with atomic_path(star) as tmp:
        if text is not None:  # the original's own lines: RELION reads exactly its values
            Path(tmp).write_bytes(text.encode("utf-8"))
        else:  # a layout subset_text does not follow: the parsed table, written again
            blocks[name] = subset.assign(**(values or {}))
            starfile.write(blocks, tmp, float_format=_FLOAT_FORMAT)
    return Selection(star, index_file, picked, original)


def _take_poses(poses: Poses, n: int, rows: np.ndarray, order: np.ndarray, where) -> Poses:
    if len(poses) != n:
        raise InputError(f"{len(poses)} poses for {n} particles", where)
    return poses[rows[order]]


def read_indices(path: str | os.PathLike) -> np.ndarray:
    """Row indices from a ``.npy`` (integers or a boolean mask; never pickled objects)."""
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read indices ({e})", path) from None
    if idx.ndim != 1 or not (idx.dtype == bool or np.issubdtype(idx.dtype, np.integer)):
        raise InputError(f"expected a 1-D array of integer rows or a boolean mask, got {idx.dtype} {idx.shape}", path)
    return idx


__all__ = ["Selection", "as_rows", "learned_poses", "original_of", "read_indices", "selection_paths",
           "subset_text", "write_selection"]
