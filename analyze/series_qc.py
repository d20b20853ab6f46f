#!/usr/bin/env python
"""Series QC table: is each series of the catalog what its header says (imaging axis)?

Per series of <results>/catalog.csv: the imaging axis from ImageOrientationPatient (axial, coronal,
sagittal, oblique; 10 deg tolerance), the gantry tilt (degrees), the axis the header claims
(SeriesDescription keywords, then ImageType) and, for the series chosen by --image-check, the axis
seen in the pixels (a heuristic cross-check: the patient's long axis is the array axis along which
the image changes least; ctdose/series_qc.py). Disagreements become short warnings in qc_warnings.
The header columns come from the catalog (data/prepare.py computes them); a catalog made before they
existed gets them from the series' headers here. Writes <results>/analysis/series_qc.csv + its JSON
sidecar (settings, counts per axis, number of series with warnings). Reading pixels costs about a
second per series: --image-check first (default) checks one series per scanner x axis x header claim,
all checks every series, none skips the image check. A re-run with the same inputs and settings does
nothing.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from ctdose.atomic import write_csv
from ctdose.catalog import QC_HEADER_COLUMNS, read_catalog
from ctdose.cli import run_main
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.provenance import is_current, verify, write_sidecar
from ctdose.series_qc import (AXIS_TOLERANCE_DEG, IMAGE_GRID_MM, LONG_AXIS_RATIO, header_qc, qc_warnings,
                              series_image_check)

# --- settings ---
RESULTS = "results"        # reads catalog.csv, writes analysis/series_qc.csv (repo-relative)
IMAGE_CHECK = "first"      # first (one series per scanner x axis x header claim) | all | none
WORKERS = 1                # processes reading pixels for the image check
# --- end settings ---

#: Columns of series_qc.csv.
QC_TABLE_COLUMNS = ("series_uid", "scanner", "dose_mgy", "recon", "repetition", "series_description", "path",
                    "axis", "gantry_tilt_deg", "header_axis", "image_axis", "grad_slice", "grad_row",
                    "grad_col", "qc_warnings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--image-check", default=IMAGE_CHECK, choices=("first", "all", "none"),
                   help="which series get the pixel-based axis check (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="processes for the image check (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if the output is up to date")
    return p.parse_args(argv)


def _header_columns(path: str, series_uid: str) -> dict:
    from ctdose.dicom_io import read_series_datasets

    return header_qc(read_series_datasets(path, series_uid, stop_before_pixels=True))


def qc_table(catalog: pd.DataFrame, image_check: str = IMAGE_CHECK, workers: int = WORKERS) -> pd.DataFrame:
    """The series QC table of a catalog (see the module docstring)."""
    df = catalog.copy()
    if not set(QC_HEADER_COLUMNS) <= set(df.columns):
        rows = [_header_columns(p, u) for p, u in zip(df["path"], df["series_uid"])]
        for column in QC_HEADER_COLUMNS:
            df[column] = [r[column] for r in rows]
    df["qc_warnings"] = df["qc_warnings"].fillna("").astype(str)
    if image_check == "all":
        chosen = df.index
    elif image_check == "first":
        chosen = df.groupby(["scanner", "axis", "header_axis"], dropna=False, sort=False).head(1).index
    else:
        chosen = df.index[:0]
    images = parallel_map(series_image_check, [(df.at[i, "path"], df.at[i, "series_uid"]) for i in chosen],
                          workers=workers, desc="image axis check")
    df["image_axis"] = ""
    for column in ("grad_slice", "grad_row", "grad_col"):
        df[column] = np.nan
    for i, found in zip(chosen, images):
        for key, value in found.items():
            df.at[i, key] = value
        extra = qc_warnings(str(df.at[i, "axis"]), "", image=found["image_axis"])
        if extra:
            df.at[i, "qc_warnings"] = "; ".join([w for w in [df.at[i, "qc_warnings"], *extra] if w])
    return df.reindex(columns=list(QC_TABLE_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    verify(layout.catalog, layout.command("prepare"))
    record = {"image_check": args.image_check, "axis_tolerance_deg": AXIS_TOLERANCE_DEG,
              "image_grid_mm": IMAGE_GRID_MM, "long_axis_ratio": LONG_AXIS_RATIO}
    if not args.force and is_current(layout.series_qc, record, [layout.catalog]):
        print(f"series QC up to date: {layout.series_qc}")
        return 0
    table = qc_table(read_catalog(layout.catalog), args.image_check, args.workers)
    write_csv(table, layout.series_qc)
    flagged = int((table["qc_warnings"] != "").sum())
    write_sidecar(layout.series_qc, record, inputs=[layout.catalog],
                  axes=table["axis"].value_counts().to_dict(),
                  header_axes=table["header_axis"].replace("", "(none)").value_counts().to_dict(),
                  image_checked=int((table["image_axis"] != "").sum()), with_warnings=flagged)
    print(f"series QC: {len(table)} series ({', '.join(f'{n} {a}' for a, n in table['axis'].value_counts().items())}), "
          f"{int((table['image_axis'] != '').sum())} image-checked, {flagged} with warnings -> {layout.series_qc}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
