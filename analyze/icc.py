#!/usr/bin/env python
"""ICC(3,1) and ICC(3,k) of every feature of every extractor, across doses and across scanners.

Views: 'dose' = within each scanner, targets = ROI patches (roi, patch), raters = dose levels;
'scanner' = at each dose, targets = ROI patches, raters = scanners. Repeated scans are averaged and
reconstructions analysed one at a time unless set otherwise. Writes under <results>/analysis/:
icc_per_feature.csv (one row per feature and view group; degenerate features listed as excluded),
icc_summary.csv (+ .json sidecar with the settings: mean, median, sd, share > 0.75 / 0.9 per extractor
x scanner and extractor x dose), icc_boxplots.png/.pdf. A re-run with the same inputs and settings
does nothing.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.features import EXTRACTORS, available_tables, load_tables, outputs_current
from ctdose.plots import icc_boxplots
from ctdose.provenance import write_sidecar
from ctdose.report import analysis_files
from ctdose.stats.icc import ICCSettings, icc_views, summarize_icc

# --- settings ---
RESULTS = "results"            # results folder (reads features/, writes analysis/)
RECON = "each"                 # each: one reconstruction at a time; average: mean over reconstructions
REPETITIONS = "average"        # average: mean over repeated scans; first: lowest repetition only
STANDARDIZE = "none"           # none | per_rater (z-score each feature within each rater column)
CLIP = False                   # clip negative ICCs to 0
MIN_RATERS = 2                 # skip view groups with fewer raters
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS, help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to analyse if their table exists (default: all)")
    p.add_argument("--recon", default=RECON, choices=("each", "average"),
                   help="reconstructions one at a time or averaged (default: %(default)s)")
    p.add_argument("--repetitions", default=REPETITIONS, choices=("average", "first"),
                   help="how repeated scans are combined (default: %(default)s)")
    p.add_argument("--standardize", default=STANDARDIZE, choices=("none", "per_rater"),
                   help="standardise features within each rater first (default: %(default)s)")
    p.add_argument("--clip", action="store_true", default=CLIP, help="clip negative ICC values to 0")
    p.add_argument("--min-raters", type=int, default=MIN_RATERS, help="minimum raters per view group")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = analysis_files(args.results)
    try:
        settings = ICCSettings(recon=args.recon, repetitions=args.repetitions, standardize=args.standardize,
                               clip=args.clip, min_raters=args.min_raters)
        inputs = list(available_tables(args.results, args.extractors).values())
        record = {**settings.as_dict(), "extractors": sorted(args.extractors),
                  "targets": "roi x patch", "raters": {"dose": "dose_mgy within scanner", "scanner": "scanner at dose"}}
        outputs = [files["icc_summary"], files["icc_per_feature"], files["icc_boxplots"].with_suffix(".png")]
        if not args.force and inputs and outputs_current(outputs, inputs, record):
            print(f"ICC outputs up to date: {files['icc_summary']}")
            return 0
        tables = load_tables(args.results, args.extractors)
        per_feature = pd.concat([icc_views(t, settings) for t in tables.values()], ignore_index=True)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    summary = summarize_icc(per_feature)
    write_csv(per_feature, files["icc_per_feature"])
    icc_boxplots(per_feature, files["icc_boxplots"])
    write_csv(summary, files["icc_summary"])
    write_sidecar(files["icc_summary"], record, inputs=[str(p) for p in inputs],
                  untrained={n: t.untrained for n, t in tables.items()})
    n_excl = int((per_feature["status"] != "ok").sum())
    print(f"ICC: {len(tables)} extractor(s), {len(per_feature)} feature x group rows "
          f"({n_excl} excluded as degenerate) -> {files['icc_summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
