"""Rigid 3D alignment of volumes by cross-correlation, trying the mirror image, and flipping
decoded volumes to one hand (thesis §4.1).

Volumes follow cryovae_nb/geometry.py: arrays ``V[z, y, x]``, coordinates ``r = (x, y, z)``
centred on voxel ``n // 2``; rotating and mirroring are cryovae_nb/volumes.py's.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

from cryovae_nb.errors import InputError
from cryovae_nb.geometry import centred_coords, grid_rotations, rotation_angle_deg
from cryovae_nb.volumes import as_cube, band_limited_crop, mirror_through_plane, rotate_volume, soft_sphere_mask


def _prepare(v: np.ndarray, m: int) -> np.ndarray:
    """Low-pass to half of an m^3 grid, remove the mean, soft-mask (rotating loses no corners)."""
    s = band_limited_crop(v, m, cutoff=0.5)
    s = s - s.mean()
    return (s * soft_sphere_mask(m)).astype(np.float32)


def _rotate_batch(v: np.ndarray, Rs: np.ndarray) -> np.ndarray:
    """rotate_volume for many rotations at once (one map_coordinates call): (k, m, m, m).

    Only voxels inside the sphere of radius m/2 are computed: ``v`` comes from ``_prepare``, whose
    mask is zero beyond it, so everything outside would come out zero anyway (half the work).
    """
    m = v.shape[0]
    c = centred_coords(m).astype(np.float32)
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
    """``aligned = rotate_volume(mirror_through_plane(volume) if mirrored else volume, rotation, shift)``.

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
    v, ref = as_cube(volume, "volume"), as_cube(reference, "reference")
    if v.shape != ref.shape:
        raise InputError(f"align needs volumes of the same shape, got {v.shape} and {ref.shape}")
    hands = [False, True] if try_mirror else [False]
    found = []
    for mirrored in hands:
        src = mirror_through_plane(v) if mirrored else v
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
    for i, v in enumerate(tqdm(vols, desc="hand", disable=len(vols) < 4)):
        if reference is None and i == 0 and not return_aligned:
            out[0] = v
            continue
        res = align(v, ref, try_mirror=True, **align_kwargs)
        flipped[i] = res.mirrored
        out[i] = res.aligned if return_aligned else (mirror_through_plane(v) if res.mirrored else v)
    return out, flipped


__all__ = ["AlignResult", "align", "consistent_hand", "correlation"]
