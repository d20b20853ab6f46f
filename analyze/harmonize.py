#!/usr/bin/env python
"""Harmonization bench: does a harmonization method make features stable across scanners and doses, and
ROI-class classifiers generalise to unseen scanners? Each method is scored beside the unharmonised
baseline with the same ICC views, LOSO-N (Algorithm 1) / k-fold-n (Algorithm 2) splits and seeds
(and, with --cross-dose, the cross-dose matrix), silhouettes and UMAPs (ctdose.stats.harmonize_bench).

Methods (ctdose.stats.harmonize.METHODS): none, zscore (per batch), combat / combat_np (ComBat,
parametric / non-parametric EB, neuroCombat 0.2.12), combat_cov / combat_np_cov (ROI class as
covariate). Batch: scanner (default), manufacturer, scanner_dose. No leaks: in every split the
harmonizer is fitted on the training rows only and applied from features and unlabelled identity
columns; a held-out scanner's batch terms come from its own unlabelled rows (--unseen estimate) or are
left out (--unseen skip); the scheme is written beside each result. ICC, silhouettes and UMAPs use the
table harmonized on all rows (descriptive). Add a method with ctdose.stats.harmonize.register_method.

Writes under <results>/analysis/harmonize/: harmonize_table7.csv (+ .json sidecar; the dataset paper's
Table 7 layout, one row per extractor x method), harmonize_icc_summary.csv, harmonize_classify_folds.csv,
harmonize_cross_dose.csv (with --cross-dose), harmonize_silhouette.csv, umap_<extractor>.png/.pdf,
silhouette.png/.pdf. A re-run with the same inputs and settings does nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.plots import figure_files
from ctdose.provenance import is_current, write_sidecar
from ctdose.stats.classify import CLASSIFIERS, LOSO_DRAWS
from ctdose.stats.harmonize import BATCHES, METHODS, UNSEEN_SCHEMES, HarmonizeSettings, load_plugins
from ctdose.stats.harmonize_bench import (KFOLD_CHOICES, LOSO_CHOICES, BenchSettings, bench_job,
                                          cross_dose_table, silhouette_figure, table7, umap_figure, umap_pair)

# --- settings ---
RESULTS = "results"                                      # reads features/, writes analysis/harmonize/
METHODS_DEFAULT = ("none", "zscore", "combat")   # the demo default; add combat_cov, combat_np ...
BATCH = "scanner"                                        # scanner | manufacturer | scanner_dose
UNSEEN = "estimate"                                      # estimate | skip (held-out scanner's batch terms)
CLASSIFIER = "logreg"                                    # logreg (fast) | mlp (the papers')
EPOCHS = 100                                             # MLP epochs
LOSO_N = "ends"                                          # ends: N = 1 and S-1 (Table 7) | all
KFOLD_N = "last"                                         # last: n = k-1 (Table 7) | all
N_FOLDS = 10
SEED = 0
UMAP_METHOD = "combat"                                   # the "after" UMAP
WORKERS = 2                                              # (extractor, method) jobs in parallel
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to bench if their table exists (default: all)")
    p.add_argument("--methods", nargs="+", default=list(METHODS_DEFAULT),
                   help=f"harmonization methods, of {', '.join(METHODS)} (default: %(default)s)")
    p.add_argument("--batch", default=BATCH, choices=tuple(BATCHES), help="batch definition (default: %(default)s)")
    p.add_argument("--unseen", default=UNSEEN, choices=UNSEEN_SCHEMES,
                   help="unseen batches: estimate = location/scale from their own unlabelled rows; "
                        "skip = no batch terms (default: %(default)s)")
    p.add_argument("--classifier", default=CLASSIFIER, choices=CLASSIFIERS, help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="MLP epochs (default: %(default)s)")
    p.add_argument("--loso-n", default=LOSO_N, choices=LOSO_CHOICES,
                   help="LOSO-N training-scanner counts: ends = 1 and S-1; all = 1..S-1 (default: %(default)s)")
    p.add_argument("--loso-draw", default="random", choices=LOSO_DRAWS, help="(default: %(default)s)")
    p.add_argument("--kfold-n", default=KFOLD_N, choices=KFOLD_CHOICES,
                   help="k-fold-n training folds: last = k-1; all = 1..k-1 (default: %(default)s)")
    p.add_argument("--n-folds", type=int, default=N_FOLDS, help="(default: %(default)s)")
    p.add_argument("--cross-dose", action="store_true", help="also the cross-dose matrix (S x doses fits per method)")
    p.add_argument("--seed", type=int, default=SEED, help="(default: %(default)s)")
    p.add_argument("--umap-method", default=UMAP_METHOD, help="method of the 'after' UMAP (default: %(default)s)")
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP figures")
    p.add_argument("--plugins", nargs="*", default=[], metavar="MODULE_OR_PY",
                   help="modules or .py files that call ctdose.stats.harmonize.register_method (your methods)")
    p.add_argument("--workers", type=int, default=WORKERS, help="parallel (extractor, method) jobs (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    args = p.parse_args(argv)
    load_plugins(args.plugins)
    bad = [m for m in [*args.methods, args.umap_method] if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; expected {', '.join(METHODS)}")
    if "none" not in args.methods:
        args.methods = ["none", *args.methods]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = BenchSettings(methods=tuple(args.methods), harmonize=HarmonizeSettings(args.batch, args.unseen),
                             classifier=args.classifier, epochs=args.epochs, seed=args.seed,
                             loso_draw=args.loso_draw, n_folds=args.n_folds, loso_n=args.loso_n,
                             kfold_n=args.kfold_n, cross_dose=args.cross_dose, umap=not args.no_umap,
                             umap_method=args.umap_method, plugins=tuple(args.plugins))
    record = {**settings.as_dict(), "extractors": sorted(args.extractors)}
    inputs = list(available_tables(layout.root, args.extractors).values())
    plugin_files = [Path(p) for p in args.plugins if p.endswith(".py")]  # a changed plug-in recomputes
    tables_out = [layout.harmonize_icc, layout.harmonize_folds, layout.harmonize_silhouette,
                  *figure_files(layout.harmonize_silhouette_figure)]
    if settings.cross_dose:
        tables_out.append(layout.harmonize_cross_dose)
    if settings.umap:
        tables_out += [f for e in args.extractors if layout.feature_table(e) in inputs
                       for f in figure_files(layout.harmonize_umap_figure(e))]
    if not args.force and inputs and is_current(layout.harmonize_table7, record, inputs + plugin_files, tables_out):
        print(f"harmonization bench up to date: {layout.harmonize_table7}")
        return 0
    tables = load_tables(layout.root, args.extractors)
    start = time.perf_counter()
    workers = max(1, min(args.workers, len(tables) * len(settings.methods)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [(t, m, settings, threads) for t in tables.values() for m in settings.methods]
    jobs.sort(key=lambda job: -job[0].X.size)  # the largest tables first: the workers finish together
    results = parallel_map(bench_job, jobs, workers=workers, desc="extractor x method", unit="job")
    order = {(t.name, m): n for n, (t, m) in enumerate((t, m) for t in tables.values() for m in settings.methods)}
    results.sort(key=lambda r: order[(r.extractor, r.method)])
    folds = pd.concat([r.folds for r in results if len(r.folds)], ignore_index=True)
    icc = pd.concat([r.icc for r in results], ignore_index=True)
    sil = pd.concat([r.silhouette for r in results], ignore_index=True)
    t7 = table7(results, settings)
    layout.harmonize_dir.mkdir(parents=True, exist_ok=True)
    write_csv(icc, layout.harmonize_icc)
    write_csv(folds, layout.harmonize_folds)
    write_csv(sil, layout.harmonize_silhouette)
    if settings.cross_dose:
        write_csv(cross_dose_table(folds), layout.harmonize_cross_dose)
    silhouette_figure(sil, layout.harmonize_silhouette_figure)
    umaps = {}
    if settings.umap:
        for name, table in tables.items():
            pair = umap_pair(table, settings)
            if pair is None:
                umaps[name] = "skipped: too few rows or one scanner"
                continue
            caption = (f"{name}: rows at 10 mGy (every ROI; reconstructions and repetitions pooled), UMAP "
                       f"n_neighbors {settings.umap_neighbors}, min_dist {settings.umap_min_dist:g}, "
                       f"{settings.umap_epochs} epochs, seed {settings.seed}; after = {settings.umap_method} "
                       f"(batch {settings.harmonize.batch}) fitted on these rows.")
            umap_figure(pair, name, layout.harmonize_umap_figure(name), caption)
            umaps[name] = caption
    write_csv(t7, layout.harmonize_table7)
    seconds = {f"{r.extractor}/{r.method}": {k: round(v, 2) for k, v in r.seconds.items()} for r in results}
    write_sidecar(layout.harmonize_table7, record, inputs=[layout.feature_table(n) for n in tables] + plugin_files,
                  outputs=[o for o in tables_out if o.exists()],
                  untrained={n: t.untrained for n, t in tables.items()}, umap_captions=umaps,
                  schemes=sorted(folds["scheme"].unique()) if len(folds) else [],
                  wall_seconds=round(time.perf_counter() - start, 1), job_seconds=seconds)
    print(f"harmonization bench: {len(tables)} extractor(s) x {len(settings.methods)} method(s), "
          f"{len(folds)} scored test sets in {time.perf_counter() - start:.0f} s -> {layout.harmonize_table7}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
