#!/usr/bin/env python
"""UMAP of each extractor's standardised features, coloured by ROI class, manufacturer and dose.

One figure per extractor with three panels, written as <results>/analysis/umap/umap_<extractor>.png
and .pdf, with the 2-D embedding (identity columns + umap_1, umap_2) in umap_<extractor>.csv and the
settings in its .json sidecar. Features constant over all rows are dropped, the rest z-scored.
The dataset paper used n_neighbors 100, min_dist 1.0, 1000 epochs (the defaults here); n_neighbors
is capped at rows - 1. A re-run skips extractors whose outputs are up to date.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ctdose.atomic import write_csv
from ctdose.features import EXTRACTORS, FeatureTable, available_tables, outputs_current, read_feature_table
from ctdose.plots import umap_panels
from ctdose.provenance import write_sidecar
from ctdose.report import analysis_files

# --- settings ---
RESULTS = "results"   # results folder (reads features/, writes analysis/umap/)
N_NEIGHBORS = 100     # UMAP n_neighbors (paper: 100)
MIN_DIST = 1.0        # UMAP min_dist (paper: 1.0)
EPOCHS = 1000         # UMAP n_epochs (paper: 1000; fewer is fine for a quick look)
SEED = 0              # UMAP random_state (fixes the layout; single-threaded)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS, help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to plot if their table exists (default: all)")
    p.add_argument("--n-neighbors", type=int, default=N_NEIGHBORS, help="default: %(default)s")
    p.add_argument("--min-dist", type=float, default=MIN_DIST, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=SEED, help="default: %(default)s")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return p.parse_args(argv)


def embed(table: FeatureTable, n_neighbors: int, min_dist: float, epochs: int, seed: int) -> np.ndarray:
    """2-D UMAP embedding (rows, 2) of the z-scored non-constant features."""
    import umap  # compiles with numba on first use (tens of seconds)

    X = table.X
    sd = X.std(axis=0)
    keep = sd > 0
    if not keep.any():
        raise ValueError(f"{table.name}: every feature is constant; nothing to embed")
    if len(X) < 4:
        raise ValueError(f"{table.name}: {len(X)} rows are too few for UMAP")
    Z = (X[:, keep] - X[:, keep].mean(axis=0)) / sd[keep]
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(X) - 1), min_dist=min_dist, n_epochs=epochs,
                        random_state=seed, n_components=2, n_jobs=1)
    return reducer.fit_transform(Z)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = analysis_files(args.results)["umap_dir"]
    settings = {"n_neighbors": args.n_neighbors, "min_dist": args.min_dist, "epochs": args.epochs,
                "seed": args.seed, "features": "non-constant, z-scored over all rows"}
    tables = available_tables(args.results, args.extractors)
    if not tables:
        sys.exit(f"error: no feature tables under {args.results}/features")
    for name, path in tqdm(tables.items(), desc="UMAP", unit="extractor"):
        csv = out_dir / f"umap_{name}.csv"
        if not args.force and outputs_current([csv, out_dir / f"umap_{name}.png"], [path], settings):
            continue
        try:
            table = read_feature_table(path, name)
            emb = embed(table, args.n_neighbors, args.min_dist, args.epochs, args.seed)
        except (ValueError, FileNotFoundError) as err:
            sys.exit(f"error: {err}")
        title = f"{name}{' (UNTRAINED weights)' if table.untrained else ''}"
        umap_panels(emb, table.ident, title, out_dir / f"umap_{name}")
        write_csv(pd.concat([table.ident, pd.DataFrame(emb, columns=["umap_1", "umap_2"])], axis=1), csv)
        write_sidecar(csv, settings, input=str(path), untrained=table.untrained)
    print(f"UMAP figures in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
