#!/usr/bin/env python
"""Patient size and size-specific dose of every catalogued CT series: WED (AAPM TG-220), SSDE (AAPM TG-204).

Per series of <results>/catalog.csv: the CT is read (ctdose.dicom_io), the object found on every axial
slice (threshold, opening that cuts the table off, largest connected component, holes filled), and its
water-equivalent diameter D_w = 2 sqrt(A_w / pi) measured; SSDE(z) = f(D_w(z)) CTDIvol(z) with TG-204's
fit for the 32 cm (body) or 16 cm (head) phantom, chosen from the header's CTDI phantom / body part.
CTDIvol per slice from the slices' CTDIvol tags when every slice has one, else the catalog's ctdivol.
With the series' ROI label map (<results>/masks/<uid>.nii.gz, from data/prepare.py) also the mean WED
and SSDE over each ROI's slab of slices, the noise (SD in HU) in the liver-parenchyma ROIs, and the
per-slice, per-organ input table of an organ-dose model (organ HU mean / SD, mA per slice, WED, z).
Without a label map the noise is the global noise level (mode of the local SD in soft tissue).

Writes under <results>/size_dose/ (each with a JSON sidecar):
  size_dose_series.csv     one row per series (series_uid, wed_cm, wed_center_cm, ssde_mgy,
                           ssde_center_mgy, conversion_factor, phantom, truncated, noise_hu,
                           wed_cm_<roi>, ssde_mgy_<roi> ...): the catalog's size columns
                           (join with ctdose.size_dose.join_size_columns)
  size_dose_slices.csv     one row per series and slice
  organ_dose_inputs.csv    one row per series, slice and organ label present on it
  organ_doses_predicted.csv  only with --organ-model FILE: the inputs plus that model's predictions
  ctdivol_vs_ssde.png/.pdf, noise_vs_ssde.png/.pdf
  partial/<uid>_{series,slices,organs}.csv   per series, written as each finishes: a re-run skips
                           series whose partials are current (same settings and label map).
No organ doses are made up: without --organ-model only the input table is written.

Example: .venv/bin/python data/size_dose.py --results results --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.catalog import read_catalog
from ctdose.cli import run_main
from ctdose.csv_io import read_csv
from ctdose.extractors.driver import select_series
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.provenance import file_sha256, verify, write_sidecar
from ctdose.size_dose import OPENING_MM, PADDING_HU, SERIES_COLUMNS, THRESHOLD_HU, SizeSettings
from ctdose.size_dose_job import SizeTask, run_task

# --- settings ---------------------------------------------------------------------------------
RESULTS = repo_path("results")       # holds catalog.csv and masks/; writes size_dose/
WORKERS = 2                          # local Dask worker processes (1 = in-process)
SCHEDULER = None                     # address of an existing Dask scheduler (overrides WORKERS)
THRESHOLD = THRESHOLD_HU             # object threshold, HU
OPENING = OPENING_MM                 # opening radius that cuts the table off the body, mm (0 = none)
PADDING = PADDING_HU                 # below this HU: padding outside the reconstruction circle
PHANTOM = "auto"                     # auto (header CTDI phantom / body part) | body32 | head16
SLICE_STEP = 1                       # measure every n-th slice (+ the middle one); 1 = every slice
NOISE_ROIS = ("normal1", "normal2", "liver")  # label-map names whose SD is the noise (liver parenchyma)
LABEL_DIR = None                     # folder of <uid>.nii.gz label maps; None = <results>/masks
ORGAN_MODEL = None                   # a user's fitted organ-dose regressor (joblib/pickle); None = none
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(RESULTS), help="results folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="local worker processes (default: %(default)s)")
    p.add_argument("--scheduler", default=SCHEDULER, help="address of a running Dask scheduler")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="object threshold, HU (default: %(default)s)")
    p.add_argument("--opening", type=float, default=OPENING,
                   help="opening radius cutting thin structures (table) off the body, mm (default: %(default)s)")
    p.add_argument("--padding", type=float, default=PADDING,
                   help="HU below which a voxel is padding outside the reconstruction circle (default: %(default)s)")
    p.add_argument("--phantom", default=PHANTOM, choices=("auto", "body32", "head16"),
                   help="CTDI phantom: auto = from the header (default: %(default)s)")
    p.add_argument("--slice-step", type=int, default=SLICE_STEP,
                   help="measure WED on every n-th slice and the middle one (SSDE = mean over those; the organ "
                        "table's WED interpolated along z between them); 1 = every slice (default: %(default)s)")
    p.add_argument("--noise-rois", nargs="+", default=list(NOISE_ROIS), metavar="NAME",
                   help="label-map ROI names whose SD is the noise (default: %(default)s)")
    p.add_argument("--label-dir", default=LABEL_DIR,
                   help="folder of <series_uid>.nii.gz label maps on the series grids (default: <results>/masks); "
                        "label names from each map's sidecar 'labels' list, else label_<n>")
    p.add_argument("--organ-model", default=ORGAN_MODEL, metavar="FILE",
                   help="a fitted organ-dose regressor (joblib/pickle, with predict) applied to the organ input "
                        "table (default: none, no organ doses)")
    p.add_argument("--scanners", nargs="+", metavar="CODE", help="only these scanner codes (e.g. A1 G2)")
    p.add_argument("--doses", nargs="+", type=float, metavar="MGY", help="only these nominal doses (mGy)")
    p.add_argument("--recons", nargs="+", metavar="RECON", help="only these reconstructions (FBP IR DL)")
    p.add_argument("--max-series", type=int, metavar="N", help="at most N series (first in catalog order)")
    p.add_argument("--force", action="store_true", help="recompute every series")
    return p.parse_args(argv)


def _ct_path(path: str) -> str:
    """A catalog path as is when it exists (relative to the current folder), else against the repository."""
    return path if Path(path).exists() else str(repo_path(path))


def make_tasks(catalog: pd.DataFrame, layout: ResultsLayout, args: argparse.Namespace) -> list[SizeTask]:
    settings = SizeSettings(args.threshold, args.opening, args.padding, args.phantom, args.slice_step)
    label_dir = Path(args.label_dir) if args.label_dir else layout.masks_dir
    tasks = []
    for row in catalog.itertuples(index=False):
        uid = str(row.series_uid)
        label = label_dir / f"{uid}.nii.gz"
        ctdivol = float(row.ctdivol) if pd.notna(row.ctdivol) else None
        tasks.append(SizeTask(uid, _ct_path(str(row.path)), ctdivol, str(label) if label.is_file() else None,
                              tuple(str(layout.size_dose_partial(uid, k)) for k in ("series", "slices", "organs")),
                              settings, tuple(args.noise_rois), args.force))
    return tasks


def _merge(paths: list[Path], dtype: dict | None = None) -> pd.DataFrame:
    frames = [read_csv(p, dtype={"series_uid": str, **(dtype or {})}) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    verify(layout.catalog, layout.command("prepare"))
    catalog = select_series(read_catalog(layout.catalog), args.scanners, args.doses, args.recons, args.max_series)
    tasks = make_tasks(catalog, layout, args)
    todo = [t for t in tasks if not t.is_current()]
    print(f"size_dose: {len(tasks)} series, {len(tasks) - len(todo)} already done")
    parallel_map(run_task, todo, workers=args.workers, scheduler=args.scheduler, desc="size_dose")
    for task in tasks:
        verify(task.partials[0], layout.command("size_dose"))
    partials = [Path(p) for t in tasks for p in t.partials]
    settings = {**tasks[0].settings.as_dict(), "noise_rois": list(args.noise_rois),
                "label_dir": str(args.label_dir or layout.masks_dir), "scanners": args.scanners,
                "doses": args.doses, "recons": args.recons, "max_series": args.max_series}
    series = _merge([Path(t.partials[0]) for t in tasks], {"phantom_source": str, "noise_source": str})
    series = series[[*SERIES_COLUMNS, *[c for c in series.columns if c not in SERIES_COLUMNS]]]
    slices = _merge([Path(t.partials[1]) for t in tasks])
    organs = _merge([Path(t.partials[2]) for t in tasks], {"organ": str})
    from ctdose.report_sections.size_dose import size_dose_figures

    figures = size_dose_figures(catalog, series, layout)
    write_csv(slices, layout.size_dose_slices)
    write_sidecar(layout.size_dose_slices, settings, inputs=[layout.catalog, *partials])
    write_csv(organs, layout.organ_dose_inputs)
    write_sidecar(layout.organ_dose_inputs, settings, inputs=[layout.catalog, *partials])
    write_csv(series, layout.size_dose_series)
    n_trunc = int(series["truncated"].astype(str).str.lower().eq("true").sum()) if len(series) else 0
    write_sidecar(layout.size_dose_series, settings, inputs=[layout.catalog, *partials],
                  outputs=[layout.size_dose_slices, layout.organ_dose_inputs, *figures], n_series=len(series),
                  n_truncated=n_trunc, organ_model=None,
                  references=["AAPM Report 204 (2011)", "AAPM Report 220 (2014)"])
    print(f"size_dose: {len(series)} series (WED mean {series['wed_cm'].mean():.2f} cm, {n_trunc} truncated) "
          f"-> {layout.size_dose_series}")
    if args.organ_model:
        from ctdose.organ_dose_inputs import load_organ_model, predict_organ_doses

        model = load_organ_model(args.organ_model)
        if organs.empty:
            raise ValueError("--organ-model given but the organ input table is empty: no label maps found "
                             f"in {args.label_dir or layout.masks_dir}")
        predicted = predict_organ_doses(model, organs)
        write_csv(predicted, layout.organ_doses)
        write_sidecar(layout.organ_doses, {**settings, "organ_model": str(args.organ_model)},
                      inputs=[layout.organ_dose_inputs, args.organ_model],
                      model_sha256=file_sha256(args.organ_model), model_type=type(model).__name__)
        print(f"organ doses predicted by {args.organ_model} ({type(model).__name__}) -> {layout.organ_doses}")
    else:
        print(f"organ doses: none (no --organ-model given); input table {layout.organ_dose_inputs} "
              f"({len(organs)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
