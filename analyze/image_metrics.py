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
L = 3000 HU, C1 = 900 HU^2, C2 = 8100 HU^2; PSNR's peak is 3000 HU. The catalog and every transform
are checked against their sidecars. Each pair is cached under analysis/image_metrics_partial/ (a
one-row CSV whose sidecar records both transforms' checksums), so a re-run only measures new pairs
and pairs whose registration changed; with the same catalog, transforms and settings it does nothing.
"""

from __future__ import annotations

import argparse
import sys

from ctdose.atomic import write_csv
from ctdose.catalog import read_catalog
from ctdose.cli import run_main
from ctdose.csv_io import csv_errors_named
from ctdose.image_metrics import (METRIC_SETTINGS, figure_plan, measure_pairs, metric_pairs, metric_tables,
                                  pair_jobs)
from ctdose.layout import ResultsLayout, repo_path
from ctdose.plots import figure_files, metric_bars
from ctdose.provenance import is_current, verify, write_sidecar

# --- settings ---
RESULTS = "results"          # reads catalog.csv, transforms/; writes analysis/ (repo-relative)
REFERENCE_DOSE = 14.0        # reference dose of the vs_dose comparison (mGy)
SCANNER_DOSE = 10.0          # dose of the between-scanner comparison (mGy)
REFERENCE_SCANNER = ""       # reference scanner of the between-scanner comparison ("" = first in sorted order)
WORKERS = 1                  # parallel worker processes (Dask); 1 = in-process
SCHEDULER = ""               # address of an existing Dask scheduler ("" = local)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--reference-dose", type=float, default=REFERENCE_DOSE, help="default: %(default)s mGy")
    p.add_argument("--scanner-dose", type=float, default=SCANNER_DOSE, help="default: %(default)s mGy")
    p.add_argument("--reference-scanner", default=REFERENCE_SCANNER,
                   help="reference scanner code (default: first scanner in sorted order)")
    p.add_argument("--workers", type=int, default=WORKERS, help="worker processes (default: %(default)s)")
    p.add_argument("--scheduler", default=SCHEDULER, help="Dask scheduler address (default: local)")
    p.add_argument("--force", action="store_true", help="rewrite the summary tables even if they are up to date")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    verify(layout.catalog, layout.command("prepare"))
    with csv_errors_named(layout.catalog):
        catalog = read_catalog(layout.catalog)
    pairs = metric_pairs(catalog, args.reference_dose, args.scanner_dose, args.reference_scanner or None)
    if pairs.empty:
        raise ValueError(f"no series pairs to compare in {layout.catalog} "
                         f"(needs {args.reference_dose:g} mGy series per scanner)")
    jobs = pair_jobs(catalog, pairs, layout)
    settings = {"reference_dose": args.reference_dose, "scanner_dose": args.scanner_dose,
                "reference_scanner": args.reference_scanner, **METRIC_SETTINGS}
    inputs = [layout.catalog, *sorted({t for job in jobs for t in job.inputs})]
    plan = figure_plan(pairs)
    outputs = [layout.image_metrics_series, layout.image_metrics_scanner,
               *(f for fig in plan for f in figure_files(layout.image_metrics_figure(fig.name)))]
    if not args.force and is_current(layout.image_metrics_dose, settings, inputs, outputs):
        print(f"image metrics up to date: {layout.image_metrics_dose}")
        return 0
    per_pair, n_new = measure_pairs(jobs, args.workers, args.scheduler or None)
    by_dose, by_scanner = metric_tables(per_pair)
    write_csv(per_pair, layout.image_metrics_series)
    write_csv(by_scanner, layout.image_metrics_scanner)
    for fig in plan:
        if fig.comparison == "vs_dose":
            metric_bars(by_dose[by_dose["recon"] == fig.recon], fig.metric, "scanner", "dose_mgy",
                        f"{fig.metric} vs {args.reference_dose:g} mGy ({fig.recon})",
                        layout.image_metrics_figure(fig.name))
        else:
            metric_bars(by_scanner, fig.metric, "scanner", "recon",
                        f"{fig.metric} vs scanner {by_scanner['reference_scanner'].iloc[0]} at "
                        f"{args.scanner_dose:g} mGy", layout.image_metrics_figure(fig.name))
    write_csv(by_dose, layout.image_metrics_dose)
    write_sidecar(layout.image_metrics_dose, settings, inputs=inputs, outputs=outputs, n_pairs=len(per_pair))
    print(f"image metrics: {len(per_pair)} pairs ({n_new} measured, {len(per_pair) - n_new} cached) "
          f"-> {layout.image_metrics_dose}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
