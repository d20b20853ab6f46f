#!/usr/bin/env python
"""The twin's (or real data's) image metrics beside the dataset paper's published ones, per cell.

Reads an existing results folder's image-metric tables (analyze/image_metrics.py: the Table 6 equivalent
and the scanner pairs), sets them beside the paper's Table 6 and Tables 3-5 (ctdose.published), and prints
every Table 6 cell (ours mean ± sd vs the paper's, within the aim yes/no) and the summary: cells within
|ours - paper| <= max(2 sd, 15 %), Spearman rho of the off-diagonal scanner pairs (aim for RMSE >= 0.6) and
the off-diagonal / diagonal mean ratios. Measures nothing itself; without the tables it says so and exits 0
(so benchmarks/run_all.py skips it cleanly).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ctdose.csv_io import read_csv
from ctdose.layout import ResultsLayout, repo_path
from ctdose.published import compare_scanner_pairs, compare_table6, describe, summary_frame

# --- settings ---
RESULTS = "results"     # results folder holding analysis/image_metrics_*.csv (repo-relative)
ALL_CELLS = False       # True: also print the published cells missing from ours
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--all-cells", action="store_true", default=ALL_CELLS,
                   help="also print the published cells missing from ours")
    args, _ = p.parse_known_args(argv)  # run_all.py passes its flags (e.g. --quick) to every benchmark
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    if not layout.image_metrics_dose.is_file():
        print(f"skipped: no image metrics in {layout.root} (make them with `{layout.command('image_metrics')}`)")
        return 0
    by_dose = read_csv(layout.image_metrics_dose, dtype={"scanner": str, "recon": str})
    by_scanner = (read_csv(layout.image_metrics_scanner, dtype={"scanner_a": str, "scanner_b": str, "recon": str})
                  if layout.image_metrics_scanner.is_file() and layout.image_metrics_scanner.stat().st_size > 1
                  else pd.DataFrame())
    cells = compare_table6(by_dose)
    pairs, summary = compare_scanner_pairs(by_scanner)
    shown = cells if args.all_cells else cells[cells["status"] != "twin missing"]
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.precision", 3):
        print(f"Table 6 cells (ours: {layout.image_metrics_dose}):")
        print(shown.drop(columns=["difference"]).to_string(index=False))
        print("\nScanner pairs, summary:")
        print(summary_frame(summary).to_string(index=False))
    print()
    for line in describe(cells, summary):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
