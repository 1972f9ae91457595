"""Analysis of what the VAE produced: FSC, rigid alignment and hand, the latent landscape.

Headless (numpy / scipy / scikit-learn / umap-learn; umap is imported only when asked for, because
it pulls in TensorFlow). Volumes follow cryovae_nb/geometry.py: arrays ``V[z, y, x]``, coordinates
``r = (x, y, z)`` centred on voxel ``n // 2``.

* ``fsc`` -- Fourier shell correlation (thesis eq. 2.64), resolution at 0.5 and 0.143 in Å.
* ``rotate_volume`` / ``mirror_volume`` / ``align`` / ``consistent_hand`` -- rigid 3D alignment by
  cross-correlation, trying the mirror image, and flipping decoded volumes to one hand (§4.1).
* ``latent_statistics`` (thesis Table 3.1), ``embed`` (PCA / UMAP / t-SNE), ``kmeans``.
* ``decode_volumes``, ``traversal_series``, ``interpolation_series``, ``save_series`` -- volume
  series through any ``decode(z) -> volumes`` callable, so this module never imports the model.
* ``screen_particles`` / ``export_kept_star`` -- flag empty or broken particles (thesis §3.4.4).
"""
from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryovae_nb.argcheck import output_file, positive_float
from cryovae_nb.atomic import write_json_atomic, write_text_atomic
from cryovae_nb.errors import InputError
from cryovae_nb.geometry import centered_coords, grid_rotations, rotation_angle_deg

# ----------------------------------------------------------------------------------------------
# Fourier shell correlation
# ----------------------------------------------------------------------------------------------


def _as_cube(volume, name: str = "volume") -> np.ndarray:
    v = np.asarray(volume)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise InputError(f"{name}: expected a cubic 3D volume, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return v.astype(np.float64 if v.dtype == np.float64 else np.float32, copy=False)


def soft_sphere_mask(n: int, radius: float | None = None, width: float | None = None) -> np.ndarray:
    """A spherical mask about voxel ``n // 2``: 1 inside ``radius``, a raised-cosine edge of
    ``width`` voxels down to 0 (a hard edge would ring in Fourier space and bias the FSC).

    Defaults: radius 0.4 n, width 0.1 n, so the mask reaches 0 at the box edge.
    """
    radius = 0.4 * n if radius is None else float(radius)
    width = 0.1 * n if width is None else float(width)
    c = centered_coords(n)
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if width <= 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / width, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


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
    v1, v2 = _as_cube(vol1, "vol1"), _as_cube(vol2, "vol2")
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


# ----------------------------------------------------------------------------------------------
# Rotating, mirroring, aligning volumes
# ----------------------------------------------------------------------------------------------

_REV = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)


def rotate_volume(volume, rotation, shift=None, order: int = 1) -> np.ndarray:
    """The volume in pose (R, s): ``W(r) = V(R @ (r - s))``, r = (x, y, z) about voxel n // 2.

    The same convention as projection: projecting V in pose (R, (sx, sy)) equals projecting W =
    rotate_volume(V, R, (sx, sy, 0)) in the identity pose. Trilinear (``order=1``), zero outside.
    """
    v = _as_cube(volume)
    R = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    s = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64).reshape(3)
    c = np.full(3, v.shape[0] // 2, dtype=np.float64)
    M = _REV @ R @ _REV  # the same map acting on (z, y, x) array indices
    offset = c - M @ c - _REV @ R @ s
    # "grid-constant": zeros beyond the box with a proper ramp over the last half voxel, as the
    # reference projector does
    return ndimage.affine_transform(v, M, offset=offset, order=order, mode="grid-constant",
                                    cval=0.0, prefilter=False)


def mirror_volume(volume) -> np.ndarray:
    """The mirror image through the plane z = n // 2: ``W(x, y, z) = V(x, y, -z)``.

    For even boxes the plane z = 0 has no partner inside the box; it wraps around (circularly),
    which keeps the centre voxel fixed so that mirroring twice is the identity.
    """
    v = np.asarray(volume)
    flipped = v[::-1]
    return np.roll(flipped, 1, axis=0) if v.shape[0] % 2 == 0 else flipped.copy()


def _fourier_crop(v: np.ndarray, m: int, cutoff: float = 1.0) -> np.ndarray:
    """Down-sample a cube to m^3 keeping its lowest Fourier components, with a spherical low-pass
    (raised cosine ending at ``cutoff`` x the new Nyquist). Spherical, because the cube of kept
    components is not rotation invariant: its corners would make a rotated copy differ from the
    rotated original. A cutoff of 0.5 leaves the copy 2x oversampled, where trilinear
    interpolation is nearly exact."""
    n = v.shape[0]
    F = np.fft.fftshift(sfft.fftn(v, workers=-1))
    if m < n:
        a = n // 2 - m // 2
        F = F[a:a + m, a:a + m, a:a + m]
    k = centered_coords(m)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) / (m / 2)
    taper = 0.5 * (1 + np.cos(np.pi * np.clip((r - 0.8 * cutoff) / (0.2 * cutoff), 0, 1)))
    out = np.real(sfft.ifftn(np.fft.ifftshift(F * taper), workers=-1)) * (min(m, n) / n) ** 3
    return out.astype(np.float32)


