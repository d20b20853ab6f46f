"""The dataset paper's published image-metric tables, and the twin's (or real data's) tables beside them.

Three tables of the CT4Harmonization-Multicentric dataset paper ship with the package as
``ctdose/data/ct4h/`` (byte copies of ``shared/reference/``):

* ``ct4h_scanners.csv``: the scanners and their acquisition parameters (Tables 1-2);
* ``ct4h_table6_dose_vs_14mGy.csv``: Table 6, RMSE (HU), PSNR (dB), SSIM of each dose (1, 3, 6, 10 mGy)
  against the same scanner's 14 mGy series, mean and sd over 5 pairs, reconstructions pooled;
* ``ct4h_tables3to5_scanner_pairs_10mGy.csv``: Tables 3-5, every scanner pair at 10 mGy (lower triangle
  in the paper's scanner order; the diagonal = repeated scans of one scanner).

:func:`compare_table6` and :func:`compare_scanner_pairs` set our tables (``analyze/image_metrics.py``,
:func:`ctdose.image_metrics.metric_tables`) beside them cell by cell. A cell is *within the aim* when
``|ours - paper| <= max(2 * paper_sd, 0.15 * |paper|)`` (the published mean +- 2 sd, or +-15 % where the
sd is tiny). Scanner pairs are also compared by rank: Spearman rho over the off-diagonal cells (aim for
RMSE: rho >= 0.6), and by the ratio of the off-diagonal to the diagonal mean (the paper: several times).
Every published cell appears in the result: one our table lacks has status ``"twin missing"``, one only
ours has ``"paper missing"``; nothing is dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ctdose.csv_io import read_csv

#: Folder of the published tables inside the package.
PUBLISHED_DIR = Path(__file__).parent / "data" / "ct4h"
SCANNERS_CSV = "ct4h_scanners.csv"
TABLE6_CSV = "ct4h_table6_dose_vs_14mGy.csv"
PAIRS_CSV = "ct4h_tables3to5_scanner_pairs_10mGy.csv"
PUBLISHED_FILES: tuple[str, ...] = (SCANNERS_CSV, TABLE6_CSV, PAIRS_CSV)

#: The paper's metric name -> the prefix of our columns (``<prefix>_mean``, ``<prefix>_sd``).
METRIC_COLUMNS: dict[str, str] = {"rmse": "rmse_hu", "psnr": "psnr_db", "ssim": "ssim"}
#: Units of the metrics (for captions).
METRIC_UNITS: dict[str, str] = {"rmse": "HU", "psnr": "dB", "ssim": ""}
#: The aim: within SD_FACTOR published sd, or REL_TOLERANCE of the published mean, whichever is wider.
SD_FACTOR = 2.0
REL_TOLERANCE = 0.15
#: The aim for the rank agreement of the off-diagonal scanner pairs (Spearman rho, RMSE).
RHO_AIM = 0.6

#: Columns of :func:`compare_table6`'s result.
TABLE6_COLUMNS: tuple[str, ...] = ("recon", "scanner", "dose_mgy", "metric", "twin_mean", "twin_sd", "twin_n",
                                   "paper_mean", "paper_sd", "difference", "tolerance", "ratio", "within",
                                   "status")
#: Columns of :func:`compare_scanner_pairs`'s cells.
PAIR_COLUMNS: tuple[str, ...] = ("recon", "metric", "scanner_a", "scanner_b", "diagonal", "twin_mean",
                                 "twin_sd", "twin_n", "paper_mean", "paper_sd", "difference", "tolerance",
                                 "ratio", "within", "status")


def published_path(name: str) -> Path:
    """Path of one published table inside the package (``name``: one of :data:`PUBLISHED_FILES`)."""
    if name not in PUBLISHED_FILES:
        raise ValueError(f"{name!r} is no published table; one of {', '.join(PUBLISHED_FILES)}")
    return PUBLISHED_DIR / name


def _read(name: str, required: tuple[str, ...], text: tuple[str, ...]) -> pd.DataFrame:
    path = published_path(name)
    df = read_csv(path, dtype={c: str for c in text})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: columns {', '.join(missing)} missing")
    return df


def read_scanners() -> pd.DataFrame:
    """Tables 1-2: one row per scanner code (13), manufacturer, model and acquisition parameters."""
    return _read(SCANNERS_CSV, ("scanner", "manufacturer", "model"), ("scanner",))


def read_table6() -> pd.DataFrame:
    """Table 6: one row per scanner x dose (1, 3, 6, 10 mGy; 52 rows), columns scanner,
    manufacturer_model, dose_mgy, rmse_mean/sd (HU), psnr_mean/sd (dB), ssim_mean/sd."""
    cols = ("scanner", "dose_mgy", *(f"{m}_{s}" for m in METRIC_COLUMNS for s in ("mean", "sd")))
    df = _read(TABLE6_CSV, cols, ("scanner",))
    df["dose_mgy"] = df["dose_mgy"].astype(float)
    return df


def read_scanner_pairs() -> pd.DataFrame:
    """Tables 3-5: one row per metric x unordered scanner pair at 10 mGy (3 x 91), columns metric,
    scanner_a, scanner_b, mean, sd; scanner_a == scanner_b is the diagonal (repeated scans)."""
    return _read(PAIRS_CSV, ("metric", "scanner_a", "scanner_b", "mean", "sd"), ("metric", "scanner_a", "scanner_b"))


# --------------------------------------------------------------------------- cell by cell


def _check_columns(ours: pd.DataFrame, keys: tuple[str, ...], what: str) -> None:
    needed = [*keys, *(f"{c}_{s}" for c in METRIC_COLUMNS.values() for s in ("mean", "sd"))]
    missing = [c for c in needed if c not in ours.columns]
    if missing:
        raise ValueError(f"{what}: columns {', '.join(missing)} missing (expected the layout of "
                         "ctdose.image_metrics.metric_tables)")


def _recons(ours: pd.DataFrame, recon: str | None) -> list[str]:
    """The recon cells compared: ``recon`` if given; else "any" (pooled, as the paper) when ours has it;
    else every cell ours has (each set beside the paper's pooled value); "any" for an empty table."""
    if recon is not None:
        return [recon]
    present = sorted(ours["recon"].astype(str).unique()) if "recon" in ours.columns and len(ours) else []
    return ["any"] if "any" in present or not present else present


def _long(ours: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Our wide table (``<prefix>_mean/_sd``, n) to one row per key x paper metric (twin_mean/sd/n)."""
    parts = []
    for metric, prefix in METRIC_COLUMNS.items():
        part = ours[keys].copy()
        part["metric"] = metric
        part["twin_mean"] = ours[f"{prefix}_mean"].astype(float)
        part["twin_sd"] = ours[f"{prefix}_sd"].astype(float)
        part["twin_n"] = ours["n"].astype(float) if "n" in ours.columns else np.nan
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _flag(values: pd.Series) -> pd.Series:
    """A yes/no column as bool, whether it holds booleans (NA = False) or their text read back from a CSV."""
    return values.astype(str).str.lower() == "true"


def tolerance(paper_mean: Any, paper_sd: Any) -> Any:
    """The aim's half-width of a published cell (scalars or arrays): ``max(SD_FACTOR sd, REL_TOLERANCE |mean|)``."""
    return np.maximum(SD_FACTOR * np.asarray(paper_sd, dtype=float), REL_TOLERANCE * np.abs(np.asarray(paper_mean, dtype=float)))


def _judge(cells: pd.DataFrame) -> pd.DataFrame:
    """Add difference, tolerance, ratio, within (nullable bool) and status to merged cells."""
    has_twin, has_paper = cells["twin_mean"].notna(), cells["paper_mean"].notna()
    cells["difference"] = cells["twin_mean"] - cells["paper_mean"]
    cells["tolerance"] = tolerance(cells["paper_mean"], cells["paper_sd"].fillna(0.0))
    cells["ratio"] = cells["twin_mean"] / cells["paper_mean"].where(cells["paper_mean"] != 0)
    within = cells["difference"].abs() <= cells["tolerance"]
    cells["within"] = pd.array([bool(w) if t and p else pd.NA for w, t, p in zip(within, has_twin, has_paper)],
                               dtype="boolean")
    cells["status"] = np.where(has_twin & has_paper, "compared", np.where(has_paper, "twin missing", "paper missing"))
    return cells


def compare_table6(ours: pd.DataFrame, published: pd.DataFrame | None = None,
                   recon: str | None = None) -> pd.DataFrame:
    """Our Table 6 equivalent (``image_metrics_vs_14mGy.csv``: scanner, recon, dose_mgy, rmse_hu_mean/sd,
    psnr_db_mean/sd, ssim_mean/sd, n) beside the paper's (``published``, default :func:`read_table6`).

    One row per recon cell x scanner x dose x metric (columns :data:`TABLE6_COLUMNS`): twin mean / sd / n
    (pairs), paper mean / sd, difference (twin - paper), tolerance (max(2 sd, 15 % of the paper's mean)),
    ratio (twin / paper), within (|difference| <= tolerance; NA unless compared) and status ("compared",
    "twin missing", "paper missing"). ``recon``: our recon cell to compare (default: see :func:`_recons`).
    Our reference dose must be the paper's (14 mGy); doses are matched as numbers.
    """
    _check_columns(ours, ("scanner", "recon", "dose_mgy"), "our Table 6 equivalent")
    paper = read_table6() if published is None else published
    paper_long = pd.concat([pd.DataFrame({"scanner": paper["scanner"].astype(str),
                                          "dose_mgy": paper["dose_mgy"].astype(float), "metric": m,
                                          "paper_mean": paper[f"{m}_mean"].astype(float),
                                          "paper_sd": paper[f"{m}_sd"].astype(float)}) for m in METRIC_COLUMNS],
                           ignore_index=True)
    ours = ours.assign(scanner=ours["scanner"].astype(str), recon=ours["recon"].astype(str),
                       dose_mgy=ours["dose_mgy"].astype(float))
    out = []
    for r in _recons(ours, recon):
        twin = _long(ours[ours["recon"] == r], ["scanner", "dose_mgy"])
        if twin.empty:
            twin = pd.DataFrame(columns=["scanner", "dose_mgy", "metric", "twin_mean", "twin_sd", "twin_n"])
        twin = twin.astype({"scanner": str, "dose_mgy": float, "metric": str})
        cells = paper_long.merge(twin, on=["scanner", "dose_mgy", "metric"], how="outer")
        cells.insert(0, "recon", r)
        out.append(_judge(cells))
    result = pd.concat(out, ignore_index=True)
    order = {m: i for i, m in enumerate(METRIC_COLUMNS)}
    result = result.sort_values(["recon", "metric", "scanner", "dose_mgy"], key=lambda s: s.map(order)
                                if s.name == "metric" else s, kind="stable")
    return result[list(TABLE6_COLUMNS)].reset_index(drop=True)


def table6_summary(cells: pd.DataFrame) -> dict[str, Any]:
    """Counts of :func:`compare_table6`'s cells: published (paper_cells), compared, within the aim,
    twin missing, paper missing; and within / compared per metric (``by_metric``)."""
    status = cells["status"].astype(str)
    within = _flag(cells["within"])
    by_metric = {m: {"within": int(within[cells["metric"] == m].sum()),
                     "compared": int(((cells["metric"] == m) & (status == "compared")).sum())}
                 for m in METRIC_COLUMNS}
    return {"paper_cells": int((status != "paper missing").sum()), "compared": int((status == "compared").sum()),
            "within": int(within.sum()), "twin_missing": int((status == "twin missing").sum()),
            "paper_missing": int((status == "paper missing").sum()), "by_metric": by_metric}


def _pair_key(a: pd.Series, b: pd.Series) -> pd.Series:
    """Unordered scanner pair as one text key ("A1|B2", codes sorted)."""
    return pd.Series(["|".join(sorted((str(x), str(y)))) for x, y in zip(a, b)], index=a.index, dtype=object)


def compare_scanner_pairs(ours: pd.DataFrame, published: pd.DataFrame | None = None,
                          recon: str | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, dict[str, Any]]]]:
    """Our scanner-pair table (``image_metrics_scanner_pairs.csv``: scanner_a, scanner_b, recon, dose_mgy,
    rmse_hu_mean/sd, psnr_db_mean/sd, ssim_mean/sd, n; may be empty) beside Tables 3-5 (``published``,
    default :func:`read_scanner_pairs`).

    Returns (cells, summary). cells: one row per recon cell x metric x unordered scanner pair (columns
    :data:`PAIR_COLUMNS`; the pair named in the paper's orientation where it has it), judged as in
    :func:`compare_table6`. summary: :func:`scanner_pair_summary` of the cells.
    """
    paper = read_scanner_pairs() if published is None else published
    paper = paper.assign(metric=paper["metric"].astype(str), key=_pair_key(paper["scanner_a"], paper["scanner_b"]))
    paper = paper.rename(columns={"mean": "paper_mean", "sd": "paper_sd"})
    if ours.empty:
        ours = pd.DataFrame(columns=["scanner_a", "scanner_b", "recon", "n",
                                     *(f"{c}_{s}" for c in METRIC_COLUMNS.values() for s in ("mean", "sd"))])
    _check_columns(ours, ("scanner_a", "scanner_b", "recon"), "our scanner-pair table")
    ours = ours.assign(recon=ours["recon"].astype(str), key=_pair_key(ours["scanner_a"], ours["scanner_b"]))
    out = []
    for r in _recons(ours, recon):
        twin = _long(ours[ours["recon"] == r], ["key", "scanner_a", "scanner_b"])
        if twin.empty:
            twin = pd.DataFrame(columns=["key", "scanner_a", "scanner_b", "metric", "twin_mean", "twin_sd", "twin_n"])
        twin = twin.astype({"key": object, "metric": str, "twin_mean": float, "twin_sd": float, "twin_n": float})
        cells = paper[["metric", "key", "scanner_a", "scanner_b", "paper_mean", "paper_sd"]].merge(
            twin, on=["metric", "key"], how="outer", suffixes=("", "_twin"))
        cells["scanner_a"] = cells["scanner_a"].fillna(cells["scanner_a_twin"]).astype(str)
        cells["scanner_b"] = cells["scanner_b"].fillna(cells["scanner_b_twin"]).astype(str)
        cells["diagonal"] = cells["scanner_a"] == cells["scanner_b"]
        cells.insert(0, "recon", r)
        out.append(_judge(cells))
    result = pd.concat(out, ignore_index=True)
    order = {m: i for i, m in enumerate(METRIC_COLUMNS)}
    result = result.sort_values(["recon", "metric"], key=lambda s: s.map(order) if s.name == "metric" else s,
                                kind="stable")
    result = result[list(PAIR_COLUMNS)].reset_index(drop=True)
    return result, scanner_pair_summary(result)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and its two-sided p of paired values (n,), NaN when n < 3 or either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def _mean_or_nan(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def scanner_pair_summary(cells: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Per recon cell and metric (``summary[recon][metric]``) of :func:`compare_scanner_pairs`'s cells:

    rho, p (Spearman, off-diagonal cells both tables have), n_off_diagonal (those cells), n_diagonal,
    n_twin_missing, n_paper_missing, within / compared (all compared cells), twin_off_over_diagonal and
    paper_off_over_diagonal (mean of the off-diagonal over mean of the diagonal, over the compared cells),
    rho_aim_met (rho >= :data:`RHO_AIM`; the aim is stated for RMSE).
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    diagonal, within, status = _flag(cells["diagonal"]), _flag(cells["within"]), cells["status"].astype(str)
    recons, metrics = cells["recon"].astype(str), cells["metric"].astype(str)
    for recon, metric in [(r, m) for r in sorted(recons.unique()) for m in METRIC_COLUMNS]:
        idx = cells.index[(recons == recon) & (metrics == metric)]
        compared = idx[status[idx] == "compared"]
        off, on = compared[~diagonal[compared]], compared[diagonal[compared]]
        rho, p = spearman(cells.loc[off, "twin_mean"], cells.loc[off, "paper_mean"])
        twin_ratio = _mean_or_nan(cells.loc[off, "twin_mean"]) / _mean_or_nan(cells.loc[on, "twin_mean"])
        paper_ratio = _mean_or_nan(cells.loc[off, "paper_mean"]) / _mean_or_nan(cells.loc[on, "paper_mean"])
        summary.setdefault(recon, {})[metric] = {
            "rho": rho, "p": p, "n_off_diagonal": len(off), "n_diagonal": len(on),
            "n_twin_missing": int((status[idx] == "twin missing").sum()),
            "n_paper_missing": int((status[idx] == "paper missing").sum()),
            "within": int(within[compared].sum()), "compared": len(compared),
            "twin_off_over_diagonal": twin_ratio, "paper_off_over_diagonal": paper_ratio,
            "rho_aim_met": bool(np.isfinite(rho) and rho >= RHO_AIM)}
    return summary


def summary_frame(summary: dict[str, dict[str, dict[str, Any]]]) -> pd.DataFrame:
    """:func:`scanner_pair_summary` as a table: one row per recon cell x metric."""
    return pd.DataFrame([{"recon": r, "metric": m, **v} for r, per in summary.items() for m, v in per.items()])


def _fmt(value: float, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if np.isfinite(value) else "n/a"


def describe(table6_cells: pd.DataFrame, pair_summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Plain sentences of the comparison: Table 6 cells within the aim (of those compared, of those
    published), and per recon cell and metric the scanner pairs' Spearman rho (n) and off-diagonal /
    diagonal mean ratios, ours and the paper's."""
    t6 = table6_summary(table6_cells)
    per_metric = ", ".join(f"{m} {v['within']}/{v['compared']}" for m, v in t6["by_metric"].items())
    lines = [f"Table 6 (each dose vs 14 mGy): {t6['within']} of {t6['compared']} compared cells within the aim "
             f"|ours - paper| <= max({SD_FACTOR:g} sd, {100 * REL_TOLERANCE:g} % of the paper's mean) ({per_metric}); "
             f"{t6['compared']} of {t6['paper_cells']} published cells compared, {t6['twin_missing']} missing from "
             f"ours, {t6['paper_missing']} only in ours."]
    for recon, per in pair_summary.items():
        for metric, s in per.items():
            lines.append(
                f"Scanner pairs ({recon}), {metric}: Spearman rho {_fmt(s['rho'])} over n = {s['n_off_diagonal']} "
                f"off-diagonal pairs" + (f" (aim >= {RHO_AIM:g}: {'met' if s['rho_aim_met'] else 'not met'})"
                                         if metric == "rmse" else "")
                + f"; off-diagonal / diagonal mean: ours {_fmt(s['twin_off_over_diagonal'])}, paper "
                f"{_fmt(s['paper_off_over_diagonal'])} ({s['n_diagonal']} diagonal cells); {s['within']} of "
                f"{s['compared']} compared cells within the aim, {s['n_twin_missing']} published cells missing "
                "from ours.")
    return lines
