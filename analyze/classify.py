#!/usr/bin/env python
"""ROI-class and dose-level classification from each extractor's features, scanners held out.

Protocols (ctdose.stats.classify): cross-dose (train at dose A, test at dose B on a held-out scanner,
diagonal included); the dataset paper's Algorithm 1 (every scanner as the test scanner, N = 1..S-1
training scanners drawn, seeded, from the others; --loso-draw other-manufacturer-first is the study
code's variant); Algorithm 2 (10 folds grouped by acquisition = scanner, dose, repetition; every fold
as test fold, n = 1..9 training folds); dose-level classification with leave-one-scanner-out. Scaler
and constant-feature filter are fitted on training rows only; the MLP (100-60-30, GELU, dropout 0.2)
trains a fixed number of epochs (no early stopping). Every mean has its sd, n, what it is over and
the chance level (majority-class share of the test labels). --protocol picks the defaults of
--classifier, --loso-draw and --n-folds (ctdose.protocols): toolkit and dataset-paper = MLP, random
draws, 10 folds; study = MLP, other-manufacturer-first draws; the study's cross-dose test keeps the
scanner held out (the study code's leak is not reproduced; the sidecar says so). Explicit flags
override. Writes under <results>/analysis/:
classify_cross_dose.csv (per split), classify_cross_dose_matrix.csv (mean, sd, n, over, chance;
+ .json sidecar with the settings), classify_curves.csv (+ _folds), classify_dose_level.csv and
figures in classify/. Each input table is checked against its extractor's sidecar; a re-run with the
same inputs and settings does nothing, a changed table or setting recomputes.
"""

from __future__ import annotations

import argparse
import sys

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import EXTRACTORS, available_tables, load_tables
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.plots import accuracy_curves, accuracy_heatmap
from ctdose.protocols import get_protocol, parse_with_protocol
from ctdose.provenance import is_current, recorded_outputs, write_sidecar
from ctdose.stats.classify import (CLASSIFIERS, LOSO_DRAWS, OVER, ClassifySettings, gather_jobs, run_split_job,
                                   split_jobs, summarize)

# --- settings ---
RESULTS = "results"      # reads features/, writes analysis/ (repo-relative)
EPOCHS = 100             # fixed MLP training epochs (full-batch Adam, lr 1e-3)
SEED = 0                 # seeds the MLP and every random draw
RECONS: list[str] = []   # reconstructions to use (empty: all present)
THREADS = 1              # torch and BLAS CPU threads per worker
WORKERS = 1              # parallel worker processes (Dask), sharing chunks of fits; 1 = in-process
# classifier (mlp: the papers' 100-60-30 GELU MLP, or logreg), loso_draw (random: Algorithm 1, or
# other-manufacturer-first: the study code) and n_folds (Algorithm 2, grouped by acquisition) come from
# the --protocol preset (ctdose/protocols.py; default toolkit) unless given as flags
# --- end settings ---

#: Curve protocols: x-axis label of their figure.
CURVE_LABELS = {"loso_n": "training scanners N", "kfold_n": "training folds n"}
#: Curve protocols: their name in figure titles.
CURVE_TITLES = {"loso_n": "LOSO-N (Algorithm 1)", "kfold_n": "grouped k-fold-n (Algorithm 2)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                   help="extractors to analyse if their table exists (default: all)")
    p.add_argument("--classifier", choices=CLASSIFIERS, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="MLP epochs, fixed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    p.add_argument("--loso-draw", choices=LOSO_DRAWS,
                   help="how the N training scanners of each test scanner are drawn: random from the other "
                        "scanners (dataset paper, Algorithm 1) or other manufacturers first, then the test "
                        "scanner's own (the study's code) (default: %(default)s)")
    p.add_argument("--n-folds", type=int,
                   help="folds of Algorithm 2, grouped by acquisition; each is the test fold once "
                        "(default: %(default)s)")
    p.add_argument("--recons", nargs="*", default=RECONS, help="reconstructions to use (default: all)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch and BLAS threads (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="parallel worker processes, sharing chunks of every extractor's fits (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    return parse_with_protocol(p, argv, lambda protocol: protocol.classify.flag_defaults(),
                               "--classifier --loso-draw --n-folds")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = ClassifySettings(args.classifier, args.epochs, args.seed, args.loso_draw, args.n_folds,
                                tuple(args.recons))
    preset = get_protocol(args.protocol)
    record = {**settings.as_dict(), "protocol": args.protocol, "extractors": sorted(args.extractors)}
    names = available_tables(layout.root, args.extractors)
    tables_out = [layout.cross_dose, layout.curves, layout.curves_folds, layout.dose_class]
    # which figures exist depends on the data (a table with one scanner has no cross-dose matrix)
    figures = [p for p in recorded_outputs(layout.cross_dose_matrix) if p.suffix in (".png", ".pdf")]
    if not args.force and names and is_current(layout.cross_dose_matrix, record, names.values(),
                                               [*tables_out, *figures]):
        print(f"classification outputs up to date: {layout.cross_dose_matrix}")
        return 0
    tables = load_tables(layout.root, args.extractors)
    # every extractor's fits in chunks, the largest first, so that the workers share the big tables
    # (one job per extractor left one worker alone with the CNN's); each fit is seeded on its own
    jobs = sorted((j for t in tables.values() for j in split_jobs(t, settings, args.threads)),
                  key=lambda j: -j.cost)
    per_extractor = gather_jobs(jobs, parallel_map(run_split_job, jobs, workers=args.workers,
                                                   desc="classification", unit="job"))
    outs = [per_extractor.get(name, {}) for name in tables]
    summary = summarize(dict(zip(tables, outs)))

    written = []
    for name, (mean, sd) in summary.matrices.items():
        cells = summary.matrix[summary.matrix["extractor"] == name]
        written += accuracy_heatmap(mean, sd, f"{name}: ROI class, cross-dose ({args.classifier})",
                                    layout.cross_dose_figure(name), chance=float(cells["chance"].mean()),
                                    n=int(cells["n"].max()), over=OVER["cross_dose"])
    for protocol, per in summary.curves.items():
        label = CURVE_TITLES[protocol] if (protocol, args.loso_draw) != ("loso_n", LOSO_DRAWS[1]) \
            else "LOSO-N, other manufacturers first (study code)"
        written += accuracy_curves(per, f"ROI class, {label} ({args.classifier})",
                                   CURVE_LABELS[protocol], layout.curve_figure(protocol))
    write_csv(summary.per_protocol["cross_dose"], layout.cross_dose)
    write_csv(summary.folds_table, layout.curves_folds)
    write_csv(summary.curve_table, layout.curves)
    write_csv(summary.per_protocol["dose_level"], layout.dose_class)
    write_csv(summary.matrix, layout.cross_dose_matrix)
    write_sidecar(layout.cross_dose_matrix, record, inputs=[layout.feature_table(n) for n in tables],
                  outputs=[*tables_out, *written], untrained={n: t.untrained for n, t in tables.items()},
                  protocols_run={n: sorted(r) for n, r in zip(tables, outs)},
                  protocol_reproduces=preset.reproduces, protocol_notes=preset.classify.notes())
    print(f"classification: {len(tables)} extractor(s) -> {layout.cross_dose_matrix}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
