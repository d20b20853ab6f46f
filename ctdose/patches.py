"""Patch sampling: cut fixed-size patches around reference-space centers out of any series.

Each patch is a regular grid of ``size_xyz`` voxels with ``spacing_xyz`` mm, centered on a point given
in the reference series' physical (LPS, mm) space and aligned with its x, y, z axes. The grid points
are mapped through the series' rigid transform (reference -> series, SimpleITK convention) and the
original volume is interpolated trilinearly at those points only: no volume is ever resampled whole.

One call of :func:`sample_patches` cuts all the patches of a series, on one of two backends that give
the same :class:`PatchBatch`:

* CPU (``device=None``): a compiled trilinear kernel (numba) run over the patches by a few threads.
  Measured against the library paths (SimpleITK ``Resample`` per patch grid, ``scipy.ndimage``
  ``map_coordinates`` / ``affine_transform``, torch ``grid_sample`` on the CPU), it is the only one
  that samples 60 study patches 10x faster than resampling the whole volume (``benchmarks/bench_data.py``).
* torch (``device`` a torch device, e.g. ``"cuda"``): ``grid_sample`` in float32 where the volume
  already is, for the deep extractors on the GPU; the patches stay on that device.

Patches are float32 HU indexed ``[patch, z, y, x]``, i.e. shape ``(n, nz, ny, nx)`` (``(n, 32, 64, 64)``
for the default 64x64x32 patch). Grid points outside the voxel centers of the series (by more than
``OUTSIDE_TOL`` voxels) are filled with ``fill_hu`` (-1024 HU, air) and counted per patch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np
import SimpleITK as sitk

from ctdose.volume import Volume

if TYPE_CHECKING:
    import torch

#: Default patch size in voxels along x, y, z (the study's 64x64x32).
PATCH_SIZE_XYZ: tuple[int, int, int] = (64, 64, 32)
#: Default patch voxel spacing in mm along x, y, z (350 mm / 512 in-plane, 2 mm slices).
PATCH_SPACING_XYZ: tuple[float, float, float] = (0.6836, 0.6836, 2.0)
#: Value for grid points outside the field of view (air).
FILL_HU = -1024.0
#: Tolerance in voxels when deciding that a grid point lies outside the voxel centers (rounding).
OUTSIDE_TOL = 1e-3
#: Largest deviation of the transform's matrix from a rotation (``|A^T A - I|``) accepted as rigid.
RIGID_TOL = 1e-6


@dataclass
class PatchBatch:
    """Patches of one series: ``patches`` (n, nz, ny, nx) float32 HU (a numpy array, or a torch tensor
    on the sampling device); ``n_outside`` (n,) int64 numpy, grid points filled with ``fill_hu``."""

    patches: np.ndarray | torch.Tensor
    n_outside: np.ndarray


def affine_from_transform(transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """Matrix ``A`` (3x3) and offset ``b`` (3,) with ``T(p) = A @ p + b`` for a linear SimpleITK transform.

    Works for any linear transform (Euler, affine, composite of those) by probing it at four points;
    a non-linear one (B-spline, displacement field: ``IsLinear()`` is false) raises ValueError.
    """
    if transform is None:
        return np.eye(3), np.zeros(3)
    if not transform.IsLinear():
        raise ValueError(f"transform {transform.GetName()} is not affine; patches need a rigid transform")
    b = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    A = np.column_stack([np.array(transform.TransformPoint(tuple(e))) - b for e in np.eye(3)])
    return A, b


def rigid_from_transform(transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`affine_from_transform` for a rigid transform only (``A`` a rotation); else ValueError."""
    A, b = affine_from_transform(transform)
    if np.abs(A.T @ A - np.eye(3)).max() > RIGID_TOL or np.linalg.det(A) < 0:
        raise ValueError(f"transform {transform.GetName()} is not rigid (matrix {np.round(A, 4).tolist()}); "
                         "patches need a rigid transform")
    return A, b


