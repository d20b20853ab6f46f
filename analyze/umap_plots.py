#!/usr/bin/env python
"""UMAP of each extractor's standardised features, coloured by ROI class, manufacturer and dose.

One figure per extractor with three panels, written as <results>/analysis/umap/umap_<extractor>.png
and .pdf, with the 2-D embedding (identity columns + umap_1, umap_2) in umap_<extractor>.csv and the
settings in its .json sidecar (ctdose.stats.embedding: features constant over all rows dropped, the
rest z-scored). --protocol picks the defaults (ctdose.protocols): toolkit and dataset-paper =
n_neighbors 100, min_dist 1.0, 1000 epochs (the dataset paper's); study = n_neighbors 20, min_dist 0.5
(the study's code), 200 epochs. Explicit flags override; n_neighbors is capped at rows - 1. Each input table is checked against its extractor's sidecar;
a re-run skips extractors whose outputs are current (same table, same settings).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from tqdm.auto import tqdm

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.plots import figure_files, umap_panels
from ctdose.protocols import get_protocol, parse_with_protocol
from ctdose.provenance import is_current, write_sidecar
from ctdose.stats.embedding import UMAPSettings, embed, embedding_frame

# --- settings ---
RESULTS = "results"   # reads features/, writes analysis/umap/ (repo-relative)
SEED = 0              # UMAP random_state (fixes the layout; single-threaded)
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
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return parse_with_protocol(p, argv, lambda protocol: asdict(protocol.umap), "--n-neighbors --min-dist --epochs")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = UMAPSettings(args.n_neighbors, args.min_dist, args.epochs, args.seed)
    record = {**settings.as_dict(), "protocol": args.protocol}
    tables = available_tables(layout.root, args.extractors)
    if not tables:
        raise FileNotFoundError(f"no feature tables under {layout.features_dir}")
    done = 0
    for name, path in tqdm(tables.items(), desc="UMAP", unit="extractor"):
        out, figures = layout.umap_table(name), figure_files(layout.umap_figure(name))
        if not args.force and is_current(out, record, [path], figures):
            continue
        table = load_tables(layout.root, [name])[name]
        emb = embed(table, settings)
        umap_panels(emb, table.ident, f"{name}{' (UNTRAINED weights)' if table.untrained else ''}",
                    layout.umap_figure(name))
        write_csv(embedding_frame(table, emb), out)
        write_sidecar(out, record, inputs=[path], outputs=figures, untrained=table.untrained,
                      protocol_reproduces=get_protocol(args.protocol).reproduces)
        done += 1
    print(f"UMAP: {done} extractor(s) embedded, {len(tables) - done} up to date; figures in {layout.umap_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
