"""Rotations and the project's one pose convention (numpy; no TensorFlow import).

The convention, fixed here and tested once (tests/test_geometry.py):

* Volumes are indexed ``V[z, y, x]`` (MRC order); images ``I[y, x]``. Coordinates are written
  ``r = (x, y, z)`` and centred on voxel ``n // 2`` along each axis (RELION's centre).
* A pose is a rotation matrix ``R`` and an in-plane shift ``s = (sx, sy)`` in pixels. The image of
  volume ``V`` in that pose is ``I(x, y) = sum_z V(R @ (x - sx, y - sy, z))``: the volume is
  sampled at rotated coordinates, projected along z, and the projection is moved by ``+s``.
* ``R`` is the transpose of RELION's Euler matrix ``A(rot, tilt, psi)``; equivalently
  ``R = scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True)``
  (docs/design.md: RELION's projector samples the map at ``A^T r``).
* RELION's origin (``rlnOriginX/YAngst`` / pixel size, or ``rlnOriginX/Y``) is the opposite of our
  shift: the particle centre sits at ``box_centre - origin`` (RELION re-centres a particle by
  subtracting its origin), so ``s = -origin``.
* Quaternions are unit, scalar first ``(w, x, y, z)``; ``q`` and ``-q`` are the same rotation.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from cryovae_nb.errors import ConfigError


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions ``(..., 4)`` scalar first -> rotation matrices ``(..., 3, 3)``.

    Not-quite-unit input is normalised, which is what the model's pose head produces.
    """
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)``, scalar first, ``w >= 0``."""
    R = np.asarray(R, dtype=np.float64)
    xyzw = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()
    q = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(R.shape[:-2] + (4,))


def relion_euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION Euler angles in degrees (arrays broadcast) -> our rotation matrices ``R = A^T``."""
    angles = np.stack(np.broadcast_arrays(np.asarray(rot, float), np.asarray(tilt, float),
                                          np.asarray(psi, float)), axis=-1)
    shape = angles.shape[:-1]
    return Rotation.from_euler("ZYZ", angles.reshape(-1, 3), degrees=True).as_matrix().reshape(shape + (3, 3))


def matrix_to_relion_euler(R: np.ndarray) -> np.ndarray:
    """Our rotation matrices ``(..., 3, 3)`` -> RELION ``(rot, tilt, psi)`` in degrees, ``(..., 3)``.

    Tilt lies in [0, 180]; rot and psi in (-180, 180].
    """
    R = np.asarray(R, dtype=np.float64)
    import warnings

    with warnings.catch_warnings():
        # at tilt 0 or 180 scipy warns that rot and psi are not unique; RELION has the same
        # degeneracy and any split of the angle between them is the same rotation
        warnings.simplefilter("ignore", UserWarning)
        eul = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_euler("ZYZ", degrees=True)
    return eul.reshape(R.shape[:-2] + (3,))


def relion_origin_to_shift(origin_px: np.ndarray) -> np.ndarray:
    """RELION origins in pixels ``(..., 2)`` -> our in-plane shifts in pixels (``s = -origin``)."""
    return -np.asarray(origin_px, dtype=np.float64)


def shift_to_relion_origin(shift_px: np.ndarray) -> np.ndarray:
    """Our in-plane shifts in pixels ``(..., 2)`` -> RELION origins in pixels."""
    return -np.asarray(shift_px, dtype=np.float64)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices drawn uniformly from SO(3) (Haar measure)."""
    q = rng.standard_normal((n, 4))
    return quaternion_to_matrix(q)


def grid_rotations(angular_step_deg: float, n_psi: int | None = None) -> np.ndarray:
    """A regular grid of projection directions on the sphere with in-plane angles.

    Directions come from a Fibonacci (golden-spiral) lattice whose mean spacing equals
    ``angular_step_deg`` -- the same near-uniform coverage as a HEALPix grid of that resolution
    (the thesis used HEALPix at 0.92 deg) without the healpy dependency. Each direction is combined
    with ``n_psi`` equally spaced in-plane rotations (default: 360 / step).
    """
    if not (np.isfinite(angular_step_deg) and angular_step_deg > 0):
        raise ConfigError(f"angular_step_deg must be a finite number > 0, got {angular_step_deg!r}")
    step = np.deg2rad(angular_step_deg)
    n_dir = max(1, int(round(4 * np.pi / step**2)))
    i = np.arange(n_dir) + 0.5
    tilt = np.arccos(1 - 2 * i / n_dir)
    rot = (np.pi * (1 + 5**0.5) * i) % (2 * np.pi)
    if n_psi is None:
        n_psi = max(1, int(round(360.0 / angular_step_deg)))
    psi = np.arange(n_psi) * (2 * np.pi / n_psi)
    rr, pp = np.meshgrid(np.arange(n_dir), psi, indexing="ij")
    return relion_euler_to_matrix(np.rad2deg(rot[rr.ravel()]), np.rad2deg(tilt[rr.ravel()]),
                                  np.rad2deg(pp.ravel()))


def rotation_angle_deg(R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotation matrices (broadcasting over leading axes)."""
    M = np.einsum("...ji,...jk->...ik", np.asarray(R1, float), np.asarray(R2, float))
    cos = (np.trace(M, axis1=-2, axis2=-1) - 1) / 2
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def centred_coords(n: int) -> np.ndarray:
    """Pixel coordinates ``0..n-1`` minus the centre ``n // 2`` (float64)."""
    return np.arange(n, dtype=np.float64) - n // 2
