"""What ties a STAR file to the files written with it, so that a reader never pairs two runs' files.

A preprocessing run with output ``p`` publishes ``p.star`` (the name users pass on) and the files it
names, which carry the run's tag (8 hex digits of its id) in their names: the stack
``p.<tag>.mrcs``, the split ``p.<tag>_split.npz`` and the settings ``p.<tag>_preprocess.json``.
These are written under new names, so they never replace the previous run's files; renaming
``p.star`` into place, last, switches readers from the previous complete set to the new one in one
atomic step, and a kill at any point leaves one complete set named by ``p.star``. The previous
set's files are then removed; files of a killed run (named by no STAR file) at the next start.

The STAR file's ``data_cryovae_output`` block records the run id, the names of the split and
settings files and the stack (name, size in bytes, images, box, pixel size, a hash of sampled
images); ``read_particles`` refuses a stack that is not the one the STAR file was written with
(a set mixed by hand), and the split file carries the same run id (checked by ``read_split``).
Sets of the previous layout (fixed names ``p.mrcs``, ``p_split.npz``, ``p_preprocess.json``; no
split or settings name in the block) are still read.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

import numpy as np

from cryovae_nb.errors import InputError
from cryovae_nb.io.mrc import ParticleStack, open_stack

BLOCK = "cryovae_output"
SAMPLE_IMAGES = 8


# a file of an output set: STEM.TAG.mrcs, STEM.TAG_split.npz, STEM.TAG_preprocess.json
MEMBER_SUFFIXES = {"stack": ".mrcs", "split": "_split.npz", "config": "_preprocess.json"}


def new_run_id() -> str:
    return "run-" + uuid.uuid4().hex


def run_tag(run_id: str) -> str:
    """The 8 hex digits of a run id that name its files."""
    return str(run_id).removeprefix("run-")[:8]


def member_names(stem: str, run_id: str) -> dict[str, str]:
    """The names of the stack, split and settings files a run with output ``stem`` publishes."""
    return {k: f"{stem}.{run_tag(run_id)}{suffix}" for k, suffix in MEMBER_SUFFIXES.items()}


def members(record: dict, star_path: str | os.PathLike) -> dict[str, Path]:
    """The stack, split and settings files a STAR file's block names (beside the STAR file); a
    block of the previous layout names only the stack, the others had fixed names."""
    star_path = Path(star_path)
    folder, stem = star_path.parent, star_path.stem
    if "cryovaeStack" not in record:
        raise InputError(f"data_{BLOCK} block lacks cryovaeStack", star_path)
    split = record.get("cryovaeSplit", f"{stem}_split.npz")
    config = record.get("cryovaeConfig", f"{stem}_preprocess.json")
    return {"stack": folder / str(record["cryovaeStack"]), "split": folder / str(split),
            "config": folder / str(config)}


def sample_sha256(stack) -> str:
    """SHA-256 of up to ``SAMPLE_IMAGES`` images spread evenly over a ``ParticleStack``."""
    n = len(stack)
    idx = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_IMAGES)).round().astype(np.int64))
    return hashlib.sha256(np.ascontiguousarray(stack[idx], dtype="<f4").tobytes()).hexdigest()


def stack_record(run_id: str, stack_file: str | os.PathLike, stack_name: str) -> dict:
    """The block for the STAR file: ``stack_file`` is the written stack (maybe still under its
    temporary name), ``stack_name`` its final name as the STAR file's image names give it."""
    stack = open_stack(stack_file)
    return {"cryovaeRunId": run_id, "cryovaeStack": stack_name,
            "cryovaeStackBytes": int(os.path.getsize(stack_file)), "cryovaeImages": len(stack),
            "cryovaeBox": int(stack.box), "cryovaePixelSize": float(stack.pixel_size or 0.0),
            "cryovaeSampleSha256": sample_sha256(stack)}


