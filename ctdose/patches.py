"""Patch sampling: cut fixed-size patches around reference-space centres out of any series.

Each patch is a regular grid of ``size_xyz`` voxels with ``spacing_xyz`` mm, centred on a point given
in the reference series' physical (LPS, mm) space and aligned with its x, y, z axes. The grid points
are mapped through the series' rigid transform (reference -> series, SimpleITK convention) and the
original volume is interpolated trilinearly at those points only: no volume is ever resampled whole.

Returned patches are float32 HU indexed ``[patch, z, y, x]``, i.e. shape ``(n, nz, ny, nx)``
(``(n, 32, 64, 64)`` for the default 64x64x32 patch). Grid points outside the series' field of
view are filled with ``fill_hu`` (-1024 HU, air) and counted per patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctdose.volume import Volume

#: Default patch size in voxels along x, y, z (the study's 64x64x32).
PATCH_SIZE_XYZ: tuple[int, int, int] = (64, 64, 32)
#: Default patch voxel spacing in mm along x, y, z (350 mm / 512 in-plane, 2 mm slices).
PATCH_SPACING_XYZ: tuple[float, float, float] = (0.6836, 0.6836, 2.0)
#: Value for grid points outside the field of view (air).
FILL_HU = -1024.0


@dataclass
class PatchBatch:
    """Patches of one series: ``patches`` (n, nz, ny, nx) float32 HU; ``n_outside`` (n,) voxels filled."""

    patches: np.ndarray
    n_outside: np.ndarray


def affine_from_transform(transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """Matrix ``A`` (3x3) and offset ``b`` (3,) with ``T(p) = A @ p + b`` for a linear SimpleITK transform.

    Works for any affine transform (Euler, affine, composite of those) by probing it at four points;
    a non-linear transform is rejected.
    """
    if transform is None:
        return np.eye(3), np.zeros(3)
    b = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    A = np.column_stack([np.array(transform.TransformPoint(tuple(e))) - b for e in np.eye(3)])
    probe = np.array([37.0, -81.0, 123.0])
    if not np.allclose(A @ probe + b, transform.TransformPoint(tuple(probe)), atol=1e-6):
        raise ValueError(f"transform {transform.GetName()} is not affine; patches need a rigid transform")
    return A, b


def patch_grid_offsets(size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                       spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ) -> np.ndarray:
    """Offsets in mm of a centred patch grid, shape ``(nz, ny, nx, 3)`` with the last axis x, y, z."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(size_xyz, spacing_xyz)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x, y, z], axis=-1)


def patch_indices(volume: Volume, centers_mm: np.ndarray, transform: sitk.Transform | None = None,
                  size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                  spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ) -> np.ndarray:
    """Continuous (i, j, k) indices into ``volume`` of every patch voxel, shape ``(n, nz, ny, nx, 3)``.

    Raises ``ValueError`` naming the centre when a patch centre maps outside the volume.
    """
    centers = np.atleast_2d(np.asarray(centers_mm, dtype=float))
    A, b = affine_from_transform(transform)
    offsets = patch_grid_offsets(size_xyz, spacing_xyz)
    # T(c + o) = A c + b + A o: transform the centres once and rotate the shared offset grid once.
    moved_centres = centers @ A.T + b
    moved_offsets = offsets @ A.T
    centre_idx = volume.physical_to_index(moved_centres)
    upper = np.array(volume.shape_xyz) - 1
    for n, (c, idx) in enumerate(zip(centers, centre_idx)):
        if np.any(idx < -0.5) or np.any(idx > upper + 0.5):
            raise ValueError(
                f"patch centre {n} at ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm maps to index "
                f"({idx[0]:.1f}, {idx[1]:.1f}, {idx[2]:.1f}), outside the volume of size {volume.shape_xyz}")
    offset_idx = (moved_offsets @ np.linalg.inv(volume.direction).T) / volume.spacing
    return centre_idx[:, None, None, None, :] + offset_idx[None]


def sample_patches(volume: Volume, centers_mm: np.ndarray, transform: sitk.Transform | None = None,
                   size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                   spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ,
                   fill_hu: float = FILL_HU) -> PatchBatch:
    """Sample patches around reference-space centres ``(n, 3)`` (mm, x y z) from ``volume``.

    ``transform`` maps reference points to this series' points (identity when ``None``).
    Trilinear interpolation; points outside the field of view get ``fill_hu`` and are counted.
    """
    idx = patch_indices(volume, centers_mm, transform, size_xyz, spacing_xyz)
    upper = np.array(volume.shape_xyz) - 1
    outside = np.any((idx < 0) | (idx > upper), axis=-1)
    coords = [idx[..., 2].ravel(), idx[..., 1].ravel(), idx[..., 0].ravel()]  # array order k, j, i
    values = ndimage.map_coordinates(volume.array, coords, order=1, mode="nearest", prefilter=False)
    patches = values.reshape(outside.shape).astype(np.float32)
    patches[outside] = fill_hu
    return PatchBatch(patches=patches, n_outside=outside.reshape(len(patches), -1).sum(axis=1))
