"""Fourier shell correlation (thesis eq. 2.64) and the resolution read off it at 0.5 and 0.143.

Volumes follow cryovae_nb/geometry.py: arrays ``V[z, y, x]`` centred on voxel ``n // 2``.
"""
from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import os
from pathlib import Path

import numpy as np
from scipy import fft as sfft

from cryovae_nb.atomic import write_json_atomic, write_text_atomic
from cryovae_nb.errors import InputError
from cryovae_nb.volumes import as_cube, soft_sphere_mask


def _shell_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shell number round(|k|) (pixel units) on the rfft half grid, and each voxel's weight.

    The half grid holds each conjugate pair once; columns other than kx = 0 (and kx = n/2 for even
    n) stand for two voxels of the full grid, so they count twice -- the sums equal the full-grid
    sums exactly, at half the memory.
    """
    k = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = np.rint(r).astype(np.int64)
    w = np.full(kx.shape, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return shell, np.broadcast_to(w, shell.shape)


@dataclasses.dataclass
class FSCResult:
    """An FSC curve and the resolutions read off it.

    ``resolution_05`` / ``resolution_0143`` are in Å, where the curve first falls below the
    threshold (linear interpolation in spatial frequency between the two shells around the
    crossing). When it never does, the resolution is the finest one measured (the last shell,
    which is Nyquist = 2 x pixel size for even boxes) and ``crossed_05`` / ``crossed_0143`` is
    False: the true resolution may be better than the sampling can show.
    """

    shells: np.ndarray          # shell number 0..n//2 (pixel units of |k|)
    frequencies: np.ndarray     # 1/Å
    curve: np.ndarray           # FSC per shell
    n_voxels: np.ndarray        # Fourier voxels per shell (noise level ~ 1/sqrt(n_voxels))
    resolution_05: float
    resolution_0143: float
    crossed_05: bool
    crossed_0143: bool
    nyquist: float              # Å, 2 x pixel size
    pixel_size: float

    def resolution_at(self, threshold: float) -> tuple[float, bool]:
        """(resolution in Å, crossed?) for any threshold."""
        return _crossing(self.frequencies, self.curve, threshold)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> FSCResult:
        arrays = {"shells", "frequencies", "curve", "n_voxels"}
        return cls(**{k: (np.asarray(v) if k in arrays else v) for k, v in d.items()})

    def save(self, path: str | os.PathLike) -> None:
        """Write as ``.json`` (everything) or ``.csv`` (one row per shell), atomically."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            write_json_atomic(path, self.to_dict())
        elif path.suffix.lower() == ".csv":
            buf = _io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["shell", "frequency_per_A", "resolution_A", "fsc", "n_voxels"])
            for s, f, c, nv in zip(self.shells, self.frequencies, self.curve, self.n_voxels):
                w.writerow([int(s), f"{f:.6g}", f"{(1 / f if f > 0 else float('inf')):.6g}",
                            f"{c:.6g}", int(nv)])
            write_text_atomic(path, buf.getvalue())
        else:
            raise InputError("FSC output must end in .json or .csv", path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FSCResult:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"cannot read an FSC result: {e}", path) from e


def _crossing(freq: np.ndarray, curve: np.ndarray, threshold: float) -> tuple[float, bool]:
    """First fall below ``threshold`` after shell 0, interpolated linearly in frequency."""
    below = np.flatnonzero(curve[1:] < threshold) + 1
    if below.size == 0:
        return float(1.0 / freq[-1]), False
    i = int(below[0])
    c0, c1 = curve[i - 1], curve[i]
    if c0 < threshold:  # shell 0 itself is below: nothing correlates
        return float("inf"), True
    f = freq[i - 1] + (c0 - threshold) / (c0 - c1) * (freq[i] - freq[i - 1])
    return float(1.0 / f) if f > 0 else float("inf"), True


_POWER_FLOOR = 1e-12


def fsc(vol1, vol2, pixel_size: float = 1.0, mask=None) -> FSCResult:
    """Fourier shell correlation of two cubic volumes (thesis eq. 2.64).

    FSC(r) = Re sum_{shell r} F1 F2* / sqrt(sum |F1|^2 sum |F2|^2), shells r = round(|k|) in pixel
    units up to n // 2 (the corners beyond are dropped). ``mask``: None, ``"sphere"`` (the default
    soft_sphere_mask) or an array of the volumes' shape, multiplied into both volumes first.
    The curve is invariant to scaling either volume by a positive constant; adding a constant
    changes only shell 0. A shell with no power (below 1e-12 x the strongest shell's: rounding
    level) in either volume gets FSC 0.
    """
    v1, v2 = as_cube(vol1, "vol1"), as_cube(vol2, "vol2")
    if v1.shape != v2.shape:
        raise InputError(f"FSC needs two volumes of the same shape, got {v1.shape} and {v2.shape}")
    if not pixel_size or pixel_size <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size}")
    n = v1.shape[0]
    if mask is not None:
        if isinstance(mask, str):
            if mask != "sphere":
                raise InputError(f"mask must be None, 'sphere' or an array, got {mask!r}")
            mask = soft_sphere_mask(n)
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != v1.shape:
            raise InputError(f"mask shape {mask.shape} differs from the volumes' {v1.shape}")
        v1, v2 = v1 * mask, v2 * mask
    f1, f2 = sfft.rfftn(v1, workers=-1), sfft.rfftn(v2, workers=-1)
    shell, w = _shell_index(n)
    nshell = n // 2 + 1
    keep = shell < nshell
    s, wk = shell[keep], w[keep]
    cross = np.bincount(s, weights=wk * np.real(f1[keep] * np.conj(f2[keep])), minlength=nshell)
    p1 = np.bincount(s, weights=wk * np.abs(f1[keep]) ** 2, minlength=nshell)
    p2 = np.bincount(s, weights=wk * np.abs(f2[keep]) ** 2, minlength=nshell)
    counts = np.bincount(s, weights=wk, minlength=nshell).astype(np.int64)
    # a shell whose power is at rounding level (e.g. beyond a low-pass) has no defined phase: 0,
    # not the correlation of rounding noise
    live = (p1 > _POWER_FLOOR * p1.max()) & (p2 > _POWER_FLOOR * p2.max())
    denom = np.sqrt(p1 * p2)
    curve = np.divide(cross, denom, out=np.zeros(nshell), where=live)
    shells = np.arange(nshell)
    freq = shells / (n * pixel_size)
    r05, c05 = _crossing(freq, curve, 0.5)
    r0143, c0143 = _crossing(freq, curve, 0.143)
    return FSCResult(shells=shells, frequencies=freq, curve=curve, n_voxels=counts,
                     resolution_05=r05, resolution_0143=r0143, crossed_05=c05, crossed_0143=c0143,
                     nyquist=2.0 * pixel_size, pixel_size=float(pixel_size))


__all__ = ["FSCResult", "fsc"]
