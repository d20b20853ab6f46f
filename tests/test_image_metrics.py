"""Image metrics: SSIM against scikit-image, RMSE/PSNR by hand, masking and registration resampling."""

import numpy as np
import pytest
import SimpleITK as sitk
from skimage.metrics import structural_similarity

from ctdose.image_metrics import (body_mask, compare, metric_pairs, psnr, resample_into, rmse, ssim,
                                   ssim_map)
from ctdose.volume import Volume


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:16, :24, :20]
    phantom = np.where((y - 12) ** 2 + (x - 10) ** 2 < 64, 60.0, -1000.0) + 200 * (z > 8)
    a = phantom + rng.normal(0, 10, phantom.shape)
    b = phantom + rng.normal(0, 40, phantom.shape)
    return a, b


def test_ssim_matches_skimage(pair):
    a, b = pair
    mean_ref, map_ref = structural_similarity(a, b, win_size=7, data_range=3000.0, gaussian_weights=False,
                                              use_sample_covariance=True, full=True)
    ours = ssim_map(a, b)
    pad = 3
    inner = (slice(pad, -pad),) * 3
    # SSIM is O(1); float64 covariances of ~1e6 HU^2 lose ~eps64 x 1e6 = 2e-10 HU^2, over C2 >= 8100
    assert np.allclose(ours[inner], map_ref[inner], rtol=0, atol=1e-9)
    assert ssim(a, b) == pytest.approx(mean_ref, abs=1e-9)  # no mask: same cropped mean as skimage


def test_constants_are_the_papers():
    # with L = 3000, C1 = 900 and C2 = 8100: check on constant images where SSIM has a closed form
    a, b = np.full((9, 9, 9), 100.0), np.full((9, 9, 9), 0.0)
    expected = (2 * 100 * 0 + 900) / (100 ** 2 + 0 + 900)
    assert ssim(a, b) == pytest.approx(expected)  # closed form, float64


def test_rmse_psnr_masked(pair):
    a, b = pair
    mask = body_mask(a)
    assert 0 < mask.mean() < 1
    diff = (a - b)[mask]
    assert rmse(a, b, mask) == pytest.approx(np.sqrt(np.mean(diff ** 2)))  # float64 both: ~1e-15 relative
    assert psnr(a, b, mask) == pytest.approx(20 * np.log10(3000 / np.sqrt(np.mean(diff ** 2))))
    assert psnr(a, a, mask) == float("inf")
    out = compare(a, b, mask)
    assert set(out) == {"rmse_hu", "psnr_db", "ssim"} and out["ssim"] < 1
    with pytest.raises(ValueError, match="mask is empty"):
        rmse(a, b, np.zeros_like(mask))


def test_resample_into_undoes_the_transforms():
    z, y, x = np.mgrid[:12, :20, :20].astype(float)
    arr = (np.sin(x / 3) + np.cos(y / 4) + z / 5) * 100
    vol = Volume(arr, origin=(0, 0, 0), spacing=(1, 1, 2))
    # a series shifted by 2 mm along x: reference point p sits at p + (2,0,0) in the series
    shifted = Volume(arr, origin=(2, 0, 0), spacing=(1, 1, 2))
    tx = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    back = resample_into(shifted, tx, vol, None)
    # float32 HU of |value| <= 300 (rounding <= 2e-5 HU); a voxel of misplacement would cost ~30 HU
    assert np.allclose(back, arr, atol=1e-3)
    # both series moved the same way: resampling one into the other is the identity
    same = resample_into(shifted, tx, shifted, tx)
    assert np.allclose(same, arr, atol=1e-3)


def test_ssim_slabs_equal_whole_volume(pair):
    a, b = pair
    mask = body_mask(a)
    whole = ssim_map(a, b)
    inner = np.zeros_like(mask)
    inner[3:-3, 3:-3, 3:-3] = True
    expected = whole[mask & inner].mean()
    for chunk in (1, 4, 5, 100):
        # the same float64 SSIM values, summed in slabs: apart by <= n x eps64 of an O(1) mean
        assert ssim(a, b, mask, chunk=chunk) == pytest.approx(expected, abs=1e-10)


def test_metric_pairs_follow_the_protocol():
    import pandas as pd

    rows = []
    for scanner in ("A1", "B1"):
        for dose in (1.0, 10.0, 14.0):
            for recon in ("FBP", "IR"):
                for rep in (1, 2):
                    if scanner == "B1" and dose == 14.0 and rep == 2:
                        continue  # no second reference repetition: falls back to repetition 1
                    rows.append({"series_uid": f"{scanner}-{dose:g}-{recon}-{rep}", "scanner": scanner,
                                 "dose_mgy": dose, "recon": recon, "repetition": rep})
    pairs = metric_pairs(pd.DataFrame(rows))
    vs_dose = pairs[pairs["comparison"] == "vs_dose"]
    assert (vs_dose["series_uid"] != vs_dose["reference_uid"]).all()
    ref = vs_dose["reference_uid"].str.split("-", expand=True)
    assert (ref[0] == vs_dose["scanner"]).all() and (ref[1] == "14").all() and (ref[2] == vs_dose["recon"]).all()
    a1 = vs_dose[vs_dose["scanner"] == "A1"]
    assert (ref.loc[a1.index, 3].astype(int) == a1["repetition"]).all()
    assert (ref.loc[vs_dose["scanner"] == "B1", 3] == "1").all()
    vs_scan = pairs[pairs["comparison"] == "vs_scanner"]
    assert set(vs_scan["scanner"]) == {"B1"} and (vs_scan["reference_scanner"] == "A1").all()
    assert (vs_scan["dose_mgy"] == 10.0).all() and len(vs_scan) == 4
    with pytest.raises(ValueError, match="Z9"):
        metric_pairs(pd.DataFrame(rows), reference_scanner="Z9")
