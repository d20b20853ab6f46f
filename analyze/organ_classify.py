#!/usr/bin/env python
"""Organ classification and organ UMAPs on another dataset's feature tables (CT-ORG, OrganMNIST3D).

Reads <results>/features/<extractor>.csv made by the extractor scripts with --dataset ctorg or
organmnist3d (each checked against its sidecar). For every extractor x target x classifier (MLP
100-60-30, logistic regression, kNN, random forest; scaler fitted on training folds only), stratified
10-fold cross-validation grouped by case (series_uid): all organs and patches of one CT-ORG case stay in
one fold; an OrganMNIST3D sample is its own case (the npz has no patient ids), i.e. plain stratified
10-fold there. Folds are capped at the number of cases (ctdose.stats.organ_classify).
Targets: roi_class (organ class: lung) and/or roi (organ with side: lung_left; OrganMNIST3D's 11 classes).
Writes under <results>/analysis/organs/: organ_accuracy.csv (+ .json sidecar: accuracy mean / sd over
folds, chance, folds, rows, cases, classes), organ_accuracy_folds.csv (one row per fold), and per
extractor umap_<extractor>.png/.pdf + .csv (UMAP of the z-scored non-constant features, coloured by
organ and organ class; the study's n_neighbors 20, min_dist 0.5). A re-run with the same inputs and
settings does nothing.

Example: .venv/bin/python analyze/organ_classify.py --results results/ctorg
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.plots import figure_files, umap_category_panels
from ctdose.provenance import is_current, write_sidecar
from ctdose.stats.embedding import UMAPSettings, embed, embedding_frame
from ctdose.stats.organ_classify import CLASSIFIERS, TARGETS, OrganSettings, classify_organs, summarize_organs

# --- settings ---
RESULTS = "results/ctorg"      # a --dataset run's results folder: reads features/, writes analysis/organs/
FOLDS = 10                     # stratified folds grouped by case (capped at the number of cases)
SEED = 0                       # fold shuffling, MLP / logistic regression / random forest seeds, UMAP
TARGET_COLUMNS = ["roi_class", "roi"]  # organ class (lung) and organ with side (lung_left)
CLASSIFIER_NAMES = list(CLASSIFIERS)   # mlp, logreg, knn, rf
MLP_EPOCHS = 100               # fixed training budget (no early stopping)
KNN_NEIGHBORS = 5              # k of the nearest-neighbour classifier
RF_TREES = 200                 # trees of the random forest
UMAP = True                    # draw the organ UMAPs (numba compiles on first use: tens of seconds)
UMAP_NEIGHBORS, UMAP_MIN_DIST, UMAP_EPOCHS = 20, 0.5, 200  # the study's code
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to analyse if their table exists (default: all)")
    p.add_argument("--folds", type=int, default=FOLDS, help="folds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="default: %(default)s")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=TARGET_COLUMNS,
                   help="label columns to classify (default: %(default)s)")
    p.add_argument("--classifiers", nargs="+", choices=CLASSIFIERS, default=CLASSIFIER_NAMES,
                   help="default: %(default)s")
    p.add_argument("--mlp-epochs", type=int, default=MLP_EPOCHS, help="default: %(default)s")
    p.add_argument("--knn-neighbors", type=int, default=KNN_NEIGHBORS, help="default: %(default)s")
    p.add_argument("--rf-trees", type=int, default=RF_TREES, help="default: %(default)s")
    p.add_argument("--umap", action=argparse.BooleanOptionalAction, default=UMAP,
                   help="draw UMAPs coloured by organ (default: %(default)s)")
    p.add_argument("--umap-neighbors", type=int, default=UMAP_NEIGHBORS, help="default: %(default)s")
    p.add_argument("--umap-min-dist", type=float, default=UMAP_MIN_DIST, help="default: %(default)s")
    p.add_argument("--umap-epochs", type=int, default=UMAP_EPOCHS, help="default: %(default)s")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = OrganSettings(args.folds, args.seed, tuple(args.targets), tuple(args.classifiers), args.mlp_epochs,
                             args.knn_neighbors, args.rf_trees)
    umap_settings = UMAPSettings(args.umap_neighbors, args.umap_min_dist, args.umap_epochs, args.seed)
    record = {**settings.as_dict(), "umap": umap_settings.as_dict() if args.umap else None,
              "extractors": sorted(args.extractors)}
    inputs = list(available_tables(layout.root, args.extractors).values())
    umap_outputs = [f for name in available_tables(layout.root, args.extractors) if args.umap
                    for f in (layout.organ_umap_table(name), *figure_files(layout.organ_umap_figure(name)))]
    outputs = [layout.organ_accuracy_folds, *umap_outputs]
    if not args.force and inputs and is_current(layout.organ_accuracy, record, inputs, outputs):
        print(f"organ classification up to date: {layout.organ_accuracy}")
        return 0
    tables = load_tables(layout.root, args.extractors)
    folds = [classify_organs(table, settings) for table in tables.values()]
    folds = pd.concat(folds, ignore_index=True)
    summary = summarize_organs(folds, tables)
    write_csv(folds, layout.organ_accuracy_folds)
    datasets = {}
    for name, table in tables.items():
        datasets[name] = sorted(table.ident["scanner"].astype(str).unique())
        if args.umap:
            emb = embed(table, umap_settings)
            write_csv(embedding_frame(table, emb), layout.organ_umap_table(name))
            title = f"{name} ({', '.join(datasets[name])}){' UNTRAINED weights' if table.untrained else ''}"
            umap_category_panels(emb, table.ident, [("roi", "organ"), ("roi_class", "organ class")], title,
                                 layout.organ_umap_figure(name),
                                 caption=f"{len(table.X)} patches of {table.ident['series_uid'].nunique()} cases; "
                                         f"UMAP n_neighbors {umap_settings.n_neighbors}, min_dist "
                                         f"{umap_settings.min_dist}, {umap_settings.epochs} epochs")
    write_csv(summary, layout.organ_accuracy)
    write_sidecar(layout.organ_accuracy, record, inputs=[layout.feature_table(n) for n in tables], outputs=outputs,
                  untrained={n: t.untrained for n, t in tables.items()}, datasets=datasets)
    best = summary.loc[summary["accuracy_mean"].idxmax()]
    print(f"organ classification: {len(tables)} extractor(s), best {best['extractor']} {best['classifier']} "
          f"({best['target']}) {best['accuracy_mean']:.3f} ± {best['accuracy_sd']:.3f} (chance "
          f"{best['chance']:.3f}) -> {layout.organ_accuracy}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
