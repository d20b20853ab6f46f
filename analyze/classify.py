#!/usr/bin/env python
"""ROI-class and dose-level classification from each extractor's features, scanners held out.

Protocols (ctdose.stats.classify): cross-dose (train at dose A, test at dose B on a held-out scanner,
diagonal included), leave-one-scanner-out with N training scanners (N = 1..n-1, a few seeded draws
each), 10-fold CV grouped by series with n training folds (n = 1..9), and dose-level classification
with leave-one-scanner-out. Scaler and constant-feature filter are fitted on training rows only; the
MLP (100-60-30, GELU, dropout 0.2) trains a fixed number of epochs (no early stopping). Writes under
<results>/analysis/: classify_cross_dose.csv (per fold), classify_cross_dose_matrix.csv (mean, sd;
+ .json sidecar with the settings), classify_curves.csv (+ _folds), classify_dose_level.csv and
figures in classify/. A re-run with the same inputs and settings does nothing.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ctdose.atomic import write_csv
from ctdose.features import EXTRACTORS, FeatureTable, available_tables, load_tables, outputs_current
from ctdose.parallel import parallel_map
from ctdose.plots import accuracy_curves, accuracy_heatmap
from ctdose.provenance import write_sidecar
from ctdose.report import analysis_files
from ctdose.stats.classify import (CLASSIFIERS, accuracy_matrix, cross_dose_splits, curve, dose_splits,
                                   kfold_n_splits, loso_n_splits, make_pipeline, run_splits)

# --- settings ---
RESULTS = "results"      # results folder (reads features/, writes analysis/)
CLASSIFIER = "mlp"       # mlp (the papers' 100-60-30 GELU MLP) or logreg (fast baseline)
EPOCHS = 100             # fixed MLP training epochs (full-batch Adam, lr 1e-3)
SEED = 0                 # seeds the MLP and every random draw
DRAWS = 2                # random draws per N in leave-one-scanner-out with N training scanners
N_FOLDS = 10             # folds of the grouped k-fold protocol
TEST_FOLDS = 2           # test folds used in the k-fold protocol (each with n = 1..N_FOLDS-1)
RECONS: list[str] = []   # reconstructions to use (empty: all present)
THREADS = 1              # torch and BLAS CPU threads per worker
WORKERS = 1              # extractors classified in parallel (Dask processes); 1 = in-process
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS, help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to analyse if their table exists (default: all)")
    p.add_argument("--classifier", default=CLASSIFIER, choices=CLASSIFIERS, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="MLP epochs, fixed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    p.add_argument("--draws", type=int, default=DRAWS, help="draws per N training scanners (default: %(default)s)")
    p.add_argument("--n-folds", type=int, default=N_FOLDS, help="k of the grouped k-fold (default: %(default)s)")
    p.add_argument("--test-folds", type=int, default=TEST_FOLDS,
                   help="test folds evaluated in the k-fold curve (default: %(default)s)")
    p.add_argument("--recons", nargs="*", default=RECONS, help="reconstructions to use (default: all)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch and BLAS threads (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="extractors classified in parallel processes (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return p.parse_args(argv)


def classify_job(job: tuple[FeatureTable, argparse.Namespace]) -> dict[str, pd.DataFrame]:
    """One extractor's protocols with torch and BLAS limited to ``args.threads`` threads."""
    table, args = job
    torch.set_num_threads(args.threads)
    # BLAS threads beyond the cores oversubscribe the CPU (logreg was 20x slower on a busy 2-core machine)
    with threadpool_limits(limits=args.threads):
        return classify_extractor(table, args)


