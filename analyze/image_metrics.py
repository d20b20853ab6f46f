#!/usr/bin/env python
"""RMSE, PSNR and SSIM of registered CT volumes inside the phantom (air excluded).

Two comparisons (dataset paper layouts), pairs chosen by ctdose.image_metrics.metric_pairs:
* vs_dose (Table 6): every series against its scanner's 14 mGy series (same recon, same repetition
  if present) -> <results>/analysis/image_metrics_vs_14mGy.csv, scanner x recon x dose, mean and sd
  over repetitions;
* vs_scanner (Tables 3-5): every 10 mGy series against the reference scanner's 10 mGy series (same
  recon and repetition) -> image_metrics_vs_reference_scanner.csv.
The series is resampled (linear) onto the reference series' grid through both rigid transforms
(results/transforms); the mask is the reference's body (HU > -500); SSIM uses a 7-voxel cubic window,
L = 3000 HU, C1 = 900 HU^2, C2 = 8100 HU^2; PSNR's peak is 3000 HU. Per-pair results are cached
under analysis/image_metrics_partial/, so a re-run only measures new pairs.
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from ctdose.atomic import write_csv, write_json
from ctdose.image_metrics import (BODY_THRESHOLD_HU, DATA_RANGE_HU, SSIM_WINDOW, body_mask, compare,
                                  metric_pairs, resample_into, summarize_metrics)
from ctdose.layout import ResultsLayout
from ctdose.parallel import parallel_map
from ctdose.plots import metric_bars
from ctdose.provenance import write_sidecar
from ctdose.report import analysis_files

# --- settings ---
RESULTS = "results"          # results folder (reads catalog.csv and transforms/, writes analysis/)
REFERENCE_DOSE = 14.0        # reference dose of the vs_dose comparison (mGy)
SCANNER_DOSE = 10.0          # dose of the between-scanner comparison (mGy)
REFERENCE_SCANNER = ""       # reference scanner of the between-scanner comparison ("" = first in sorted order)
WORKERS = 1                  # parallel worker processes (Dask); 1 = in-process
SCHEDULER = ""               # address of an existing Dask scheduler ("" = local)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS, help="results folder (default: %(default)s)")
    p.add_argument("--reference-dose", type=float, default=REFERENCE_DOSE, help="default: %(default)s mGy")
    p.add_argument("--scanner-dose", type=float, default=SCANNER_DOSE, help="default: %(default)s mGy")
    p.add_argument("--reference-scanner", default=REFERENCE_SCANNER,
                   help="reference scanner code (default: first scanner in sorted order)")
    p.add_argument("--workers", type=int, default=WORKERS, help="worker processes (default: %(default)s)")
    p.add_argument("--scheduler", default=SCHEDULER, help="Dask scheduler address (default: local)")
    return p.parse_args(argv)


def measure_pair(job: dict) -> dict:
    """Read both series, resample the series onto the reference grid, compare inside the body."""
    from ctdose.dicom_io import read_ct_series, read_reference_series
    from ctdose.registration import load_transform

    series = read_ct_series(job["path"], job["pair"]["series_uid"])
    reference = read_reference_series(job["reference_path"], job["pair"]["reference_uid"])
    moved = resample_into(series, load_transform(job["transform"]), reference,
                          load_transform(job["reference_transform"]))
    mask = body_mask(reference.array)
    result = {**job["pair"], **compare(moved, reference.array, mask), "n_voxels": int(mask.sum())}
    write_json(result, job["partial"])
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    files = analysis_files(args.results)
    partial_dir = layout.analysis_dir / "image_metrics_partial"
    try:
        from ctdose.catalog import read_catalog

        catalog = read_catalog(layout.catalog)
        pairs = metric_pairs(catalog, args.reference_dose, args.scanner_dose, args.reference_scanner or None)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    if pairs.empty:
        sys.exit(f"error: no series pairs to compare in {layout.catalog} "
                 f"(needs {args.reference_dose:g} mGy series per scanner)")
    paths = catalog.set_index("series_uid")["path"].to_dict()
    jobs, done = [], []
    for pair in pairs.to_dict("records"):
        partial = partial_dir / f"{pair['comparison']}__{pair['series_uid']}__{pair['reference_uid']}.json"
        if partial.exists():
            done.append(json.loads(partial.read_text()))
            continue
        jobs.append({"pair": pair, "partial": str(partial), "path": paths[pair["series_uid"]],
                     "reference_path": paths[pair["reference_uid"]],
                     "transform": str(layout.transform(pair["series_uid"])),
                     "reference_transform": str(layout.transform(pair["reference_uid"]))})
    try:
        done += parallel_map(measure_pair, jobs, workers=args.workers, scheduler=args.scheduler or None,
                             desc="image metrics", unit="pair")
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    per_pair = pd.DataFrame(done).sort_values(["comparison", "scanner", "recon", "dose_mgy", "repetition"])
    write_csv(per_pair, files["image_metrics_series"])
    by_dose = summarize_metrics(per_pair[per_pair["comparison"] == "vs_dose"], ["scanner", "recon", "dose_mgy"])
    vs_scan = per_pair[per_pair["comparison"] == "vs_scanner"]
    by_scanner = (summarize_metrics(vs_scan, ["scanner", "reference_scanner", "recon", "dose_mgy"])
                  if not vs_scan.empty else pd.DataFrame())
    write_csv(by_dose, files["image_metrics_dose"])
    write_csv(by_scanner, files["image_metrics_scanner"])
    figs = files["image_metrics_figs"]
    for metric in ("ssim", "rmse_hu", "psnr_db"):
        for recon, sub in by_dose.groupby("recon"):
            metric_bars(sub, metric, "scanner", "dose_mgy",
                        f"{metric} vs {args.reference_dose:g} mGy ({recon})", figs / f"vs_dose_{metric}_{recon}")
        if not by_scanner.empty:
            metric_bars(by_scanner, metric, "scanner", "recon",
                        f"{metric} vs scanner {by_scanner['reference_scanner'].iloc[0]} at {args.scanner_dose:g} mGy",
                        figs / f"vs_scanner_{metric}")
    settings = {k: v for k, v in vars(args).items() if k not in ("results", "workers", "scheduler")}
    settings.update(mask=f"reference HU > {BODY_THRESHOLD_HU:g}", ssim_window=SSIM_WINDOW,
                    data_range_hu=DATA_RANGE_HU, c1=(0.01 * DATA_RANGE_HU) ** 2, c2=(0.03 * DATA_RANGE_HU) ** 2,
                    psnr_peak_hu=DATA_RANGE_HU, resampling="linear, series onto reference grid")
    write_sidecar(files["image_metrics_dose"], settings, n_pairs=len(per_pair))
    print(f"image metrics: {len(per_pair)} pairs ({len(jobs)} new) -> {files['image_metrics_dose']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
