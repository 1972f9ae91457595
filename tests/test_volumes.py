"""Volume operations (cryovae_nb/volumes.py): the unified masks reproduce, bit for bit, each of the
three masks they replaced (preprocessing's disc, the model's ball, the FSC's soft sphere)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cryovae_nb.errors import ConfigError
from cryovae_nb.volumes import diameter_mask, radius_grid, soft_sphere_mask

FRACTIONS = [0.05 * i for i in range(1, 21)] + [0.95, 0.8, 0.85, 0.9, 1.0]


def _old_circular_mask(box, diameter_fraction=0.95, soft_edge=0.0):
    # preprocess.circular_mask before the move
    radius = diameter_fraction * box / 2
    c = np.arange(box) - box // 2
    r = np.hypot(c[None, :], c[:, None])
    if soft_edge == 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - (radius - soft_edge)) / soft_edge, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def _old_spherical_mask(n, diameter_fraction):
    # model.projectors.spherical_mask before the move (squared radii compared)
    c = np.arange(n, dtype=np.float64) - n // 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    return (r2 <= (diameter_fraction * n / 2) ** 2).astype(np.float32)


def _old_soft_sphere_mask(n, radius=None, width=None):
    # analysis.soft_sphere_mask before the move
    radius = 0.4 * n if radius is None else float(radius)
    width = 0.1 * n if width is None else float(width)
    c = np.arange(n, dtype=np.float64) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if width <= 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / width, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def test_disc_mask_is_the_old_preprocessing_mask_exactly():
    for box in range(1, 130):
        for f in FRACTIONS:
            for soft in (0.0, 1.0, 2.5, 4.0):
                if soft >= f * box / 2:
                    continue
                np.testing.assert_array_equal(diameter_mask(box, f, soft, ndim=2),
                                              _old_circular_mask(box, f, soft), err_msg=f"{box} {f} {soft}")


def test_ball_mask_is_the_old_model_mask_exactly():
    for n in range(1, 65):
        for f in FRACTIONS:
            np.testing.assert_array_equal(diameter_mask(n, f, ndim=3), _old_spherical_mask(n, f),
                                          err_msg=f"{n} {f}")


def test_soft_sphere_mask_is_the_old_fsc_mask_exactly():
    for n in range(1, 65):
        np.testing.assert_array_equal(soft_sphere_mask(n), _old_soft_sphere_mask(n))
        for radius, width in ((0.3 * n, 0.0), (0.25 * n, 2.0), (5.0, 1.5)):
            np.testing.assert_array_equal(soft_sphere_mask(n, radius, width),
                                          _old_soft_sphere_mask(n, radius, width))


def test_masks_refuse_bad_sizes():
    with pytest.raises(ConfigError, match="diameter fraction"):
        diameter_mask(16, 0.0, ndim=3)
    with pytest.raises(ConfigError, match="2D or 3D"):
        radius_grid(8, 4)


def test_module_imports_no_tensorflow():
    code = "import sys, cryovae_nb.volumes; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False"


def test_each_volume_operation_is_defined_once():
    # the duplicates this module replaced must not come back under their old names
    import ast
    from pathlib import Path

    import cryovae_nb

    gone = {"spherical_mask", "circular_mask", "resample_volume", "centered_coords", "_centred",
            "_fourier_crop", "mirror_volume", "export_kept_star", "_radius_grid"}
    once = {"centred_coords", "diameter_mask", "soft_sphere_mask", "fourier_crop", "fourier_resample",
            "band_limited_crop", "band_limit", "rotate_volume", "mirror_through_plane",
            "write_particles_subset"}
    defined: dict[str, list[str]] = {}
    root = Path(cryovae_nb.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                defined.setdefault(node.name, []).append(str(path.relative_to(root)))
    assert not gone & set(defined), {k: defined[k] for k in gone & set(defined)}
    assert {k: len(defined.get(k, [])) for k in once} == dict.fromkeys(once, 1)
