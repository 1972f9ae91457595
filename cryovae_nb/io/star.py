"""RELION STAR files (3.0, 3.1, 5): particles with their images, pixel size, CTF and poses.

``read_particles`` turns a STAR file (or a bare stack) into :class:`Particles`: a DataFrame with
the optics block merged into every row, a lazy :class:`ParticleStack` over all referenced stacks,
and CTF / pose arrays in this project's conventions (``cryovae_nb.geometry``). Every row is
checked against its stack's header up front, so a bad row fails at load time with the row named.
``write_particles_star`` writes RELION 3.1 (``data_optics`` + ``data_particles``) back out.

Provenance: a STAR file that ``cryovae preprocess`` wrote names the user's original input STAR
(absolute path, SHA-256 of its bytes, rows, box, pixel size) in a ``data_cryovae_source`` block and
gives each particle its row in that file (column ``cryovaeSourceIndex``, 0-based). Both travel with
the particles (``Particles.provenance``, subsets, files written from them), so a selection made on
the preprocessed particles can be written back as rows of the original (``cryovae_nb.selection``).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import starfile

from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import InputError
from cryovae_nb.geometry import (matrix_to_relion_euler, relion_euler_to_matrix,
                                 relion_origin_to_shift, shift_to_relion_origin)
from cryovae_nb.io import outputset
from cryovae_nb.io.mrc import ParticleStack, _stack_header, read_header

STACK_SUFFIXES = (".mrcs", ".mrc", ".st")
# Columns that live in RELION >= 3.1's data_optics block rather than per particle.
OPTICS_COLUMNS = (
    "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration", "rlnVoltage",
    "rlnImagePixelSize", "rlnMicrographOriginalPixelSize", "rlnImageSize", "rlnImageDimensionality",
    "rlnCtfDataAreCtfPremultiplied", "rlnBeamTiltX", "rlnBeamTiltY", "rlnOddZernike",
    "rlnEvenZernike", "rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11",
)
# RELION 3.0 pixel-size columns; 3.1 writes rlnImagePixelSize instead, so we drop these on export.
_OLD_PIXEL_COLUMNS = ("rlnDetectorPixelSize", "rlnMagnification", "rlnPixelSize")
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_FLOAT_FORMAT = "%.12g"  # starfile's default %.6f would drop digits of small values
# provenance: the block naming the original input STAR, and each particle's row in it
SOURCE_BLOCK = "cryovae_source"
SOURCE_INDEX = "cryovaeSourceIndex"


def _take(obj, idx):
    """Index every array field of a dataclass of per-particle arrays."""
    return type(obj)(**{f.name: getattr(obj, f.name)[idx] for f in fields(obj)})


@dataclass
class CTFParams:
    """Per-particle CTF parameters (float64 arrays of equal length)."""

    defocus_u: np.ndarray  # Å
    defocus_v: np.ndarray  # Å
    defocus_angle: np.ndarray  # degrees
    voltage: np.ndarray  # kV
    cs: np.ndarray  # mm
    amp_contrast: np.ndarray
    phase_shift: np.ndarray  # degrees
    bfactor: np.ndarray  # Å^2

    def __len__(self) -> int:
        return len(self.defocus_u)

    def __getitem__(self, idx) -> "CTFParams":
        return _take(self, idx)

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame) -> "CTFParams | None":
        """CTF arrays from RELION columns; None without defocus, voltage, Cs and amplitude contrast."""
        need = ("rlnDefocusU", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
        if not all(c in df.columns for c in need):
            return None

        def col(name, default=None):
            if name not in df.columns:
                return np.full(len(df), np.nan if default is None else default, dtype=np.float64)
            return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)

        u = col("rlnDefocusU")
        v = col("rlnDefocusV") if "rlnDefocusV" in df.columns else u.copy()
        return cls(u, v, col("rlnDefocusAngle", 0.0), col("rlnVoltage"), col("rlnSphericalAberration"),
                   col("rlnAmplitudeContrast"), col("rlnPhaseShift", 0.0), col("rlnCtfBfactor", 0.0))


@dataclass
class Poses:
    """Per-particle poses: ``rotations`` (n,3,3) in our convention, ``euler`` (n,3) RELION
    (rot, tilt, psi) in degrees, ``shifts`` (n,2) in pixels (ours: minus RELION's origin)."""

    rotations: np.ndarray
    euler: np.ndarray
    shifts: np.ndarray

    def __len__(self) -> int:
        return len(self.rotations)

    def __getitem__(self, idx) -> "Poses":
        return _take(self, idx)

    @classmethod
    def from_matrices(cls, rotations, shifts=None) -> "Poses":
        rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        shifts = (np.zeros((len(rotations), 2)) if shifts is None
                  else np.asarray(shifts, dtype=np.float64).reshape(-1, 2))
        if len(shifts) != len(rotations):
            raise InputError(f"{len(rotations)} rotations but {len(shifts)} shifts")
        return cls(rotations, matrix_to_relion_euler(rotations), shifts)

    @classmethod
    def from_euler(cls, euler, shifts=None) -> "Poses":
        euler = np.asarray(euler, dtype=np.float64).reshape(-1, 3)
        shifts = (np.zeros((len(euler), 2)) if shifts is None
                  else np.asarray(shifts, dtype=np.float64).reshape(-1, 2))
        return cls(relion_euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2]), euler, shifts)


