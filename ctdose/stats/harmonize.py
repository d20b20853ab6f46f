"""Feature harmonization across scanners (and doses), fitted fold-safe: no test label ever reaches a fit.

Every method is a *harmonizer*: a function ``(training table, settings) -> Transform``. The training
table holds the training rows only, labels included (a covariate method may use the training ROI
classes). The returned :class:`Transform` maps feature rows to harmonized rows and sees only the
features and the *unlabelled* identity columns of the rows it maps (:data:`UNLABELLED_COLUMNS`: no
``roi``, ``roi_class`` or ``patch``), so a test label cannot reach it by construction.

Methods (:data:`METHODS`; add your own with :func:`register_method`)
--------------------------------------------------------------------
* ``none``: identity (the baseline).
* ``zscore``: each feature z-scored within each batch with the batch's training mean and sd.
* ``combat`` / ``combat_np``: ComBat (Johnson et al. 2007; Fortin et al. 2017/2018) with parametric /
  non-parametric empirical Bayes priors, estimated with neuroCombat 0.2.12 (``standardize_across_features``,
  ``fit_LS_model_and_find_priors``, ``find_parametric_adjustments``). The non-parametric posterior is
  :func:`nonparametric_eb`, the same sums as neuroCombat's ``int_eprior`` vectorised over features and
  in the log domain (neuroCombat's loops over features in Python, O(features^2 x rows) per batch, hours
  on 2048 CNN features, and its likelihood underflows to 0/0 beyond ~300 rows per batch); the tests check
  it against ``int_eprior`` where that does not underflow.
* ``combat_cov`` / ``combat_np_cov``: the same with the ROI class as a biological covariate, whose effect
  is estimated from the *training* labels only.

Batches (:data:`BATCHES`): ``scanner`` (default), ``manufacturer``, ``scanner_dose`` (scanner x dose
header value: harmonizing across doses). The batch keys are acquisition metadata (DICOM header), never
the label being predicted.

Leak rules (what :class:`Transform` does at apply time)
-------------------------------------------------------
* Seen batch: the parameters fitted on the training rows. ComBat is applied *without* the covariate
  term: x' = alpha + (x - alpha - sigma gamma*_b) / sqrt(delta*_b) per feature (alpha = grand mean,
  sigma = pooled residual sd, gamma*, delta* = the EB batch location and scale). ComBat's own output
  adds and removes the covariate effect X B (needs each row's ROI class); without the covariate, or
  where delta* = 1, the two are identical, otherwise the label-free map leaves the class effect in,
  scaled by 1/sqrt(delta*). Training and test rows go through the same label-free map, so a classifier
  sees both the same way. (neuroHarmonize's ``harmonizationApply`` needs the covariates of the rows it
  maps, and returns NaN for unseen sites; its ``harmonizationLearn(orig_model=...)`` re-estimates an
  unseen site from its rows *and covariates*: both would need test labels here.)
* Unseen batch (e.g. the held-out scanner of leave-one-scanner-out): rows of unseen batches are grouped
  by ``scanner`` (dose and ROI class not used) and, with ``unseen="estimate"`` (default), each group's
  per-feature mean and sd over its own unlabelled rows (the test set being scored) are mapped onto the
  mean and sd of the harmonized training rows (a location/scale step; all scanners image the same
  six ROIs, so the class mix matches). ``unseen="skip"`` leaves them unadjusted by the batch terms
  (z-score: unchanged; ComBat: gamma = 0, delta = 1). :attr:`Transform.last_scheme` says what was done.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from ctdose.features import FeatureTable

#: Identity columns a transform may see: acquisition metadata, never the ROI label or patch.
UNLABELLED_COLUMNS: tuple[str, ...] = ("series_uid", "scanner", "manufacturer", "model", "dose_mgy", "recon",
                                       "repetition")
#: Batch definitions: name -> identity columns whose joined values name a batch.
BATCHES: dict[str, tuple[str, ...]] = {"scanner": ("scanner",), "manufacturer": ("manufacturer",),
                                       "scanner_dose": ("scanner", "dose_mgy")}
#: How rows of a batch not seen in training are handled (see the module docstring).
UNSEEN_SCHEMES: tuple[str, ...] = ("estimate", "skip")
#: Covariate column of the covariate ComBat variants (training labels only).
COVARIATE = "roi_class"


@dataclass(frozen=True)
class HarmonizeSettings:
    """What a harmonizer depends on (recorded in the sidecar): batch (one of :data:`BATCHES`) and how
    unseen batches are handled (one of :data:`UNSEEN_SCHEMES`)."""

    batch: str = "scanner"
    unseen: str = "estimate"

    def __post_init__(self) -> None:
        if self.batch not in BATCHES:
            raise ValueError(f"harmonization batch {self.batch!r}; expected one of {', '.join(BATCHES)}")
        if self.unseen not in UNSEEN_SCHEMES:
            raise ValueError(f"unseen-batch scheme {self.unseen!r}; expected one of {', '.join(UNSEEN_SCHEMES)}")

    def as_dict(self) -> dict:
        return {**asdict(self), "batch_columns": list(BATCHES[self.batch])}


def batch_labels(ident: pd.DataFrame, batch: str) -> np.ndarray:
    """One batch name per row (rows,) str, e.g. 'A1' or 'A1|10' for ``scanner_dose``."""
    cols = BATCHES[batch]
    missing = [c for c in cols if c not in ident.columns]
    if missing:
        raise ValueError(f"batch {batch!r} needs the identity column(s) {', '.join(missing)}")
    parts = [ident[c].map("{:g}".format) if c == "dose_mgy" else ident[c].astype(str) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = out + "|" + p
    return out.to_numpy(dtype=str)


def unlabelled(ident: pd.DataFrame) -> pd.DataFrame:
    """The identity columns a transform may see (:data:`UNLABELLED_COLUMNS` present in ``ident``)."""
    return ident[[c for c in UNLABELLED_COLUMNS if c in ident.columns]].reset_index(drop=True)


# ----------------------------------------------------------------------------- fitted transforms

@dataclass
class Transform:
    """A fitted harmonization: per seen batch and feature an affine map x -> offset + scale x.

    offset, scale: {batch: (features,)}; keep: (features,) bool, features harmonized (the others, e.g.
    constant in training, pass through); ref_mean, ref_sd: (features,) mean / sd of the harmonized
    training rows (the target of the unseen-batch location/scale step); batch, unseen: the settings.
    ``last_scheme`` is set by each call: what was done to the rows it mapped.
    """

    method: str
    batch: str
    unseen: str
    offset: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    keep: np.ndarray
    ref_mean: np.ndarray | None = None
    ref_sd: np.ndarray | None = None
    identity: bool = False
    skip_offset: np.ndarray | None = None  # affine map for unseen rows under unseen="skip"
    skip_scale: np.ndarray | None = None
    note: str = ""  # e.g. "one training batch: left as is"
    last_scheme: str = field(default="", compare=False)

    def __call__(self, X: np.ndarray, ident: pd.DataFrame) -> np.ndarray:
        """Harmonized copy of ``X`` (rows, features); ``ident``: the rows' identity columns, of which
        only :data:`UNLABELLED_COLUMNS` are read."""
        X = np.asarray(X, dtype=np.float64)
        if self.identity:
            self.last_scheme = "identity"
            return X.copy()
        ident = unlabelled(ident)
        if len(ident) != len(X):
            raise ValueError(f"{len(X)} feature rows but {len(ident)} identity rows")
        out = X.copy()
        batches = batch_labels(ident, self.batch)
        seen = np.isin(batches, list(self.offset))
        k = self.keep
        for b in np.unique(batches[seen]):
            rows = batches == b
            out[np.ix_(rows, k)] = self.offset[b] + self.scale[b] * X[np.ix_(rows, k)]
        schemes = [self.note] if self.note else []
        if seen.any():
            schemes.append("seen batches: parameters fitted on training rows")
        if (~seen).any():
            scanners = ident["scanner"].astype(str).to_numpy()
            for s in np.unique(scanners[~seen]):
                rows = ~seen & (scanners == s)
                if self.unseen == "skip":
                    out[np.ix_(rows, k)] = self.skip_offset + self.skip_scale * X[np.ix_(rows, k)]
                    continue
                block = X[np.ix_(rows, k)]
                mean, sd = block.mean(axis=0), block.std(axis=0)
                if len(block) < 2:
                    raise ValueError(f"unseen batch of scanner {s} has {len(block)} row; its location/scale "
                                     "needs at least 2")
                sd = np.where(sd > 0, sd, 1.0)
                out[np.ix_(rows, k)] = self.ref_mean + (block - mean) / sd * self.ref_sd
            schemes.append("unseen batches: " + (
                "left without batch adjustment (skip)" if self.unseen == "skip" else
                "location/scale from their own unlabelled rows (grouped by scanner) onto the harmonized "
                "training rows"))
        self.last_scheme = "; ".join(schemes)
        return out


def _finish(transform: Transform, X: np.ndarray, ident: pd.DataFrame) -> Transform:
    """Store the mean / sd of the harmonized training rows (the unseen-batch target)."""
    H = transform(X, ident)[:, transform.keep]
    transform.ref_mean, transform.ref_sd = H.mean(axis=0), H.std(axis=0)
    return transform


def _checked_batches(table: FeatureTable, settings: HarmonizeSettings, minimum: int = 2) -> np.ndarray:
    """Batch names of the training rows; fewer than ``minimum`` batches or a 1-row batch is an error."""
    batches = batch_labels(table.ident, settings.batch)
    uniq, counts = np.unique(batches, return_counts=True)
    if uniq.size < minimum:
        raise ValueError(f"{table.name}: harmonizing needs at least {minimum} batch(es) ({settings.batch}); the "
                         f"training rows hold {uniq.size} ({', '.join(uniq) or 'no rows'})")
    if counts.min() < 2:
        raise ValueError(f"{table.name}: batch {uniq[counts.argmin()]} has 1 training row; every batch needs 2")
    return batches


def fit_none(table: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()) -> Transform:
    """The identity (baseline)."""
    return Transform("none", settings.batch, settings.unseen, {}, {}, np.zeros(table.X.shape[1], bool),
                     identity=True)


def fit_zscore(table: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()) -> Transform:
    """Per-batch z-score with each batch's training mean and sd (ddof 0); features constant within a
    batch are centred only. One training batch is allowed (e.g. LOSO with N = 1)."""
    batches = _checked_batches(table, settings, minimum=1)
    X = table.X
    keep = np.ones(X.shape[1], bool)
    offset, scale = {}, {}
    for b in np.unique(batches):
        rows = X[batches == b]
        mean, sd = rows.mean(axis=0), rows.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        offset[b], scale[b] = -mean / sd, 1.0 / sd
    n = X.shape[1]
    t = Transform("zscore", settings.batch, settings.unseen, offset, scale, keep,
                  skip_offset=np.zeros(n), skip_scale=np.ones(n))
    return _finish(t, X, table.ident)


# ----------------------------------------------------------------------------- ComBat

def nonparametric_eb(s_data: np.ndarray, gamma_hat: np.ndarray, delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-parametric EB posteriors of one batch (Johnson et al. 2007), as neuroCombat's ``int_eprior``.

    s_data: (features, rows) standardized data of the batch; gamma_hat, delta_hat: (features,) its L/S
    estimates. For feature i the posterior is the likelihood-weighted mean of the other features'
    (gamma_hat_k, delta_hat_k), likelihood of x_i under N(gamma_hat_k, delta_hat_k):
    LH_ik = (2 pi d_k)^(-n/2) exp(-sum_t (x_it - g_k)^2 / (2 d_k)), k != i. Computed from the row sums
    (sum_t (x_it - g_k)^2 = Sxx_i - 2 g_k Sx_i + n g_k^2) in the log domain. Returns (gamma*, delta*).
    """
    s_data = np.asarray(s_data, float)
    g, d = np.asarray(gamma_hat, float), np.asarray(delta_hat, float)
    n = s_data.shape[1]
    sx, sxx = s_data.sum(axis=1), np.einsum("ft,ft->f", s_data, s_data)
    gamma_star, delta_star = np.empty_like(g), np.empty_like(d)
    chunk = max(1, int(2e7 // max(g.size, 1)))
    for start in range(0, g.size, chunk):
        i = np.arange(start, min(start + chunk, g.size))
        sum2 = sxx[i, None] - 2 * g[None, :] * sx[i, None] + n * g[None, :] ** 2
        log_lh = -0.5 * n * np.log(2 * np.pi * d)[None, :] - sum2 / (2 * d[None, :])
        log_lh[np.arange(i.size), i] = -np.inf  # leave feature i out
        w = np.exp(log_lh - logsumexp(log_lh, axis=1, keepdims=True))
        gamma_star[i], delta_star[i] = w @ g, w @ d
    return gamma_star, delta_star


@dataclass
class ComBatFit:
    """ComBat estimates on training rows (neuroCombat's conventions, features along axis 0 of its arrays).

    batches: (B,) names; alpha: (F,) grand mean; sigma: (F,) pooled residual sd; gamma_star, delta_star:
    (B, F) EB batch location and scale; beta_cov: (C-1, F) covariate effects (rows: covariate levels after
    the first, in ``cov_levels`` order), empty without a covariate.
    """

    batches: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray
    beta_cov: np.ndarray
    cov_levels: np.ndarray

    def apply_with_covariate(self, X: np.ndarray, batches: np.ndarray, covariate: np.ndarray) -> np.ndarray:
        """ComBat's own output (rows, F) for rows of seen batches *with* their covariate values: the reference
        formula, used to check against the libraries; the bench never calls it on test rows."""
        pos = {b: i for i, b in enumerate(self.batches)}
        idx = np.array([pos[b] for b in batches])
        cov = np.zeros((len(X), self.beta_cov.shape[0]))
        for j, level in enumerate(self.cov_levels[1:]):
            cov[:, j] = np.asarray(covariate) == level
        mod = cov @ self.beta_cov
        s = (X - self.alpha - mod) / self.sigma
        adj = (s - self.gamma_star[idx]) / np.sqrt(self.delta_star[idx])
        return adj * self.sigma + self.alpha + mod


def combat_estimates(X: np.ndarray, batches: np.ndarray, covariate: np.ndarray | None = None,
                     parametric: bool = True) -> ComBatFit:
    """ComBat on (rows, F) ``X`` with batch names (rows,) and an optional categorical covariate (rows,),
    through neuroCombat's own estimation steps (its console output swallowed)."""
    import importlib

    nc = importlib.import_module("neuroCombat.neuroCombat")  # the module (the package exports its function)

    batches = np.asarray(batches)
    names, codes = np.unique(batches, return_inverse=True)
    cols = [codes.astype(object)]
    cov_levels = np.array([])
    if covariate is not None:
        cov_levels, cov_codes = np.unique(np.asarray(covariate), return_inverse=True)
        cols.append(cov_codes.astype(object))
    covars = np.column_stack(cols)
    design = nc.make_design_matrix(covars, 0, [1] if covariate is not None else [], [], None)
    _, counts = np.unique(codes, return_counts=True)
    info = {"batch_levels": np.arange(names.size), "ref_level": None, "n_batch": names.size,
            "n_sample": len(X), "sample_per_batch": counts.astype(int),
            "batch_info": [list(np.flatnonzero(codes == i)) for i in range(names.size)], "design": design}
    with contextlib.redirect_stdout(io.StringIO()):
        s_data, stand_mean, var_pooled, _ = nc.standardize_across_features(X.T.copy(), design, info)
        ls = nc.fit_LS_model_and_find_priors(s_data, design, info, False)
        if parametric:
            gamma_star, delta_star = nc.find_parametric_adjustments(s_data, ls, info, False)
        else:
            pairs = [nonparametric_eb(s_data[:, rows], ls["gamma_hat"][i], ls["delta_hat"][i])
                     for i, rows in enumerate(info["batch_info"])]
            gamma_star = np.array([p[0] for p in pairs])
            delta_star = np.array([p[1] for p in pairs])
    beta_cov = np.zeros((0, X.shape[1]))
    if covariate is not None:
        beta = np.linalg.lstsq(design, X, rcond=None)[0]  # (design columns, F): neuroCombat's B_hat
        beta_cov = beta[names.size:]
    return ComBatFit(names, stand_mean[:, 0].copy(), np.sqrt(var_pooled[:, 0]), np.asarray(gamma_star),
                     np.asarray(delta_star), beta_cov, cov_levels)


def _fit_combat(table: FeatureTable, settings: HarmonizeSettings, parametric: bool, covariate: bool,
                name: str) -> Transform:
    batches = _checked_batches(table, settings, minimum=1)
    X = table.X
    if np.unique(batches).size == 1:  # e.g. LOSO with N = 1: no batch effect to estimate among training rows
        n = X.shape[1]
        t = Transform(name, settings.batch, settings.unseen, {batches[0]: np.zeros(n)}, {batches[0]: np.ones(n)},
                      np.ones(n, bool), skip_offset=np.zeros(n), skip_scale=np.ones(n),
                      note="one training batch: left as is")
        return _finish(t, X, table.ident)
    if batches.size < 3 * np.unique(batches).size:
        raise ValueError(f"{table.name}: ComBat needs several rows per batch; {batches.size} rows in "
                         f"{np.unique(batches).size} batches")
    keep = np.ptp(X, axis=0) > 1e-12 * np.maximum(np.abs(X).max(axis=0), 1e-300)
    if covariate and table.ident[COVARIATE].nunique() < 2:
        raise ValueError(f"{table.name}: the ROI-class covariate needs 2 classes in the training rows")
    cov = table.ident[COVARIATE].astype(str).to_numpy() if covariate else None
    fit = combat_estimates(X[:, keep], batches, cov, parametric)
    offset, scale = {}, {}
    for i, b in enumerate(fit.batches):
        root = np.sqrt(fit.delta_star[i])
        # x' = alpha + (x - alpha - sigma gamma) / sqrt(delta)
        offset[b] = fit.alpha - (fit.alpha + fit.sigma * fit.gamma_star[i]) / root
        scale[b] = 1.0 / root
    k = int(keep.sum())
    t = Transform(name, settings.batch, settings.unseen, offset, scale, keep,
                  skip_offset=np.zeros(k), skip_scale=np.ones(k))
    t.combat = fit  # type: ignore[attr-defined]  # the estimates, for checks
    return _finish(t, X, table.ident)


def fit_combat(table: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()) -> Transform:
    """ComBat, parametric EB, no covariate."""
    return _fit_combat(table, settings, True, False, "combat")


def fit_combat_np(table: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()) -> Transform:
    """ComBat, non-parametric EB, no covariate."""
    return _fit_combat(table, settings, False, False, "combat_np")


def fit_combat_cov(table: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()) -> Transform:
    """ComBat, parametric EB, ROI class (training labels) as covariate; applied label-free."""
    return _fit_combat(table, settings, True, True, "combat_cov")


def fit_combat_np_cov(table: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()) -> Transform:
    """ComBat, non-parametric EB, ROI class (training labels) as covariate; applied label-free."""
    return _fit_combat(table, settings, False, True, "combat_np_cov")


# ----------------------------------------------------------------------------- registry

#: A harmonizer: (training rows, settings) -> a fitted transform (callable (X, ident) -> X').
Harmonizer = Callable[[FeatureTable, HarmonizeSettings], Callable[[np.ndarray, pd.DataFrame], np.ndarray]]

#: Registered methods, in report order, with a one-line description each.
METHODS: dict[str, Harmonizer] = {"none": fit_none, "zscore": fit_zscore, "combat": fit_combat,
                                  "combat_np": fit_combat_np, "combat_cov": fit_combat_cov,
                                  "combat_np_cov": fit_combat_np_cov}
DESCRIPTIONS: dict[str, str] = {
    "none": "no harmonization (baseline)",
    "zscore": "z-score of each feature within each batch (training mean and sd)",
    "combat": "ComBat, parametric empirical Bayes (neuroCombat 0.2.12)",
    "combat_np": "ComBat, non-parametric empirical Bayes (neuroCombat 0.2.12 L/S; vectorised int_eprior)",
    "combat_cov": "ComBat parametric, ROI class as covariate (training labels), applied without it",
    "combat_np_cov": "ComBat non-parametric, ROI class as covariate (training labels), applied without it",
}


def register_method(name: str, harmonizer: Harmonizer, description: str = "user method") -> None:
    """Add a method: ``harmonizer(training_table, settings)`` returns a callable ``(X, ident) -> X'``
    (rows, features) -> (rows, features). It is fitted on training rows only and applied to rows whose
    ``ident`` holds only :data:`UNLABELLED_COLUMNS`. A callable without ``last_scheme`` is recorded as
    'user method'."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"harmonization method name {name!r}; use letters, digits and _")
    METHODS[name] = harmonizer
    DESCRIPTIONS[name] = description


def load_plugins(plugins: tuple[str, ...] | list[str]) -> None:
    """Import each plug-in (a module name or a .py path) so that its :func:`register_method` calls run
    (in this process: the bench calls it again in every worker). A missing file or module is a one-line error."""
    import importlib
    import importlib.util
    from pathlib import Path

    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise FileNotFoundError(f"harmonization plug-in {path} not found")
            spec = importlib.util.spec_from_file_location(f"ctdose_harmonize_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as err:
                raise ValueError(f"harmonization plug-in module {plugin!r} not found ({err})") from None


def fit_method(method: str, train: FeatureTable, settings: HarmonizeSettings = HarmonizeSettings()
               ) -> Callable[[np.ndarray, pd.DataFrame], np.ndarray]:
    """Fit the registered ``method`` on the training rows ``train``."""
    if method not in METHODS:
        raise ValueError(f"unknown harmonization method {method!r}; expected one of {', '.join(METHODS)}")
    return METHODS[method](train, settings)


def harmonize_table(table: FeatureTable, method: str, settings: HarmonizeSettings = HarmonizeSettings()
                    ) -> FeatureTable:
    """The whole table harmonized with ``method`` fitted on all its rows (descriptive use: ICC, UMAP,
    silhouettes; never a held-out score). A table with one batch is an error."""
    if method != "none":
        n = np.unique(batch_labels(table.ident, settings.batch)).size
        if n < 2:
            raise ValueError(f"{table.name}: cannot harmonize a table with one {settings.batch} batch")
    transform = fit_method(method, table, settings)
    return FeatureTable(table.name, table.ident, transform(table.X, unlabelled(table.ident)),
                        table.feature_names, table.sidecar)