def patch_index_grid(volume: Volume, centers_mm: np.ndarray, transform: sitk.Transform | None = None,
                     size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                     spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (i, j, k) indices into ``volume`` of all patch grids: ``first`` (n, 3), ``steps`` (3, 3).

    Voxel ``(x, y, z)`` of patch ``n`` sits at index ``first[n] + x * steps[0] + y * steps[1] + z * steps[2]``
    (the transform is rigid, so every grid moves as a whole). Raises ``ValueError`` naming the center when
    a patch center maps outside the volume, or the transform when it is not rigid.
    """
    centers = np.atleast_2d(np.asarray(centers_mm, dtype=float))
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise ValueError(f"patch centers must be (n, 3) x, y, z in mm, got shape {centers.shape}")
    bad = np.flatnonzero(~np.isfinite(centers).all(axis=1))
    if len(bad):
        raise ValueError(f"patch center {bad[0]} is not finite: {centers[bad[0]].tolist()} mm")
    A, b = rigid_from_transform(transform)
    center_idx = volume.physical_to_index(centers @ A.T + b)
    upper = np.array(volume.shape_xyz) - 1
    for n, (c, idx) in enumerate(zip(centers, center_idx)):
        if np.any(idx < -0.5) or np.any(idx > upper + 0.5):
            raise ValueError(
                f"patch center {n} at ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm maps to index "
                f"({idx[0]:.1f}, {idx[1]:.1f}, {idx[2]:.1f}), outside the volume of size {volume.shape_xyz}")
    # index change per mm of reference offset: the rotation, then the series' axes and spacing
    per_mm = (np.linalg.inv(volume.direction) @ A) / volume.spacing[:, None]
    steps = (per_mm * np.asarray(spacing_xyz, dtype=float)).T  # row a: one patch voxel along axis a
    half = (np.asarray(size_xyz, dtype=float) - 1) / 2.0
    return center_idx - half @ steps, steps


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _trilinear(flat, b, di, dj, dk, ti, tj, tk):  # pragma: no cover - compiled
    """Trilinear value at flat offset ``b`` + fractions (ti, tj, tk) along the strides (di, dj, dk)."""
    c00 = flat[b] + ti * (flat[b + di] - flat[b])
    c01 = flat[b + dj] + ti * (flat[b + dj + di] - flat[b + dj])
    c10 = flat[b + dk] + ti * (flat[b + dk + di] - flat[b + dk])
    c11 = flat[b + dk + dj] + ti * (flat[b + dk + dj + di] - flat[b + dk + dj])
    c0 = c00 + tj * (c01 - c00)
    c1 = c10 + tj * (c11 - c10)
    return c0 + tk * (c1 - c0)


@numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)
def _inside_row(flat, strides, clamp_hi, start, step, out_row, base, frac):
    """Trilinear values along one grid row whose both ends lie within the voxel centers."""
    si, sj, sk = start
    ui, uj, uk = step[0], step[1], step[2]  # scalars, so that the loop need not reload them
    hi_i, hi_j, hi_k = clamp_hi[0], clamp_hi[1], clamp_hi[2]
    sj_, sk_ = strides[1], strides[2]
    for u in range(out_row.shape[0]):  # indices and weights first: this loop vectorises
        i = si + u * ui
        j = sj + u * uj
        k = sk + u * uk
        i0 = min(np.int64(i), hi_i)
        j0 = min(np.int64(j), hi_j)
        k0 = min(np.int64(k), hi_k)
        frac[0, u] = np.float32(i - i0)
        frac[1, u] = np.float32(j - j0)
        frac[2, u] = np.float32(k - k0)
        base[u] = k0 * sk_ + j0 * sj_ + i0  # an axis of one voxel has index 0 (offset 0)
    # unsigned offsets: no negative-index wrap-around test on each of the eight loads
    di, dj, dk = np.uint64(strides[0]), np.uint64(strides[1]), np.uint64(strides[2])
    for u in range(out_row.shape[0]):
        b = np.uint64(base[u])
        ti, tj, tk = frac[0, u], frac[1, u], frac[2, u]
        out_row[u] = _trilinear(flat, b, di, dj, dk, ti, tj, tk)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _edge_row(flat, strides, clamp_hi, upper, start, step, fill, tol, out_row):
    """One grid row that may leave the volume: points beyond ``tol`` get ``fill``; returns their count."""
    outside = 0
    di, dj, dk = strides[0], strides[1], strides[2]
    si, sj, sk = start
    for u in range(out_row.shape[0]):
        i = si + u * step[0]
        j = sj + u * step[1]
        k = sk + u * step[2]
        if (i < -tol or j < -tol or k < -tol
                or i > upper[0] + tol or j > upper[1] + tol or k > upper[2] + tol):
            out_row[u] = fill
            outside += 1
            continue
        # within tol of the edge: the edge voxel, as the inside rows
        i, j, k = min(max(i, 0.0), upper[0]), min(max(j, 0.0), upper[1]), min(max(k, 0.0), upper[2])
        i0 = min(np.int64(i), clamp_hi[0])
        j0 = min(np.int64(j), clamp_hi[1])
        k0 = min(np.int64(k), clamp_hi[2])
        ti, tj, tk = np.float32(i - i0), np.float32(j - j0), np.float32(k - k0)
        b = k0 * dk + j0 * dj + i0  # an axis of one voxel has index 0: its zero offset does no harm
        out_row[u] = _trilinear(flat, b, di, dj, dk, ti, tj, tk)
    return outside


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _sample_patch(array, first, steps, fill, tol, out, base, frac):
    """One patch ``out`` (nz, ny, nx) from ``array`` (Z, Y, X) (C-contiguous); returns the points filled."""
    Z, Y, X = array.shape
    flat = array.ravel()
    upper = np.array([X - 1.0, Y - 1.0, Z - 1.0])
    clamp_hi = np.array([max(X - 2, 0), max(Y - 2, 0), max(Z - 2, 0)])
    # flat offsets to the +1 neighbour along i, j, k (0 along an axis of one voxel: its weight is 0)
    strides = np.array([1 if X > 1 else 0, X if Y > 1 else 0, X * Y if Z > 1 else 0])
    nz, ny, nx = out.shape
    outside = 0
    for w in range(nz):
        for v in range(ny):
            start = (first[0] + w * steps[2, 0] + v * steps[1, 0],
                     first[1] + w * steps[2, 1] + v * steps[1, 1],
                     first[2] + w * steps[2, 2] + v * steps[1, 2])
            inside = True  # a row is a segment: inside the voxel centers when both its ends are
            for a in range(3):
                end = start[a] + (nx - 1) * steps[0, a]
                inside &= min(start[a], end) >= 0.0 and max(start[a], end) <= upper[a]
            if inside:
                _inside_row(flat, strides, clamp_hi, start, steps[0], out[w, v], base, frac)
            else:
                outside += _edge_row(flat, strides, clamp_hi, upper, start, steps[0], fill, tol, out[w, v])
    return outside


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _sample_kernel(array, first, steps, fill, tol, lo, hi, out, n_outside):
    """Patches ``lo:hi`` of ``out`` (n, nz, ny, nx) from ``array`` (Z, Y, X), counts into ``n_outside``.

    Each patch is interpolated from a copy of its bounding box (clipped to the volume): the copy streams
    from memory, the interpolation then reads from cache. Points outside the volume are outside the box
    too, and the box's edges are the volume's wherever a point can reach them, so nothing changes.
    """
    size = np.array(array.shape[::-1])
    nz, ny, nx = out.shape[1], out.shape[2], out.shape[3]
    base = np.empty(nx, np.int64)
    frac = np.empty((3, nx), np.float32)
    corners = np.empty((8, 3))
    for n in range(lo, hi):
        for c in range(8):  # the grid's corners: its extremes along every axis (the map is affine)
            corners[c] = (first[n] + (c & 1) * (nx - 1) * steps[0] + ((c >> 1) & 1) * (ny - 1) * steps[1]
                          + ((c >> 2) & 1) * (nz - 1) * steps[2])
        box_lo = np.empty(3, np.int64)
        box_hi = np.empty(3, np.int64)
        for a in range(3):
            box_lo[a] = min(max(np.int64(np.floor(corners[:, a].min())), 0), size[a] - 1)
            box_hi[a] = max(min(np.int64(np.floor(corners[:, a].max())) + 2, size[a]), box_lo[a] + 1)
        crop = np.ascontiguousarray(array[box_lo[2]:box_hi[2], box_lo[1]:box_hi[1], box_lo[0]:box_hi[0]])
        n_outside[n] = _sample_patch(crop, first[n] - box_lo, steps, fill, tol, out[n], base, frac)


def default_threads() -> int:
    """CPU cores this process may use (the CPU sampler's default thread count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _sample_cpu(array: np.ndarray, first: np.ndarray, steps: np.ndarray, size_xyz: tuple[int, int, int],
                fill_hu: float, threads: int) -> PatchBatch:
    """The CPU backend: :func:`_sample_kernel` over the patches, split between ``threads`` threads."""
    nx, ny, nz = size_xyz
    n = len(first)
    patches = np.empty((n, nz, ny, nx), dtype=np.float32)
    n_outside = np.zeros(n, dtype=np.int64)
    args = (np.ascontiguousarray(array, dtype=np.float32), np.ascontiguousarray(first),
            np.ascontiguousarray(steps), float(fill_hu), OUTSIDE_TOL)
    bounds = np.linspace(0, n, min(max(threads, 1), max(n, 1)) + 1).astype(int)
    if len(bounds) <= 2:
        _sample_kernel(*args, 0, n, patches, n_outside)
    else:  # the kernel releases the GIL: patches split between threads, each writes its own patches
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            list(pool.map(lambda lo, hi: _sample_kernel(*args, lo, hi, patches, n_outside),
                          bounds[:-1], bounds[1:]))
    return PatchBatch(patches=patches, n_outside=n_outside)


def _sample_torch(array: np.ndarray, first: np.ndarray, steps: np.ndarray, size_xyz: tuple[int, int, int],
                  fill_hu: float, device: str | torch.device) -> PatchBatch:
    """The torch backend: float32 ``grid_sample`` of all patch grids at once on ``device``."""
    import torch  # here: the CPU backend's users (radiomics workers) need not load torch

    device = torch.device(device)
    nx, ny, nz = size_xyz
    f32 = dict(dtype=torch.float32, device=device)
    axes = [torch.arange(m, **f32) for m in (nz, ny, nx)]
    step = torch.as_tensor(steps, **f32)
    offsets = (axes[0][:, None, None, None] * step[2] + axes[1][None, :, None, None] * step[1]
               + axes[2][None, None, :, None] * step[0])  # (nz, ny, nx, 3) i j k, the same for every patch
    idx = torch.as_tensor(first, **f32)[:, None, None, None, :] + offsets[None]  # (n, nz, ny, nx, 3)
    upper = torch.tensor([m - 1.0 for m in array.shape[::-1]], **f32)
    outside = ((idx < -OUTSIDE_TOL) | (idx > upper + OUTSIDE_TOL)).any(dim=-1)
    grid = 2.0 * idx / upper.clamp(min=1.0) - 1.0  # align_corners=True: -1 / +1 = first / last voxel center
    image = torch.as_tensor(array, dtype=torch.float32).to(device)[None, None]
    n = len(first)
    values = torch.nn.functional.grid_sample(image, grid.reshape(1, n * nz, ny, nx, 3), mode="bilinear",
                                             padding_mode="border", align_corners=True)
    patches = values.reshape(n, nz, ny, nx)
    patches[outside] = fill_hu
    return PatchBatch(patches=patches, n_outside=outside.sum(dim=(1, 2, 3)).cpu().numpy().astype(np.int64))


def sample_patches(volume: Volume, centers_mm: np.ndarray, transform: sitk.Transform | None = None,
                   size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                   spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ,
                   fill_hu: float = FILL_HU, device: str | torch.device | None = None,
                   threads: int | None = None) -> PatchBatch:
    """All patches of one series around reference-space centers ``(n, 3)`` (mm, x y z) of ``volume``.

    ``transform`` maps reference points to this series' points (identity when ``None``; it must be
    rigid). Trilinear interpolation at the patch grid points only; points outside the field of view
    get ``fill_hu`` and are counted. ``device=None``: CPU kernel on ``threads`` threads (default: the
    cores this process may use), numpy patches. A torch device (``"cuda"``, ``"cpu"``): float32
    ``grid_sample`` on it, patches a tensor on that device. Both backends agree to float32 rounding.
    """
    first, steps = patch_index_grid(volume, centers_mm, transform, size_xyz, spacing_xyz)
    size = tuple(int(v) for v in size_xyz)
    if device is None:
        return _sample_cpu(volume.array, first, steps, size, fill_hu, threads or default_threads())
    return _sample_torch(volume.array, first, steps, size, fill_hu, device)
