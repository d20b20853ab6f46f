"""Figures and the report section of the patient-size dose step (data/size_dose.py): WED and SSDE per
scanner and dose, CTDIvol vs SSDE, noise vs SSDE."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctdose.layout import ResultsLayout
from ctdose.plots import plt, save_figure
from ctdose.report import Section, _mean_sd, _read_table
from ctdose.size_dose import join_size_columns

#: Catalog columns shown next to the size columns.
_IDENTITY = ("series_uid", "scanner", "dose_mgy", "recon")


def _joined(catalog: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    """The size rows with the catalog's scanner, dose and reconstruction (series measured only)."""
    keep = [c for c in _IDENTITY if c in catalog.columns]
    measured = catalog.loc[catalog["series_uid"].isin(series["series_uid"]), keep]
    return join_size_columns(measured.reset_index(drop=True), series)


def _scatter(table: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str, stem,
             identity_line: bool = False) -> list:
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    groups = list(table.groupby("scanner", sort=True))
    colours = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    for n, (scanner, sub) in enumerate(groups):
        ax.scatter(sub[x], sub[y], s=14, alpha=0.8, label=str(scanner), color=colours(n % colours.N))
    if identity_line:
        low = float(np.nanmin([table[x].min(), table[y].min()]))
        high = float(np.nanmax([table[x].max(), table[y].max()]))
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--", label="SSDE = CTDIvol")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    return save_figure(fig, stem)


def size_dose_figures(catalog: pd.DataFrame, series: pd.DataFrame, layout: ResultsLayout) -> list:
    """CTDIvol vs SSDE and noise vs SSDE, one point per series coloured by scanner; the files written."""
    if series.empty:
        return []
    table = _joined(catalog, series)
    files = _scatter(table, "ctdivol_mgy", "ssde_mgy", "CTDIvol (mGy, 32/16 cm PMMA phantom)",
                     "SSDE (mGy, mean of SSDE(z))", "CTDIvol vs size-specific dose (AAPM TG-204/220)",
                     layout.size_dose_figure("ctdivol_vs_ssde"), identity_line=True)
    if table["noise_hu"].notna().any():
        files += _scatter(table, "ssde_mgy", "noise_hu", "SSDE (mGy)", "noise (SD, HU)",
                          "Image noise vs SSDE", layout.size_dose_figure("noise_vs_ssde"))
    return files


def size_dose_section(layout: ResultsLayout) -> Section:
    """WED and SSDE of the phantom per scanner and dose, CTDIvol vs SSDE, noise vs SSDE."""
    sec = Section("Patient size and size-specific dose (WED, SSDE)")
    record = sec.checked(layout.size_dose_series, layout, "size_dose", "the size-dose table")
    series = None if record is None else _read_table(sec, layout.size_dose_series)
    if series is None:
        return sec
    from ctdose.catalog import read_catalog

    try:
        catalog = read_catalog(layout.catalog)
    except (ValueError, FileNotFoundError) as err:
        sec.warnings.append(f"size-dose table not shown: {err}")
        return sec
    side = record.get("settings", {})
    sec.notes.append(
        "Water-equivalent diameter per axial slice as AAPM Report 220: D_w = 2 sqrt(A_w / pi), A_w = "
        "sum over the object of (HU / 1000 + 1) x pixel area; object = voxels above "
        f"{side.get('threshold_hu', '?')} HU, opened with a {side.get('opening_mm', '?')} mm disk to cut the "
        "table off, largest connected component, holes filled. SSDE(z) = f(D_w(z)) x CTDIvol(z), f = AAPM "
        "Report 204's exponential fit for the CTDI phantom (32 cm body / 16 cm head, from the header). "
        "'SSDE' = mean of SSDE(z); 'centre' = from D_w at the centre of the scan range. A slice whose object "
        "touches the image edge or the padding outside the reconstruction circle is flagged truncated "
        "(its D_w is too small).")
    table = _joined(catalog, series)
    n_trunc = int(table["truncated"].astype(str).str.lower().eq("true").sum())
    if n_trunc:
        sec.warnings.append(f"{n_trunc} of {len(table)} series have slices truncated by the field of view: "
                            "their WED and SSDE are underestimates")
    per_scanner = table.groupby("scanner", sort=True).agg(
        series=("series_uid", "size"), wed_mean=("wed_cm", "mean"), wed_sd=("wed_cm", "std"),
        wed_center=("wed_center_cm", "mean"), factor=("conversion_factor", "mean"),
        phantom=("phantom", lambda s: ", ".join(sorted(set(map(str, s))))),
        truncated=("truncated", lambda s: int(s.astype(str).str.lower().eq("true").sum())))
    per_scanner["WED (cm), mean ± sd over series"] = _mean_sd(per_scanner["wed_mean"], per_scanner["wed_sd"],
                                                             "{:.2f}")
    sec.tables.append(("Phantom size per scanner (WED over all slices; centre = slice at the centre of the scan "
                       "range) and the mean SSDE / CTDIvol factor",
                       per_scanner.reset_index()[["scanner", "series", "WED (cm), mean ± sd over series",
                                                  "wed_center", "factor", "phantom", "truncated"]]
                       .rename(columns={"wed_center": "WED centre (cm)", "factor": "SSDE / CTDIvol"})))
    cells = table.groupby(["scanner", "dose_mgy"]).agg(m=("ssde_mgy", "mean"), s=("ssde_mgy", "std"))
    cells["cell"] = _mean_sd(cells["m"], cells["s"], "{:.2f}")
    wide = cells["cell"].unstack("dose_mgy")
    wide.columns = [f"{d:g} mGy" for d in wide.columns]
    sec.tables.append(("SSDE (mGy) per scanner and nominal CTDIvol: mean ± sd over the series of the cell "
                       "(repetitions and reconstructions)", wide.reset_index().fillna("")))
    sec.figure(record, "CTDIvol against SSDE, one point per series (dashed: SSDE = CTDIvol)",
               layout.size_dose_figure("ctdivol_vs_ssde"))
    sec.figure(record, "Image noise (SD in HU in the liver-parenchyma ROIs, else the global noise level) "
               "against SSDE, one point per series", layout.size_dose_figure("noise_vs_ssde"))
    sources = sorted(set(table["noise_source"].dropna().astype(str)))
    if sources:
        sec.notes.append("Noise measured as: " + "; ".join(sources) + ".")
    if sec.recorded(record, layout.organ_dose_inputs):
        n_rows = max(0, sum(1 for _ in layout.organ_dose_inputs.open()) - 1)
        sec.notes.append(f"Organ-dose model inputs (per slice and organ: HU mean / SD, mA, WED, z): "
                         f"{layout.organ_dose_inputs.name}, {n_rows} rows. Organ doses are predicted only by a "
                         "user's model (data/size_dose.py --organ-model FILE); none is shipped.")
    if layout.organ_doses.is_file():
        sec.notes.append(f"Organ doses predicted by a user model: {layout.organ_doses.name}.")
    return sec