def _prepare(v: np.ndarray, m: int) -> np.ndarray:
    """Low-pass to half of an m^3 grid, remove the mean, soft-mask (rotating loses no corners)."""
    s = _fourier_crop(v, m, cutoff=0.5)
    s = s - s.mean()
    return (s * soft_sphere_mask(m)).astype(np.float32)


def _rotate_batch(v: np.ndarray, Rs: np.ndarray) -> np.ndarray:
    """rotate_volume for many rotations at once (one map_coordinates call): (k, m, m, m).

    Only voxels inside the sphere of radius m/2 are computed: ``v`` comes from ``_prepare``, whose
    mask is zero beyond it, so everything outside would come out zero anyway (half the work).
    """
    m = v.shape[0]
    c = centered_coords(m).astype(np.float32)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    inside = (x**2 + y**2 + z**2 <= (m / 2) ** 2).ravel()
    r = np.stack([x.ravel()[inside], y.ravel()[inside], z.ravel()[inside]])  # (3, P) as (x, y, z)
    # rows of R reversed -> source coordinates come out as (z, y, x) array indices
    src = np.asarray(Rs, np.float32)[:, ::-1, :] @ r + np.float32(m // 2)   # (k, 3, P)
    coords = np.ascontiguousarray(src.transpose(1, 0, 2)).reshape(3, -1)
    vals = ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    out = np.zeros((len(Rs), m**3), np.float32)
    out[:, inside] = vals.reshape(len(Rs), -1)
    return out.reshape(len(Rs), m, m, m)


_NB = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T
# a full quadratic in 3 variables (10 terms) fitted to the 27 values around a peak; per-axis
# parabolas would be biased by the cross terms of an elongated (tilted) peak
_QUAD_PINV = np.linalg.pinv(np.column_stack(
    [np.ones(27), *_NB.T, *(_NB[:, [i]] * _NB[:, [j]] for i in range(3) for j in range(i, 3))]))


def _peak(cc: np.ndarray) -> np.ndarray:
    """Per volume of a (k, m, m, m) batch, the sub-voxel position (k, 3) of the maximum, from a
    quadratic fitted to its 3x3x3 neighbourhood (circularly)."""
    k, m = cc.shape[0], cc.shape[1]
    j = np.argmax(cc.reshape(k, -1), axis=1)
    p = np.stack(np.unravel_index(j, cc.shape[1:]), axis=1)
    idx = (p[:, None, :] + _NB[None]) % m                              # (k, 27, 3)
    vals = cc[np.arange(k)[:, None], idx[..., 0], idx[..., 1], idx[..., 2]].astype(np.float64)
    c = vals @ _QUAD_PINV.T                                            # (k, 10)
    g = c[:, 1:4]
    q = c[:, 4:]  # xx xy xz yy yz zz
    H = np.stack([np.stack([2 * q[:, 0], q[:, 1], q[:, 2]], -1),
                  np.stack([q[:, 1], 2 * q[:, 3], q[:, 4]], -1),
                  np.stack([q[:, 2], q[:, 4], 2 * q[:, 5]], -1)], -2)
    off = np.zeros((k, 3))
    ok = np.all(np.linalg.eigvalsh(H) < 0, axis=1)  # a proper maximum only
    if ok.any():
        off[ok] = np.clip(-np.linalg.solve(H[ok], g[ok][..., None])[..., 0], -1.0, 1.0)
    return p + off


def _xcorr(W: np.ndarray, ref_ft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Circular cross-correlation of a batch W (k, m, m, m) with the reference (``ref_ft`` its
    rfftn): the spectrum G and cc[t] = sum_o W(o) ref(o + t)."""
    ax = (1, 2, 3)
    G = np.conj(sfft.rfftn(W, axes=ax, workers=-1)) * ref_ft
    return G, sfft.irfftn(G, s=W.shape[1:], axes=ax, workers=-1)


def _xcorr_at(G: np.ndarray, t: np.ndarray) -> np.ndarray:
    """cc at sub-voxel shifts t (k, 3), exactly, from the spectrum (band-limited interpolation):
    scoring rotations at integer shifts would let the rotation absorb the rounding."""
    m = G.shape[1]
    kz = np.fft.fftfreq(m) * m
    kx = np.fft.rfftfreq(m) * m
    ph = lambda f, tt: np.exp(2j * np.pi * np.outer(tt, f) / m)
    w = np.full(kx.shape, 2.0)
    w[0] = 1.0
    if m % 2 == 0:
        w[-1] = 1.0
    val = np.einsum("kzyx,kz,ky,kx->k", G, ph(kz, t[:, 0]), ph(kz, t[:, 1]), ph(kx, t[:, 2]) * w)
    return np.real(val) / m**3


def _scores(moving: np.ndarray, ref_ft: np.ndarray, ref_norm: float, Rs: np.ndarray,
            chunk: int) -> np.ndarray:
    """Best normalised cross-correlation over all (circular, sub-voxel) translations, per
    rotation."""
    out = np.empty(len(Rs))
    for i in range(0, len(Rs), chunk):
        W = _rotate_batch(moving, Rs[i:i + chunk])
        norms = np.sqrt(np.einsum("kijl,kijl->k", W, W, dtype=np.float64)) * ref_norm
        G, cc = _xcorr(W, ref_ft)
        best = np.maximum(_xcorr_at(G, _peak(cc)), cc.reshape(len(W), -1).max(axis=1))
        out[i:i + chunk] = best / np.maximum(norms, 1e-30)
    return out


def _local_offsets(delta_deg: float) -> np.ndarray:
    g = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    g = g[np.any(g != 0, axis=1)]
    return Rotation.from_rotvec(np.deg2rad(delta_deg) * g).as_matrix()


def _refine(moving: np.ndarray, ref: np.ndarray, R0: np.ndarray, delta: float, min_delta: float,
            max_iter: int = 60) -> tuple[np.ndarray, float]:
    """Pattern search on SO(3): try the 26 neighbours at angle ``delta``; move to a better one or
    halve ``delta`` until it is below ``min_delta``."""
    ref_ft = sfft.rfftn(ref)
    ref_norm = float(np.linalg.norm(ref))
    R = R0
    best = _scores(moving, ref_ft, ref_norm, R[None], 1)[0]
    for _ in range(max_iter):
        if delta < min_delta:
            break
        cands = R @ _local_offsets(delta)
        s = _scores(moving, ref_ft, ref_norm, cands, 26)
        j = int(np.argmax(s))
        if s[j] > best:
            R, best = cands[j], s[j]
        else:
            delta /= 2
    return R, float(best)


def _search(moving: np.ndarray, reference: np.ndarray, coarse_size: int, coarse_step: float,
            n_candidates: int, fine_size: int, min_step: float) -> tuple[np.ndarray, float]:
    """Global grid on low-passed copies, local refinement of the best few there, then of the
    winner on less low-passed copies. Scoring never uses the full resolution: re-interpolating
    noise makes the finest scale's score landscape bumpy (a few degrees of false optima)."""
    n = moving.shape[0]
    mc, mf = min(coarse_size, n), min(fine_size, n)
    a, b = _prepare(moving, mc), _prepare(reference, mc)
    b_ft = sfft.rfftn(b)
    grid = grid_rotations(coarse_step)
    s = _scores(a, b_ft, float(np.linalg.norm(b)), grid, chunk=max(1, 2_000_000 // mc**3))
    # the best few that are not neighbours of a better one (non-maximum suppression)
    picked: list[int] = []
    for i in np.argsort(-s):
        if all(rotation_angle_deg(grid[i], grid[j]) > 1.5 * coarse_step for j in picked):
            picked.append(int(i))
        if len(picked) == n_candidates:
            break
    refined = [_refine(a, b, grid[i], coarse_step / 2, coarse_step / 8) for i in picked]
    R, score = max(refined, key=lambda t: t[1])
    if mf > mc:
        R, score = _refine(_prepare(moving, mf), _prepare(reference, mf), R, coarse_step / 8,
                           min_step)
    return R, score


def _best_shift(moving: np.ndarray, reference: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Translation (x, y, z) maximising the cross-correlation after rotating by R, to sub-voxel
    precision, at full size."""
    n = moving.shape[0]
    a, b = _prepare(moving, n), _prepare(reference, n)
    # cc[t] = sum_o W(o) b(o + t) peaks where the reference matches W moved by +t
    t = _peak(_xcorr(_rotate_batch(a, R[None]), sfft.rfftn(b))[1])[0]
    t = (t + n / 2) % n - n / 2  # wrap to [-n/2, n/2)
    return t[::-1]  # (z, y, x) -> (x, y, z)


def correlation(a, b) -> float:
    """Pearson correlation of two equally shaped arrays."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    d = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / d) if d > 0 else 0.0


@dataclasses.dataclass
class AlignResult:
    """``aligned = rotate_volume(mirror_volume(volume) if mirrored else volume, rotation, shift)``.

    ``correlation`` is the Pearson correlation of ``aligned`` with the reference over the box;
    ``correlation_other_hand`` the same for the best pose of the other hand (NaN if not tried).
    """

    aligned: np.ndarray
    rotation: np.ndarray
    shift: np.ndarray          # (x, y, z) voxels
    mirrored: bool
    correlation: float
    correlation_other_hand: float = float("nan")


def align(volume, reference, try_mirror: bool = True, *, coarse_size: int = 16,
          coarse_step: float = 25.0, n_candidates: int = 4, fine_size: int = 32,
          min_step: float = 0.25) -> AlignResult:
    """Rigidly align ``volume`` onto ``reference`` by cross-correlation.

    Rotation: a global grid of rotations (``coarse_step`` degrees) scored on copies Fourier-cropped
    to ``coarse_size``^3 and a pattern search there around the ``n_candidates`` best distinct ones,
    then a pattern search around the winner on copies cropped to ``fine_size``^3 down to
    ``min_step`` degrees. Each rotation is scored at its best translation (FFT cross-correlation,
    sub-voxel peak); the final translation is found at full size. With ``try_mirror`` the mirror
    image is searched too and the better hand wins (``mirrored``). Volumes must be cubes of one
    size. Copies are low-passed to half their grid's Nyquist before scoring: trilinear
    re-interpolation of the finest detail would otherwise bias the optimum by degrees.
    """
    v, ref = _as_cube(volume, "volume"), _as_cube(reference, "reference")
    if v.shape != ref.shape:
        raise InputError(f"align needs volumes of the same shape, got {v.shape} and {ref.shape}")
    hands = [False, True] if try_mirror else [False]
    found = []
    for mirrored in hands:
        src = mirror_volume(v) if mirrored else v
        R, _ = _search(src, ref, coarse_size, coarse_step, n_candidates, fine_size, min_step)
        shift = _best_shift(src, ref, R)
        out = rotate_volume(src, R, shift).astype(np.float32)
        found.append(AlignResult(out, R, shift, mirrored, correlation(out, ref)))
    found.sort(key=lambda a: a.correlation, reverse=True)
    best = found[0]
    if len(found) > 1:
        best.correlation_other_hand = found[1].correlation
    return best


def consistent_hand(volumes, reference=None, *, return_aligned: bool = False,
                    **align_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Flip volumes (e.g. decoded from a latent space) to one hand (the thesis' §4.1 problem).

    Each volume is aligned to ``reference`` (default: the first volume) as itself and as its
    mirror image; those that fit better mirrored are flipped. Returns (volumes, flipped mask);
    the volumes keep their own pose unless ``return_aligned`` (then they are the aligned copies).
    """
    vols = np.asarray(volumes)
    if vols.ndim != 4:
        raise InputError(f"consistent_hand expects (k, n, n, n) volumes, got shape {vols.shape}")
    ref = vols[0] if reference is None else reference
    out = np.empty(vols.shape, np.float32)
    flipped = np.zeros(len(vols), bool)
    from tqdm.auto import tqdm

    for i, v in enumerate(tqdm(vols, desc="hand", disable=len(vols) < 4)):
        if reference is None and i == 0 and not return_aligned:
            out[0] = v
            continue
        res = align(v, ref, try_mirror=True, **align_kwargs)
        flipped[i] = res.mirrored
        out[i] = res.aligned if return_aligned else (mirror_volume(v) if res.mirrored else v)
    return out, flipped


# ----------------------------------------------------------------------------------------------
# The latent landscape
# ----------------------------------------------------------------------------------------------


def _as_latents(latents) -> np.ndarray:
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise InputError(f"latents must be a non-empty (n, d) array, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise InputError("latents contain NaN or infinite values")
    return z


def latent_statistics(latents) -> pd.DataFrame:
    """Per-dimension mean, std, min, quartiles, max (thesis Table 3.1): rows are the statistics,
    columns the dimensions numbered from 1. ``std`` uses ddof=1 like pandas' describe."""
    z = _as_latents(latents)
    q = np.percentile(z, [25, 50, 75], axis=0)
    rows = {"mean": z.mean(0), "std": z.std(0, ddof=1) if len(z) > 1 else np.zeros(z.shape[1]),
            "min": z.min(0), "25%": q[0], "50%": q[1], "75%": q[2], "max": z.max(0)}
    df = pd.DataFrame(rows).T
    df.columns = pd.RangeIndex(1, z.shape[1] + 1, name="latent dim")
    return df


# Above these sizes a random subsample is embedded. Measured on 2 cores (benchmarks/
# analysis_speed.py, CPU time): t-SNE of 10k points ~70 s, UMAP of 50k ~50 s; these limits keep a
# notebook cell near half a minute. Pass max_points to go further.
MAX_POINTS = {"tsne": 5_000, "umap": 20_000}


@dataclasses.dataclass
class Embedding:
    """``coords[i]`` embeds ``latents[indices[i]]``; ``note`` says whether it was subsampled."""

    coords: np.ndarray
    indices: np.ndarray
    method: str
    note: str
    explained_variance_ratio: np.ndarray | None = None  # PCA only


def embed(latents, method: str = "pca", n_components: int = 2, seed: int = 0,
          max_points: int | None = None, **kwargs) -> Embedding:
    """Embed latents with PCA (all points), UMAP or t-SNE (a random subsample of at most
    ``max_points``, default MAX_POINTS[method], with a warning that says so). Deterministic for a
    given seed. Extra keyword arguments go to the sklearn / umap estimator."""
    z = _as_latents(latents)
    method = method.lower().replace("-", "")
    if method not in ("pca", "umap", "tsne"):
        raise InputError(f"unknown embedding method {method!r}; use 'pca', 'umap' or 'tsne'")
    if not 1 <= n_components <= z.shape[1]:
        raise InputError(f"n_components must be in 1..{z.shape[1]}, got {n_components}")
    n = len(z)
    idx = np.arange(n)
    note = f"{method} of all {n} points"
    if method != "pca":
        limit = MAX_POINTS[method] if max_points is None else int(max_points)
        if n > limit:
            idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
            note = (f"{method} of a random subsample of {limit} of {n} points (max_points="
                    f"{limit}); coords[i] belongs to latents[indices[i]]")
            warnings.warn(note, stacklevel=2)
    x = z[idx]
    evr = None
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components, svd_solver="full", **kwargs)
        coords = pca.fit_transform(x)
        evr = pca.explained_variance_ratio_
        # fix each component's sign (SVD leaves it free) so runs and subsets agree
        signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), range(n_components)])
        coords = coords * np.where(signs == 0, 1, signs)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        kwargs.setdefault("perplexity", min(30.0, (len(x) - 1) / 3))
        coords = TSNE(n_components=n_components, random_state=seed, init="pca",
                      **kwargs).fit_transform(x)
    else:
        with warnings.catch_warnings():
            # umap warns that a fixed random_state disables its parallelism: that is the point
            warnings.simplefilter("ignore", UserWarning)
            import umap

            kwargs.setdefault("n_neighbors", min(15, len(x) - 1))
            coords = umap.UMAP(n_components=n_components, random_state=seed,
                               **kwargs).fit_transform(x)
    return Embedding(np.asarray(coords, np.float32), idx, method, note, evr)


def kmeans(latents, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the full latent space: (labels (n,), centres (k, d))."""
    from sklearn.cluster import KMeans

    z = _as_latents(latents)
    if not 1 <= k <= len(z):
        raise InputError(f"k must be in 1..{len(z)}, got {k}")
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(z)
    return km.labels_.astype(np.int64), km.cluster_centers_


def decode_volumes(decode: Callable, z, batch_size: int = 32) -> np.ndarray:
    """Call ``decode`` on batches of latents and stack the volumes as float32 (k, n, n, n).

    ``decode`` is any callable z (b, d) -> volumes (b, n, n, n) (e.g. ``CryoVAE.decode``; TF
    tensors are converted), so this module does not import the model.
    """
    z = np.atleast_2d(np.asarray(z, dtype=np.float32))
    from tqdm.auto import tqdm

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
    z = _as_latents(latents)
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
    from cryovae_nb.io import write_volume

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


# ----------------------------------------------------------------------------------------------
# Structural heterogeneity screening (thesis §3.4.4)
# ----------------------------------------------------------------------------------------------


def robust_z(x) -> np.ndarray:
    """(x - median) / (1.4826 MAD): a z-score that a minority of outliers cannot inflate."""
    x = np.asarray(x, np.float64)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    if mad <= 0:
        mad = x.std() or 1.0
    return (x - med) / mad


def screen_particles(recon_error, z_logvar=None, method: str = "gmm", threshold: float = 3.0,
                     seed: int = 0) -> pd.DataFrame:
    """Score each particle by how badly the model explains it; flag which to keep.

    Features: the reconstruction error and, if given, the posterior variance (mean over latent
    dimensions of exp(z_logvar)); the encoder is unsure about empty or broken particles, so both
    rise. ``score`` = mean of their robust z-scores (log variance, which is skewed).
    ``method="threshold"``: keep score <= ``threshold``. ``method="gmm"``: a 2-component Gaussian
    mixture on the features; particles more likely in the component with the higher score are
    dropped (``p_bad`` > 0.5) -- unless one component fits as well (BIC), then all are kept and
    ``df.attrs["note"]`` says so. Returns a DataFrame, one row per particle.
    """
    err = np.asarray(recon_error, np.float64).ravel()
    if err.size == 0 or not np.all(np.isfinite(err)):
        raise InputError("recon_error must be a non-empty array of finite values")
    feats = {"recon_error": err}
    df = pd.DataFrame({"recon_error": err})
    if z_logvar is not None:
        lv = np.asarray(z_logvar, np.float64)
        lv = lv.reshape(len(lv), -1)
        if len(lv) != len(err) or not np.all(np.isfinite(lv)):
            raise InputError(f"z_logvar must be finite with {len(err)} rows, got shape {lv.shape}")
        var = np.exp(lv).mean(axis=1)
        df["posterior_var"] = var
        feats["log_posterior_var"] = np.log(var)
    Z = np.stack([robust_z(f) for f in feats.values()], axis=1)
    df["score"] = Z.mean(axis=1)
    if method == "threshold":
        df["keep"] = df["score"] <= threshold
        df.attrs["note"] = f"kept score <= {threshold}"
    elif method == "gmm":
        from sklearn.mixture import GaussianMixture

        if len(err) < 10:
            raise InputError(f"gmm screening needs at least 10 particles, got {len(err)}")
        g1 = GaussianMixture(1, random_state=seed).fit(Z)
        g2 = GaussianMixture(2, random_state=seed, n_init=3).fit(Z)
        bad = int(np.argmax(g2.means_.mean(axis=1)))
        p_bad = g2.predict_proba(Z)[:, bad]
        if g2.bic(Z) < g1.bic(Z) - 10.0:
            df["p_bad"] = p_bad
            df["keep"] = p_bad <= 0.5
            df.attrs["note"] = f"2-component mixture; dropped {int((p_bad > 0.5).sum())}"
        else:
            df["p_bad"] = 0.0
            df["keep"] = True
            df.attrs["note"] = "one population fits as well as two (BIC): kept all particles"
    else:
        raise InputError(f"unknown screening method {method!r}; use 'gmm' or 'threshold'")
    return df


def export_kept_star(path: str | os.PathLike, particles, keep) -> int:
    """Write the kept particles (boolean mask or indices) as a RELION 3.1 STAR file; returns
    how many were written."""
    from cryovae_nb.io import write_particles_star

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


# ----------------------------------------------------------------------------------------------
# CLI: cryovae fsc
# ----------------------------------------------------------------------------------------------


def add_fsc_parser(p) -> None:
    p.add_argument("vol1", help="first volume (.mrc)")
    p.add_argument("vol2", help="second volume / reference (.mrc)")
    p.add_argument("--pixel-size", type=positive_float, default=None,
                   help="Å per voxel (default: from vol1's header, else 1)")
    p.add_argument("--mask", default=None,
                   help="'sphere' for a soft spherical mask, or an MRC mask file")
    p.add_argument("--align", action="store_true",
                   help="align vol1 onto vol2 (rotation, shift, hand) before the FSC")
    p.add_argument("--out", default=None, help="write the curve to .json or .csv")


def run_fsc(args) -> int:
    from cryovae_nb.io import read_volume

    if args.out is not None:
        output_file(args.out, "--out")
    v1, px1 = read_volume(args.vol1)
    v2, _ = read_volume(args.vol2)
    if v1.shape != v2.shape:
        raise InputError(f"shape {v2.shape} differs from {args.vol1}'s {v1.shape}", args.vol2)
    px = args.pixel_size or px1
    if px is None:
        print(f"{args.vol1}: no voxel size in the header; assuming 1 Å (use --pixel-size)")
        px = 1.0
    mask = args.mask
    if mask is not None and mask != "sphere":
        mask, _ = read_volume(mask)
    if args.align:
        res = align(v1, v2)
        v1 = res.aligned
        print(f"aligned: correlation {res.correlation:.3f} (other hand "
              f"{res.correlation_other_hand:.3f}){', mirrored' if res.mirrored else ''}")
    r = fsc(v1, v2, pixel_size=px, mask=mask)
    for name, val, crossed in (("0.5", r.resolution_05, r.crossed_05),
                               ("0.143", r.resolution_0143, r.crossed_0143)):
        note = "" if crossed else " (never crossed: Nyquist-limited)"
        print(f"FSC {name}: {val:.2f} Å{note}")
    print(f"Nyquist: {r.nyquist:.2f} Å")
    if args.out:
        r.save(args.out)
    return 0


__all__ = [
    "MAX_POINTS",
    "AlignResult",
    "Embedding",
    "FSCResult",
    "add_fsc_parser",
    "align",
    "cluster_volumes",
    "consistent_hand",
    "correlation",
    "decode_volumes",
    "embed",
    "export_kept_star",
    "fsc",
    "interpolation_series",
    "kmeans",
    "latent_statistics",
    "mirror_volume",
    "robust_z",
    "rotate_volume",
    "run_fsc",
    "save_series",
    "screen_particles",
    "soft_sphere_mask",
    "traversal_series",
]
