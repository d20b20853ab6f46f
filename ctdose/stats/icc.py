"""Intraclass correlation ICC(3,1) and ICC(3,k) (two-way mixed, consistency), vectorised over features.

Shrout & Fleiss ICC(3,1) = (MSR - MSE) / (MSR + (k - 1) MSE) and ICC(3,k) = (MSR - MSE) / MSR, from the
two-way ANOVA of a (targets x raters) matrix without replication (McGraw & Wong ICC(C,1), ICC(C,k);
pingouin's ``ICC3`` / ``ICC3k``). All features of an extractor are computed at once from an array
shaped ``(features, targets, raters)``.

Two views of a feature table (see :func:`icc_views`):

* ``dose``: within each scanner (and reconstruction), targets = ROI patches (roi, patch), raters = dose.
* ``scanner``: at each dose (and reconstruction), targets = ROI patches, raters = scanner.

Degenerate features (no variance between targets, so the ICC is undefined) are never returned as
NaN: :func:`icc3` raises ``ValueError`` naming them, and :func:`icc_views` lists them in the table
with ``status = "excluded: ..."`` and counts them in the summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ctdose.features import FeatureTable

#: Relative tolerance under which a mean square counts as zero (floating-point noise).
_ZERO_TOL = 1e-12
#: Target identity: one physical location in the phantom, the same in every series.
TARGET_COLUMNS: tuple[str, ...] = ("roi", "patch")


@dataclass(frozen=True)
class ICCSettings:
    """How series are combined into ICC matrices (recorded in the output sidecar).

    recon: ``"each"`` = one reconstruction at a time (default); ``"average"`` = average over
        reconstructions (only those present at every rater of the view).
    repetitions: ``"average"`` = mean over repeated scans (default); ``"first"`` = lowest repetition only.
    standardize: ``"none"`` (default) or ``"per_rater"`` (z-score each feature within each rater column
        before the ICC, removing scale differences between raters). A global z-score per feature
        is not offered: ICC(3) is invariant to it.
    clip: clip ICC values below 0 to 0 (off by default; the report states it when on).
    min_raters: views with fewer raters are skipped.
    """

    recon: str = "each"
    repetitions: str = "average"
    standardize: str = "none"
    clip: bool = False
    min_raters: int = 2

    def __post_init__(self) -> None:
        for key, allowed in (("recon", ("each", "average")), ("repetitions", ("average", "first")),
                             ("standardize", ("none", "per_rater"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"ICC setting {key}={getattr(self, key)!r}; expected one of {allowed}")
        if self.min_raters < 2:
            raise ValueError(f"ICC setting min_raters={self.min_raters}; must be >= 2")

    def as_dict(self) -> dict:
        return asdict(self)


def icc3_components(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ICC(3,1), ICC(3,k) and a degenerate flag per feature for ``data`` (features, targets, raters).

    Entries flagged degenerate (between-target mean square zero up to rounding) hold NaN; callers
    must not pass them on silently (see :func:`icc3`).
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"ICC data must be (features, targets, raters), got shape {data.shape}")
    _, n, k = data.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 raters, got {n} targets x {k} raters")
    if not np.all(np.isfinite(data)):
        raise ValueError("ICC data contains non-finite values")
    grand = data.mean(axis=(1, 2), keepdims=True)
    centered = data - grand
    row_means = centered.mean(axis=2)  # (f, n)
    col_means = centered.mean(axis=1)  # (f, k)
    ss_total = np.einsum("fnk,fnk->f", centered, centered)
    ss_rows = k * np.einsum("fn,fn->f", row_means, row_means)
    ss_cols = n * np.einsum("fk,fk->f", col_means, col_means)
    ss_err = np.maximum(ss_total - ss_rows - ss_cols, 0.0)
    ms_rows = ss_rows / (n - 1)
    ms_err = ss_err / ((n - 1) * (k - 1))
    scale = ss_total / (n * k - 1)
    degenerate = ms_rows <= _ZERO_TOL * np.maximum(scale, np.finfo(float).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        icc1 = (ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err)
        icck = (ms_rows - ms_err) / ms_rows
    icc1[degenerate] = np.nan
    icck[degenerate] = np.nan
    return icc1, icck, degenerate


def icc3(data: np.ndarray, feature_names: Sequence[str] | None = None,
         clip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ICC(3,1) and ICC(3,k) per feature of ``data`` (features, targets, raters), each shape (features,).

    Raises ``ValueError`` naming the features whose ICC is undefined (no variance between targets).
    ``clip`` sets negative values to 0.
    """
    icc1, icck, degenerate = icc3_components(data)
    if degenerate.any():
        names = feature_names if feature_names is not None else [f"#{i}" for i in range(len(icc1))]
        bad = [str(names[i]) for i in np.flatnonzero(degenerate)]
        raise ValueError(f"ICC undefined (no variance between targets) for {len(bad)} feature(s): "
                         f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
    if clip:
        icc1, icck = np.maximum(icc1, 0.0), np.maximum(icck, 0.0)
    return icc1, icck


def icc_matrix(table: FeatureTable, rows: np.ndarray, rater_column: str,
               settings: ICCSettings) -> tuple[np.ndarray, list, list]:
    """The (features, targets, raters) array of the selected rows, raters from ``rater_column``.

    Repeated scans are averaged (or the first kept) per (target, rater) cell, and with
    ``recon="average"`` so are reconstructions. Targets missing at any rater are dropped, so the
    matrix is complete. Returns the array, the target keys and the rater values.
    """
    ident = table.ident.loc[rows].copy()
    X = table.X[rows]
    if settings.repetitions == "first":
        keep_rep = ident.groupby([rater_column, "recon"])["repetition"].transform("min")
        keep = (ident["repetition"] == keep_rep).to_numpy()
        ident, X = ident.loc[keep], X[keep]
    keys = list(TARGET_COLUMNS) + [rater_column]
    frame = pd.DataFrame(X, index=pd.MultiIndex.from_frame(ident[keys]))
    cells = frame.groupby(level=keys, sort=True).mean()
    wide = cells.unstack(rater_column)  # rows = targets; columns = (feature, rater)
    wide = wide.dropna(axis=0, how="any")
    raters = list(wide.columns.get_level_values(1).unique())
    targets = list(wide.index)
    arr = wide.to_numpy().reshape(len(targets), X.shape[1], len(raters)).transpose(1, 0, 2)
    if settings.standardize == "per_rater":
        mean = arr.mean(axis=1, keepdims=True)
        sd = arr.std(axis=1, ddof=1, keepdims=True)
        arr = np.divide(arr - mean, sd, out=np.zeros_like(arr), where=sd > 0)
    return arr, targets, raters


def _view_groups(table: FeatureTable, view: str, settings: ICCSettings) -> list[tuple[dict, np.ndarray]]:
    """(labels, row mask) of every ICC matrix of a view ('dose': per scanner; 'scanner': per dose)."""
    ident = table.ident
    group_col = "scanner" if view == "dose" else "dose_mgy"
    groups: list[tuple[dict, np.ndarray]] = []
    for value in sorted(ident[group_col].unique()):
        in_group = (ident[group_col] == value).to_numpy()
        if settings.recon == "each":
            for recon in sorted(ident.loc[in_group, "recon"].unique()):
                groups.append(({group_col: value, "recon": recon},
                               in_group & (ident["recon"] == recon).to_numpy()))
        else:
            rater_col = "dose_mgy" if view == "dose" else "scanner"
            sub = ident.loc[in_group]
            n_raters = sub[rater_col].nunique()
            common = [r for r, g in sub.groupby("recon") if g[rater_col].nunique() == n_raters]
            groups.append(({group_col: value, "recon": "+".join(sorted(common))},
                           in_group & ident["recon"].isin(common).to_numpy()))
    return groups


def icc_views(table: FeatureTable, settings: ICCSettings = ICCSettings(),
              views: Sequence[str] = ("dose", "scanner")) -> pd.DataFrame:
    """Per-feature ICC table of one extractor in both views.

    Columns: extractor, view ('dose' = raters are doses within a scanner; 'scanner' = raters are
    scanners at one dose), scanner (or 'all'), dose_mgy (or NaN), recon, n_targets, n_raters, raters,
    feature, icc3_1, icc3_k, status ('ok' or 'excluded: no variance between targets').
    Groups with fewer than ``settings.min_raters`` raters or fewer than 2 complete targets are skipped.
    """
    parts = []
    for view in views:
        if view not in ("dose", "scanner"):
            raise ValueError(f"unknown ICC view {view!r}; expected 'dose' or 'scanner'")
        rater_col = "dose_mgy" if view == "dose" else "scanner"
        for labels, rows in _view_groups(table, view, settings):
            arr, targets, raters = icc_matrix(table, rows, rater_col, settings)
            if len(raters) < settings.min_raters or len(targets) < 2:
                continue
            icc1, icck, degenerate = icc3_components(arr)
            if settings.clip:
                icc1, icck = np.maximum(icc1, 0.0), np.maximum(icck, 0.0)
            parts.append(pd.DataFrame({
                "extractor": table.name,
                "view": view,
                "scanner": labels.get("scanner", "all"),
                "dose_mgy": labels.get("dose_mgy", np.nan),
                "recon": labels["recon"],
                "n_targets": len(targets),
                "n_raters": len(raters),
                "raters": " ".join(f"{r:g}" if isinstance(r, float) else str(r) for r in raters),
                "feature": table.feature_names,
                "icc3_1": icc1,
                "icc3_k": icck,
                "status": np.where(degenerate, "excluded: no variance between targets", "ok"),
            }))
    if not parts:
        raise ValueError(f"{table.name}: no ICC view has >= {settings.min_raters} raters and 2 complete targets")
    return pd.concat(parts, ignore_index=True)


def summarize_icc(per_feature: pd.DataFrame, thresholds: Sequence[float] = (0.75, 0.9)) -> pd.DataFrame:
    """Summary per extractor x view x group (scanner or dose) x recon of the ICC(3,1) values.

    Columns: mean, median, sd, share_gt_<t> (share of included features with ICC(3,1) > t),
    n_features (included), n_excluded (degenerate features, listed in the per-feature table).
    """
    keys = ["extractor", "view", "scanner", "dose_mgy", "recon"]
    rows = []
    for key, g in per_feature.groupby(keys, dropna=False, sort=False):
        ok = g.loc[g["status"] == "ok", "icc3_1"].to_numpy()
        row = dict(zip(keys, key))
        row.update(mean=ok.mean() if ok.size else np.nan, median=np.median(ok) if ok.size else np.nan,
                   sd=ok.std(ddof=1) if ok.size > 1 else np.nan)
        for t in thresholds:
            row[f"share_gt_{t:g}"] = (ok > t).mean() if ok.size else np.nan
        row.update(n_features=int(ok.size), n_excluded=int(len(g) - ok.size))
        rows.append(row)
    return pd.DataFrame(rows)
