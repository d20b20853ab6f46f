"""Benchmark of the feature extractors, ratios measured side by side in one run.

* SwinUNETR and CT-FM: patches/s in batches of CPU_BATCHES (GPU_BATCHES on a GPU, when there is one;
  device reported), each against a per-patch loop (batch 1). Run with the memory setting of every
  ctdose process (``ctdose.memory``): on the CPU a batch whose peak passes 2 GiB is slower per patch.
  Patches are sampled from a phantom volume (the twin's noise-free phantom plus Gaussian noise) with
  ``sample_patches``, once per series as the extractors do; the sampling time is reported separately
  and included in the end-to-end rate.
* PyRadiomics: per-series wall time of the extractor (DICOM read, sampling, PyRadiomics, partial CSV
  written) vs the sum of the pure PyRadiomics ``execute`` calls on the same patches (overhead %), and
  the speed-up of 2 Dask worker processes over 1 on the same series.

Run: .venv/bin/python benchmarks/bench_extractors.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from ctdose.atomic import write_csv
from ctdose.extractors import deep, driver, radiomics_features
from ctdose.layout import ResultsLayout
from ctdose.memory import keep_freed_memory
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.parallel import dask_client, parallel_map
from ctdose.patches import sample_patches
from ctdose.provenance import write_sidecar
from ctdose.volume import Volume

# --- settings ---
PARAMS = str(Path(__file__).resolve().parents[1] / "radiomics" / "params.yaml")
N_PATCHES = 16  # patches per network measurement (quick: 4)
REPEATS = 2  # each timing repeated, best kept (quick: 1)
CPU_BATCHES = (1, 2, 8)
GPU_BATCHES = (1, 64)
N_SERIES = 4  # radiomics series for the 1 vs 2 worker comparison (quick: 2)
RADIOMICS_PATCHES_PER_ROI = 2  # quick: 1
# --- end settings ---


def phantom_volume(seed: int, n_pix: int = 256, n_slices: int = 56) -> Volume:
    """The twin's phantom on a 0.6836 mm x 2 mm grid with 15 HU Gaussian noise."""
    import dataclasses

    from ctdose.twin.generate import scan_grid
    from ctdose.twin.phantom import build_phantom
    from ctdose.twin.presets import get_preset
    from ctdose.twin.scanners import get_scanner

    preset = get_preset("demo").with_overrides(region_px=n_pix, slice_mm=2.0, increment_mm=2.0)
    grid = dataclasses.replace(scan_grid(preset, get_scanner("A1")), n_slices=n_slices)
    image = build_phantom(grid, texture_seed=0, z_subsamples=1)
    noise = np.random.default_rng(seed).normal(0.0, 15.0, image.hu.shape).astype(np.float32)
    return Volume(image.hu + noise, grid.origin, grid.spacing)


