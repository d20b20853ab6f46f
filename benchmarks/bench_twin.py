#!/usr/bin/env python
"""Benchmark of the digital twin: projector + FBP throughput against scikit-image, noise per scanner
and dose, and the wall time of the demo preset.

Prints, from one run: (1) slices/s of our batched projection + FBP and of scikit-image's
radon + iradon on the same phantom slices and views, with their ratio; (2) FBP / IR / DL noise std
(HU) in normal liver for every scanner at every dose, on the demo grid (fresh noise, measured
against the noise-free reconstruction); (3) the wall time of ``make_twin --preset demo`` with 2
workers (skipped with --quick).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

# --- settings ---------------------------------------------------------------------------------
SLICES = 16  # slices in the throughput test (--quick: 4)
WORKERS = 2  # workers of the demo run
# -----------------------------------------------------------------------------------------------


def throughput(n_slices: int) -> None:
    from skimage.transform import iradon, radon

    from ctdose.twin import phantom as ph
    from ctdose.twin.presets import get_preset
    from ctdose.twin.projector import ParallelBeam, fbp, project

    preset = get_preset("demo")
    grid = ph.ScanGrid(preset.n_pix, preset.pixel_mm, n_slices, 2.0, 2.0)
    images = ph.build_phantom(grid, 0, ph.Pose(), 1).hu
    images = np.clip(images + 1000.0, 0, None).astype(np.float32) / 1000.0
    geom = ParallelBeam.for_matrix(preset.n_pix)
    theta = np.degrees(geom.angles)
    fbp(project(images[:1], geom), geom)  # builds the cached projector matrix
    start = time.perf_counter()
    ours = fbp(project(images, geom), geom)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    ref = np.stack([iradon(radon(im, theta, circle=False), theta, filter_name="ramp", circle=False,
                           output_size=preset.n_pix) for im in images])
    t_ref = time.perf_counter() - start
    yy, xx = np.mgrid[:preset.n_pix, :preset.n_pix] - preset.n_pix // 2
    inside = xx ** 2 + yy ** 2 < (0.4 * preset.n_pix) ** 2
    rel = float(np.sqrt(np.mean((ours - ref)[:, inside] ** 2)) / np.sqrt(np.mean(ref[:, inside] ** 2)))
    print(f"\n[1] projection + FBP, {n_slices} slices {preset.n_pix}x{preset.n_pix}, "
          f"{geom.n_angles} views, 1 thread")
    print(f"{'':24s}{'s/volume':>10s}{'slices/s':>10s}")
    print(f"{'ctdose (sparse, batched)':24s}{t_ours:10.2f}{n_slices / t_ours:10.1f}")
    print(f"{'skimage radon + iradon':24s}{t_ref:10.2f}{n_slices / t_ref:10.1f}")
    print(f"speed-up: {t_ref / t_ours:.1f}x   (relative RMS difference of the images: {rel:.3f})")


def noise_table(scanners: list[str]) -> None:
    import dataclasses

    from ctdose.naming import DOSE_LEVELS_MGY, ROI_NAMES
    from ctdose.twin import imaging
    from ctdose.twin import phantom as ph
    from ctdose.twin.generate import calibrate, expected_noise_hu, scan_grid
    from ctdose.twin.presets import get_preset
    from ctdose.twin.recon import denoise
    from ctdose.twin.scanners import MU_WATER_PER_MM, get_scanner

    preset = get_preset("demo")
    print("\n[2] noise std (HU) in normal liver, demo grid (3 slices through the ROIs); FBP / IR / DL per dose (mGy)")
    print(f"{'scanner':8s}{'kernel':10s}{'photons/ray/mGy':>16s}  "
          + "".join(f"{d:>20g}" for d in DOSE_LEVELS_MGY))
    for code in scanners:
        profile = get_scanner(code)
        grid = scan_grid(preset, profile)
        cal = calibrate(profile, grid)
        small = dataclasses.replace(grid, n_slices=3)
        mu_w = MU_WATER_PER_MM[profile.kvp]
        n_angles = imaging.n_angles_for(small)
        body = imaging.body_line_integrals(small, ph.Pose(), imaging.slab_positions(small)[0], mu_w, n_angles)
        phantom = ph.build_phantom(small, 1, ph.Pose(), preset.z_subsamples, margin=imaging.SIGNAL_MARGIN)
        clean = imaging.signal_image(phantom, profile)
        normal = np.isin(phantom.rois, [ROI_NAMES.index("normal1") + 1, ROI_NAMES.index("normal2") + 1])
        rng = np.random.default_rng(2024)
        cells = []
        for dose in DOSE_LEVELS_MGY:
            photons = cal["photons_per_ray_per_mgy"] * dose
            img = clean + imaging.acquisition_noise(body, small, profile, mu_w, photons, rng)
            sigma = expected_noise_hu(profile, dose)
            recons = [r for r in profile.recons_at(dose) if r != "FBP"]
            vals = [img] + [denoise(img, r, sigma, profile.ir_strength) for r in recons]
            cleans = [clean] + [denoise(clean, r, sigma, profile.ir_strength) for r in recons]
            stds = [float((v - c)[normal].std()) for v, c in zip(vals, cleans)]
            cells.append(" / ".join(f"{s:.1f}" for s in stds))
        print(f"{code:8s}{profile.kernel:10s}{cal['photons_per_ray_per_mgy']:16.0f}  "
              + "".join(f"{c:>20s}" for c in cells))


def demo_wall_time(workers: int) -> None:
    from ctdose.twin.generate import generate_twin
    from ctdose.twin.presets import get_preset

    out = Path(tempfile.mkdtemp(prefix="bench_twin_"))
    try:
        start = time.perf_counter()
        truth = generate_twin(out, get_preset("demo"), workers=workers)
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n[3] demo preset: {len(truth['series'])} series written in {wall:.0f} s with {workers} workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small throughput test, 3 scanners, no demo run (< 1 min)")
    parser.add_argument("--slices", type=int, default=SLICES,
                        help="slices in the throughput test (default %(default)s)")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help="workers for the demo run (default %(default)s)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    from ctdose.twin.scanners import SCANNERS

    torch.set_num_threads(1)
    throughput(4 if args.quick else args.slices)
    noise_table(["A1", "C1", "E1"] if args.quick else list(SCANNERS))
    if not args.quick:
        demo_wall_time(args.workers)


if __name__ == "__main__":
    main()
