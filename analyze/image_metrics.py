#!/usr/bin/env python
"""RMSE, PSNR and SSIM between registered CT series, as the dataset paper's code computed them.

Volumes clipped to [-1000, 2000] HU; PSNR peak 2000 HU; SSIM 3-D with a Gaussian window 11 / sigma 1.5,
data range 3000 HU (C1 = 900, C2 = 8100 HU^2): MONAI's PSNRMetric / SSIMMetric (ctdose.image_metrics).
Two comparisons, pairs chosen as the paper's code did (ctdose.image_metrics.metric_pairs):
* vs_dose (Table 6) -> <results>/analysis/image_metrics_vs_14mGy.csv: per scanner and dose, up to
  --max-pairs pairs (i-th series at that dose with the i-th at 14 mGy, both lists shuffled with --seed),
  reconstructions pooled (--recon-pairing any, the paper) or one cell per reconstruction (same);
* vs_scanner (Tables 3-5) -> image_metrics_scanner_pairs.csv: every scanner pair at 10 mGy the same way,
  diagonal = repeated scans of one scanner; volumes bin-shrunk by --scanner-shrink (4, the paper).
Both are set beside the dataset paper's tables, cell by cell (ctdose.published; at 14 / 10 mGy only) ->
image_metrics_vs_paper_table6.csv, image_metrics_vs_paper_pairs.csv, image_metrics/vs_paper_scatter.png/.pdf.
Region (--region): "crop" = the paper code's unmasked bounding box of the phantom, "phantom" = only voxels
inside the phantom. Only voxels both series cover count (uncovered_fraction per pair in
image_metrics_series.csv); a same-scan pair (one acquisition, or the same transform) is not resampled.
Fig. 4 (ctdose.texture): one --texture-dose / --texture-recon series per scanner (10 mGy IR), registered
onto the reference's axial slice through the center of --texture-roi, window level 50 / width 400 HU ->
analysis/image_metrics/fig4_texture.png/.pdf; a scanner without such a series is skipped and named in
the caption (recorded in the sidecar), and without the reference's label map the figure is left out
with a note. The catalog and every transform are checked against their sidecars. Each pair is cached under
analysis/image_metrics_partial/ (a one-row CSV whose sidecar records the settings and both transforms'
checksums), so a re-run measures only new pairs and pairs whose registration or settings changed.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.catalog import read_catalog
from ctdose.cli import run_main
from ctdose.image_metrics import (RECON_PAIRINGS, REGIONS, MetricSettings, figure_plan, measure_pairs,
                                  metric_pairs, metric_tables, pair_jobs, scanner_matrix)
from ctdose.layout import ResultsLayout, repo_path
from ctdose.plots import figure_files, metric_bars, metric_matrix, ours_vs_published, texture_panels
from ctdose.provenance import is_current, verify, write_sidecar
from ctdose.published import (PAIRS_CSV, TABLE6_CSV, compare_scanner_pairs, compare_table6, describe,
                              published_path)
from ctdose.texture import TextureSettings, texture_figure, texture_inputs

# --- settings ---
RESULTS = "results"          # reads catalog.csv, transforms/; writes analysis/ (repo-relative)
REFERENCE_DOSE = 14.0        # reference dose of the vs_dose comparison, Table 6 (mGy)
SCANNER_DOSE = 10.0          # dose of the scanner x scanner comparison, Tables 3-5 (mGy)
REGION = "crop"              # "crop" (the paper code's unmasked phantom bounding box) or "phantom"
RECON_PAIRING = "any"        # "any" (reconstructions pooled per cell, the paper) or "same" (a cell per recon)
MAX_PAIRS = 5                # pairs per cell (the paper: 5)
SEED = 0                     # seed of the per-cell shuffles
DOSE_SHRINK = 1              # bin-shrink factor of the vs_dose comparison (the paper: 1, none)
SCANNER_SHRINK = 4           # bin-shrink factor of the scanner comparison (the paper: 4)
WORKERS = 1                  # parallel worker processes (Dask); 1 = in-process
SCHEDULER = ""               # address of an existing Dask scheduler ("" = local)
TEXTURE_DOSE = 10.0          # Fig. 4: dose (mGy) of the series shown per scanner
TEXTURE_RECON = "IR"         # Fig. 4: reconstruction shown
TEXTURE_ROI = ""             # Fig. 4: ROI whose center the slice passes through ("" = the first ROI)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--reference-dose", type=float, default=REFERENCE_DOSE, help="default: %(default)s mGy")
    p.add_argument("--scanner-dose", type=float, default=SCANNER_DOSE, help="default: %(default)s mGy")
    p.add_argument("--region", choices=REGIONS, default=REGION, help="voxels compared (default: %(default)s)")
    p.add_argument("--recon-pairing", choices=RECON_PAIRINGS, default=RECON_PAIRING,
                   help="pool reconstructions per cell (any) or a cell per reconstruction (same); "
                        "default: %(default)s")
    p.add_argument("--max-pairs", type=int, default=MAX_PAIRS, help="pairs per cell (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the pair shuffles (default: %(default)s)")
    p.add_argument("--dose-shrink", type=int, default=DOSE_SHRINK,
                   help="bin-shrink factor for vs_dose (default: %(default)s)")
    p.add_argument("--scanner-shrink", type=int, default=SCANNER_SHRINK,
                   help="bin-shrink factor for the scanner pairs (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="worker processes (default: %(default)s)")
    p.add_argument("--scheduler", default=SCHEDULER, help="Dask scheduler address (default: local)")
    p.add_argument("--texture-dose", type=float, default=TEXTURE_DOSE, help="Fig. 4 dose (default: %(default)s mGy)")
    p.add_argument("--texture-recon", default=TEXTURE_RECON, help="Fig. 4 reconstruction (default: %(default)s)")
    p.add_argument("--texture-roi", default=TEXTURE_ROI, help="Fig. 4 ROI (default: the first ROI)")
    p.add_argument("--force", action="store_true", help="rewrite the summary tables even if they are up to date")
    return p.parse_args(argv)


def _caption(settings: MetricSettings, comparison: str, recon: str) -> str:
    pooled = "reconstructions pooled" if recon == "any" else f"{recon} only"
    shrink = settings.shrink(comparison)
    what = "Mean ± sd" if comparison == "vs_dose" else "Mean (diagonal: repeated scans)"
    return (f"{what} over up to {settings.max_pairs} seeded pairs per cell ({pooled}); region "
            f"{settings.region}; clipped to [-1000, 2000] HU" + (f"; bin-shrunk by {shrink}" if shrink > 1 else "")
            + "; only voxels covered by both series.")


def _vs_paper(by_dose: pd.DataFrame, by_scanner: pd.DataFrame, args: argparse.Namespace,
              layout: ResultsLayout) -> None:
    """Our tables beside the dataset paper's (ctdose.published): both comparison CSVs and the scatter.
    A comparison made at another dose than the paper's (14 / 10 mGy) is not set beside it (all missing)."""
    vs_dose = compare_table6(by_dose if args.reference_dose == 14 else by_dose.iloc[:0])
    vs_scanner, summary = compare_scanner_pairs(by_scanner if args.scanner_dose == 10 else pd.DataFrame())
    write_csv(vs_dose, layout.image_metrics_vs_paper_dose)
    write_csv(vs_scanner, layout.image_metrics_vs_paper_scanner)
    ours_vs_published(vs_dose, vs_scanner, "Image metrics: ours against the dataset paper's",
                      layout.image_metrics_vs_paper_figure, " ".join(describe(vs_dose, summary)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = MetricSettings(region=args.region, recon_pairing=args.recon_pairing, max_pairs=args.max_pairs,
                              seed=args.seed, reference_dose=args.reference_dose, scanner_dose=args.scanner_dose,
                              dose_shrink=args.dose_shrink, scanner_shrink=args.scanner_shrink)
    layout = ResultsLayout(args.results)
    verify(layout.catalog, layout.command("prepare"))
    catalog = read_catalog(layout.catalog)  # an unparsable CSV is named by the one CSV reader
    pairs = metric_pairs(catalog, settings)
    if pairs.empty:
        raise ValueError(f"no series pairs to compare in {layout.catalog} "
                         f"(needs {args.reference_dose:g} mGy series per scanner, or {args.scanner_dose:g} mGy series)")
    jobs = pair_jobs(catalog, pairs, layout, settings)
    texture = TextureSettings(dose=args.texture_dose, recon=args.texture_recon, roi=args.texture_roi)
    try:
        texture_files = [str(f) for f in texture_inputs(catalog, layout, texture)]
    except FileNotFoundError as err:  # no reference.json or label map: the figure is left out with a note
        texture_files, texture_note = [], f"Fig. 4 not drawn: {err}"
    inputs = [layout.catalog, *sorted({t for job in jobs for t in job.inputs} | set(texture_files))]
    plan = figure_plan(pairs)
    inputs += [published_path(TABLE6_CSV), published_path(PAIRS_CSV)]  # the paper's tables, compared against
    outputs = [layout.image_metrics_series, layout.image_metrics_scanner, layout.image_metrics_vs_paper_dose,
               layout.image_metrics_vs_paper_scanner, *figure_files(layout.image_metrics_vs_paper_figure),
               *(f for fig in plan for f in figure_files(layout.image_metrics_figure(fig.name)))]
    record = {**settings.as_dict(), "texture": texture.as_dict()}
    if not args.force and is_current(layout.image_metrics_dose, record, inputs,
                                     outputs + (figure_files(layout.texture_figure()) if texture_files else [])):
        print(f"image metrics up to date: {layout.image_metrics_dose}")
        return 0
    per_pair, n_new = measure_pairs(jobs, args.workers, args.scheduler or None)
    by_dose, by_scanner = metric_tables(per_pair)
    write_csv(per_pair, layout.image_metrics_series)
    write_csv(by_scanner, layout.image_metrics_scanner)
    _vs_paper(by_dose, by_scanner, args, layout)
    for fig in plan:
        stem, caption = layout.image_metrics_figure(fig.name), _caption(settings, fig.comparison, fig.recon)
        if fig.comparison == "vs_dose":
            metric_bars(by_dose[by_dose["recon"] == fig.recon], fig.metric, "scanner", "dose_mgy",
                        f"{fig.metric} vs {args.reference_dose:g} mGy ({fig.recon} reconstruction)", stem, caption)
        else:
            metric_matrix(scanner_matrix(by_scanner, f"{fig.metric}_mean", fig.recon), fig.metric,
                          f"{fig.metric}, scanner pairs at {args.scanner_dose:g} mGy ({fig.recon} reconstruction)",
                          stem, caption)
    for f in figure_files(layout.texture_figure()):  # never a figure left from an earlier run
        f.unlink(missing_ok=True)
    if texture_files:
        fig4 = texture_figure(catalog, layout, texture)
        if fig4.slices:
            outputs += texture_panels(fig4.slices, fig4.pixel_mm, f"Registered {texture.dose:g} mGy "
                                      f"{texture.recon} texture per scanner", layout.texture_figure(), fig4.caption,
                                      texture.level, texture.width)
            texture_note = fig4.caption
        else:
            texture_note = f"Fig. 4 not drawn: no scanner has a {texture.recon} series at {texture.dose:g} mGy."
    write_csv(by_dose, layout.image_metrics_dose)
    write_sidecar(layout.image_metrics_dose, record, inputs=inputs, outputs=outputs,
                  n_pairs=len(per_pair), uncovered_fraction_max=float(per_pair["uncovered_fraction"].max()),
                  texture_caption=texture_note)
    print(f"image metrics: {len(per_pair)} pairs ({n_new} measured, {len(per_pair) - n_new} cached) "
          f"-> {layout.image_metrics_dose}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
