#!/usr/bin/env python
"""Benchmark of the analysis step, measured side by side in one run.

1. ICC(3,1)+ICC(3,k) for F features x 60 targets x 13 raters: ctdose's vectorised computation vs
   pingouin.intraclass_corr called per feature (the obvious loop). With --quick pingouin runs on 50
   features and its time is extrapolated linearly to F (stated in the output).
2. Wall time of the classification suite (analyze/classify.py: cross-dose, LOSO-N, k-fold-n, dose level)
   on the feature tables under --results if present, else on synthetic tables of the demo's size.
3. Writing a captioned three-panel figure as PNG + PDF: ctdose.plots (caption broken by textwrap, the
   tight box found once for both files) vs matplotlib's own way (``wrap=True`` caption,
   ``bbox_inches="tight"`` per file), alternating, CPU time per figure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ctdose.atomic import write_csv
from ctdose.features import available_tables, synthetic_feature_table
from ctdose.layout import ResultsLayout
from ctdose.naming import SCANNER_CODES
from ctdose.stats.icc import icc3

# --- settings ---
RESULTS = "results"     # feature tables used for the classification timing (synthetic if absent)
FEATURES = 1000         # ICC benchmark features
TARGETS = 60            # ICC targets (6 ROIs x 10 patches)
RATERS = 13             # ICC raters (13 scanners)
PINGOUIN_QUICK = 50     # features timed with pingouin under --quick (extrapolated)
FIGURES = 8             # figures written each way (4 with --quick)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="pingouin on 50 features (extrapolated), logreg suite")
    p.add_argument("--results", default=RESULTS, help="results folder with features/*.csv (default: %(default)s)")
    p.add_argument("--features", type=int, default=FEATURES, help="ICC features (default: %(default)s)")
    p.add_argument("--classifier", default=None, choices=("mlp", "logreg"),
                   help="classifier of the suite (default: mlp, logreg with --quick)")
    return p.parse_args(argv)


def bench_icc(n_features: int, quick: bool) -> None:
    import pingouin as pg

    rng = np.random.default_rng(0)
    data = rng.normal(size=(n_features, TARGETS, 1)) + rng.normal(size=(n_features, TARGETS, RATERS))
    t0 = time.perf_counter()
    icc1, icck = icc3(data)
    t_vec = time.perf_counter() - t0
    n_pg = min(PINGOUIN_QUICK, n_features) if quick else n_features
    targets = np.repeat(np.arange(TARGETS), RATERS)
    raters = np.tile(np.arange(RATERS), TARGETS)
    t0 = time.perf_counter()
    worst = 0.0
    for f in range(n_pg):
        long = pd.DataFrame({"t": targets, "r": raters, "x": data[f].ravel()})
        res = pg.intraclass_corr(long, targets="t", raters="r", ratings="x").set_index("Type")
        worst = max(worst, abs(res.loc["ICC(C,1)", "ICC"] - icc1[f]), abs(res.loc["ICC(C,k)", "ICC"] - icck[f]))
    t_pg = (time.perf_counter() - t0) * n_features / n_pg
    note = f" (measured on {n_pg} features, extrapolated x{n_features / n_pg:g})" if n_pg < n_features else ""
    print(f"ICC {n_features} features x {TARGETS} targets x {RATERS} raters")
    print(f"  vectorised ctdose : {t_vec:8.3f} s")
    print(f"  pingouin per feat.: {t_pg:8.3f} s{note}")
    print(f"  speed-up          : {t_pg / t_vec:8.0f} x   (max |difference| {worst:.1e})")


def bench_classify(results: str, classifier: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyze"))
    import classify  # analyze/classify.py

    tables = available_tables(results)
    with tempfile.TemporaryDirectory() as tmp:
        layout = ResultsLayout(tmp)
        if tables:
            source = f"tables under {results}/features ({', '.join(tables)})"
            for name, path in tables.items():
                layout.features_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, layout.feature_table(name))
        else:
            source = "synthetic tables (13 scanners x 5 doses x FBP+IR, 2 patches/ROI; 100/128/768/512 features)"
            for n, (name, feats) in enumerate((("radiomics", 100), ("cnn", 128), ("swin", 768), ("ctfm", 512))):
                write_csv(synthetic_feature_table(name, scanners=SCANNER_CODES, recons=("FBP", "IR"),
                                                  patches_per_roi=2, n_features=feats, seed=n),
                          layout.feature_table(name))
        t0 = time.perf_counter()
        classify.main(["--results", tmp, "--classifier", classifier, "--force"])
        wall = time.perf_counter() - t0
    print(f"classification suite ({classifier}) on {source}")
    print(f"  wall time         : {wall:8.1f} s")


def bench_figures(n_figures: int) -> None:
    from ctdose import plots

    caption = " ".join(["The twin's cells beside the published ones, per scanner and dose."] * 8)

    def figure(plain_caption: bool):
        rng = np.random.default_rng(0)
        fig, axes = plots.plt.subplots(1, 3, figsize=(13, 4.4))
        for ax in axes:
            ax.scatter(rng.normal(size=300), rng.normal(size=300), s=8, label="cells")
            for k in range(20):
                ax.text(rng.normal(), rng.normal(), f"{k:.1f}", fontsize=6)
            ax.set(title="metric", xlabel="published", ylabel="ours")
            ax.legend(fontsize=7)
        if plain_caption:
            fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top", wrap=True)
        else:
            plots.caption_below(fig, caption)
        return fig

    def matplotlib_way(fig, stem: Path) -> None:
        for path in plots.figure_files(stem):
            fig.savefig(path, format=path.suffix[1:], dpi=plots.DPI, bbox_inches="tight")
        plots.plt.close(fig)

    times = {"ctdose": 0.0, "matplotlib": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_figures):
            for name in times:
                t0 = time.process_time()
                if name == "ctdose":
                    plots.save_figure(figure(False), Path(tmp) / f"{name}{k}")
                else:
                    matplotlib_way(figure(True), Path(tmp) / f"{name}{k}")
                times[name] += time.process_time() - t0
    print(f"captioned 3-panel figure, PNG + PDF, {n_figures} each (CPU time per figure)")
    print(f"  ctdose.plots      : {times['ctdose'] / n_figures:8.3f} s")
    print(f"  matplotlib's way  : {times['matplotlib'] / n_figures:8.3f} s")
    print(f"  speed-up          : {times['matplotlib'] / times['ctdose']:8.2f} x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench_icc(args.features, args.quick)
    bench_classify(args.results, args.classifier or ("logreg" if args.quick else "mlp"))
    bench_figures(FIGURES // 2 if args.quick else FIGURES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
