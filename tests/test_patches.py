"""Patch sampler: identity == direct indexing, translations and rotations vs SimpleITK, edge handling."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ctdose.patches import FILL_HU, sample_patches
from ctdose.volume import Volume

SIZE = (8, 6, 4)  # x, y, z voxels (even: the centre falls between voxels)
SPACING = (0.8, 0.9, 2.0)


@pytest.fixture
def volume() -> Volume:
    array = np.random.default_rng(0).normal(0, 100, size=(20, 30, 40)).astype(np.float32)
    return Volume(array, origin=(-15.0, 7.0, 100.0), spacing=SPACING)


def _centre_between_voxels(volume: Volume, start_kji: tuple[int, int, int]) -> np.ndarray:
    """Centre (mm) of a SIZE patch whose first voxel is voxel ``start_kji``: a half-voxel position."""
    start_ijk = np.array(start_kji[::-1], float)
    return volume.index_to_physical(start_ijk + (np.array(SIZE) - 1) / 2.0)


def test_identity_equals_direct_indexing(volume):
    starts = [(3, 4, 5), (10, 0, 30), (0, 20, 0)]
    centres = np.array([_centre_between_voxels(volume, s) for s in starts])
    batch = sample_patches(volume, centres, None, size_xyz=SIZE, spacing_xyz=SPACING)
    assert batch.patches.shape == (3, SIZE[2], SIZE[1], SIZE[0]) and batch.patches.dtype == np.float32
    for patch, (k, j, i) in zip(batch.patches, starts):
        expected = volume.array[k:k + SIZE[2], j:j + SIZE[1], i:i + SIZE[0]]
        np.testing.assert_allclose(patch, expected, atol=1e-4)
    assert batch.n_outside.tolist() == [0, 0, 0]


def test_known_translation_moves_patches_by_whole_voxels(volume):
    start = (5, 10, 12)
    centre = _centre_between_voxels(volume, start)[None]
    shift_vox = np.array([3, -2, 1])  # i, j, k
    transform = sitk.TranslationTransform(3, tuple(shift_vox * np.array(SPACING)))
    patch = sample_patches(volume, centre, transform, size_xyz=SIZE, spacing_xyz=SPACING).patches[0]
    k, j, i = np.array(start) + shift_vox[::-1]
    np.testing.assert_allclose(patch, volume.array[k:k + SIZE[2], j:j + SIZE[1], i:i + SIZE[0]], atol=1e-4)


def test_rigid_transform_matches_simpleitk_resampling(volume):
    """Independent reference: SimpleITK resamples the patch grid through the same transform."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.0, 20.0, 120.0))
    transform.SetRotation(0.02, -0.03, 0.1)
    transform.SetTranslation((1.3, -0.7, 2.2))
    centres = np.array([[0.0, 20.0, 118.0], [5.0, 25.0, 125.0]])
    size, spacing = (10, 7, 5), (0.6, 0.7, 1.5)
    batch = sample_patches(volume, centres, transform, size_xyz=size, spacing_xyz=spacing)
    assert batch.n_outside.tolist() == [0, 0]
    for patch, centre in zip(batch.patches, centres):
        grid = sitk.Image(list(size), sitk.sitkFloat32)
        grid.SetSpacing(spacing)
        grid.SetOrigin(tuple(centre - (np.array(size) - 1) / 2.0 * np.array(spacing)))
        expected = sitk.GetArrayFromImage(sitk.Resample(volume.to_sitk(), grid, transform, sitk.sitkLinear))
        np.testing.assert_allclose(patch, expected, atol=1e-3)


def test_points_outside_the_field_of_view_are_filled_and_counted(volume):
    # first patch column at index -2.5 along x: columns -2.5, -1.5, -0.5 fall outside
    centre = volume.index_to_physical(np.array([-2.5, 5.0, 5.0]) + (np.array(SIZE) - 1) / 2.0)[None]
    batch = sample_patches(volume, centre, None, size_xyz=SIZE, spacing_xyz=SPACING)
    assert batch.n_outside[0] == 3 * SIZE[1] * SIZE[2]
    assert np.all(batch.patches[0][:, :, :3] == FILL_HU)
    expected = 0.5 * (volume.array[5:9, 5:11, 0:5] + volume.array[5:9, 5:11, 1:6])  # halfway between voxels
    np.testing.assert_allclose(batch.patches[0][:, :, 3:], expected, atol=1e-3)


def test_grid_points_on_the_first_voxel_are_inside(volume):
    # first patch column at index -2: columns -2 and -1 outside, column 0 (the edge voxel) inside
    centre = volume.index_to_physical(np.array([-2.0, 5.0, 5.0]) + (np.array(SIZE) - 1) / 2.0)[None]
    batch = sample_patches(volume, centre, None, size_xyz=SIZE, spacing_xyz=SPACING)
    assert batch.n_outside[0] == 2 * SIZE[1] * SIZE[2]
    np.testing.assert_allclose(batch.patches[0][:, :, 2:], volume.array[5:9, 5:11, 0:6], atol=1e-4)


def test_centre_outside_the_volume_is_refused(volume):
    far = volume.index_to_physical(np.array([100.0, 5.0, 5.0]))[None]
    with pytest.raises(ValueError, match="patch centre 0 .* outside the volume"):
        sample_patches(volume, far, None, size_xyz=SIZE, spacing_xyz=SPACING)
    inside = volume.index_to_physical(np.array([5.0, 5.0, 5.0]))[None]
    shift = sitk.TranslationTransform(3, (0.0, 0.0, 500.0))  # moved out by the transform
    with pytest.raises(ValueError, match="outside"):
        sample_patches(volume, inside, shift, size_xyz=SIZE, spacing_xyz=SPACING)
