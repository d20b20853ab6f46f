"""Image metrics as the dataset paper's code: MONAI's PSNR / SSIM, its pairs, coverage, same-scan pairs."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from scipy import ndimage
from skimage.metrics import structural_similarity

from ctdose.image_metrics import (MetricSettings, bin_shrink, clip_hu, compare_volumes, metric_pairs,
                                  metric_tables, psnr, resample_into, rmse, same_transform, scanner_matrix,
                                  ssim)
from ctdose.volume import Volume, body_mask


def _smooth_field(rng, shape, scale):
    """A random volume with structure at several scales (HU), some of it outside [-1000, 2000]."""
    return ndimage.gaussian_filter(rng.normal(0, scale, shape), 1.5) * 25 + rng.normal(0, 40, shape)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    a = _smooth_field(rng, (20, 26, 24), 400).astype(np.float32)
    b = (a + rng.normal(0, 60, a.shape)).astype(np.float32)
    return clip_hu(a).astype(np.float32), clip_hu(b).astype(np.float32)


def _torch(x):
    return torch.from_numpy(np.ascontiguousarray(x))[None, None]


def test_metrics_equal_monai(volumes):
    a, b = volumes
    assert a.max() == 2000 and a.min() == -1000  # the clip is exercised
    monai_ssim = SSIMMetric(spatial_dims=3, data_range=3000.0, win_size=11, kernel_sigma=1.5)(_torch(b), _torch(a))
    monai_psnr = PSNRMetric(max_val=2000.0)(_torch(b), _torch(a))
    # MONAI casts to float32: moments of ~1e6 HU^2 carry ~0.1 HU^2 rounding against C2 = 8100 HU^2, so its
    # SSIM is off ours (float64) by ~1e-7 (measured 2e-7); its PSNR by float32's eps x 10 log10 terms ~1e-6 dB
    assert ssim(b, a) == pytest.approx(monai_ssim.item(), abs=1e-5)
    assert psnr(b, a) == pytest.approx(monai_psnr.item(), abs=1e-4)
    # second reference: scikit-image's Gaussian SSIM (sigma 1.5, truncate 3.5 -> the same 11-voxel window),
    # population covariance, mean over the same valid region; both float64: ~1e-12
    ref = structural_similarity(a.astype(float), b.astype(float), data_range=3000.0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-9)


def test_constants_are_the_papers():
    # constant images: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) with C1 = (0.01 x 3000)^2 = 900
    a, b = np.full((12, 12, 12), 100.0), np.zeros((12, 12, 12))
    assert ssim(a, b) == pytest.approx(900 / (100 ** 2 + 900), rel=1e-12)
    assert psnr(a, b) == pytest.approx(20 * np.log10(2000 / 100))  # peak 2000 HU
    assert np.array_equal(clip_hu(np.array([-3000.0, 0.0, 3071.0])), [-1000.0, 0.0, 2000.0])


def test_bin_shrink_equals_simpleitk():
    arr = np.random.default_rng(1).normal(0, 100, (9, 14, 11)).astype(np.float32)
    expected = sitk.GetArrayFromImage(sitk.BinShrink(sitk.GetImageFromArray(arr), [4, 4, 4]))
    ours = bin_shrink(arr, 4)
    assert ours.shape == expected.shape == (2, 3, 2)
    assert np.allclose(ours, expected, atol=1e-3)  # SimpleITK averages in float32: ~1e-5 of 100 HU


def _cylinder(shape=(20, 32, 32), spacing=(1.0, 1.0, 2.0)):
    """A water cylinder (60 HU) in air, constant along z: interpolation along z changes only the noise."""
    _, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    return np.where((y - 16) ** 2 + (x - 16) ** 2 < 140, 60.0, -1000.0), spacing


def test_an_uncovered_end_slice_is_left_out_not_compared_as_air():
    rng = np.random.default_rng(2)
    phantom, spacing = _cylinder()
    reference = Volume(phantom + rng.normal(0, 20, phantom.shape), (0, 0, 0), spacing)
    results = {}
    for dz in (0.8, 1.2):  # the series' grid starts 0.4 or 0.6 slice further along z: slice 0 covered or not
        series = Volume(phantom + rng.normal(0, 20, phantom.shape), (0, 0, dz), spacing)
        results[dz] = compare_volumes(series, None, reference, None, region="phantom")
        # today's way: uncovered voxels filled with air and compared inside the body
        moved, covered = resample_into(series, None, reference, None)
        filled = np.where(covered, moved, -1024.0)
        results[dz]["filled"] = rmse(filled, reference.array, body_mask(reference.array))
    covered, uncovered = results[0.8], results[1.2]
    assert covered["uncovered_fraction"] == 0 and uncovered["uncovered_fraction"] == pytest.approx(1 / 20)
    # the filled comparison jumps (one slice of ~1080 HU error in 20: ~240 HU) ...
    assert uncovered["filled"] > 5 * covered["filled"]
    # ... the covered-only one does not: both are noise (20 HU and 20 HU interpolated at 0.4 / 0.6 of a slice,
    # the same variance 0.52 x 400): equal within the noise estimate's scatter (~1 % over 10^4 voxels) x 3
    assert uncovered["rmse_hu"] == pytest.approx(covered["rmse_hu"], rel=0.05)
    assert 20 < uncovered["rmse_hu"] < 30 and uncovered["ssim"] == pytest.approx(covered["ssim"], abs=0.02)


def test_a_same_scan_pair_is_compared_voxel_for_voxel():
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 30, (20, 32, 32))
    water, spacing = np.full(noise.shape, 60.0), (1.0, 1.0, 2.0)  # uniform: only the noise differs
    fbp = Volume(water + noise, (0, 0, 0), spacing)
    ir = Volume(water + ndimage.gaussian_filter(noise, 0.7), (0, 0, 0), spacing)  # another recon of one scan
    # two estimated transforms that differ by a fraction of a voxel (registration noise)
    t_ir, t_fbp = sitk.TranslationTransform(3, (0.4, -0.3, 0.2)), sitk.TranslationTransform(3, (0.0, 0.1, 0.0))
    same = compare_volumes(ir, t_ir, fbp, t_fbp, region="crop", same_scan=True)
    assert same["resampled"] is False and same["uncovered_fraction"] == 0
    assert same["rmse_hu"] == pytest.approx(rmse(ir.array, fbp.array), rel=1e-12)  # the same float64 sum
    assert same["ssim"] == pytest.approx(ssim(ir.array, fbp.array), abs=1e-12)
    # today's way, through both transforms, measures something else: the sub-voxel offset between the two
    # estimates misaligns the noise the two reconstructions share (here +11 %), while interpolation smooths
    # what is left (on the twin: -5 %)
    through = compare_volumes(ir, t_ir, fbp, t_fbp, region="crop", same_scan=False)
    assert through["resampled"] is True and abs(through["rmse_hu"] / same["rmse_hu"] - 1) > 0.05
    # same transform on both series (e.g. the identity kept): the pair is a same-scan pair
    assert same_transform(None, sitk.TranslationTransform(3, (0.0, 0.0, 0.0)))
    assert not same_transform(t_ir, t_fbp)


def test_a_reference_kept_for_several_series_gives_the_same_numbers():
    """measure_and_cache keeps one reference's crop and SSIM window means for all its pairs: every
    metric equals the pair measured alone."""
    rng = np.random.default_rng(6)
    phantom, spacing = _cylinder()
    phantom = np.tile(phantom, (2, 2, 2))  # (40, 64, 64): room for the SSIM window after a bin-shrink by 2
    ref = Volume(phantom + rng.normal(0, 20, phantom.shape), (0, 0, 0), spacing)
    box = ndimage.find_objects(body_mask(clip_hu(ref.array)).astype(np.uint8))[0]
    cache: dict = {}
    for k in range(3):
        series = Volume(phantom + rng.normal(0, 10 + 10 * k, phantom.shape), (0, 0, 0), spacing)
        for shrink in (1, 2):
            alone = compare_volumes(series, None, ref, None, shrink=shrink, same_scan=True)
            kept = compare_volumes(series, None, ref, None, shrink=shrink, same_scan=True, reference_cache=cache)
            assert kept == alone
        # PSNR from the RMSE computed once equals psnr() on the cropped, shrunk arrays
        a, b = (bin_shrink(clip_hu(v.array)[box], 2) for v in (series, ref))
        assert alone["psnr_db"] == pytest.approx(psnr(a, b), abs=1e-9)


def test_region_setting():
    rng = np.random.default_rng(4)
    phantom, spacing = _cylinder()
    a = Volume(phantom + rng.normal(0, 20, phantom.shape), (0, 0, 0), spacing)
    b = Volume(phantom + rng.normal(0, 20, phantom.shape), (0, 0, 0), spacing)
    crop = compare_volumes(a, None, b, None, region="crop", same_scan=True)
    inside = compare_volumes(a, None, b, None, region="phantom", same_scan=True)
    # air is clipped at -1000 HU in both, so its noise below -1000 vanishes: the crop's RMSE is lower
    box = ndimage.find_objects(body_mask(b.array).astype(np.uint8))[0]
    assert crop["n_voxels"] == b.array[box].size and inside["n_voxels"] == int(body_mask(b.array).sum())
    assert crop["rmse_hu"] < inside["rmse_hu"]
    shrunk = compare_volumes(Volume(np.tile(a.array, (3, 2, 2)), (0, 0, 0), spacing), None,
                             Volume(np.tile(b.array, (3, 2, 2)), (0, 0, 0), spacing), None, shrink=4,
                             same_scan=True)
    # averaging 64 voxels of independent noise divides the noise RMSE by ~8
    assert shrunk["rmse_hu"] < crop["rmse_hu"] / 4
    with pytest.raises(ValueError, match="region 'body'"):
        MetricSettings(region="body")


def _catalog(scanners, doses, recons=("FBP", "IR"), reps=10) -> pd.DataFrame:
    rows = [{"series_uid": f"{s}-{d:g}-{r}-{k}", "scanner": s, "dose_mgy": float(d), "recon": r, "repetition": k}
            for s in scanners for d in doses for r in recons for k in range(1, reps + 1)
            if not (s == "E1" and d == 10 and k == 10)]  # E1 has 9 scans at 10 mGy
    return pd.DataFrame(rows)


def test_dose_pairs_as_the_paper():
    catalog = _catalog(("A1", "E1"), (1, 10, 14))
    pairs = metric_pairs(catalog, MetricSettings())
    vs_dose = pairs[pairs["comparison"] == "vs_dose"]
    cells = vs_dose.groupby(["scanner", "dose_mgy"])
    assert cells.size().to_dict() == {(s, d): 5 for s in ("A1", "E1") for d in (1.0, 10.0)}
    assert (vs_dose["reference_dose_mgy"] == 14).all() and (vs_dose["scanner"] == vs_dose["reference_scanner"]).all()
    assert not cells["series_uid"].apply(lambda u: u.duplicated().any()).any()
    assert not cells["reference_uid"].apply(lambda u: u.duplicated().any()).any()
    assert set(vs_dose["recon"]) == {"FBP", "IR"} and (vs_dose["cell_recon"] == "any").all()  # any recon
    assert pairs.equals(metric_pairs(catalog.sample(frac=1, random_state=1), MetricSettings()))  # seeded
    assert not pairs.equals(metric_pairs(catalog, MetricSettings(seed=1)))
    per_recon = metric_pairs(catalog, MetricSettings(recon_pairing="same", max_pairs=3))
    d = per_recon[per_recon["comparison"] == "vs_dose"]
    assert (d["recon"] == d["reference_recon"]).all() and (d["recon"] == d["cell_recon"]).all()
    assert d.groupby(["scanner", "cell_recon", "dose_mgy"]).size().eq(3).all() and len(d) == 2 * 2 * 2 * 3


def test_scanner_pairs_fill_the_13x13_matrix():
    codes = ("A1", "A2", "B1", "B2", "C1", "D1", "E1", "E2", "F1", "G1", "G2", "H1", "H2")
    catalog = _catalog(codes, (10,), reps=2)
    pairs = metric_pairs(catalog, MetricSettings())
    vs_scan = pairs[pairs["comparison"] == "vs_scanner"]
    cells = vs_scan.groupby(["scanner", "reference_scanner"]).size()
    assert len(cells) == 13 * 14 // 2 and cells.max() <= 5  # 78 pairs of scanners + 13 diagonal cells
    diagonal = vs_scan[vs_scan["scanner"] == vs_scan["reference_scanner"]]
    assert diagonal["scanner"].nunique() == 13
    assert (diagonal["repetition"] != diagonal["reference_repetition"]).all()  # repeated scans, not one scan
    assert not diagonal["same_acquisition"].any()
    off = vs_scan[vs_scan["scanner"] != vs_scan["reference_scanner"]]
    assert (off["scanner"] > off["reference_scanner"]).all() and off.groupby(["scanner", "reference_scanner"]).size().eq(4).all()
    measured = vs_scan.assign(rmse_hu=np.arange(len(vs_scan), dtype=float), psnr_db=30.0, ssim=0.9,
                              uncovered_fraction=0.0)
    _, by_scanner = metric_tables(measured)
    matrix = scanner_matrix(by_scanner, "rmse_hu_mean")
    assert matrix.shape == (13, 13) and list(matrix.index) == list(codes) and list(matrix.columns) == list(codes)
    assert np.isfinite(np.diag(matrix.to_numpy())).all() and np.allclose(matrix, matrix.T)
    a1_a2 = measured[(measured["scanner"] == "A2") & (measured["reference_scanner"] == "A1")]["rmse_hu"]
    assert matrix.loc["A1", "A2"] == pytest.approx(a1_a2.mean())
