"""Patch sampler, both backends (CPU kernel and torch ``grid_sample``) against independent references.

The reference for interpolated values is ``scipy.ndimage.map_coordinates(order=1)`` at continuous
indices computed here from the geometry alone: reference grid point -> SimpleITK's own
``TransformPoint`` -> solve ``physical = origin + direction @ (spacing * ijk)`` for ijk.

Tolerance 0.02 HU: the volumes hold values of order 1000 HU (smooth, neighbouring voxels differ by
at most a few hundred HU). float32 rounds 1000 HU to 6e-5 HU per operation (a few ops: < 1e-3 HU);
the torch backend also rounds its grid coordinates to float32 (about 1e-5 voxel on these < 64-voxel
axes), times a neighbour difference of a few hundred HU: < 0.01 HU.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ctdose.patches import FILL_HU, OUTSIDE_TOL, sample_patches
from ctdose.volume import Volume

SIZE = (8, 6, 4)  # x, y, z voxels (even: the center falls between voxels)
SPACING = (0.8, 0.9, 2.0)
ATOL_HU = 0.02  # see the module docstring
BACKENDS = ["kernel", "torch-cpu"] + (["torch-cuda"] if torch.cuda.is_available() else [])


def sample(backend: str, *args, **kwargs):
    """``sample_patches`` on ``backend``, patches always as a numpy array."""
    device = {"kernel": None, "torch-cpu": "cpu", "torch-cuda": "cuda"}[backend]
    batch = sample_patches(*args, device=device, **kwargs)
    if device is not None:
        assert isinstance(batch.patches, torch.Tensor) and batch.patches.device.type == device
        batch.patches = batch.patches.cpu().numpy()
    assert batch.patches.dtype == np.float32 and batch.n_outside.dtype == np.int64
    return batch


def smooth_hu(shape_zyx: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smoothed noise of order 1000 HU (standard deviation 400 HU)."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape_zyx), 1.5)
    return (field / field.std() * 400.0).astype(np.float32)


@pytest.fixture
def volume() -> Volume:
    return Volume(smooth_hu((20, 30, 40), 0), origin=(-15.0, 7.0, 100.0), spacing=SPACING)


@pytest.fixture
def oblique() -> Volume:
    """Anisotropic voxels and a direction matrix far from the identity."""
    direction = Rotation.from_euler("zyx", [25.0, -10.0, 15.0], degrees=True).as_matrix()
    return Volume(smooth_hu((24, 40, 48), 1), origin=(-20.0, 5.0, 90.0), spacing=(0.7, 0.9, 2.5),
                  direction=direction)


def rigid() -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.0, 20.0, 110.0))
    transform.SetRotation(0.05, -0.08, 0.3)
    transform.SetTranslation((1.3, -0.7, 2.2))
    return transform


def reference_indices(volume: Volume, centers: np.ndarray, transform: sitk.Transform,
                      size: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Continuous (i, j, k) of every patch grid point, (n, nz, ny, nx, 3), from the geometry alone."""
    axes = [(np.arange(m) - (m - 1) / 2.0) * s for m, s in zip(size, spacing)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = centers[:, None, None, None, :] + np.stack([x, y, z], axis=-1)[None]
    moved = np.array([transform.TransformPoint(tuple(p)) for p in points.reshape(-1, 3)])
    scaled_axes = volume.direction * volume.spacing  # columns: direction of i, j, k times spacing
    ijk = np.linalg.solve(scaled_axes, (moved - volume.origin).T).T
    return ijk.reshape(points.shape)


def interpolate(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """scipy's trilinear interpolation at continuous (i, j, k) indices (..., 3)."""
    coords = ijk.reshape(-1, 3)[:, ::-1].T  # (k, j, i) rows, as the array is indexed
    return ndimage.map_coordinates(volume.array, coords, order=1, mode="nearest").reshape(ijk.shape[:-1])


def _center_between_voxels(volume: Volume, start_kji: tuple[int, int, int]) -> np.ndarray:
    """Center (mm) of a SIZE patch whose first voxel is voxel ``start_kji``: a half-voxel position."""
    start_ijk = np.array(start_kji[::-1], float)
    return volume.index_to_physical(start_ijk + (np.array(SIZE) - 1) / 2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_equals_direct_indexing(volume, backend):
    starts = [(3, 4, 5), (10, 0, 30), (0, 20, 0)]
    centers = np.array([_center_between_voxels(volume, s) for s in starts])
    batch = sample(backend, volume, centers, None, size_xyz=SIZE, spacing_xyz=SPACING)
    assert batch.patches.shape == (3, SIZE[2], SIZE[1], SIZE[0])
    for patch, (k, j, i) in zip(batch.patches, starts):
        expected = volume.array[k:k + SIZE[2], j:j + SIZE[1], i:i + SIZE[0]]
        np.testing.assert_allclose(patch, expected, atol=ATOL_HU)
    assert batch.n_outside.tolist() == [0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_translation_moves_patches_by_whole_voxels(volume, backend):
    start = (5, 10, 12)
    center = _center_between_voxels(volume, start)[None]
    shift_vox = np.array([3, -2, 1])  # i, j, k
    transform = sitk.TranslationTransform(3, tuple(shift_vox * np.array(SPACING)))
    patch = sample(backend, volume, center, transform, size_xyz=SIZE, spacing_xyz=SPACING).patches[0]
    k, j, i = np.array(start) + shift_vox[::-1]
    np.testing.assert_allclose(patch, volume.array[k:k + SIZE[2], j:j + SIZE[1], i:i + SIZE[0]], atol=ATOL_HU)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rigid_transform_oblique_volume_matches_map_coordinates(oblique, backend):
    size, spacing = (10, 7, 5), (0.6, 0.8, 1.5)
    centers = oblique.index_to_physical(np.array([[20.0, 18.0, 10.0], [28.0, 22.0, 13.0]]))
    transform = rigid()
    centers = np.array([transform.GetInverse().TransformPoint(tuple(c)) for c in centers])  # land inside
    ijk = reference_indices(oblique, centers, transform, size, spacing)
    assert ijk.min() > 1 and np.all(ijk.max(axis=(0, 1, 2, 3)) < np.array(oblique.shape_xyz) - 2)
    batch = sample(backend, oblique, centers, transform, size_xyz=size, spacing_xyz=spacing)
    assert batch.n_outside.tolist() == [0, 0]
    np.testing.assert_allclose(batch.patches, interpolate(oblique, ijk), atol=ATOL_HU)


def test_outside_points_are_filled_and_counted_identically_by_both_backends(oblique):
    size, spacing = (32, 32, 16), (0.7, 0.7, 2.0)
    transform = rigid()
    inside = oblique.index_to_physical(np.array([[24.0, 20.0, 12.0], [3.0, 20.0, 12.0], [40.0, 36.0, 2.0]]))
    centers = np.array([transform.GetInverse().TransformPoint(tuple(c)) for c in inside])  # last two: edges
    ijk = reference_indices(oblique, centers, transform, size, spacing)
    upper = np.array(oblique.shape_xyz) - 1
    outside = np.any((ijk < -OUTSIDE_TOL) | (ijk > upper + OUTSIDE_TOL), axis=-1)  # the documented rule
    threshold_distance = np.minimum(np.abs(ijk + OUTSIDE_TOL), np.abs(ijk - upper - OUTSIDE_TOL)).min()
    assert threshold_distance > 1e-6  # no grid point within rounding of the threshold: the count is exact
    expected_count = outside.sum(axis=(1, 2, 3))
    assert expected_count[0] == 0 and np.all(expected_count[1:] > 0)
    expected = np.where(outside, FILL_HU, interpolate(oblique, ijk))
    for backend in BACKENDS:
        batch = sample(backend, oblique, centers, transform, size_xyz=size, spacing_xyz=spacing)
        assert batch.n_outside.tolist() == expected_count.tolist()
        assert np.array_equal(batch.patches == FILL_HU, outside)
        np.testing.assert_allclose(batch.patches, expected, atol=ATOL_HU)


def test_thread_count_does_not_change_the_patches(oblique):
    centers = oblique.index_to_physical(np.array([[20.0 + n, 18.0, 10.0] for n in range(5)]))
    one = sample_patches(oblique, centers, rigid(), size_xyz=SIZE, spacing_xyz=SPACING, threads=1)
    three = sample_patches(oblique, centers, rigid(), size_xyz=SIZE, spacing_xyz=SPACING, threads=3)
    assert np.array_equal(one.patches, three.patches) and np.array_equal(one.n_outside, three.n_outside)


@pytest.mark.parametrize("backend", BACKENDS)
def test_volume_of_one_slice_is_interpolated_in_plane(backend):
    flat = Volume(smooth_hu((1, 20, 30), 2), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0))
    center = flat.index_to_physical(np.array([[12.3, 9.6, 0.0]]))
    batch = sample(backend, flat, center, None, size_xyz=(4, 4, 1), spacing_xyz=(0.7, 0.7, 2.0))
    ijk = reference_indices(flat, center, sitk.Transform(3, sitk.sitkIdentity), (4, 4, 1), (0.7, 0.7, 2.0))
    np.testing.assert_allclose(batch.patches, interpolate(flat, ijk), atol=ATOL_HU)


@pytest.mark.parametrize("backend", BACKENDS)
def test_points_outside_the_field_of_view_are_filled_and_counted(volume, backend):
    # first patch column at index -2.5 along x: columns -2.5, -1.5, -0.5 fall outside
    center = volume.index_to_physical(np.array([-2.5, 5.0, 5.0]) + (np.array(SIZE) - 1) / 2.0)[None]
    batch = sample(backend, volume, center, None, size_xyz=SIZE, spacing_xyz=SPACING)
    assert batch.n_outside[0] == 3 * SIZE[1] * SIZE[2]
    assert np.all(batch.patches[0][:, :, :3] == FILL_HU)
    expected = 0.5 * (volume.array[5:9, 5:11, 0:5] + volume.array[5:9, 5:11, 1:6])  # halfway between voxels
    np.testing.assert_allclose(batch.patches[0][:, :, 3:], expected, atol=ATOL_HU)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_points_on_the_first_voxel_are_inside(volume, backend):
    # first patch column at index -2: columns -2 and -1 outside, column 0 (the edge voxel) inside
    center = volume.index_to_physical(np.array([-2.0, 5.0, 5.0]) + (np.array(SIZE) - 1) / 2.0)[None]
    batch = sample(backend, volume, center, None, size_xyz=SIZE, spacing_xyz=SPACING)
    assert batch.n_outside[0] == 2 * SIZE[1] * SIZE[2]
    np.testing.assert_allclose(batch.patches[0][:, :, 2:], volume.array[5:9, 5:11, 0:6], atol=ATOL_HU)


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_outside_the_volume_is_refused(volume, backend):
    far = volume.index_to_physical(np.array([100.0, 5.0, 5.0]))[None]
    with pytest.raises(ValueError, match="patch center 0 .* outside the volume"):
        sample(backend, volume, far, None, size_xyz=SIZE, spacing_xyz=SPACING)
    inside = volume.index_to_physical(np.array([5.0, 5.0, 5.0]))[None]
    shift = sitk.TranslationTransform(3, (0.0, 0.0, 500.0))  # moved out by the transform
    with pytest.raises(ValueError, match="outside"):
        sample(backend, volume, inside, shift, size_xyz=SIZE, spacing_xyz=SPACING)


def test_non_rigid_transform_and_bad_centers_are_refused_in_one_line(volume):
    center = volume.index_to_physical(np.array([[10.0, 10.0, 10.0]]))
    bspline = sitk.BSplineTransformInitializer(volume.to_sitk(), [3, 3, 3])
    params = np.array(bspline.GetParameters())
    bspline.SetParameters(tuple(np.random.default_rng(0).normal(0, 2.0, params.size)))
    scaled = sitk.AffineTransform(3)
    scaled.SetMatrix((1.1, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    nan_center = np.vstack([center, [[np.nan, 0.0, 0.0]]])
    for transform, centers, message in [(bspline, center, "BSplineTransform is not affine"),
                                        (scaled, center, "AffineTransform is not rigid"),
                                        (None, nan_center, r"patch center 1 is not finite")]:
        with pytest.raises(ValueError, match=message) as err:
            sample_patches(volume, centers, transform, size_xyz=SIZE, spacing_xyz=SPACING)
        assert "\n" not in str(err.value)