def jittered_centers(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` centers cycling over the six ROIs, jittered by up to 3 mm."""
    from ctdose.twin.phantom import ROI_CENTERS_MM

    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        roi = ROI_NAMES[k % len(ROI_NAMES)]
        x, y, z = np.array(ROI_CENTERS_MM[roi]) + rng.uniform(-3, 3, 3)
        rows.append({"roi": roi, "roi_class": ROI_CLASSES[roi], "patch": k // len(ROI_NAMES),
                     "x_mm": x, "y_mm": y, "z_mm": z})
    return pd.DataFrame(rows)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_networks(volume: Volume, n: int, device: torch.device, batches: tuple[int, ...], repeats: int
                   ) -> list[tuple]:
    """(network, device, batch, sample s, embed s, end-to-end patches/s) rows; embed s = best of ``repeats``
    (the batch sizes' runs alternate, so a load spike on a shared machine hits them alike)."""
    xyz = jittered_centers(n)[["x_mm", "y_mm", "z_mm"]].to_numpy()
    t0 = time.perf_counter()
    # as the extractors do: one sampler call, on the GPU by grid_sample when there is one
    patches = sample_patches(volume, xyz, device=device if device.type == "cuda" else None).patches
    _sync(device)
    t_sample = time.perf_counter() - t0
    rows = []
    deep.configure(device, 0)
    for name in ("swin", "ctfm"):
        net, _ = deep.build_network(name, None, allow_untrained=True, seed=0)
        for b in batches:  # warm-up with every batch shape (kernel selection, allocator)
            deep.embed_patches(net, patches[:min(b, n)], b, device)
        best = {b: np.inf for b in batches}
        for _ in range(repeats):
            for b in best:
                _sync(device)
                t0 = time.perf_counter()
                deep.embed_patches(net, patches, b, device)
                _sync(device)
                best[b] = min(best[b], time.perf_counter() - t0)
        rows += [(name, str(device), b, t_sample, t, n / (t_sample + t)) for b, t in best.items()]
    return rows


def make_series(root: Path, n_series: int, per_roi: int) -> tuple[ResultsLayout, list[driver.SeriesJob]]:
    """DICOM series of the noisy phantom + catalog, identity transforms and centers under ``root``."""
    from ctdose.catalog import build_catalog
    from ctdose.dicom_io import CTSeriesMeta, write_ct_series
    from ctdose.transform_io import save_transform

    for k in range(n_series):
        meta = CTSeriesMeta(manufacturer="SIEMENS", model="Bench", kvp=120.0, tube_current_ma=100.0,
                            exposure_mas=50.0, ctdivol=10.0, kernel="Br40",
                            series_description=f"A1_1000_Bench_ID{k + 1}_Harmonized_10mGy_FBP",
                            series_uid=f"1.2.826.0.1.3680043.10.999.{k + 1}", study_uid="1.2.826.0.1.3680043.10.999",
                            series_number=k + 1, station="A1")
        write_ct_series(phantom_volume(seed=k), root / "data" / f"s{k}", meta)
    layout = ResultsLayout(root / "results")
    with warnings.catch_warnings():  # the benchmark series have no SEG on purpose
        warnings.simplefilter("ignore")
        catalog = build_catalog(root / "data")
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, {"data": str(root / "data")})
    for uid in catalog["series_uid"]:
        save_transform(sitk.Euler3DTransform(), layout.transform(uid))
        write_sidecar(layout.transform(uid), {"series_uid": uid})
    write_csv(jittered_centers(per_roi * len(ROI_NAMES)), layout.patch_centers)
    write_sidecar(layout.patch_centers, {"per_roi": per_roi})
    _, centers = driver.read_inputs(layout)
    return layout, driver.make_jobs(catalog, driver.select_centers(centers), layout, "radiomics")


def bench_radiomics(n_series: int, per_roi: int, repeats: int) -> dict[str, float]:
    """Per-series overhead over pure PyRadiomics (best of ``repeats``), and the 1 vs 2 worker wall times."""
    params = radiomics_features.load_params(PARAMS)
    task = radiomics_features.RadiomicsTask(params, "patch", driver.PatchSettings())
    with tempfile.TemporaryDirectory() as tmp:
        layout, jobs = make_series(Path(tmp), n_series, per_roi)
        job = jobs[0]
        volume, transform = driver.load_series(job)
        patches = sample_patches(volume, job.centers[["x_mm", "y_mm", "z_mm"]].to_numpy(), transform).patches
        extractor = radiomics_features.make_extractor(params)
        wall = pure = np.inf
        for _ in range(repeats):  # alternate the two measurements, keep the best of each
            Path(job.partial_path).unlink(missing_ok=True)
            t0 = time.perf_counter()
            task(job)
            wall = min(wall, time.perf_counter() - t0)
            total = 0.0
            for p in patches:
                image = radiomics_features.patch_image(p, driver.PatchSettings().spacing_xyz)
                mask = radiomics_features.box_mask(image, 1)
                t0 = time.perf_counter()
                extractor.execute(image, mask, label=1)
                total += time.perf_counter() - t0
            pure = min(pure, total)
        timings = {"series_wall_s": wall, "pure_pyradiomics_s": pure, "patches": len(patches)}
        shutil.rmtree(layout.features_dir, ignore_errors=True)
        t0 = time.perf_counter()
        parallel_map(task, jobs, workers=1, desc="radiomics x1")
        timings["workers_1_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with dask_client(2) as client:  # a running 2-process cluster, used through its address
            # warm the workers (imports of pydicom, highdicom, PyRadiomics ... cost ~3 s CPU each, once per
            # process): one untimed pass, as the 1-worker run above is warm from the overhead measurement
            shutil.rmtree(layout.features_dir, ignore_errors=True)
            parallel_map(replace(task, threads=1), jobs, scheduler=client.scheduler.address, desc="warm-up")
            timings["cluster_start_s"] = time.perf_counter() - t0
            shutil.rmtree(layout.features_dir, ignore_errors=True)
            t0 = time.perf_counter()
            parallel_map(replace(task, threads=1), jobs, scheduler=client.scheduler.address, desc="radiomics x2")
            timings["workers_2_s"] = time.perf_counter() - t0
    return timings


def report_networks(n: int, repeats: int) -> None:
    """Measure and print the network rows (CPU, and GPU when there is one)."""
    volume = phantom_volume(seed=0)
    rows = bench_networks(volume, n, torch.device("cpu"), CPU_BATCHES, repeats)
    if torch.cuda.is_available():
        rows += bench_networks(volume, max(n, 8 * max(GPU_BATCHES)), torch.device("cuda"), GPU_BATCHES,
                               max(repeats, 3))
    print(f"\nnetworks ({n} patches of 64x64x32 from a {volume.array.shape} volume; "
          f"CPU threads {torch.get_num_threads()}"
          + (f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU") + ")")
    print(f"{'network':8} {'device':6} {'batch':>5} {'sample s':>9} {'embed s':>8} {'patches/s':>10} {'s/patch':>8}")
    for name, dev, b, ts, te, rate in rows:
        print(f"{name:8} {dev:6} {b:5d} {ts:9.3f} {te:8.2f} {rate:10.2f} {1 / rate:8.3f}")
    for name in ("swin", "ctfm"):
        for dev in sorted({r[1] for r in rows}):
            rates = {r[2]: r[5] for r in rows if r[0] == name and r[1] == dev}
            print(f"{name} on {dev}: speed / per-patch speed = "
                  + ", ".join(f"{rate / rates[1]:.2f}x (batch {b})" for b, rate in rates.items() if b != 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few patches and series (< 1 min)")
    parser.add_argument("--patches", type=int, default=N_PATCHES, help="patches per network (default: %(default)s)")
    parser.add_argument("--series", type=int, default=N_SERIES, help="radiomics series (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="timings repeated, best kept (default: %(default)s; quick: 1)")
    parser.add_argument("--skip-radiomics", action="store_true", help="networks only")
    parser.add_argument("--skip-networks", action="store_true", help="radiomics only")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every ctdose script's process (ctdose.cli.run_main)
    n = 4 if args.quick else args.patches
    n_series = 2 if args.quick else args.series
    per_roi = 1 if args.quick else RADIOMICS_PATCHES_PER_ROI

    repeats = 1 if args.quick else args.repeats
    if not args.skip_networks:
        report_networks(n, repeats)
    if not args.skip_radiomics:
        t = bench_radiomics(n_series, per_roi, repeats)
        overhead = 100.0 * (t["series_wall_s"] - t["pure_pyradiomics_s"]) / t["pure_pyradiomics_s"]
        print(f"\nradiomics ({t['patches']} patches per series, {n_series} series)")
        print(f"per-series wall {t['series_wall_s']:.2f} s vs pure PyRadiomics {t['pure_pyradiomics_s']:.2f} s: "
              f"overhead {overhead:.1f} %")
        print(f"{n_series} series: 1 worker {t['workers_1_s']:.2f} s, 2 workers {t['workers_2_s']:.2f} s: "
              f"speed-up {t['workers_1_s'] / t['workers_2_s']:.2f}x (2-worker cluster started and warmed "
              f"beforehand in {t['cluster_start_s']:.1f} s, not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