def classify_extractor(table: FeatureTable, args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """All protocols for one table; returns per-fold results keyed by protocol (absent if not possible)."""
    if args.recons:
        table = table.subset(table.ident["recon"].isin(args.recons).to_numpy())
    ident, X = table.ident, table.X
    y_roi, y_dose = ident["roi_class"].to_numpy(), ident["dose_mgy"].to_numpy()
    scanner = ident["scanner"].to_numpy()
    make = partial(make_pipeline, args.classifier, args.seed, args.epochs)
    bar = partial(tqdm, leave=False, unit="fit")
    out: dict[str, pd.DataFrame] = {}
    if np.unique(scanner).size >= 2:
        out["cross_dose"] = run_splits(X, y_roi, cross_dose_splits(scanner, y_dose), make,
                                       partial(bar, desc=f"{table.name} cross-dose"))
        out["loso_n"] = run_splits(X, y_roi, loso_n_splits(scanner, args.draws, args.seed), make,
                                   partial(bar, desc=f"{table.name} LOSO-N"))
        if np.unique(y_dose).size >= 2:
            out["dose_level"] = run_splits(X, y_dose.astype(str), dose_splits(scanner), make,
                                           partial(bar, desc=f"{table.name} dose level"))
    n_folds = min(args.n_folds, ident["series_uid"].nunique())
    if n_folds >= 2:
        out["kfold_n"] = run_splits(X, y_roi, kfold_n_splits(ident["series_uid"].to_numpy(), n_folds,
                                                             args.test_folds, args.seed), make,
                                    partial(bar, desc=f"{table.name} k-fold-n"))
    return {k: v.assign(extractor=table.name) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = analysis_files(args.results)
    settings = {k: v for k, v in vars(args).items() if k not in ("results", "force", "threads", "workers")}
    settings.update(mlp="hidden 100-60-30, GELU, dropout 0.2, Adam lr 1e-3, weight decay 1e-4, full batch",
                    kfold_groups="series_uid", dose_level_groups="scanner (leave one scanner out)")
    inputs = list(available_tables(args.results, args.extractors).values())
    outputs = [files["cross_dose_matrix"], files["cross_dose"], files["curves"], files["dose_class"]]
    if not args.force and inputs and outputs_current(outputs, inputs, settings):
        print(f"classification outputs up to date: {files['cross_dose_matrix']}")
        return 0
    try:
        tables = load_tables(args.results, args.extractors)
        outs = parallel_map(classify_job, [(t, args) for t in tables.values()], workers=args.workers,
                            desc="extractors", unit="extractor")
        results = dict(zip(tables, outs))
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")

    def gather(protocol: str) -> pd.DataFrame:
        parts = [r[protocol] for r in results.values() if protocol in r]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    cross, loso, kfold, dose = (gather(p) for p in ("cross_dose", "loso_n", "kfold_n", "dose_level"))
    figs = files["classify_figs"]
    matrices = []
    if not cross.empty:
        for name, res in cross.groupby("extractor", sort=False):
            mean, sd = accuracy_matrix(res)
            accuracy_heatmap(mean, sd, f"{name}: ROI class, cross-dose ({args.classifier})",
                             figs / f"cross_dose_{name}")
            long = mean.stack().rename("mean").to_frame().join(sd.stack().rename("sd")).reset_index()
            matrices.append(long.assign(extractor=name, n_folds=res["fold"].nunique()))
    curves = []
    for protocol, res, xlabel in (("loso_n", loso, "training scanners N"), ("kfold_n", kfold, "training folds n")):
        if res.empty:
            continue
        per = {name: curve(r) for name, r in res.groupby("extractor", sort=False)}
        accuracy_curves(per, f"ROI class, {protocol.replace('_', '-')} ({args.classifier})", xlabel,
                        figs / f"curve_{protocol}")
        curves += [c.assign(extractor=name, protocol=protocol) for name, c in per.items()]
    write_csv(cross, files["cross_dose"])
    write_csv(pd.concat([loso.assign(protocol="loso_n"), kfold.assign(protocol="kfold_n")], ignore_index=True),
              files["curves_raw"])
    write_csv(pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(), files["curves"])
    write_csv(dose, files["dose_class"])
    write_csv(pd.concat(matrices, ignore_index=True) if matrices else pd.DataFrame(), files["cross_dose_matrix"])
    write_sidecar(files["cross_dose_matrix"], settings, inputs=[str(p) for p in inputs],
                  untrained={n: t.untrained for n, t in tables.items()},
                  protocols_run={n: sorted(r) for n, r in results.items()})
    print(f"classification: {len(tables)} extractor(s) -> {files['cross_dose_matrix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