def _poses_from_dataframe(df: pd.DataFrame, pixel_size: float | None, path) -> Poses | None:
    if not all(c in df.columns for c in _ANGLES):
        return None
    euler = df[list(_ANGLES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if "rlnOriginXAngst" in df.columns and "rlnOriginYAngst" in df.columns:
        if pixel_size is None:
            raise InputError("origins are in Å (rlnOriginXAngst) but no pixel size is given", path)
        origin = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64) / pixel_size
    elif "rlnOriginX" in df.columns and "rlnOriginY" in df.columns:
        origin = df[["rlnOriginX", "rlnOriginY"]].to_numpy(dtype=np.float64)
    else:
        origin = np.zeros((len(df), 2))
    if not (np.isfinite(euler).all() and np.isfinite(origin).all()):
        raise InputError("non-numeric or NaN Euler angles / origins", path)
    return Poses.from_euler(euler, relion_origin_to_shift(origin))


class Particles:
    """What a STAR file (or a bare stack) describes: one DataFrame row per particle + images."""

    # the id of the run that wrote the STAR file and its stack (``cryovae_nb.io.outputset``);
    # None for files other software wrote
    output_id: str | None = None
    # the original input STAR these particles were preprocessed from (``source_record``'s keys);
    # their rows in it are the SOURCE_INDEX column. None: these particles are not ours
    provenance: dict | None = None

    def __init__(self, df: pd.DataFrame, images: ParticleStack, pixel_size: float | None, *,
                 optics: pd.DataFrame | None = None, particle_columns: Sequence[str] | None = None,
                 source: str | None = None, ctf: CTFParams | None = None, poses: Poses | None = None,
                 _parse: bool = True):
        if len(df) != len(images):
            raise InputError(f"{len(df)} rows but {len(images)} images", source)
        self.df = df.reset_index(drop=True)
        self.images = images
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        self.optics = optics  # the original data_optics block (None for RELION 3.0 / bare stacks)
        # the columns that were per-particle in the file (df also holds merged optics columns)
        self.particle_columns = list(particle_columns) if particle_columns is not None else list(df.columns)
        self.source = source
        self.ctf = CTFParams.from_dataframe(self.df) if _parse else ctf
        self.poses = _poses_from_dataframe(self.df, self.pixel_size, source) if _parse else poses

    @property
    def phase_flipped(self) -> bool:
        """The images were phase flipped before (RELION's ``rlnCtfDataArePhaseFlipped`` = 1)."""
        flags = self.df.get("rlnCtfDataArePhaseFlipped")
        return flags is not None and bool((np.asarray(flags, dtype=float) == 1).any())

    @property
    def box(self) -> int:
        return self.images.box

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return (f"Particles({len(self)} particles, box {self.box}, pixel_size={self.pixel_size}, "
                f"ctf={'yes' if self.ctf is not None else 'no'}, "
                f"poses={'yes' if self.poses is not None else 'no'}, source={self.source!r})")

    def subset(self, indices) -> "Particles":
        """The particles at ``indices`` (int array, in that order, or a bool mask)."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).ravel()
        out = Particles(self.df.iloc[idx], self.images.subset(idx), self.pixel_size,
                        optics=self.optics, particle_columns=self.particle_columns, source=self.source,
                        ctf=None if self.ctf is None else self.ctf[idx],
                        poses=None if self.poses is None else self.poses[idx], _parse=False)
        out.provenance = self.provenance
        return out

    def source_rows(self) -> np.ndarray | None:
        """Each particle's row (0-based) in the original input STAR (``provenance``); None when
        the particles record no original."""
        if self.provenance is None or SOURCE_INDEX not in self.df.columns:
            return None
        return pd.to_numeric(self.df[SOURCE_INDEX], errors="coerce").to_numpy(np.int64)


# -- reading --------------------------------------------------------------------------------------
def _single_value(values: np.ndarray, what: str, path) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or not np.isfinite(values).all() or (values <= 0).any():
        raise InputError(f"{what} has missing, zero or negative values", path)
    if np.ptp(values) > 1e-4 * values.mean():
        raise InputError(f"{what} differs between particles ({values.min():g} .. {values.max():g} Å); "
                         "mixed pixel sizes are not supported -- split the file by optics group", path)
    return float(values[0])


def _pixel_size_from_columns(df: pd.DataFrame, path) -> float | None:
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in df.columns:
            return _single_value(pd.to_numeric(df[col], errors="coerce"), col, path)
    if "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        det = pd.to_numeric(df["rlnDetectorPixelSize"], errors="coerce").to_numpy(np.float64)
        mag = pd.to_numeric(df["rlnMagnification"], errors="coerce").to_numpy(np.float64)
        return _single_value(det * 1e4 / mag, "rlnDetectorPixelSize*1e4/rlnMagnification", path)
    return None


def _read_blocks(path: Path) -> dict:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as e:  # starfile raises assorted parser errors; the user needs the file name
        raise InputError(f"cannot parse STAR file ({type(e).__name__}: {e})", path) from None
    return {k: (pd.DataFrame([v]) if isinstance(v, dict) else v) for k, v in blocks.items()}


def _merge_optics(parts: pd.DataFrame, optics: pd.DataFrame | None, path) -> pd.DataFrame:
    if optics is None or len(optics) == 0:
        return parts
    extra = [c for c in optics.columns if c not in parts.columns and c != "rlnOpticsGroup"]
    if "rlnOpticsGroup" not in parts.columns:
        if len(optics) != 1:
            raise InputError("particles have no rlnOpticsGroup but the optics block has "
                             f"{len(optics)} groups", path)
        merged = parts.copy()
        for c in extra:
            merged[c] = optics[c].iloc[0]
        return merged
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError("data_optics block has no rlnOpticsGroup column", path)
    unknown = set(parts["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if unknown:
        raise InputError(f"particles refer to optics group(s) {sorted(unknown)} missing from data_optics", path)
    if optics["rlnOpticsGroup"].duplicated().any():
        raise InputError("data_optics lists the same rlnOpticsGroup twice", path)
    # a left merge keeps the particle order
    return parts.merge(optics[["rlnOpticsGroup"] + extra], on="rlnOpticsGroup", how="left")


def _parse_image_names(names: pd.Series, path) -> tuple[np.ndarray, pd.Series]:
    """``idx@file`` -> (0-based indices, file strings); a name without '@' is image 1 of its file."""
    names = names.astype(str).str.strip()
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = pd.NA
    has_at = parts[1].notna()
    files = parts[1].where(has_at, parts[0])
    idx = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(idx) | (idx < 1) | (idx != np.round(idx)) | (files.str.len() == 0).to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(f"row {r + 1}: cannot parse rlnImageName {names.iloc[r]!r} "
                         "(expected index@stack with a 1-based index)", path)
    return idx.astype(np.int64) - 1, files


def _resolve(name: str, star_dir: Path, datadir: Path | None) -> tuple[str | None, list[str]]:
    candidates = []
    if datadir is not None:
        candidates += [datadir / name, datadir / os.path.basename(name)]
    candidates.append(star_dir / name)
    for c in candidates:
        if c.is_file():
            return os.fspath(c), []
    return None, [os.fspath(c) for c in candidates]


def read_particles(path: str | os.PathLike, datadir: str | os.PathLike | None = None) -> Particles:
    """Read a RELION STAR file (3.0 / 3.1 / 5) or a bare ``.mrcs``/``.mrc`` stack.

    Image paths are looked up as ``datadir/path``, ``datadir/basename(path)`` (when ``datadir`` is
    given), then ``<star folder>/path``.
    """
    path = Path(path)
    if path.suffix.lower() in STACK_SUFFIXES:
        stack = ParticleStack.open(path)
        df = pd.DataFrame({"rlnImageName": make_image_names(path, len(stack), relative_to=path.parent)})
        return Particles(df, stack, stack.pixel_size, source=os.fspath(path))

    blocks = _read_blocks(path)
    with_names = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns]
    if not with_names:
        raise InputError(f"no rlnImageName column in any data block (blocks: {list(blocks)})", path)
    parts = blocks["particles" if "particles" in with_names else with_names[0]]
    optics = blocks.get("optics")
    if len(parts) == 0:
        raise InputError("the particle block has no rows", path)
    parts = parts.reset_index(drop=True)
    df = _merge_optics(parts, optics, path)

    idx, files = _parse_image_names(df["rlnImageName"], path)
    file_ids, uniques = pd.factorize(files)
    star_dir, data = path.parent, None if datadir is None else Path(datadir)
    resolved = []
    for i, name in enumerate(uniques):
        found, tried = _resolve(name, star_dir, data)
        if found is None:
            rows = np.flatnonzero(file_ids == i)
            raise InputError(f"row {rows[0] + 1} (and {len(rows) - 1} more) point at stack {name!r}, "
                             f"which does not exist (tried: {', '.join(tried)})", path)
        resolved.append(found)
    headers = [_stack_header(p) for p in resolved]
    counts = np.array([h.nz for h in headers])
    past = np.flatnonzero(idx >= counts[file_ids])
    if len(past):
        r = past[0]
        raise InputError(f"row {r + 1}: image {idx[r] + 1}@{uniques[file_ids[r]]} is past the end of "
                         f"{resolved[file_ids[r]]}, which holds {counts[file_ids[r]]} images", path)
    for h in headers[1:]:
        if h.nx != headers[0].nx:
            raise InputError(f"stacks differ in box size: {headers[0].path} has {headers[0].nx}, "
                             f"{h.path} has {h.nx}", path)
    stack = ParticleStack(headers, file_ids.astype(np.int64), idx)
    output_id = None
    record = blocks.get(outputset.BLOCK)
    if isinstance(record, pd.DataFrame) and len(record):
        # a STAR file we wrote: its stack must be the one written with it, not another run's
        output_id = outputset.check_stack(record.iloc[0].to_dict(), stack, path)
    if "rlnImageSize" in df.columns:
        sizes = pd.to_numeric(df["rlnImageSize"], errors="coerce").to_numpy()
        if (sizes != stack.box).any():
            # seen in real files (images re-extracted smaller, optics left alone): the stack wins
            warnings.warn(f"{path}: rlnImageSize {sizes[sizes != stack.box][0]:g} disagrees with the "
                          f"{stack.box}-pixel images in {headers[0].path}; using {stack.box}", stacklevel=2)

    pixel_size = _pixel_size_from_columns(df, path)
    if pixel_size is None:
        pixel_size = stack.pixel_size  # last resort: the first stack's header
    out = Particles(df, stack, pixel_size, optics=optics, particle_columns=list(parts.columns),
                    source=os.fspath(path))
    out.output_id = output_id
    out.provenance = _read_provenance(blocks, df, path)
    return out


# -- provenance -----------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB pieces: a 10^6-particle STAR is ~300 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def source_record(particles: "Particles") -> dict:
    """The ``data_cryovae_source`` block for particles read from the user's own file: what the
    original is (absolute path, content hash, rows) and its images' box and pixel size."""
    if particles.source is None:
        raise InputError("particles read from no file have no original to record")
    path = Path(particles.source).resolve()
    return {"cryovaeSourceStar": os.fspath(path), "cryovaeSourceSha256": file_sha256(path),
            "cryovaeSourceRows": int(len(particles)), "cryovaeSourceBox": int(particles.box),
            "cryovaeSourcePixelSize": float(particles.pixel_size or 0.0)}


def _read_provenance(blocks: dict, df: pd.DataFrame, path) -> dict | None:
    record = blocks.get(SOURCE_BLOCK)
    if not (isinstance(record, pd.DataFrame) and len(record)):
        return None
    record = record.iloc[0].to_dict()
    missing = [k for k in ("cryovaeSourceStar", "cryovaeSourceSha256", "cryovaeSourceRows") if k not in record]
    if missing or SOURCE_INDEX not in df.columns:
        raise InputError(f"data_{SOURCE_BLOCK} block lacks {missing or [SOURCE_INDEX + ' column']}", path)
    rows = pd.to_numeric(df[SOURCE_INDEX], errors="coerce").to_numpy(np.float64)
    n = int(record["cryovaeSourceRows"])
    if not (np.isfinite(rows).all() and (rows >= 0).all() and (rows < n).all() and (rows == np.round(rows)).all()):
        raise InputError(f"{SOURCE_INDEX} holds values that are not rows 0..{n - 1} of "
                         f"{record['cryovaeSourceStar']}", path)
    return record


def read_output_record(path: str | os.PathLike) -> dict | None:
    """The ``data_cryovae_output`` block of a STAR file that ``cryovae preprocess`` wrote
    (``cryovae_nb.io.outputset``); None for a STAR file other software wrote."""
    record = _read_blocks(Path(path)).get(outputset.BLOCK)
    return record.iloc[0].to_dict() if isinstance(record, pd.DataFrame) and len(record) else None


def read_output_files(path: str | os.PathLike) -> dict[str, Path] | None:
    """The stack, split and settings files (``"stack"``, ``"split"``, ``"config"``) a STAR file
    that ``cryovae preprocess`` wrote names; None for a STAR file other software wrote. Nothing is
    checked here: ``read_particles`` checks the stack, ``read_split`` the split."""
    record = read_output_record(path)
    return None if record is None else outputset.members(record, path)


# -- writing --------------------------------------------------------------------------------------
def make_image_names(stack_path: str | os.PathLike, n: int,
                     relative_to: str | os.PathLike | None = None) -> list[str]:
    """``["000001@stack.mrcs", ...]`` for the ``n`` images of a stack, the path written relative to
    the folder ``relative_to`` (normally the STAR file's folder; a ``.star`` path means its folder)."""
    stack_path = os.fspath(stack_path)
    if relative_to is not None:
        rel = Path(relative_to)
        if rel.suffix.lower() == ".star":
            rel = rel.parent
        stack_path = os.path.relpath(os.path.abspath(stack_path), os.path.abspath(rel))
    return [f"{i:06d}@{stack_path}" for i in range(1, n + 1)]


def _as_poses(poses) -> Poses:
    if isinstance(poses, Poses):
        return poses
    if isinstance(poses, Mapping):
        return Poses.from_matrices(poses["rotations"], poses.get("shifts"))
    rotations, shifts = poses
    return Poses.from_matrices(rotations, shifts)


def _derive_optics(parts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split RELION 3.0-style per-particle optics columns into optics groups (one per distinct set)."""
    ocols = [c for c in OPTICS_COLUMNS if c in parts.columns]
    parts = parts.drop(columns=["rlnOpticsGroup"], errors="ignore")
    if not ocols:
        parts["rlnOpticsGroup"] = 1
        return pd.DataFrame({"rlnOpticsGroup": [1]}), parts
    groups = parts.groupby(ocols, sort=False, dropna=False).ngroup().to_numpy() + 1
    first = np.unique(groups, return_index=True)[1]
    optics = parts[ocols].iloc[first].reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    parts = parts.drop(columns=ocols)
    parts["rlnOpticsGroup"] = groups
    return optics, parts


def _stack_box(image_name: str, star_path: Path) -> int | None:
    name = image_name.split("@", 1)[-1]
    for base in (star_path.parent, Path.cwd()):
        if (base / name).is_file():
            return read_header(base / name).nx
    return None


def _rebased_names(particles: Particles, dest: Path) -> list[str] | None:
    """Image names of ``particles`` that still resolve from a STAR file written at ``dest``.

    A name that was found relative to the source STAR file's folder is rewritten relative to the
    destination's folder; a name found through a data directory (a RELION project root) is kept,
    since RELION and ``read_particles(datadir=...)`` resolve it from there. None: nothing changes.
    """
    if particles.source is None:
        return None
    src_dir, dest_dir = Path(particles.source).resolve().parent, dest.resolve().parent
    if src_dir == dest_dir:
        return None
    names = particles.df["rlnImageName"].astype(str)
    fids, _ = particles.images._locate(np.arange(len(particles), dtype=np.int64))
    files = [Path(h.path).resolve() for h in particles.images._headers]
    rebased = {}  # (name's path, file) -> its path in the new STAR: a few stacks, many particles
    out = []
    for name, fid in zip(names, fids):
        index, _, rel = name.partition("@")
        key = (rel, int(fid))
        if key not in rebased:
            target = files[key[1]]
            rebased[key] = os.path.relpath(target, dest_dir) if (src_dir / rel).resolve() == target else rel
        out.append(f"{index}@{rebased[key]}")
    return out


def write_particles_star(path: str | os.PathLike, particles: Particles | pd.DataFrame, *,
                         image_names: Sequence[str] | None = None, poses=None,
                         pixel_size: float | None = None,
                         optics: pd.DataFrame | Mapping | None = None,
                         box: int | None = None, extra_blocks: Mapping[str, dict] | None = None) -> None:
    """Write a RELION 3.1 STAR file (``data_optics`` + ``data_particles``), atomically.

    ``particles`` is a :class:`Particles` (its original per-particle columns and optics block are
    kept) or a DataFrame of RELION columns (optics-level columns there are grouped into optics
    groups). Optional replacements: ``image_names`` (e.g. a preprocessed stack, see
    :func:`make_image_names`), ``poses`` (a :class:`Poses` or ``(rotations, shifts)`` in our
    convention; written as rlnAngleRot/Tilt/Psi + rlnOriginX/YAngst), ``pixel_size`` (Å) and ``box``
    of the images the file points at, and ``optics`` (a DataFrame block or a dict for one group).
    Kept image names are rewritten so that they still resolve from the new file's folder.
    ``extra_blocks`` adds key-value blocks after the particles (``cryovae_nb.io.outputset``).
    """
    path = Path(path)
    if isinstance(particles, Particles):
        parts = particles.df[particles.particle_columns].copy()
        if image_names is None:
            image_names = _rebased_names(particles, path)
        merged, old_px = particles.df, particles.pixel_size
        block = None if particles.optics is None else particles.optics.copy()
        if box is None and image_names is None:
            box = particles.box  # same images, same box; new images: read their stack below
    else:
        parts = particles.rename(columns=lambda c: str(c).lstrip("_")).reset_index(drop=True)
        merged, block = parts, None
        old_px = _pixel_size_from_columns(parts, path)
    n = len(parts)
    if n == 0:
        raise InputError("no particles to write", path)
    if optics is not None:
        block = pd.DataFrame([dict(optics)]) if isinstance(optics, Mapping) else optics.copy()
        if "rlnOpticsGroup" not in block.columns:
            block.insert(0, "rlnOpticsGroup", np.arange(1, len(block) + 1))
    new_px = old_px if pixel_size is None else float(pixel_size)
    if new_px is None:
        raise InputError("pixel size unknown; pass pixel_size=", path)
    if not (np.isfinite(new_px) and new_px > 0):
        raise InputError(f"pixel size must be a finite number > 0 Å, got {new_px!r}", path)

    if image_names is not None:
        if len(image_names) != n:
            raise InputError(f"{len(image_names)} image names for {n} particles", path)
        parts["rlnImageName"] = list(image_names)
    if "rlnImageName" not in parts.columns:
        raise InputError("particles have no rlnImageName; pass image_names=", path)

    # origins in pixels (RELION 3.0) become Å: 3.1 reads only rlnOriginX/YAngst
    if "rlnOriginX" in parts.columns and "rlnOriginY" in parts.columns:
        px = old_px if old_px is not None else new_px
        parts["rlnOriginXAngst"] = parts.pop("rlnOriginX").to_numpy(np.float64) * px
        parts["rlnOriginYAngst"] = parts.pop("rlnOriginY").to_numpy(np.float64) * px
    if poses is not None:
        poses = _as_poses(poses)
        if len(poses) != n:
            raise InputError(f"{len(poses)} poses for {n} particles", path)
        for i, col in enumerate(_ANGLES):
            parts[col] = poses.euler[:, i]
        origin = shift_to_relion_origin(poses.shifts) * new_px
        parts["rlnOriginXAngst"], parts["rlnOriginYAngst"] = origin[:, 0], origin[:, 1]

    if block is None:
        # optics values live per particle (RELION 3.0 file or a plain DataFrame): group them
        extra = [c for c in OPTICS_COLUMNS if c in merged.columns and c not in parts.columns]
        for c in extra:
            parts[c] = merged[c].to_numpy()
        block, parts = _derive_optics(parts)
    else:
        if "rlnOpticsGroup" not in parts.columns:
            if len(block) != 1:
                raise InputError(f"particles lack rlnOpticsGroup and optics has {len(block)} groups", path)
            parts["rlnOpticsGroup"] = block["rlnOpticsGroup"].iloc[0]
        parts = parts.drop(columns=[c for c in block.columns if c != "rlnOpticsGroup"], errors="ignore")
        block = block[block["rlnOpticsGroup"].isin(set(parts["rlnOpticsGroup"]))].reset_index(drop=True)
        missing = set(parts["rlnOpticsGroup"]) - set(block["rlnOpticsGroup"])
        if missing:
            raise InputError(f"optics groups {sorted(missing)} are not in the optics block", path)
    parts = parts.drop(columns=list(_OLD_PIXEL_COLUMNS), errors="ignore")
    block = block.drop(columns=list(_OLD_PIXEL_COLUMNS), errors="ignore")

    if "rlnOpticsGroupName" not in block.columns:
        block.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in block["rlnOpticsGroup"]])
    block["rlnImagePixelSize"] = new_px
    if box is None and (image_names is not None or "rlnImageSize" not in block.columns):
        box = _stack_box(str(parts["rlnImageName"].iloc[0]), path)
        if box is None:
            raise InputError("image size unknown (stack not found); pass box=", path)
    if box is not None:
        block["rlnImageSize"] = int(box)
    if "rlnImageDimensionality" not in block.columns:
        block["rlnImageDimensionality"] = 2
    parts["rlnOpticsGroup"] = parts["rlnOpticsGroup"].astype(np.int64)
    block["rlnOpticsGroup"] = block["rlnOpticsGroup"].astype(np.int64)

    extra = dict(extra_blocks or {})
    if isinstance(particles, Particles) and particles.provenance is not None and SOURCE_INDEX in parts.columns:
        extra.setdefault(SOURCE_BLOCK, dict(particles.provenance))  # the rows still name their original
    with atomic_path(path) as tmp:
        starfile.write({"optics": block, "particles": parts, **extra}, tmp, float_format=_FLOAT_FORMAT)


def write_particles_subset(path: str | os.PathLike, particles: Particles, keep) -> int:
    """Write the particles selected by ``keep`` (a boolean mask or indices) as a RELION 3.1 STAR
    file (:func:`write_particles_star` of ``particles.subset``); returns how many were written.
    Refuses an empty selection rather than write a STAR file with no particles."""
    keep = np.asarray(keep)
    if keep.dtype == bool:
        if len(keep) != len(particles):
            raise InputError(f"keep mask has {len(keep)} entries for {len(particles)} particles")
        idx = np.flatnonzero(keep)
    else:
        idx = keep.astype(np.int64).ravel()
    if idx.size == 0:
        raise InputError("no particles kept: refusing to write an empty STAR file", path)
    write_particles_star(path, particles.subset(idx))
    return len(idx)
