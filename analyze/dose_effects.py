#!/usr/bin/env python
"""The study's other dose analyses: dose models, distribution shift 1 vs 14 mGy, silhouettes.

Three parts (--parts), each with its own outputs and sidecar under <results>/analysis/, each skipped
when current (same feature tables, same settings):

models      dose-level classification (random forest, logistic regression, kNN, the papers' MLP) and
            dose regression (ridge, random-forest regressor), cross-validated with GroupKFold where a
            group is one scanner x ROI (no scanner x ROI in both training and test); constant-feature
            filter and scaler fitted on training folds; seeded. dose_models.csv (mean, sd over n folds,
            chance or the mean predictor's MAE in mGy), dose_models_folds.csv,
            dose_models_confusion.csv (counts summed over folds) and dose_effects/confusion_<extractor>.png/.pdf.
shift       per feature, low (1 mGy) vs high (14 mGy) dose: Kolmogorov-Smirnov statistic and p,
            Benjamini-Hochberg q, change of mean, variance, skewness, kurtosis (dose_shift_per_feature.csv)
            and per extractor the share of features shifted at q < alpha (dose_shift_summary.csv).
silhouette  silhouette of the standardised features and, where analyze/umap_plots.py made it from the
            same feature table, of the UMAP embedding, by ROI class, manufacturer, scanner and dose
            (silhouette.csv).

Each feature table is checked against its extractor's sidecar, each UMAP table against its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.csv_io import read_csv
from ctdose.features import EXTRACTORS, FeatureTable, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.plots import confusion_panels
from ctdose.provenance import file_sha256, is_current, recorded_outputs, verify, write_sidecar
from ctdose.stats.dose_effects import (ShiftSettings, SilhouetteSettings, distribution_shift, feature_silhouettes,
                                       silhouettes, summarize_shift)
from ctdose.stats.dose_models import (DOSE_CLASSIFIERS, DOSE_REGRESSORS, OVER, DoseModelSettings, dose_fold,
                                      dose_model_jobs, gather_dose_folds, summarize_dose_models)

# --- settings ---
RESULTS = "results"                          # reads features/ (and analysis/umap/), writes analysis/
PARTS = ["models", "shift", "silhouette"]    # which parts to run
CLASSIFIERS = list(DOSE_CLASSIFIERS)         # rf, logreg, knn, mlp
REGRESSORS = list(DOSE_REGRESSORS)           # ridge, rf
N_FOLDS = 5                                  # GroupKFold folds, groups = scanner x ROI
EPOCHS = 100                                 # fixed MLP epochs
SEED = 0                                     # folds, models, silhouette row draws
RECONS: list[str] = []                       # reconstructions for the dose models (empty: all)
LOW_DOSE = 1.0                               # mGy, distribution shift: low-dose sample
HIGH_DOSE = 14.0                             # mGy, distribution shift: high-dose sample
SHIFT_RECON = "each"                         # each: one reconstruction at a time; pool: all together
ALPHA = 0.05                                 # BH q threshold for "shifted"
SILHOUETTE_ROWS = 5000                       # rows drawn (seeded) per silhouette when a space has more
THREADS = 1                                  # torch and BLAS threads (per worker)
WORKERS = 1                                  # dose-model folds fitted in parallel (Dask processes); 1 = in-process
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to analyse if their table exists (default: all)")
    p.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS, help="default: %(default)s")
    p.add_argument("--classifiers", nargs="+", default=CLASSIFIERS, choices=DOSE_CLASSIFIERS,
                   help="dose-level classifiers (default: %(default)s)")
    p.add_argument("--regressors", nargs="*", default=REGRESSORS, choices=DOSE_REGRESSORS,
                   help="dose regressors (default: %(default)s)")
    p.add_argument("--n-folds", type=int, default=N_FOLDS,
                   help="GroupKFold folds, one group = one scanner x ROI (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="MLP epochs, fixed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="default: %(default)s")
    p.add_argument("--recons", nargs="*", default=RECONS, help="reconstructions for the dose models (default: all)")
    p.add_argument("--low-dose", type=float, default=LOW_DOSE, help="mGy (default: %(default)s)")
    p.add_argument("--high-dose", type=float, default=HIGH_DOSE, help="mGy (default: %(default)s)")
    p.add_argument("--shift-recon", default=SHIFT_RECON, choices=("each", "pool"),
                   help="distribution shift per reconstruction or pooled (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=ALPHA, help="BH q threshold (default: %(default)s)")
    p.add_argument("--silhouette-rows", type=int, default=SILHOUETTE_ROWS,
                   help="rows drawn per silhouette when a space has more (default: %(default)s)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help="torch and BLAS threads per worker (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="worker processes fitting the dose models' extractor x fold jobs; results do not "
                        "depend on it (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return p.parse_args(argv)


def run_models(layout: ResultsLayout, tables: dict[str, FeatureTable], settings: DoseModelSettings,
               record: dict, inputs: list, workers: int = 1, threads: int = 1) -> None:
    # one job per extractor x fold, the largest first: the workers share the big tables' random forests
    planned = {name: dose_model_jobs(t, settings, threads) for name, t in tables.items()}
    jobs = sorted((j for js, _ in planned.values() for j in js), key=lambda j: -j.X.size * j.train.size)
    done = dict(zip([(j.extractor, j.fold) for j in jobs],
                    parallel_map(dose_fold, jobs, workers=workers, desc="dose models", unit="fold")))
    parts = [gather_dose_folds(name, levels, settings, [done[(name, j.fold)] for j in js])
             for name, (js, levels) in planned.items()]
    folds = pd.concat([f for f, _ in parts], ignore_index=True)
    confusion = pd.concat([c for _, c in parts], ignore_index=True)
    figures = []
    for name, c in confusion.groupby("extractor", sort=False):
        n = int(folds.loc[folds["extractor"] == name, "fold"].nunique())
        untrained = " (UNTRAINED weights)" if tables[name].untrained else ""
        figures += confusion_panels(c, f"{name}{untrained}: dose level", layout.dose_confusion_figure(name),
                                    f"Counts summed over {n} {OVER}; each row is tested once.")
    write_csv(folds, layout.dose_models_folds)
    write_csv(confusion, layout.dose_confusion)
    write_csv(summarize_dose_models(folds), layout.dose_models)
    write_sidecar(layout.dose_models, record, inputs=inputs,
                  outputs=[layout.dose_models_folds, layout.dose_confusion, *figures],
                  untrained={n: t.untrained for n, t in tables.items()})


def umap_tables(layout: ResultsLayout, names: list[str]) -> dict[str, tuple[pd.DataFrame | None, str]]:
    """Per extractor with a UMAP table: (the table, '') when it is intact and made from the current
    feature table, else (None, why it is not used)."""
    out = {}
    for name in names:
        path = layout.umap_table(name)
        if not path.is_file():
            continue
        record = verify(path, layout.command("umap"))
        made_from = record.get("inputs", {}).get(os.path.abspath(layout.feature_table(name)))
        if made_from != file_sha256(layout.feature_table(name)):
            out[name] = (None, f"{path} was made from another {name} feature table; re-run "
                               f"{layout.command('umap')}")
            continue
        out[name] = (read_csv(path, dtype={"series_uid": str, "scanner": str}), "")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    paths = available_tables(layout.root, args.extractors)
    if not paths:
        raise FileNotFoundError(f"no feature tables under {layout.features_dir}")
    inputs = list(paths.values())
    models = DoseModelSettings(tuple(args.classifiers), tuple(args.regressors), args.n_folds, args.seed,
                               args.epochs, recons=tuple(args.recons))
    shift = ShiftSettings(args.low_dose, args.high_dose, args.shift_recon, args.alpha)
    sil = SilhouetteSettings(args.silhouette_rows, args.seed)
    extractors = {"extractors": sorted(args.extractors)}
    umap_inputs = [layout.umap_table(n) for n in paths if layout.umap_table(n).is_file()]
    todo = {
        "models": not is_current(layout.dose_models, {**models.as_dict(), **extractors}, inputs,
                                 [layout.dose_models_folds, layout.dose_confusion,
                                  *[p for p in recorded_outputs(layout.dose_models) if p.suffix in (".png", ".pdf")]]),
        "shift": not is_current(layout.dose_shift_summary, {**shift.as_dict(), **extractors}, inputs,
                                [layout.dose_shift]),
        "silhouette": not is_current(layout.silhouette, {**sil.as_dict(), **extractors}, inputs + umap_inputs),
    }
    todo = [p for p in args.parts if args.force or todo[p]]
    if not todo:
        print(f"dose-effect outputs up to date: {', '.join(args.parts)}")
        return 0
    tables = load_tables(layout.root, args.extractors)
    inputs = [layout.feature_table(n) for n in tables]
    # the quick parts first: a bad setting (a dose not in the tables) fails before the model fits
    if "shift" in todo:
        per_feature = pd.concat([distribution_shift(t, shift) for t in tables.values()], ignore_index=True)
        write_csv(per_feature, layout.dose_shift)
        write_csv(summarize_shift(per_feature, shift.alpha), layout.dose_shift_summary)
        write_sidecar(layout.dose_shift_summary, {**shift.as_dict(), **extractors}, inputs=inputs,
                      outputs=[layout.dose_shift], untrained={n: t.untrained for n, t in tables.items()})
        print(f"distribution shift {shift.low_dose:g} vs {shift.high_dose:g} mGy -> {layout.dose_shift_summary}")
    if "silhouette" in todo:
        umaps, rows = umap_tables(layout, list(tables)), []
        for name, table in tables.items():
            rows.append(feature_silhouettes(table, sil))
            emb, why = umaps.get(name, (None, ""))
            if why:
                warnings.warn(f"UMAP silhouette of {name} skipped: {why}")
            if emb is not None:
                rows.append(silhouettes(emb[["umap_1", "umap_2"]].to_numpy(float), emb, sil)
                            .assign(extractor=name, space="umap", dims=2))
        out = pd.concat(rows, ignore_index=True)
        out = out[["extractor", "space", "dims", *[c for c in out.columns if c not in ("extractor", "space", "dims")]]]
        write_csv(out, layout.silhouette)
        write_sidecar(layout.silhouette, {**sil.as_dict(), **extractors},
                      inputs=inputs + [layout.umap_table(n) for n in umaps],
                      untrained={n: t.untrained for n, t in tables.items()},
                      umap_skipped={n: why for n, (_, why) in umaps.items() if why})
        with_umap = out.loc[out["space"] == "umap", "extractor"].nunique()
        print(f"silhouettes: {len(tables)} extractor(s), {with_umap} with UMAP -> {layout.silhouette}")
    if "models" in todo:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        with threadpool_limits(limits=args.threads):
            run_models(layout, tables, models, {**models.as_dict(), **extractors}, inputs, args.workers,
                       args.threads)
        print(f"dose models: {len(tables)} extractor(s) -> {layout.dose_models}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
