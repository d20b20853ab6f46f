"""Rigid registration recovers a known shift and rotation; a worse result keeps the identity."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHAPE_ZYX, SPACING_XYZ, phantom_volume
from ctdose import registration
from ctdose.registration import RegistrationSettings, register_rigid
from ctdose.transform_io import load_transform, save_transform

#: Points (x, y, z mm) where the recovered and true transforms are compared: inside the phantom.
PROBES = np.array([[0, 0, 0], [30, 20, 10], [-40, 10, -20], [20, -30, 15], [-25, -25, 5]], float)


def _known_transform() -> sitk.Euler3DTransform:
    true = sitk.Euler3DTransform()
    true.SetRotation(np.deg2rad(0.5), 0.0, np.deg2rad(1.5))
    true.SetTranslation((3.0, -2.0, 1.5))
    return true


def test_recovers_known_shift_and_rotation_within_half_a_voxel():
    true = _known_transform()
    fixed = phantom_volume(noise_sd=10, seed=0)
    # the moving image shows at T(p) what the fixed image shows at p
    moving = phantom_volume(noise_sd=10, seed=1, transform=true.GetInverse())
    result = register_rigid(fixed, moving)
    assert not result.kept_identity
    assert result.quality_after > result.quality_before
    errors = np.array([np.subtract(result.transform.TransformPoint(tuple(p)), true.TransformPoint(tuple(p)))
                       for p in PROBES])
    half_voxel = 0.5 * np.array(SPACING_XYZ)
    assert np.all(np.abs(errors) < half_voxel), errors
    # sanity check of the test itself: the identity would be off by more than that
    assert np.any(np.abs(np.array(true.TransformPoint((0.0, 0.0, 0.0)))) > half_voxel)
    params = result.parameters()  # the point errors above are the test; these name the parameters
    assert params["rot_z_deg"] == pytest.approx(1.5, abs=0.5)
    assert params["tx_mm"] == pytest.approx(3.0, abs=1.0)


def test_worse_quality_keeps_identity(monkeypatch):
    fixed = phantom_volume(noise_sd=10, seed=0)
    moving = phantom_volume(noise_sd=10, seed=1, transform=_known_transform().GetInverse())
    calls = iter([0.9, 0.5])  # before, after
    monkeypatch.setattr(registration, "correlation_quality", lambda *args: next(calls))
    result = register_rigid(fixed, moving, RegistrationSettings(iterations=(5, 5, 5)))
    assert result.kept_identity and "identity kept" in result.reason
    assert result.quality_after == result.quality_before == 0.9
    assert result.transform.TransformPoint((10.0, 20.0, 30.0)) == (10.0, 20.0, 30.0)


def test_quality_ignores_points_outside_the_moving_field_of_view():
    fixed = phantom_volume(noise_sd=0)
    image = fixed.to_sitk()
    shift = sitk.Euler3DTransform()
    shift.SetTranslation((0.0, 0.0, 0.5 * SHAPE_ZYX[0] * SPACING_XYZ[2]))  # half the slices fall outside
    quality = registration.correlation_quality(image, image, shift, registration.body_mask_image(image))
    assert 0.0 < quality < 1.0
    assert registration.correlation_quality(image, image, sitk.Euler3DTransform(),
                                            registration.body_mask_image(image)) == pytest.approx(1.0)  # r(x, x)


def test_mask_leaves_out_the_band_along_the_in_plane_edges():
    """The fixed mask drops the voxels within border_mm of the in-plane edges (not along z), keeps the
    phantom mask elsewhere, and is the whole phantom mask again when the band would leave nothing."""
    image = sitk.GetImageFromArray(np.zeros((4, 40, 50), np.float32))  # HU 0 everywhere: all phantom
    image.SetSpacing((2.0, 1.0, 3.0))
    band = sitk.GetArrayFromImage(registration.body_mask_image(image, border_mm=5.0)).astype(bool)
    expected = np.zeros((4, 40, 50), bool)
    expected[:, 5:35, 3:47] = True  # 5 rows of 1 mm, ceil(5 / 2) = 3 columns of 2 mm
    np.testing.assert_array_equal(band, expected)
    whole = sitk.GetArrayFromImage(registration.body_mask_image(image, border_mm=30.0)).astype(bool)
    assert whole.all()


def test_transform_file_round_trip(tmp_path):
    true = _known_transform()
    path = save_transform(true, tmp_path / "t" / "x.tfm")
    back = load_transform(path)
    for p in PROBES:
        # .tfm files hold 17 significant digits: the round trip is exact but for float64 rounding
        np.testing.assert_allclose(back.TransformPoint(tuple(p)), true.TransformPoint(tuple(p)), atol=1e-9)
    assert [p.name for p in path.parent.iterdir()] == ["x.tfm"]
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        load_transform(tmp_path / "missing.tfm")


def test_series_sharing_a_frame_of_reference_take_one_registration():
    """One registration per FrameOfReferenceUID: the reference's group takes the reference; another group
    its highest-dose series, IR first; a series without a frame, or share_frame=False, registers itself."""
    import pandas as pd

    from ctdose.prepare import registration_sources

    catalog = pd.DataFrame([
        ("ref", "F1", 10.0, "IR"), ("ref_fbp", "F1", 14.0, "FBP"),
        ("a_fbp14", "F2", 14.0, "FBP"), ("a_ir14", "F2", 14.0, "IR"), ("a_ir1", "F2", 1.0, "IR"),
        ("lonely", "", 3.0, "IR"), ("nan_frame", None, 3.0, "IR"),
    ], columns=["series_uid", "frame_of_reference_uid", "dose_mgy", "recon"])
    sources = registration_sources(catalog, "ref")
    assert sources == {"ref": "ref", "ref_fbp": "ref", "a_fbp14": "a_ir14", "a_ir14": "a_ir14",
                       "a_ir1": "a_ir14", "lonely": "lonely", "nan_frame": "nan_frame"}
    assert registration_sources(catalog, "ref", share_frame=False) == {u: u for u in catalog["series_uid"]}
