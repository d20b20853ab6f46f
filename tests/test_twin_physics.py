"""Physics of the twin: projector/FBP against scikit-image, photon statistics, noise vs dose, bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from scipy import ndimage

from ctdose.naming import ROI_NAMES
from ctdose.twin import imaging
from ctdose.twin import phantom as ph
from ctdose.twin.acquisition import add_electronic_noise, hu_to_mu
from ctdose.twin.generate import calibrate, reconstruct, scan_grid
from ctdose.twin.presets import get_preset
from ctdose.twin.projector import ParallelBeam, fbp, project
from ctdose.twin.scanners import MU_WATER_PER_MM, get_scanner

torch.set_num_threads(1)
N_FOV, PIXEL_MM = 256, 350.0 / 256  # the tiny preset's field of view
N_PIX = 128


def test_fbp_matches_skimage_iradon():
    """Our FBP of scikit-image's sinogram of a noiseless phantom slice equals iradon (ramp, same angles)."""
    grid = ph.ScanGrid(N_PIX, 2 * PIXEL_MM, 1, 2.0, 2.0)
    image = ph.build_phantom(grid, 0, ph.Pose(), 1).hu[0]
    image = hu_to_mu(image, 0.02) * 1000.0  # attenuation scaled to order 10
    geom = ParallelBeam.for_matrix(N_PIX)
    theta = np.degrees(geom.angles)
    yy, xx = np.mgrid[:N_PIX, :N_PIX] - N_PIX // 2
    inside = xx ** 2 + yy ** 2 < (N_PIX // 2 - 1) ** 2
    sino = radon(np.where(inside, image, 0.0), theta, circle=True)  # (n_det, n_angles)
    ours = fbp(sino.T[None], geom)[0]
    ref = iradon(sino, theta, filter_name="ramp", circle=True)
    # our FBP runs in float32 (~1e-6 of the image's scale, whatever FFT kernel the CPU has)
    assert np.abs(ours - ref)[inside].max() < 1e-4 * np.abs(ref).max()
    # and our projector agrees with radon on the overall line integrals (different interpolation)
    ours_sino = project(np.where(inside, image, 0.0)[None].astype(np.float32), geom)[0]
    assert np.allclose(ours_sino.sum(axis=1), sino.sum(axis=0), rtol=1e-3)  # interpolation, not rounding


def test_electronic_noise_adds_its_variance():
    rng = np.random.default_rng(4)
    counts = rng.poisson(50.0, size=200_000)
    assert add_electronic_noise(counts, 0.0, rng) is counts
    noisy = add_electronic_noise(counts, 5.0, rng)
    assert abs(noisy.var() / (50.0 + 25.0) - 1) < 0.02 and abs(noisy.mean() - 50.0) < 0.1


def _noise_grid(n_slices: int = 4) -> ph.ScanGrid:
    """A region of the tiny preset's field of view over the uniform water insert (test-pattern segment)."""
    (cx, cy), _, (z0, z1) = ph.WATER_INSERT
    half = 32
    c = N_FOV // 2
    region = (c + int(round(cy / PIXEL_MM)) - half, c + int(round(cx / PIXEL_MM)) - half, 2 * half, 2 * half)
    return ph.ScanGrid(N_FOV, PIXEL_MM, n_slices, 2.0, 2.0, region, (z0 + z1) / 2)


def _water_noise(profile, photons: float, seed: int, grid: ph.ScanGrid) -> tuple[np.ndarray, np.ndarray]:
    """(image, inside-water mask) of one acquisition of the water insert: signal + noise, HU."""
    mu_w = MU_WATER_PER_MM[profile.kvp]
    n_angles = imaging.n_angles_for(grid)
    body = imaging.body_line_integrals(grid, ph.Pose(), imaging.slab_positions(grid)[0], mu_w, n_angles)
    phantom = ph.build_phantom(grid, 0, ph.Pose(), 2, margin=imaging.SIGNAL_MARGIN)
    image = imaging.signal_image(phantom, profile) + imaging.acquisition_noise(
        body, grid, profile, mu_w, photons, np.random.default_rng(seed))
    x = grid.origin[0] + np.arange(grid.box[3]) * PIXEL_MM
    y = grid.origin[1] + np.arange(grid.box[2]) * PIXEL_MM
    (cx, cy), radius, _ = ph.WATER_INSERT
    disc = (x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2 <= (0.7 * radius) ** 2
    return image, np.broadcast_to(disc, image.shape)


def test_noise_follows_inverse_sqrt_dose_is_unbiased_and_independent_between_acquisitions():
    """In the uniform water insert: noise std ~ dose^-0.5 (exponent within 0.05), mean within 2 HU of 0,
    and two acquisitions (two doses, or two repetitions at one dose) have uncorrelated noise (|r| < 0.05).

    16 slices of the insert's inner disc: ~21 000 voxels, whose FBP noise is correlated over a few pixels,
    so the sd of r between independent noise is about 0.017 (measured over 8 seeds) and 0.05 is about 3 sd."""
    profile = dataclasses.replace(get_scanner("A1"), electronic_noise_counts=0.0, hu_offset=0.0, hu_scale=1.0,
                                  shading_hu=0.0)
    grid = _noise_grid(16)
    photons_per_mgy = calibrate(profile, grid)["photons_per_ray_per_mgy"]
    doses = np.array([1.0, 3.0, 6.0, 10.0, 14.0])
    images, stds = {}, []
    for i, dose in enumerate(doses):
        image, water = _water_noise(profile, photons_per_mgy * dose, i, grid)
        assert abs(float(image[water].mean())) < 2.0, f"mean HU biased at {dose} mGy"
        stds.append(float(image[water].std()))
        images[dose] = image[water]
    slope = np.polyfit(np.log(doses), np.log(stds), 1)[0]
    assert abs(slope + 0.5) < 0.05, f"noise ~ dose^{slope:.3f}"
    r_doses = np.corrcoef(images[1.0], images[14.0])[0, 1]
    repeat, water = _water_noise(profile, photons_per_mgy * 14.0, 99, grid)
    r_reps = np.corrcoef(images[14.0], repeat[water])[0, 1]
    assert abs(r_doses) < 0.05 and abs(r_reps) < 0.05, (r_doses, r_reps)


@pytest.mark.parametrize("code", ["A1", "D1"])
def test_calibrated_liver_noise(code):
    """FBP noise in normal liver equals the profile's 10 mGy value (10 %) on fresh noise, and IR / DL (with the
    scanner's edge gain) lower it and keep its mean within 2 HU."""
    profile = dataclasses.replace(get_scanner(code), electronic_noise_counts=0.0)
    grid = scan_grid(get_preset("tiny"), profile)
    cal = calibrate(profile, grid)
    small = dataclasses.replace(grid, n_slices=3)
    mu_w = MU_WATER_PER_MM[profile.kvp]
    n_angles = imaging.n_angles_for(small)
    body = imaging.body_line_integrals(small, ph.Pose(), imaging.slab_positions(small)[0], mu_w, n_angles)
    phantom = ph.build_phantom(small, 3, ph.Pose(), 2, margin=imaging.SIGNAL_MARGIN)
    clean = imaging.signal_image(phantom, profile)
    normal = np.isin(phantom.rois, [ROI_NAMES.index("normal1") + 1, ROI_NAMES.index("normal2") + 1])
    noisy = clean + imaging.acquisition_noise(body, small, profile, mu_w, cal["photons_per_ray_per_mgy"] * 10,
                                              np.random.default_rng(99))
    noise = float((noisy - clean)[normal].std())
    assert abs(noise / profile.noise_10mgy_hu - 1) < 0.10, (noise, profile.noise_10mgy_hu)
    detail = imaging.edge_detail(clean, small.pixel_mm)
    ir = reconstruct(noisy, "IR", profile, 10.0, detail)  # with the scanner's edge gain
    dl = reconstruct(noisy, "DL", profile, 10.0, detail)
    res = {name: float((img - clean)[normal].std()) for name, img in (("IR", ir), ("DL", dl))}
    assert res["DL"] < res["IR"] < 0.85 * noise
    for img in (ir, dl):
        assert abs(float(img[normal].mean() - noisy[normal].mean())) < 2.0


@pytest.mark.parametrize("code", ["A1", "C1", "D1", "E1"])
def test_signal_through_the_mtf_equals_project_and_fbp(code):
    """The twin's noise-free image (phantom through the kernel's MTF) equals projecting and reconstructing
    the phantom with the same kernel: rms within 6 HU inside the body away from its edge (below the
    10 mGy noise of every scanner, 15-45 HU); the means agree within 1 HU."""
    profile = dataclasses.replace(get_scanner(code), hu_offset=0.0, hu_scale=1.0, shading_hu=0.0)
    grid = ph.ScanGrid(N_FOV, PIXEL_MM, 2, 2.0, 2.0)
    hu = ph.build_phantom(grid, 0, ph.Pose(), 1).hu
    geom = ParallelBeam.for_matrix(N_FOV)
    reconstructed = fbp(project(hu + 1000.0, geom, PIXEL_MM), geom, PIXEL_MM, profile.window, profile.cutoff) - 1000
    ours = imaging.signal_image(ph.build_phantom(grid, 0, ph.Pose(), 1, margin=imaging.SIGNAL_MARGIN), profile)
    inner = ndimage.binary_erosion(hu > -500, structure=np.ones((1, 3, 3)), iterations=4)
    diff = (reconstructed - ours)[inner]
    assert np.sqrt(np.mean(diff ** 2)) < 6.0 and abs(diff.mean()) < 1.0


def test_targeted_reconstruction_equals_the_region_of_a_full_reconstruction():
    """FBP onto a region gives exactly that part of the full field's FBP (float32 rounding only)."""
    rng = np.random.default_rng(3)
    full = ParallelBeam.for_matrix(N_FOV)
    region = ParallelBeam(N_FOV, full.n_angles, N_FOV, (40, 70, 64, 48))
    sino = rng.standard_normal((2, full.n_angles, N_FOV)).astype(np.float32)
    whole = fbp(sino, full, PIXEL_MM, "hann", 0.9)
    part = fbp(sino, region, PIXEL_MM, "hann", 0.9)
    assert part.shape == (2, 64, 48)
    np.testing.assert_allclose(part, whole[:, 40:104, 70:118], rtol=0, atol=1e-5 * np.abs(whole).max())
    # and the twin's region sits where its DICOM geometry says: the grid's origin is the region's corner
    grid = ph.ScanGrid(N_FOV, PIXEL_MM, 1, 2.0, 2.0, (40, 70, 64, 48))
    np.testing.assert_allclose(grid.origin[:2], [(70 - N_FOV // 2) * PIXEL_MM, (40 - N_FOV // 2) * PIXEL_MM])


def test_small_patches_hold_one_roi_only():
    """A 32 x 32 x 16 patch (0.6836 x 0.6836 x 2 mm) around any center inside an ROI holds no voxel of another
    ROI; the share of other ROIs in a 64 x 64 x 32 patch is reported (below 1/4)."""
    small = ph.other_roi_share((32, 32, 16))
    assert set(small) == set(ROI_NAMES) and max(small.values()) == 0.0, small
    large = ph.other_roi_share((64, 64, 32))
    assert 0.0 < max(large.values()) < 0.25, large


def test_ir_edge_detail_is_an_unsharp_mask_of_high_contrast_parts_that_leaves_the_rois():
    """IR / DL edge detail equals scikit-image's unsharp mask of the image's part outside the soft-tissue
    window (slice by slice, amount = gain), is zero inside every ROI and sums to ~0 over each slice (a
    change of edges, not of CT numbers)."""
    from skimage.filters import unsharp_mask

    grid = dataclasses.replace(scan_grid(get_preset("tiny"), get_scanner("A1")), n_slices=4)
    phantom = ph.build_phantom(grid, 0, ph.Pose(), 1, margin=imaging.SIGNAL_MARGIN)
    signal = imaging.signal_image(phantom, get_scanner("A1"))
    detail = imaging.edge_detail(signal, grid.pixel_mm)
    high = signal - np.clip(signal, *imaging.EDGE_SOFT_TISSUE_HU)
    assert np.abs(high).max() > 500  # the grid holds bone or air edges
    gain, sigma_px = 1.3, imaging.EDGE_SIGMA_MM / grid.pixel_mm
    reference = np.stack([unsharp_mask(h.astype(np.float64), radius=sigma_px, amount=gain, preserve_range=True)
                          for h in high])
    np.testing.assert_allclose(high + gain * detail, reference, atol=1e-3 * np.abs(high).max())
    assert np.abs(detail[phantom.rois > 0]).max() < 0.5
    # blurring keeps each slice's sum up to the border (mode nearest): the detail's mean is ~0 vs its rms
    rms = float(np.sqrt(np.mean(detail ** 2)))
    assert rms > 5 and np.abs(detail.mean(axis=(1, 2))).max() < 0.05 * rms


def test_edge_jitter_moves_the_high_contrast_part_as_scipy_shift_does_and_leaves_the_rois():
    """A uniform displacement field (0.3 px along x, 0.2 px along y) changes a smooth image (a bone-like
    and an air-like blob in soft tissue) as moving its high-contrast part by that much does
    (``scipy.ndimage.shift``, cubic spline), to within 10 % of the change's rms (first order with central
    differences; the kink where the image leaves the soft-tissue window keeps it from being exact); zero
    in soft tissue, and on the twin's phantom inside every ROI."""
    yy, xx = np.mgrid[:96, :96].astype(np.float64)

    def blob(cy: float, cx: float, s: float) -> np.ndarray:
        return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))

    plane = 40.0 + 1400.0 * blob(30, 40, 6.0) - 1000.0 * blob(62, 58, 8.0)
    signal = np.stack([plane, 0.8 * plane]).astype(np.float32)  # (2, 96, 96)
    pixel_mm, dx_px, dy_px = 0.7, 0.3, 0.2
    jitter_mm = np.hypot(dx_px, dy_px) * pixel_mm
    field = np.zeros((2, *signal.shape), dtype=np.float32)
    field[0], field[1] = dx_px * pixel_mm / jitter_mm, dy_px * pixel_mm / jitter_mm
    change = imaging.edge_jitter(imaging.edge_gradient(signal, pixel_mm), field, jitter_mm)
    high = (signal - np.clip(signal, *imaging.EDGE_SOFT_TISSUE_HU)).astype(np.float64)
    expected = np.stack([ndimage.shift(h, (dy_px, dx_px), order=3, mode="nearest") for h in high]) - high
    rms = float(np.sqrt(np.mean(expected ** 2)))
    assert rms > 5.0
    assert float(np.sqrt(np.mean((change - expected) ** 2))) < 0.1 * rms
    inside = (signal >= imaging.EDGE_SOFT_TISSUE_HU[0]) & (signal <= imaging.EDGE_SOFT_TISSUE_HU[1])
    soft = ndimage.binary_erosion(inside, np.ones((1, 3, 3), bool))  # with every in-plane neighbour
    assert soft.sum() > 1000 and np.abs(change[soft]).max() == 0.0

    profile = get_scanner("A1")
    grid = dataclasses.replace(scan_grid(get_preset("tiny"), profile), n_slices=3)
    phantom = ph.build_phantom(grid, 0, ph.Pose(), 1, margin=imaging.SIGNAL_MARGIN)
    twin = imaging.signal_image(phantom, profile)
    moved = imaging.edge_jitter(imaging.edge_gradient(twin, grid.pixel_mm),
                                imaging.jitter_field(grid, np.random.default_rng(0)), 0.5)
    assert np.abs(moved).max() > 50.0  # the grid holds bone or air edges
    assert np.abs(moved[phantom.rois > 0]).max() == 0.0


def test_jitter_field_is_a_smooth_unit_variance_field_with_the_gaussian_correlation():
    """Pooled over 6 draws: mean ~0, variance ~0.9 (1 at the nodes), x and y components and two draws
    uncorrelated, and the correlation at an 8 mm lag that of Gaussian-smoothed white noise,
    exp(-lag^2 / (4 sigma^2)) with sigma = JITTER_SMOOTH_NODES x JITTER_NODE_MM (linear interpolation
    lowers it slightly)."""
    grid = dataclasses.replace(scan_grid(get_preset("demo"), get_scanner("A1")), n_slices=40)
    fields = [imaging.jitter_field(grid, np.random.default_rng(seed)) for seed in range(6)]
    assert fields[0].shape == (2, 40, 256, 256) and fields[0].dtype == np.float32
    values = np.stack(fields)  # (draws, 2, z, y, x)
    assert abs(float(values.mean())) < 0.05
    assert 0.85 < float(values.var()) < 1.1
    assert abs(np.corrcoef(values[:, 0].ravel(), values[:, 1].ravel())[0, 1]) < 0.05
    assert abs(np.corrcoef(values[0].ravel(), values[1].ravel())[0, 1]) < 0.05
    lag_px = int(round(8.0 / grid.pixel_mm))
    lag_mm = lag_px * grid.pixel_mm
    a, b = values[..., :-lag_px].ravel(), values[..., lag_px:].ravel()
    sigma_mm = imaging.JITTER_SMOOTH_NODES * imaging.JITTER_NODE_MM
    expected = np.exp(-lag_mm ** 2 / (4 * sigma_mm ** 2))
    assert abs(float(np.mean(a * b) / np.mean(values ** 2)) - expected) < 0.06, expected
    # two draws of one seed are the same field (the twin's determinism)
    np.testing.assert_array_equal(imaging.jitter_field(grid, np.random.default_rng(3)), fields[3])
