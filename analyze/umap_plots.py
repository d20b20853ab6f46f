#!/usr/bin/env python
"""UMAP of each extractor's standardised features, coloured by ROI class, manufacturer and dose.

One figure per extractor with three panels, written as <results>/analysis/umap/umap_<extractor>.png
and .pdf, with the 2-D embedding (identity columns + umap_1, umap_2) in umap_<extractor>.csv and the
settings in its .json sidecar (ctdose.stats.embedding: features constant over all rows dropped, the
rest z-scored). The dataset paper used n_neighbors 100, min_dist 1.0, 1000 epochs (the defaults
here); n_neighbors is capped at rows - 1. Each input table is checked against its extractor's sidecar;
a re-run skips extractors whose outputs are current (same table, same settings).
"""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.plots import figure_files, umap_panels
from ctdose.provenance import is_current, write_sidecar
from ctdose.stats.embedding import UMAPSettings, embed, embedding_frame

# --- settings ---
RESULTS = "results"   # reads features/, writes analysis/umap/ (repo-relative)
N_NEIGHBORS = 100     # UMAP n_neighbors (paper: 100)
MIN_DIST = 1.0        # UMAP min_dist (paper: 1.0)
EPOCHS = 1000         # UMAP n_epochs (paper: 1000; fewer is fine for a quick look)
SEED = 0              # UMAP random_state (fixes the layout; single-threaded)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to plot if their table exists (default: all)")
    p.add_argument("--n-neighbors", type=int, default=N_NEIGHBORS, help="default: %(default)s")
    p.add_argument("--min-dist", type=float, default=MIN_DIST, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=SEED, help="default: %(default)s")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = UMAPSettings(args.n_neighbors, args.min_dist, args.epochs, args.seed)
    tables = available_tables(layout.root, args.extractors)
    if not tables:
        raise FileNotFoundError(f"no feature tables under {layout.features_dir}")
    done = 0
    for name, path in tqdm(tables.items(), desc="UMAP", unit="extractor"):
        out, figures = layout.umap_table(name), figure_files(layout.umap_figure(name))
        if not args.force and is_current(out, settings.as_dict(), [path], figures):
            continue
        table = load_tables(layout.root, [name])[name]
        emb = embed(table, settings)
        umap_panels(emb, table.ident, f"{name}{' (UNTRAINED weights)' if table.untrained else ''}",
                    layout.umap_figure(name))
        write_csv(embedding_frame(table, emb), out)
        write_sidecar(out, settings.as_dict(), inputs=[path], outputs=figures, untrained=table.untrained)
        done += 1
    print(f"UMAP: {done} extractor(s) embedded, {len(tables) - done} up to date; figures in {layout.umap_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
