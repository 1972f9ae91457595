"""What ties a STAR file to the stack written with it, so that a reader never pairs two runs' files.

A preprocessing run publishes several files under fixed names (``.mrcs``, ``_split.npz``,
``_preprocess.json``, ``.star``) by renaming each into place, the STAR file last. A run killed
between two renames leaves new files beside old ones. So the STAR file we write carries a
``data_cryovae_output`` block recording the run's id and its stack (name, size in bytes, images,
box, pixel size, a hash of sampled images); ``read_particles`` checks the stack against it and
refuses a stack that is not the one the STAR file was written with. The split file carries the
same run id (checked by the Trainer).
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

import numpy as np

from cryovae_nb.errors import InputError
from cryovae_nb.io.mrc import open_stack

BLOCK = "cryovae_output"
SAMPLE_IMAGES = 8


def new_run_id() -> str:
    return "run-" + uuid.uuid4().hex


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


def temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ours for the output ``path`` left by a killed run (``atomic_path`` names
    them ``.NAME.XXXXXXXX.tmp...``, nested ones with more leading dots)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(r"\.+" + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp.*")
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
