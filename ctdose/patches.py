"""Patch sampling: cut fixed-size patches around reference-space centres out of any series.

Each patch is a regular grid of ``size_xyz`` voxels with ``spacing_xyz`` mm, centred on a point given
in the reference series' physical (LPS, mm) space and aligned with its x, y, z axes. The grid points
are mapped through the series' rigid transform (reference -> series, SimpleITK convention) and the
original volume is interpolated trilinearly at those points only (SimpleITK ``Resample`` onto each
patch grid): no volume is ever resampled whole.

Returned patches are float32 HU indexed ``[patch, z, y, x]``, i.e. shape ``(n, nz, ny, nx)``
(``(n, 32, 64, 64)`` for the default 64x64x32 patch). Grid points outside the series' field of
view are filled with ``fill_hu`` (-1024 HU, air) and counted per patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ctdose.volume import Volume

#: Default patch size in voxels along x, y, z (the study's 64x64x32).
PATCH_SIZE_XYZ: tuple[int, int, int] = (64, 64, 32)
#: Default patch voxel spacing in mm along x, y, z (350 mm / 512 in-plane, 2 mm slices).
PATCH_SPACING_XYZ: tuple[float, float, float] = (0.6836, 0.6836, 2.0)
#: Value for grid points outside the field of view (air).
FILL_HU = -1024.0
#: Tolerance in voxels when deciding that a grid point lies outside the voxel centres (rounding).
OUTSIDE_TOL = 1e-3


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


def patch_index_parts(volume: Volume, centers_mm: np.ndarray, transform: sitk.Transform | None = None,
                      size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                      spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``volume`` of the patch centres ``(n, 3)`` and of the shared offset grid ``(nz, ny, nx, 3)``.

    The (i, j, k) index of voxel ``v`` of patch ``n`` is ``centres[n] + offsets[v]`` (the transform is
    affine, so the grid moves rigidly). Raises ``ValueError`` naming the centre when a patch centre
    maps outside the volume.
    """
    centers = np.atleast_2d(np.asarray(centers_mm, dtype=float))
    A, b = affine_from_transform(transform)
    # T(c + o) = A c + b + A o: transform the centres once and rotate the shared offset grid once.
    centre_idx = volume.physical_to_index(centers @ A.T + b)
    upper = np.array(volume.shape_xyz) - 1
    for n, (c, idx) in enumerate(zip(centers, centre_idx)):
        if np.any(idx < -0.5) or np.any(idx > upper + 0.5):
            raise ValueError(
                f"patch centre {n} at ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm maps to index "
                f"({idx[0]:.1f}, {idx[1]:.1f}, {idx[2]:.1f}), outside the volume of size {volume.shape_xyz}")
    moved_offsets = patch_grid_offsets(size_xyz, spacing_xyz) @ A.T
    offset_idx = (moved_offsets @ np.linalg.inv(volume.direction).T) / volume.spacing
    return centre_idx, offset_idx


def outside_mask(volume: Volume, idx: np.ndarray) -> np.ndarray:
    """True where continuous (i, j, k) indices ``(..., 3)`` fall outside the voxel centres of ``volume``."""
    upper = np.array(volume.shape_xyz) - 1
    return np.any((idx < -OUTSIDE_TOL) | (idx > upper + OUTSIDE_TOL), axis=-1)


def sample_patches(volume: Volume, centers_mm: np.ndarray, transform: sitk.Transform | None = None,
                   size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                   spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ,
                   fill_hu: float = FILL_HU) -> PatchBatch:
    """Sample patches around reference-space centres ``(n, 3)`` (mm, x y z) from ``volume``.

    ``transform`` maps reference points to this series' points (identity when ``None``).
    Trilinear interpolation (SimpleITK, on each patch grid only); points outside the field of view
    get ``fill_hu`` and are counted.
    """
    centers = np.atleast_2d(np.asarray(centers_mm, dtype=float))
    centre_idx, offset_idx = patch_index_parts(volume, centers, transform, size_xyz, spacing_xyz)
    image = volume.to_sitk()
    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    half_extent = (np.array(size_xyz) - 1) / 2.0 * np.array(spacing_xyz)
    corner_idx = offset_idx[[0, -1]][:, [0, -1]][:, :, [0, -1]].reshape(-1, 3)
    nx, ny, nz = size_xyz
    patches = np.empty((len(centers), nz, ny, nx), dtype=np.float32)
    n_outside = np.zeros(len(centers), dtype=int)
    for n, centre in enumerate(centers):
        resampled = sitk.Resample(image, [int(v) for v in size_xyz], transform, sitk.sitkLinear,
                                  tuple(centre - half_extent), tuple(float(v) for v in spacing_xyz),
                                  (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), fill_hu, sitk.sitkFloat32)
        patches[n] = sitk.GetArrayViewFromImage(resampled)
        if outside_mask(volume, centre_idx[n] + corner_idx).any():  # the grid is convex: corners suffice
            outside = outside_mask(volume, centre_idx[n] + offset_idx)
            patches[n][outside] = fill_hu
            n_outside[n] = int(outside.sum())
    return PatchBatch(patches=patches, n_outside=n_outside)
