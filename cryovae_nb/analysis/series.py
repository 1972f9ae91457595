"""Volume series through any ``decode(z) -> volumes`` callable (so this module never imports the
model): decoding in batches, latent traversals and interpolations, and writing them as numbered
MRC files for ChimeraX.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cryovae_nb.analysis.latent import as_latents
from cryovae_nb.errors import InputError
from cryovae_nb.io import write_volume


def decode_volumes(decode: Callable, z, batch_size: int = 32) -> np.ndarray:
    """Call ``decode`` on batches of latents and stack the volumes as float32 (k, n, n, n).

    ``decode`` is any callable z (b, d) -> volumes (b, n, n, n) (e.g. ``CryoVAE.decode``; TF
    tensors are converted), so this module does not import the model.
    """
    z = np.atleast_2d(np.asarray(z, dtype=np.float32))
    parts = []
    for i in tqdm(range(0, len(z), batch_size), desc="decode", disable=len(z) <= batch_size):
        v = np.asarray(decode(z[i:i + batch_size]), dtype=np.float32)
        if v.ndim != 4 or len(v) != len(z[i:i + batch_size]):
            raise InputError(f"decode returned shape {v.shape} for {len(z[i:i + batch_size])} "
                             "latents; expected (b, n, n, n)")
        parts.append(v)
    return np.concatenate(parts)


def cluster_volumes(decode: Callable, centres) -> np.ndarray:
    """The volumes of k-means cluster centres."""
    return decode_volumes(decode, centres)


def traversal_series(decode: Callable, latents, dim: int, steps: int = 10, lo: float | None = None,
                     hi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Walk one latent dimension (0-based ``dim``) on a regular grid from its minimum to its
    maximum over ``latents`` (or ``lo``..``hi``), the other dimensions held at their mean (the
    thesis' traversal). Returns (z path (steps, d), volumes (steps, n, n, n))."""
    z = as_latents(latents)
    if not 0 <= dim < z.shape[1]:
        raise InputError(f"dim must be in 0..{z.shape[1] - 1}, got {dim}")
    if steps < 2:
        raise InputError(f"steps must be at least 2, got {steps}")
    lo = z[:, dim].min() if lo is None else lo
    hi = z[:, dim].max() if hi is None else hi
    path = np.repeat(z.mean(0, keepdims=True), steps, axis=0)
    path[:, dim] = np.linspace(lo, hi, steps)
    return path, decode_volumes(decode, path)


def interpolation_series(decode: Callable, z0, z1, steps: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Straight line from z0 to z1 (both ends included): (z path (steps, d), volumes)."""
    z0, z1 = np.asarray(z0, np.float64).ravel(), np.asarray(z1, np.float64).ravel()
    if z0.shape != z1.shape:
        raise InputError(f"z0 and z1 differ in length: {z0.shape[0]} vs {z1.shape[0]}")
    if steps < 2:
        raise InputError(f"steps must be at least 2, got {steps}")
    t = np.linspace(0.0, 1.0, steps)[:, None]
    path = (1 - t) * z0 + t * z1
    return path, decode_volumes(decode, path)


def save_series(directory: str | os.PathLike, volumes, voxel_size: float,
                prefix: str = "frame") -> list[Path]:
    """Write volumes as ``directory/prefix_000.mrc``, ... with the voxel size in each header
    (ChimeraX opens the numbered files as a series). Returns the paths."""
    vols = np.asarray(volumes)
    if vols.ndim != 4:
        raise InputError(f"expected (k, n, n, n) volumes, got shape {vols.shape}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(vols) - 1)))
    paths = []
    for i, v in enumerate(vols):
        p = directory / f"{prefix}_{i:0{width}d}.mrc"
        write_volume(p, v.astype(np.float32), voxel_size)
        paths.append(p)
    return paths


__all__ = ["cluster_volumes", "decode_volumes", "interpolation_series", "save_series", "traversal_series"]
