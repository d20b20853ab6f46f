"""How a dose change moves feature distributions, and how embeddings cluster (the study's other analyses).

* :func:`distribution_shift`: per feature, the rows at a low dose (default 1 mGy) against the rows at a
  high dose (default 14 mGy), per reconstruction or pooled: two-sample Kolmogorov-Smirnov statistic and
  p (``scipy.stats.ks_2samp``, all features at once), Benjamini-Hochberg q over the features of one
  extractor x reconstruction (``scipy.stats.false_discovery_control``), and the change low - high of
  mean, variance (and their ratio), skewness and excess kurtosis (``scipy.stats``, biased estimators).
  A feature constant over both doses (spread max - min <= ``REL_TOL`` x max|value|, as the ICC code:
  float rounding, not signal) is excluded with the reason; a feature constant at one dose only keeps
  its KS test, means and variances, but its skewness and kurtosis at that dose are undefined: their
  deltas are NaN and ``moments`` says why (never scipy's precision-loss warning). Rows are patches:
  patches of one series and the same ROI at both doses are not independent samples, so p and q are
  descriptive.
  :func:`summarize_shift`: per extractor x reconstruction, the share of features shifted at q < alpha.
* :func:`silhouettes`: silhouette score (euclidean, ``sklearn.metrics.silhouette_score``) of an
  extractor's standardised features (:func:`ctdose.stats.embedding.standardised_features`) and of its
  2-D UMAP embedding, by ROI class, manufacturer, scanner and dose. Near 1: rows cluster by that label;
  near 0: the label does not structure the space.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import silhouette_score

from ctdose.features import FeatureTable
from ctdose.stats.embedding import standardised_features
from ctdose.stats.icc import REL_TOL

#: Labels the silhouette is computed for (identity columns), in report order.
SILHOUETTE_LABELS: tuple[str, ...] = ("roi_class", "manufacturer", "scanner", "dose_mgy")


@dataclass(frozen=True)
class ShiftSettings:
    """low_dose / high_dose (mGy): the two samples; recon: 'each' (one reconstruction at a time) or
    'pool'; alpha: q threshold of 'shifted' (recorded in the output sidecar)."""

    low_dose: float = 1.0
    high_dose: float = 14.0
    recon: str = "each"
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.recon not in ("each", "pool"):
            raise ValueError(f"distribution-shift setting recon={self.recon!r}; expected 'each' or 'pool'")
        if self.low_dose == self.high_dose:
            raise ValueError(f"distribution shift: low and high dose are both {self.low_dose:g} mGy")
        if not 0 < self.alpha < 1:
            raise ValueError(f"distribution-shift setting alpha={self.alpha}; must be in (0, 1)")

    def as_dict(self) -> dict:
        return {**asdict(self), "test": "two-sample Kolmogorov-Smirnov (scipy ks_2samp, two-sided, exact/asymp auto)",
                "correction": "Benjamini-Hochberg over the features of one extractor x reconstruction",
                "deltas": "low dose minus high dose; skewness and excess kurtosis biased (scipy defaults)"}


def near_constant(X: np.ndarray) -> np.ndarray:
    """(features,) True where a column of ``X`` (rows, features) is constant up to float rounding:
    spread max - min <= :data:`REL_TOL` x max|value| (the ICC code's test), or a variance scipy's
    moment code would flag as precision loss (var <= (10 x float64 resolution x mean)^2)."""
    X = np.asarray(X, float)
    flat = np.ptp(X, axis=0) <= REL_TOL * np.abs(X).max(axis=0)
    eps = np.finfo(np.float64).resolution * 10
    return flat | (X.var(axis=0) <= (eps * X.mean(axis=0)) ** 2)


def _shape_deltas(a: np.ndarray, b: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skewness and excess-kurtosis deltas low - high of the columns of ``a`` (low dose) and ``b`` (high
    dose), NaN where either sample is constant (:func:`near_constant`), with the reason per column."""
    flat_a, flat_b = near_constant(a), near_constant(b)
    defined = ~(flat_a | flat_b)
    skew, kurt = np.full(a.shape[1], np.nan), np.full(a.shape[1], np.nan)
    if defined.any():
        x, y = a[:, defined], b[:, defined]
        skew[defined] = stats.skew(x, axis=0) - stats.skew(y, axis=0)
        kurt[defined] = stats.kurtosis(x, axis=0) - stats.kurtosis(y, axis=0)
    why = np.where(flat_a & flat_b, f"undefined: constant at {low:g} and at {high:g} mGy",
                   np.where(flat_a, f"undefined: constant at {low:g} mGy",
                            np.where(flat_b, f"undefined: constant at {high:g} mGy", "ok")))
    return skew, kurt, why


def _groups(table: FeatureTable, recon: str) -> list[tuple[str, np.ndarray]]:
    recons = table.ident["recon"].astype(str).to_numpy()
    if recon == "pool":
        return [("+".join(sorted(set(recons))), np.ones(len(recons), bool))]
    return [(r, recons == r) for r in sorted(set(recons))]


def distribution_shift(table: FeatureTable, settings: ShiftSettings) -> pd.DataFrame:
    """One row per feature and reconstruction group (see the module docstring for the columns' meaning).

    Columns: extractor, recon, feature, status ('ok' or 'excluded: ...'), n_low, n_high, ks_stat,
    p, q, shifted, mean_low, mean_high, delta_mean, delta_mean_sd (delta_mean / pooled sd), var_low,
    var_high, var_ratio (low / high), delta_skew, delta_kurtosis, moments ('ok', or why the skewness and
    kurtosis deltas are NaN: constant at one dose). ValueError when a dose is absent.
    """
    dose = table.ident["dose_mgy"].to_numpy(float)
    for d in (settings.low_dose, settings.high_dose):
        if not np.any(dose == d):
            raise ValueError(f"{table.name}: no rows at {d:g} mGy for the distribution shift "
                             f"(doses present: {', '.join(f'{v:g}' for v in np.unique(dose))})")
    out = []
    for recon, in_group in _groups(table, settings.recon):
        A, B = table.X[in_group & (dose == settings.low_dose)], table.X[in_group & (dose == settings.high_dose)]
        if len(A) < 2 or len(B) < 2:  # a reconstruction may lack a dose (DL on D1: 1, 3, 6 mGy only)
            warnings.warn(f"{table.name}: reconstruction {recon} left out of the distribution shift: {len(A)} row(s) "
                          f"at {settings.low_dose:g} mGy, {len(B)} at {settings.high_dose:g} mGy (2 needed at each)")
            continue
        both = np.vstack([A, B])
        ok = ~near_constant(both)  # relative test: centring leaves rounding residuals, whatever the value
        frame = pd.DataFrame({"extractor": table.name, "recon": recon, "feature": table.feature_names,
                              "status": np.where(ok, "ok", f"excluded: constant at both doses (max - min <= "
                                                           f"{REL_TOL:g} x max|value|)"),
                              "n_low": len(A), "n_high": len(B)})
        cols = {k: np.full(len(ok), np.nan) for k in (
            "ks_stat", "p", "q", "mean_low", "mean_high", "delta_mean", "delta_mean_sd", "var_low", "var_high",
            "var_ratio", "delta_skew", "delta_kurtosis")}
        a, b = A[:, ok], B[:, ok]
        ks = stats.ks_2samp(a, b, axis=0)
        var_a, var_b = a.var(axis=0, ddof=1), b.var(axis=0, ddof=1)
        pooled = np.sqrt(((len(a) - 1) * var_a + (len(b) - 1) * var_b) / (len(a) + len(b) - 2))
        skew, kurt, moments = _shape_deltas(a, b, settings.low_dose, settings.high_dose)
        with np.errstate(divide="ignore", invalid="ignore"):  # a feature constant at one dose only
            values = {
                "ks_stat": ks.statistic, "p": ks.pvalue, "q": stats.false_discovery_control(ks.pvalue, method="bh"),
                "mean_low": a.mean(axis=0), "mean_high": b.mean(axis=0),
                "delta_mean": a.mean(axis=0) - b.mean(axis=0),
                "delta_mean_sd": (a.mean(axis=0) - b.mean(axis=0)) / pooled,
                "var_low": var_a, "var_high": var_b, "var_ratio": var_a / var_b,
                "delta_skew": skew, "delta_kurtosis": kurt}
        for k, v in values.items():
            cols[k][ok] = v
        shape = np.full(len(ok), "excluded", dtype=object)
        shape[ok] = moments
        frame = frame.assign(**cols, moments=shape)
        frame.insert(frame.columns.get_loc("q") + 1, "shifted", ok & (frame["q"].to_numpy() < settings.alpha))
        out.append(frame)
    if not out:
        raise ValueError(f"{table.name}: no reconstruction has 2 rows at both {settings.low_dose:g} and "
                         f"{settings.high_dose:g} mGy")
    return pd.concat(out, ignore_index=True)


def summarize_shift(per_feature: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per extractor x recon: features, tested, excluded, shifted (q < alpha), share_shifted (of tested),
    median KS statistic, median |delta_mean_sd|, median var_ratio."""
    rows = []
    for (extractor, recon), g in per_feature.groupby(["extractor", "recon"], sort=False):
        t = g[g["status"] == "ok"]
        rows.append({"extractor": extractor, "recon": recon, "n_features": len(g), "n_tested": len(t),
                     "n_excluded": len(g) - len(t), "n_shifted": int(t["shifted"].sum()),
                     "share_shifted": t["shifted"].mean() if len(t) else np.nan, "alpha": alpha,
                     "median_ks": t["ks_stat"].median(), "median_abs_delta_mean_sd": t["delta_mean_sd"].abs().median(),
                     "median_var_ratio": t["var_ratio"].median(), "n_low": g["n_low"].iloc[0],
                     "n_high": g["n_high"].iloc[0]})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SilhouetteSettings:
    """max_rows: rows drawn (seeded) when a space has more (silhouette costs rows^2); seed."""

    max_rows: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_rows < 3:
            raise ValueError(f"silhouette setting max_rows={self.max_rows}; must be >= 3")

    def as_dict(self) -> dict:
        return {**asdict(self), "labels": list(SILHOUETTE_LABELS), "metric": "euclidean",
                "features": "non-constant, z-scored over all rows; all reconstructions pooled"}


def silhouettes(space: np.ndarray, ident: pd.DataFrame, settings: SilhouetteSettings) -> pd.DataFrame:
    """Silhouette of ``space`` (rows, dims) by each of :data:`SILHOUETTE_LABELS` (columns of ``ident``).

    One row per label: label, n_levels, n_rows (rows scored: all, or ``max_rows`` drawn with the
    seed), silhouette; a label with fewer than 2 levels (or as many levels as rows) has NaN and the
    reason in ``status``.
    """
    rows = []
    n = len(space)
    for label in SILHOUETTE_LABELS:
        values = ident[label].astype(str).to_numpy()
        levels = np.unique(values).size
        row = {"label": label, "n_levels": levels, "n_rows": min(n, settings.max_rows)}
        if not 2 <= levels <= n - 1:
            rows.append({**row, "silhouette": np.nan, "status": f"skipped: {levels} level(s) in {n} rows"})
            continue
        sample = settings.max_rows if n > settings.max_rows else None
        score = silhouette_score(space, values, sample_size=sample, random_state=settings.seed)
        rows.append({**row, "silhouette": float(score), "status": "ok"})
    return pd.DataFrame(rows)


def feature_silhouettes(table: FeatureTable, settings: SilhouetteSettings) -> pd.DataFrame:
    """:func:`silhouettes` of the standardised non-constant features of ``table``, with extractor,
    space ('features') and dims columns first."""
    Z = standardised_features(table)
    return silhouettes(Z, table.ident, settings).assign(extractor=table.name, space="features", dims=Z.shape[1])
