#!/usr/bin/env python
"""Data-layer benchmark: patch sampling vs whole-volume resampling, registration time, catalog speed.

1. 60 patches (64x64x32) from a 512x512x100 volume through a rigid transform: one call of
   ctdose.patches.sample_patches (the CPU kernel) vs resampling the whole volume with SimpleITK and
   cropping, side by side on the same threads, with the other candidates measured for the sampler
   (SimpleITK per patch grid, torch grid_sample on the CPU, scipy map_coordinates) and the max
   |difference| of each from the sampler in HU.
2. Rigid registration of a 256x256x50 phantom pair (target < 3 s on one core).
3. Catalog speed (series/s, files/s) on a generated tree of 20 series x 40 slices, and the time
   to read one series' pixels.
`--quick` shrinks every case so the whole run takes well under a minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ctdose.catalog import CatalogWarning, build_catalog
from ctdose.dicom_io import CTSeriesMeta, read_ct_series, write_ct_series
from ctdose.patches import (FILL_HU, PATCH_SIZE_XYZ, PATCH_SPACING_XYZ, affine_from_transform,
                            default_threads, patch_index_grid, sample_patches)
from ctdose.registration import register_rigid
from ctdose.volume import Volume

# --- settings ---------------------------------------------------------------------------------
PATCH_VOLUME_ZYX = (100, 512, 512)   # volume the patches are cut from
N_PATCHES = 60                       # 6 ROIs x 10 patches
REGISTRATION_ZYX = (50, 256, 256)    # volume pair registered
CATALOG_SERIES, CATALOG_SLICES = 20, 40
CATALOG_SLICE_SIZE = 128             # rows = columns of the generated catalog series
REPEATS = 3                          # best-of repeats for the timed calls
THREADS = 1                          # SimpleITK threads of the registration case
PATCH_THREADS = default_threads()    # threads of every patch-sampling candidate (all cores)
# ------------------------------------------------------------------------------------------------


def best_time(func, repeats: int) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def smooth_volume(shape_zyx: tuple[int, int, int], spacing_xyz, seed: int = 0) -> Volume:
    """Smoothed noise in HU (texture at every scale the patches see)."""
    noise = np.random.default_rng(seed).normal(0, 1, shape_zyx).astype(np.float32)
    array = ndimage.gaussian_filter(noise, (1, 3, 3)) * 300.0
    origin = -0.5 * (np.array(shape_zyx[::-1]) - 1) * np.array(spacing_xyz)
    return Volume(array, origin, spacing_xyz)


def best_times_interleaved(funcs: dict[str, Callable[[], object]],
                           repeats: int) -> dict[str, tuple[float, object]]:
    """Smallest wall time of each function over ``repeats`` rounds that call every function in turn (so a
    load spike on a shared machine hits them alike), with its last result."""
    best: dict[str, tuple[float, object]] = {name: (float("inf"), None) for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            start = time.perf_counter()
            result = func()
            best[name] = (min(best[name][0], time.perf_counter() - start), result)
    return best


def bench_patches(shape_zyx, n_patches: int, repeats: int, threads: int) -> None:
    """60 study patches through a rigid transform: one sampler call vs resampling the whole volume.

    Every candidate runs on ``threads`` threads (SimpleITK, torch and the sampler alike; scipy has one);
    the whole-volume path resamples onto the reference grid (shifted half a voxel so that the even-sized
    patches fall on its voxels) and crops. Differences are max |a - b| in HU over all patch voxels.
    """
    volume = smooth_volume(shape_zyx, PATCH_SPACING_XYZ)
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*np.deg2rad([2.0, -1.5, 3.0]))
    transform.SetTranslation((1.7, -2.3, 1.1))
    rng = np.random.default_rng(1)
    # centers on reference voxel positions, far enough from the edges for whole patches
    half = np.array(PATCH_SIZE_XYZ) // 2 + np.array([16, 16, 6])
    ijk = np.column_stack([rng.integers(h, n - h, n_patches) for h, n in zip(half, volume.shape_xyz)])
    centers = volume.index_to_physical(ijk.astype(float))
    image = volume.to_sitk()
    nx, ny, nz = PATCH_SIZE_XYZ

    offset_image = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    offset_image.SetSpacing(image.GetSpacing())
    offset_image.SetOrigin(tuple(np.array(image.GetOrigin()) + 0.5 * np.array(image.GetSpacing())))
    offset_image.SetDirection(image.GetDirection())

    def resample_and_crop() -> np.ndarray:  # patch voxel 0 is grid index center - size / 2
        resampled = sitk.Resample(image, offset_image, transform, sitk.sitkLinear, FILL_HU)
        whole = sitk.GetArrayViewFromImage(resampled)  # a view: `resampled` must stay alive
        return np.stack([whole[k - nz // 2:k + nz // 2, j - ny // 2:j + ny // 2, i - nx // 2:i + nx // 2]
                         for i, j, k in ijk])

    def sitk_per_patch() -> np.ndarray:  # the former sampler: SimpleITK on each patch grid
        grid = sitk.Image(list(PATCH_SIZE_XYZ), sitk.sitkFloat32)
        grid.SetSpacing(PATCH_SPACING_XYZ)
        corner = (np.array(PATCH_SIZE_XYZ) - 1) / 2.0 * np.array(PATCH_SPACING_XYZ)
        out = []
        for center in centers:
            grid.SetOrigin(tuple(center - corner))
            patch = sitk.Resample(image, grid, transform, sitk.sitkLinear, FILL_HU)
            out.append(sitk.GetArrayFromImage(patch))
        return np.stack(out)

    first, steps = patch_index_grid(volume, centers, transform)
    voxel_zyx = np.stack(np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"), -1)
    points = (first[:, None] + (voxel_zyx[..., ::-1].reshape(-1, 3) @ steps)[None]).reshape(-1, 3)  # i j k

    candidates = {
        "ctdose sample_patches (CPU kernel)": lambda: sample_patches(volume, centers, transform,
                                                                     threads=threads),
        "resample whole volume + crop (ITK)": resample_and_crop,
        "sitk.Resample per patch grid": sitk_per_patch,
        "torch grid_sample on the CPU": lambda: sample_patches(volume, centers, transform,
                                                               device="cpu").patches,
        "scipy map_coordinates (1 thread)": lambda: ndimage.map_coordinates(
            volume.array, points[:, ::-1].T, order=1, mode="nearest").reshape(n_patches, nz, ny, nx),
    }
    itk_threads, torch_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)
    sample_patches(volume, centers[:1], transform)  # compile (or load) the CPU kernel once
    try:
        timed = best_times_interleaved(candidates, repeats)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
        torch.set_num_threads(torch_threads)

    t_patch, batch = timed["ctdose sample_patches (CPU kernel)"]
    print(f"patches: {n_patches} x {PATCH_SIZE_XYZ} from a {shape_zyx[::-1]} (x, y, z) volume through a "
          f"rigid transform (2, -1.5, 3 deg; 1.7, -2.3, 1.1 mm), {threads} thread(s) each, best of {repeats}")
    for label, (seconds, result) in timed.items():
        if result is batch:
            note = f"{int(batch.n_outside.sum())} voxels outside"
        else:
            note = f"max |difference| = {float(np.abs(np.asarray(result) - batch.patches).max()):.2g} HU"
        print(f"  {label:36s} {seconds * 1000:9.1f} ms   {seconds / t_patch:5.1f}x the sampler   ({note})")
    t_whole = timed["resample whole volume + crop (ITK)"][0]
    print(f"  ratio whole volume / patches = {t_whole / t_patch:.1f}x")


def phantom(shape_zyx, spacing_xyz, transform: sitk.Transform | None = None, seed: int = 0) -> Volume:
    """A torso-like test object in HU: elliptic body, spheres and rods of other densities, noise.

    ``transform`` (maps this volume's points to object points) moves the object.
    """
    nz, ny, nx = shape_zyx
    origin = -0.5 * (np.array([nx, ny, nz]) - 1) * np.array(spacing_xyz)
    axes = (origin[a] + spacing_xyz[a] * np.arange(n) for a, n in ((2, nz), (1, ny), (0, nx)))
    z, y, x = np.meshgrid(*axes, indexing="ij")
    if transform is not None:
        A, b = affine_from_transform(transform)
        x, y, z = np.moveaxis(np.stack([x, y, z], axis=-1) @ A.T + b, -1, 0)
    half = 0.45 * nx * spacing_xyz[0]
    hu = np.where((x / half) ** 2 + (y / (0.8 * half)) ** 2 <= 1, 50.0, -1000.0)
    rng = np.random.default_rng(seed)
    for n in range(12):  # spheres (radius 5-10 mm) at fixed pseudo-random places
        c = np.random.default_rng(n).uniform(-0.5, 0.5, 3) * [half, 0.8 * half, nz * spacing_xyz[2] * 0.6]
        r = 5.0 + n % 6
        hu[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r] = (-50.0, 150.0, 400.0)[n % 3]
    hu[((x + 0.6 * half) ** 2 + y ** 2) <= 36.0] = 700.0  # a rod along z
    return Volume((hu + rng.normal(0, 15, hu.shape)).astype(np.float32), origin, spacing_xyz)


def bench_registration(shape_zyx) -> None:
    truth = sitk.Euler3DTransform()
    truth.SetRotation(np.deg2rad(0.5), 0.0, np.deg2rad(1.5))
    truth.SetTranslation((3.0, -2.0, 1.5))
    spacing = (0.6836 * 512 / shape_zyx[2] / 2, 0.6836 * 512 / shape_zyx[1] / 2, 2.5)
    fixed = phantom(shape_zyx, spacing, seed=1)
    moving = phantom(shape_zyx, spacing, truth.GetInverse(), seed=2)
    cpu = time.process_time()
    result = register_rigid(fixed, moving)
    cpu = time.process_time() - cpu
    error = max(np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p)))
                for p in ((0.0, 0.0, 0.0), (30.0, 20.0, 10.0), (-40.0, 10.0, -20.0)))
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    print(f"registration: {shape_zyx[::-1]} (x, y, z) pair, {threads} ITK thread(s)")
    print(f"  {result.seconds:.2f} s wall, {cpu:.2f} s CPU, {result.iterations} iterations, correlation "
          f"{result.quality_before:.3f} -> {result.quality_after:.3f}, max point error {error:.2f} mm")


def bench_catalog(n_series: int, n_slices: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        volume = smooth_volume((n_slices, size, size), (0.6836, 0.6836, 2.0))
        for n in range(n_series):
            dose = (1, 3, 6, 10, 14)[n % 5]
            name = f"A1_{n}_ID{n}_Harmonized_{dose}mGy_FBP_NrFiles_{n_slices}"
            write_ct_series(volume, root / name, CTSeriesMeta(series_description=name, ctdivol=dose,
                                                              series_number=n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CatalogWarning)  # "no SEG references it": none written here
            t_catalog, catalog = best_time(lambda: build_catalog(root), 1)
        t_read, _ = best_time(lambda: read_ct_series(root / catalog["path"].iloc[0].split("/")[-1]), 3)
    n_files = n_series * n_slices
    print(f"catalog: {n_series} series x {n_slices} slices of {size}x{size} ({n_files} files), headers only")
    print(f"  {t_catalog:.2f} s = {n_series / t_catalog:.0f} series/s = {n_files / t_catalog:.0f} files/s")
    print(f"  reading one series' pixels: {t_read * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller cases, < 1 min in all")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"best-of repeats (default: {REPEATS})")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"SimpleITK threads of the registration case (default: {THREADS})")
    parser.add_argument("--patch-threads", type=int, default=PATCH_THREADS,
                        help=f"threads of every patch-sampling candidate, sampler and whole-volume "
                             f"resampling alike (default: all cores, {PATCH_THREADS})")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    if args.quick:
        bench_patches((60, 256, 256), N_PATCHES, 2, args.patch_threads)
        bench_registration((40, 192, 192))
        bench_catalog(5, 20, 64)
    else:
        bench_patches(PATCH_VOLUME_ZYX, N_PATCHES, args.repeats, args.patch_threads)
        bench_registration(REGISTRATION_ZYX)
        bench_catalog(CATALOG_SERIES, CATALOG_SLICES, CATALOG_SLICE_SIZE)


if __name__ == "__main__":
    sys.exit(main())
