#!/usr/bin/env python
"""UMAP of each extractor's standardised features, coloured by ROI class, manufacturer and dose.

One figure per extractor with three panels, written as <results>/analysis/umap/umap_<extractor>.png
and .pdf, with the 2-D embedding (identity columns + umap_1, umap_2) in umap_<extractor>.csv and the
settings in its .json sidecar (ctdose.stats.embedding: features constant over all rows dropped, the
rest z-scored). --protocol picks the defaults (ctdose.protocols): toolkit and dataset-paper =
n_neighbors 100, min_dist 1.0, 1000 epochs (the dataset paper's); study = n_neighbors 20, min_dist 0.5
(the study's code), 200 epochs. Explicit flags override; n_neighbors is capped at rows - 1.
Beside it, per extractor, the papers' layouts (ctdose.stats.embedding.paper_umaps), each with its caption
in the sidecar: umap_fig5_roi_<extractor> (the dataset paper's Fig. 5: one ROI, every --figure-dose
series, by scanner and manufacturer), umap_fig6_rois_<extractor> (Fig. 6: every ROI at that dose, by
manufacturer and ROI class), both fitted on their rows alone, and umap_per_scanner_<extractor> (the
study code's UMAP per scanner, coloured by dose). A figure without rows is skipped with the reason in
the sidecar. Each input table is checked against its extractor's sidecar; a re-run skips extractors
whose outputs are current (same table, same settings).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.plots import figure_files
from ctdose.protocols import parse_with_protocol
from ctdose.provenance import is_current, read_sidecar
from ctdose.stats.embedding import PAPER_FIGURES, PER_SCANNER_MODES, UMAPSettings
from ctdose.umap_job import UMAPJob, run_umap

# --- settings ---
RESULTS = "results"   # reads features/, writes analysis/umap/ (repo-relative)
SEED = 0              # UMAP random_state (fixes the layout; single-threaded)
FIGURE_DOSE = 10.0    # dose (mGy) of the dataset paper's Figs. 5 and 6
FIGURE_ROI = ""       # ROI of Fig. 5 ("" = the first ROI in the feature table)
PER_SCANNER = "shared"  # UMAP per scanner: "shared" (all-rows embedding split by scanner) or "fit" (one per scanner)
WORKERS = 1           # extractors embedded at once (worker processes; each UMAP is single-threaded)
# n_neighbors, min_dist and epochs come from the --protocol preset (ctdose/protocols.py; default
# toolkit: 100 / 1.0 / 1000) unless given as flags; fewer epochs is fine for a quick look
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to plot if their table exists (default: all)")
    p.add_argument("--n-neighbors", type=int, help="UMAP n_neighbors (default: %(default)s)")
    p.add_argument("--min-dist", type=float, help="UMAP min_dist (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="UMAP n_epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="default: %(default)s")
    p.add_argument("--figure-dose", type=float, default=FIGURE_DOSE,
                   help="dose of the paper's Figs. 5-6 in mGy (default: %(default)s)")
    p.add_argument("--figure-roi", default=FIGURE_ROI, help="ROI of Fig. 5 (default: the table's first ROI)")
    p.add_argument("--per-scanner", choices=PER_SCANNER_MODES, default=PER_SCANNER,
                   help="UMAP per scanner: split the all-rows embedding (shared) or fit one per scanner (fit); "
                        "default: %(default)s")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="extractors embedded at once, in worker processes (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return parse_with_protocol(p, argv, lambda protocol: asdict(protocol.umap), "--n-neighbors --min-dist --epochs")


def _paper_figures(layout: ResultsLayout, name: str) -> list[Path]:
    """The paper-layout figure files the last run of ``name`` wrote (those it skipped left out)."""
    try:
        skipped = (read_sidecar(layout.umap_table(name)) or {}).get("figures_skipped", {})
    except ValueError:  # a corrupt sidecar: is_current says so
        skipped = {}
    return [f for kind in PAPER_FIGURES if kind not in skipped
            for f in figure_files(layout.umap_paper_figure(name, kind))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = UMAPSettings(args.n_neighbors, args.min_dist, args.epochs, args.seed)
    record = {**settings.as_dict(), "protocol": args.protocol, "figure_dose": args.figure_dose,
              "figure_roi": args.figure_roi, "per_scanner": args.per_scanner}
    tables = available_tables(layout.root, args.extractors)
    if not tables:
        raise FileNotFoundError(f"no feature tables under {layout.features_dir}")
    todo = [UMAPJob(str(layout.root), name, str(path), settings, record, args.protocol)
            for name, path in tables.items()
            if args.force or not is_current(layout.umap_table(name), record, [path],
                                            figure_files(layout.umap_figure(name)) + _paper_figures(layout, name))]
    parallel_map(run_umap, todo, workers=args.workers, desc="UMAP", unit="extractor")
    print(f"UMAP: {len(todo)} extractor(s) embedded, {len(tables) - len(todo)} up to date; "
          f"figures in {layout.umap_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
