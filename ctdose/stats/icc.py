"""Intraclass correlation ICC(3,1) and ICC(3,k) (two-way mixed, consistency), vectorised over features.

Shrout & Fleiss ICC(3,1) = (MSR - MSE) / (MSR + (k - 1) MSE) and ICC(3,k) = (MSR - MSE) / MSR, from the
two-way ANOVA of a (targets x raters) matrix without replication (McGraw & Wong ICC(C,1), ICC(C,k);
pingouin's ``ICC3`` / ``ICC3k``), with their F-based confidence intervals (McGraw & Wong 1996, Table 7,
case 3; pingouin's ``CI95``). All features of an extractor are computed at once from an array shaped
``(features, targets, raters)``.

Two views of a feature table (see :func:`icc_views`):

* ``dose``: within each scanner (and reconstruction), targets = ROI patches (roi, patch), raters = dose.
* ``scanner``: at each dose (and reconstruction), targets = ROI patches, raters = scanner.

:class:`ICCSettings` chooses the views, the doses, the targets (ROI patches, or the ROIs with their
patch features averaged: the study's), how reconstructions and repeated scans are combined, clipping,
and which ICC the summary takes (ICC(3,1), or ICC(3,k): the study's); the presets of
:mod:`ctdose.protocols` are combinations of them. With the dataset paper's settings (view 'scanner',
dose 10 mGy, reconstructions and repetitions averaged, clipped ICC(3,1)) the summary's ``mean`` is its
Table 7 value: the mean over features of the clipped ICC(3,1) across scanners.

Features whose ICC is undefined are never returned as a silent NaN: :func:`icc3` raises ``ValueError``
naming them, and :func:`icc_views` lists them with ``status = "excluded: <reason>"`` and counts them in
the summary. Two reasons: the feature is constant in the group (every value equal, whatever the value:
centring 0.1 on its floating mean leaves equal rounding residuals that would read as ICC = 1), or it
varies only between raters (no variance between targets and no residual: ICC = 0/0). A feature with no
variance between targets but a non-zero residual has the defined ICC(3,1) = -1/(k-1) (and ICC(3,k) =
-inf, the limit of 1 - 1/F as F -> 0) and is reported as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ctdose.features import FeatureTable

#: Relative size, against the largest |value| of the feature in the group, under which a spread (or the
#: root of a mean square) is float64 rounding, not signal. Centring and averaging leave residuals of a
#: few eps x |value| (eps = 2.2e-16; numpy's pairwise sums keep it below ~1e-14 |value| for the
#: thousands of values of a group), while features computed from CT images (integer HU, float32
#: networks: 6e-8 relative resolution) that differ at all differ by far more: 1e-12 sits two orders
#: above the rounding and four below the coarsest real difference.
REL_TOL = 1e-12
#: Confidence level of the F-based intervals (95 %, as pingouin's ``CI95``).
CI_LEVEL = 0.95
STATUS_OK = "ok"
EXCLUDED_CONSTANT = "excluded: constant (every value equal)"
EXCLUDED_RATERS_ONLY = "excluded: varies only between raters (no variance between targets, no residual: ICC 0/0)"
#: Target identity: one physical location in the phantom, the same in every series.
TARGET_COLUMNS: tuple[str, ...] = ("roi", "patch")
#: Targets setting -> the identity columns of one target ('roi': patch features averaged per ROI).
TARGETS: dict[str, tuple[str, ...]] = {"roi_patch": TARGET_COLUMNS, "roi": ("roi",)}
#: Views: the column whose values are the raters, and the column that splits the view into groups.
VIEW_RATERS: dict[str, str] = {"dose": "dose_mgy", "scanner": "scanner"}
VIEW_GROUPS: dict[str, str] = {"dose": "scanner", "scanner": "dose_mgy"}
#: ICC value and confidence-interval columns of the per-feature table.
ICC_COLUMNS: tuple[str, ...] = ("icc3_1", "icc3_1_ci_low", "icc3_1_ci_high", "icc3_k", "icc3_k_ci_low",
                                "icc3_k_ci_high")


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
    targets: ``"roi_patch"`` = each ROI patch is a target (default); ``"roi"`` = the six ROIs, each
        the mean of its patches' features (the study's).
    views: the views computed (``"dose"``, ``"scanner"``; default both).
    doses: only these doses (mGy) are used, in every view; ``()`` = all (default).
    statistic: the ICC the summary and boxplots take: ``"icc3_1"`` (default) or ``"icc3_k"``.
    """

    recon: str = "each"
    repetitions: str = "average"
    standardize: str = "none"
    clip: bool = False
    min_raters: int = 2
    targets: str = "roi_patch"
    views: tuple[str, ...] = ("dose", "scanner")
    doses: tuple[float, ...] = ()
    statistic: str = "icc3_1"

    def __post_init__(self) -> None:
        for key, allowed in (("recon", ("each", "average")), ("repetitions", ("average", "first")),
                             ("standardize", ("none", "per_rater")), ("targets", tuple(TARGETS)),
                             ("statistic", ("icc3_1", "icc3_k"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"ICC setting {key}={getattr(self, key)!r}; expected one of {allowed}")
        if self.min_raters < 2:
            raise ValueError(f"ICC setting min_raters={self.min_raters}; must be >= 2")
        object.__setattr__(self, "views", tuple(self.views))
        object.__setattr__(self, "doses", tuple(float(d) for d in self.doses))
        bad = [v for v in self.views if v not in VIEW_RATERS]
        if bad or not self.views:
            raise ValueError(f"ICC setting views={list(self.views)}; expected one or more of {tuple(VIEW_RATERS)}")

    def as_dict(self) -> dict:
        return {**asdict(self), "views": list(self.views), "doses": list(self.doses)}


@dataclass(frozen=True)
class ICCResult:
    """ICC(3,1), ICC(3,k) and their confidence intervals per feature, each shape (features,).

    ``status`` holds :data:`STATUS_OK` or the reason the feature is excluded; the values of an excluded
    feature are NaN and must not be passed on (see :func:`icc3`).
    """

    icc3_1: np.ndarray
    icc3_1_ci_low: np.ndarray
    icc3_1_ci_high: np.ndarray
    icc3_k: np.ndarray
    icc3_k_ci_low: np.ndarray
    icc3_k_ci_high: np.ndarray
    status: np.ndarray

    @property
    def excluded(self) -> np.ndarray:
        return self.status != STATUS_OK

    def clipped(self) -> "ICCResult":
        """The same result with every ICC and interval bound below 0 set to 0 (NaNs stay NaN)."""
        values = {c: np.where(getattr(self, c) < 0, 0.0, getattr(self, c)) for c in ICC_COLUMNS}
        return ICCResult(**values, status=self.status)

    def columns(self) -> dict[str, np.ndarray]:
        """The :data:`ICC_COLUMNS` and ``status`` as a dict of arrays (per-feature table columns)."""
        return {**{c: getattr(self, c) for c in ICC_COLUMNS}, "status": self.status}


def icc3_components(data: np.ndarray, level: float = CI_LEVEL) -> ICCResult:
    """ICC(3,1), ICC(3,k), their F-based ``level`` confidence intervals and a status per feature of
    ``data`` (features, targets, raters); a 2-D (targets, raters) array is one feature.

    With F = MSR / MSE, df1 = n - 1, df2 = (n - 1)(k - 1) and F_q(a, b) the F distribution's q quantile:
    ICC(3,1) = (F - 1) / (F + k - 1), ICC(3,k) = 1 - 1/F; the interval takes F / F_{1-a/2}(df1, df2)
    and F x F_{1-a/2}(df2, df1) through the same maps (McGraw & Wong 1996, case 3). Mean squares at
    rounding level (below (REL_TOL x max|value|)^2) count as 0: MSE = 0 < MSR gives ICC = 1 with the
    interval [1, 1]; MSR = 0 < MSE gives ICC(3,1) = -1/(k-1), ICC(3,k) = -inf.
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
    magnitude = np.abs(data).max(axis=(1, 2))
    constant = np.ptp(data, axis=(1, 2)) <= REL_TOL * magnitude
    centered = data - data.mean(axis=(1, 2), keepdims=True)
    row_means = centered.mean(axis=2)  # (f, n)
    col_means = centered.mean(axis=1)  # (f, k)
    # the residual is summed directly (not SS_total - SS_rows - SS_cols, which cancels to ~eps x SS_total)
    resid = centered - row_means[:, :, None] - col_means[:, None, :]
    ms_rows = k * np.einsum("fn,fn->f", row_means, row_means) / (n - 1)
    ms_err = np.einsum("fnk,fnk->f", resid, resid) / ((n - 1) * (k - 1))
    zero = (REL_TOL * magnitude) ** 2
    ms_rows = np.where(ms_rows <= zero, 0.0, ms_rows)
    ms_err = np.where(ms_err <= zero, 0.0, ms_err)
    status = np.full(data.shape[0], STATUS_OK, dtype=object)
    status[(ms_rows == 0) & (ms_err == 0)] = EXCLUDED_RATERS_ONLY
    status[constant] = EXCLUDED_CONSTANT
    df1, df2 = n - 1, (n - 1) * (k - 1)
    tail = (1 + level) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        f_obs = ms_rows / ms_err
        f_low = f_obs / stats.f.ppf(tail, df1, df2)
        f_high = f_obs * stats.f.ppf(tail, df2, df1)
        single = {name: 1 - k / (f + k - 1) for name, f in
                  (("icc3_1", f_obs), ("icc3_1_ci_low", f_low), ("icc3_1_ci_high", f_high))}
        average = {name: 1 - 1 / f for name, f in
                   (("icc3_k", f_obs), ("icc3_k_ci_low", f_low), ("icc3_k_ci_high", f_high))}
    values = {**single, **average}
    bad = status != STATUS_OK
    for v in values.values():
        v[bad] = np.nan
    return ICCResult(**values, status=status)


def icc3(data: np.ndarray, feature_names: Sequence[str] | None = None,
         clip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ICC(3,1) and ICC(3,k) per feature of ``data`` (features, targets, raters), each shape (features,).

    Raises ``ValueError`` naming the excluded features (constant, or varying only between raters) and
    why. ``clip`` sets negative values to 0.
    """
    res = icc3_components(data)
    if res.excluded.any():
        names = feature_names if feature_names is not None else [f"#{i}" for i in range(len(res.status))]
        bad = [f"{names[i]} ({res.status[i].removeprefix('excluded: ')})" for i in np.flatnonzero(res.excluded)]
        raise ValueError(f"ICC undefined for {len(bad)} feature(s): "
                         f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
    if clip:
        res = res.clipped()
    return res.icc3_1, res.icc3_k


def icc_matrix(table: FeatureTable, rows: np.ndarray, rater_column: str,
               settings: ICCSettings) -> tuple[np.ndarray, list, list]:
    """The (features, targets, raters) array of the selected rows, raters from ``rater_column``.

    Repeated scans are averaged (or the first kept) per (target, rater) cell, and with
    ``recon="average"`` so are reconstructions; with ``targets="roi"`` so are the patches of an ROI
    (one mean over every row of the cell). Targets missing at any rater are dropped, so the matrix is
    complete. Returns the array, the target keys and the rater values.
    """
    ident = table.ident.loc[rows].copy()
    X = table.X[rows]
    if settings.repetitions == "first":
        keep_rep = ident.groupby([rater_column, "recon"])["repetition"].transform("min")
        keep = (ident["repetition"] == keep_rep).to_numpy()
        ident, X = ident.loc[keep], X[keep]
    keys = list(TARGETS[settings.targets]) + [rater_column]
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
        # a rater column constant up to rounding becomes 0, not rounding residuals blown up to O(1)
        flat = sd <= REL_TOL * np.abs(arr).max(axis=1, keepdims=True)
        arr = np.divide(arr - mean, sd, out=np.zeros_like(arr), where=~flat)
    return arr, targets, raters


def _view_groups(table: FeatureTable, view: str, settings: ICCSettings) -> list[tuple[dict, np.ndarray]]:
    """(labels, row mask) of every ICC matrix of a view ('dose': per scanner; 'scanner': per dose)."""
    ident = table.ident
    group_col = VIEW_GROUPS[view]
    used = ident["dose_mgy"].isin(settings.doses).to_numpy() if settings.doses else np.ones(len(ident), bool)
    groups: list[tuple[dict, np.ndarray]] = []
    for value in sorted(ident.loc[used, group_col].unique()):
        in_group = used & (ident[group_col] == value).to_numpy()
        if settings.recon == "each":
            for recon in sorted(ident.loc[in_group, "recon"].unique()):
                groups.append(({group_col: value, "recon": recon},
                               in_group & (ident["recon"] == recon).to_numpy()))
        else:
            rater_col = VIEW_RATERS[view]
            sub = ident.loc[in_group]
            n_raters = sub[rater_col].nunique()
            common = [r for r, g in sub.groupby("recon") if g[rater_col].nunique() == n_raters]
            groups.append(({group_col: value, "recon": "+".join(sorted(common))},
                           in_group & ident["recon"].isin(common).to_numpy()))
    return groups


def icc_views(table: FeatureTable, settings: ICCSettings = ICCSettings(),
              views: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-feature ICC table of one extractor in the views ``views`` (default: ``settings.views``).

    Columns: extractor, view ('dose' = raters are doses within a scanner; 'scanner' = raters are
    scanners at one dose), scanner (or 'all'), dose_mgy (or NaN), recon, n_targets, n_raters, raters,
    feature, icc3_1, icc3_1_ci_low, icc3_1_ci_high, icc3_k, icc3_k_ci_low, icc3_k_ci_high (95 % F-based
    intervals; clipped with the values when ``settings.clip``), status ('ok' or 'excluded: <reason>').
    Groups with fewer than ``settings.min_raters`` raters or fewer than 2 complete targets are skipped.
    """
    parts = []
    for view in settings.views if views is None else views:
        if view not in VIEW_RATERS:
            raise ValueError(f"unknown ICC view {view!r}; expected 'dose' or 'scanner'")
        rater_col = VIEW_RATERS[view]
        for labels, rows in _view_groups(table, view, settings):
            arr, targets, raters = icc_matrix(table, rows, rater_col, settings)
            if len(raters) < settings.min_raters or len(targets) < 2:
                continue
            res = icc3_components(arr)
            if settings.clip:
                res = res.clipped()
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
                **res.columns(),
            }))
    if not parts:
        doses = f" at {', '.join(f'{d:g}' for d in settings.doses)} mGy" if settings.doses else ""
        raise ValueError(f"{table.name}: no ICC view has >= {settings.min_raters} raters and 2 complete "
                         f"targets{doses}")
    return pd.concat(parts, ignore_index=True)


def summarize_icc(per_feature: pd.DataFrame, thresholds: Sequence[float] = (0.75, 0.9),
                  statistic: str = "icc3_1") -> pd.DataFrame:
    """Summary per extractor x view x group (scanner or dose) x recon of the ``statistic`` values
    (``icc3_1`` or ``icc3_k``, clipped when the per-feature table is).

    Columns: the keys, statistic (the ICC summarised), mean, median, sd, share_gt_<t> (share of
    included features with ICC > t), n_features (included), n_excluded (excluded features, listed with
    their reason in the per-feature table).
    """
    if statistic not in ("icc3_1", "icc3_k"):
        raise ValueError(f"ICC summary statistic {statistic!r}; expected 'icc3_1' or 'icc3_k'")
    keys = ["extractor", "view", "scanner", "dose_mgy", "recon"]
    rows = []
    for key, g in per_feature.groupby(keys, dropna=False, sort=False):
        ok = g.loc[g["status"] == "ok", statistic].to_numpy()
        row = {**dict(zip(keys, key)), "statistic": statistic}
        row.update(mean=ok.mean() if ok.size else np.nan, median=np.median(ok) if ok.size else np.nan,
                   sd=ok.std(ddof=1) if ok.size > 1 else np.nan)
        for t in thresholds:
            row[f"share_gt_{t:g}"] = (ok > t).mean() if ok.size else np.nan
        row.update(n_features=int(ok.size), n_excluded=int(len(g) - ok.size))
        rows.append(row)
    return pd.DataFrame(rows)