def check_stack(record: dict, stack, star_path) -> str:
    """Raise ``InputError`` unless ``stack`` (the STAR's one ``ParticleStack``) is the recorded one;
    return the run id."""
    def get(key):
        if key not in record:
            raise InputError(f"data_{BLOCK} block lacks {key}", star_path)
        return record[key]

    paths = stack.paths
    if len(paths) != 1:
        raise InputError(f"data_{BLOCK} block describes one stack, the particles use {len(paths)}", star_path)
    path = paths[0]
    diffs = []
    size = os.path.getsize(path)
    if int(get("cryovaeStackBytes")) != size:
        diffs.append(f"{int(get('cryovaeStackBytes'))} bytes recorded, {size} found")
    h = stack._headers[0]
    if int(get("cryovaeImages")) != h.nz:
        diffs.append(f"{int(get('cryovaeImages'))} images recorded, {h.nz} found")
    if int(get("cryovaeBox")) != h.nx:
        diffs.append(f"box {int(get('cryovaeBox'))} recorded, {h.nx} found")
    px = float(get("cryovaePixelSize"))
    if abs(px - float(h.voxel_size or 0.0)) > 1e-5 * max(px, 1e-12):
        diffs.append(f"pixel size {px:g} Å recorded, {h.voxel_size} found")
    if not diffs:
        if sample_sha256(open_stack(path)) != str(get("cryovaeSampleSha256")):
            diffs.append("the sampled images differ")
    if diffs:
        raise InputError(f"the stack {path} is not the one this STAR file was written with ("
                         + "; ".join(diffs) + "): the run that wrote them was interrupted, or the "
                         "files come from two runs. Rerun the preprocessing", star_path)
    return str(get("cryovaeRunId"))


def previous_files(record: dict, star_path: str | os.PathLike) -> dict[str, Path]:
    """The files of the set a STAR file's block describes that are provably that set's, to remove
    once another set replaced it: the stack when it matches the block, the split when it holds the
    block's run id, the settings file when its name carries the run's tag (the previous layout's
    fixed name: when the split was that run's too). Nothing else, never a file the block does not
    name."""
    files = members(record, star_path)
    found = {}
    try:
        check_stack(record, ParticleStack.open(files["stack"]), star_path)
        found["stack"] = files["stack"]
    except (InputError, OSError):
        pass  # not the recorded stack (replaced by hand?): not provably ours, kept
    run_id = str(record.get("cryovaeRunId"))
    try:
        with np.load(files["split"], allow_pickle=False) as f:
            split_ours = "run_id" in f and str(f["run_id"]) == run_id
    except (OSError, ValueError):
        split_ours = False
    if split_ours:
        found["split"] = files["split"]
    tagged = files["config"].name.startswith(f"{Path(star_path).stem}.{run_tag(run_id)}_")
    if files["config"].is_file() and (tagged or split_ours):
        found["config"] = files["config"]
    return found


def leftovers(star_path: str | os.PathLike) -> list[Path]:
    """Files of ours beside the output ``star_path`` that a killed run may have left, whatever
    the STAR file names (the caller keeps those): the stack, split and settings files of any run
    (``STEM.TAG.mrcs`` ..., TAG 8 hex digits) and the temporaries of those and of the STAR file
    and the previous layout's fixed names."""
    star_path = Path(star_path)
    if not star_path.parent.is_dir():
        return []
    stem = re.escape(star_path.stem)
    member = stem + r"\.[0-9a-f]{8}(?:" + "|".join(re.escape(s) for s in MEMBER_SUFFIXES.values()) + ")"
    pattern = re.compile(rf"{member}|\.+{member}\.[A-Za-z0-9_]{{8}}\.tmp.*")
    found = [p for p in star_path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    fixed = [star_path] + [star_path.with_name(star_path.stem + s) for s in MEMBER_SUFFIXES.values()]
    return found + [t for p in fixed for t in temporaries(p)]


def temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ours for the output ``path`` left by a killed run (``atomic_path`` names
    them ``.NAME.XXXXXXXX.tmp...``, nested ones with more leading dots)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(r"\.+" + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp.*")
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
