#!/usr/bin/env python
"""ICC(3,1) and ICC(3,k) of every feature of every extractor, across doses and across scanners.

Views: 'dose' = within each scanner, targets = ROI patches (roi, patch), raters = dose levels;
'scanner' = at each dose, targets = ROI patches, raters = scanners. Repeated scans are averaged and
reconstructions analysed one at a time unless set otherwise. --protocol picks the defaults
(ctdose.protocols): toolkit = ICC(3,1) per feature, unclipped, both views, each reconstruction apart;
study = ICC(3,k) clipped at 0, raters = doses per scanner, targets = the six ROIs (patch features
averaged), reconstructions and repetitions averaged; dataset-paper = clipped ICC(3,1) across scanners
at 10 mGy, reconstructions and repetitions averaged (the summary mean is its Table 7 value). Explicit
flags override the preset. Writes under <results>/analysis/:
icc_per_feature.csv (one row per feature and view group: ICC(3,1) and ICC(3,k) with 95 % F-based
confidence intervals; constant features and features varying only between raters listed as excluded
with the reason), icc_summary.csv (+ .json sidecar with the settings and the reconstructions the
boxplots pool: mean, median, sd, share > 0.75 / 0.9 per extractor x scanner and extractor x dose),
icc_boxplots.png/.pdf (titled with the reconstructions they pool). Each input table is checked against its
extractor's sidecar first. A re-run with the same inputs and settings does nothing; a changed input
table or setting recomputes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.plots import figure_files, icc_boxplots
from ctdose.protocols import get_protocol, parse_with_protocol
from ctdose.provenance import is_current, write_sidecar
from ctdose.stats.icc import TARGETS, VIEW_GROUPS, VIEW_RATERS, ICCSettings, icc_views, summarize_icc

# --- settings ---
RESULTS = "results"            # reads features/, writes analysis/ (repo-relative)
STANDARDIZE = "none"           # none | per_rater (z-score each feature within each rater column)
MIN_RATERS = 2                 # skip view groups with fewer raters
# views, targets, recon, repetitions, clip, statistic and doses come from the --protocol preset
# (ctdose/protocols.py; default toolkit) unless given as flags
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to analyse if their table exists (default: all)")
    p.add_argument("--views", nargs="+", choices=tuple(VIEW_RATERS),
                   help="dose: raters = doses within each scanner; scanner: raters = scanners at each dose "
                        "(default: %(default)s)")
    p.add_argument("--targets", choices=tuple(TARGETS),
                   help="roi_patch: each ROI patch; roi: the ROIs, patch features averaged (default: %(default)s)")
    p.add_argument("--doses", nargs="*", type=float, metavar="MGY",
                   help="only these doses (mGy); none given = all (default: %(default)s)")
    p.add_argument("--recon", choices=("each", "average"),
                   help="reconstructions one at a time or averaged (default: %(default)s)")
    p.add_argument("--repetitions", choices=("average", "first"),
                   help="how repeated scans are combined (default: %(default)s)")
    p.add_argument("--standardize", default=STANDARDIZE, choices=("none", "per_rater"),
                   help="standardise features within each rater first (default: %(default)s)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction,
                   help="clip negative ICC values to 0 (default: %(default)s)")
    p.add_argument("--statistic", choices=("icc3_1", "icc3_k"),
                   help="the ICC summarised and plotted (default: %(default)s)")
    p.add_argument("--min-raters", type=int, default=MIN_RATERS, help="minimum raters per view group")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return parse_with_protocol(p, argv, lambda protocol: asdict(protocol.icc),
                               "--views --targets --doses --recon --repetitions --clip --statistic")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = ICCSettings(recon=args.recon, repetitions=args.repetitions, standardize=args.standardize,
                           clip=args.clip, min_raters=args.min_raters, targets=args.targets,
                           views=tuple(args.views), doses=tuple(args.doses), statistic=args.statistic)
    record = {**settings.as_dict(), "protocol": args.protocol, "extractors": sorted(args.extractors),
              "target_columns": list(TARGETS[settings.targets]),
              "raters": {v: f"{VIEW_RATERS[v]} within {VIEW_GROUPS[v]}" for v in settings.views}}
    inputs = list(available_tables(layout.root, args.extractors).values())
    outputs = [layout.icc_per_feature, *figure_files(layout.icc_boxplots)]
    if not args.force and inputs and is_current(layout.icc_summary, record, inputs, outputs):
        print(f"ICC outputs up to date: {layout.icc_summary}")
        return 0
    tables = load_tables(layout.root, args.extractors)
    per_feature = pd.concat([icc_views(t, settings) for t in tables.values()], ignore_index=True)
    summary = summarize_icc(per_feature, statistic=settings.statistic)
    write_csv(per_feature, layout.icc_per_feature)
    _, caption = icc_boxplots(per_feature, layout.icc_boxplots, value=settings.statistic)
    write_csv(summary, layout.icc_summary)
    excluded = per_feature.loc[per_feature["status"] != "ok", "status"].value_counts()
    write_sidecar(layout.icc_summary, record, inputs=[layout.feature_table(n) for n in tables], outputs=outputs,
                  untrained={n: t.untrained for n, t in tables.items()},
                  recons=sorted(per_feature["recon"].astype(str).unique()), boxplot_caption=caption,
                  excluded=excluded.to_dict(), protocol_reproduces=get_protocol(args.protocol).reproduces)
    print(f"ICC: {len(tables)} extractor(s), {len(per_feature)} feature x group rows "
          f"({int(excluded.sum())} excluded: constant or no variance) -> {layout.icc_summary}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
