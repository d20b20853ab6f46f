"""Which dose was a patch acquired at? Dose-level classification and dose regression from features.

As the study's code: the dose level (1, 3, 6, 10, 14 mGy) is predicted from one extractor's features
by a random forest, logistic regression, k-nearest neighbours and the papers' MLP (100-60-30, GELU,
dropout 0.2), and the dose itself (mGy) is regressed by ridge regression and a random-forest regressor.
Cross-validation is grouped by **scanner x ROI** (:func:`scanner_roi_groups`): all rows of one ROI on
one scanner (every dose, reconstruction, repetition and patch) are in one fold, so no scanner x ROI is
in both training and test (sklearn ``GroupKFold``, shuffled with the seed). Every model is the
preprocessing of :func:`ctdose.stats.classify.make_pipeline` (constant-feature filter, then
``StandardScaler``) with its estimator, fitted on the training fold only.

Outputs (:func:`dose_models`): per fold and model, accuracy with its chance level (majority-class
share of the test rows) or MAE (mGy) with the MAE of the trivial predictor (the training fold's mean
dose); the confusion counts of each classifier summed over the folds (every row is tested once).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from tqdm.auto import tqdm

from ctdose.features import FeatureTable
from ctdose.stats.classify import chance_level, make_pipeline

#: Dose-level classifiers, in report order.
DOSE_CLASSIFIERS: tuple[str, ...] = ("rf", "logreg", "knn", "mlp")
#: Dose regressors, in report order.
DOSE_REGRESSORS: tuple[str, ...] = ("ridge", "rf")
#: What each fold-level mean and sd is taken over.
OVER = "test folds grouped by scanner x ROI"


@dataclass(frozen=True)
class DoseModelSettings:
    """What the dose models depend on (recorded in the output sidecar).

    n_folds: GroupKFold folds (capped at the number of scanner x ROI groups); seed: fold shuffling and
    every model's seed; epochs: fixed MLP epochs; n_trees: random-forest size; k: kNN neighbours;
    ridge_alpha: ridge penalty; recons: reconstructions used (empty: all).
    """

    classifiers: tuple[str, ...] = DOSE_CLASSIFIERS
    regressors: tuple[str, ...] = DOSE_REGRESSORS
    n_folds: int = 5
    seed: int = 0
    epochs: int = 100
    n_trees: int = 200
    k: int = 5
    ridge_alpha: float = 1.0
    recons: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        bad = [c for c in self.classifiers if c not in DOSE_CLASSIFIERS]
        bad += [r for r in self.regressors if r not in DOSE_REGRESSORS]
        if bad:
            raise ValueError(f"unknown dose model(s) {', '.join(bad)}; classifiers: {', '.join(DOSE_CLASSIFIERS)}, "
                             f"regressors: {', '.join(DOSE_REGRESSORS)}")
        for name in ("n_folds", "epochs", "n_trees", "k"):
            low = 2 if name == "n_folds" else 1
            if getattr(self, name) < low:
                raise ValueError(f"dose model setting {name}={getattr(self, name)}; must be >= {low}")
        for name in ("classifiers", "regressors", "recons"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def as_dict(self) -> dict:
        return {**asdict(self), "groups": "scanner x roi (GroupKFold, shuffled with the seed)",
                "preprocessing": "constant-feature filter + StandardScaler, fitted on training folds",
                "mlp": "hidden 100-60-30, GELU, dropout 0.2, Adam lr 1e-3, full batch, fixed epochs",
                "chance": "majority-class share of the test rows",
                "baseline_mae": "MAE of predicting the training fold's mean dose"}


def scanner_roi_groups(ident: pd.DataFrame) -> np.ndarray:
    """(rows,) group label ``<scanner>|<roi>``: the unit no split may divide."""
    return (ident["scanner"].astype(str) + "|" + ident["roi"].astype(str)).to_numpy()


def grouped_folds(groups: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices of a seeded GroupKFold; ``n_folds`` capped at the number of groups."""
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise ValueError(f"dose models need at least 2 scanner x ROI groups, got {n_groups}")
    cv = GroupKFold(n_splits=min(n_folds, n_groups), shuffle=True, random_state=seed)
    return list(cv.split(np.zeros((len(groups), 1)), groups=groups))


def make_model(name: str, kind: str, settings: DoseModelSettings) -> Pipeline:
    """:func:`make_pipeline`'s preprocessing with the estimator ``name`` ('classifier' or 'regressor')."""
    if kind == "classifier" and name in ("mlp", "logreg"):
        return make_pipeline(name, settings.seed, settings.epochs)
    estimator = {
        ("classifier", "rf"): lambda: RandomForestClassifier(settings.n_trees, random_state=settings.seed, n_jobs=1),
        ("classifier", "knn"): lambda: KNeighborsClassifier(settings.k),
        ("regressor", "rf"): lambda: RandomForestRegressor(settings.n_trees, random_state=settings.seed, n_jobs=1),
        ("regressor", "ridge"): lambda: Ridge(alpha=settings.ridge_alpha),
    }[(kind, name)]()
    return make_pipeline("logreg", settings.seed).set_params(clf=estimator)


@dataclass
class DoseFoldJob:
    """Every dose model of one fold of one extractor (picklable, for parallel workers).

    X: (rows, features), the columns constant over all rows dropped (the pipeline's filter drops them in
    every fold anyway, :func:`ctdose.stats.classify.varying_columns`); level: (rows,) dose class index;
    dose: (rows,) mGy; train / test: row indices; n_levels: dose classes; threads: torch / BLAS threads
    (None: left as the process has them).
    """

    extractor: str
    fold: int
    X: np.ndarray
    level: np.ndarray
    dose: np.ndarray
    train: np.ndarray
    test: np.ndarray
    n_levels: int
    settings: DoseModelSettings
    threads: int | None = None


def dose_model_jobs(table: FeatureTable, settings: DoseModelSettings, threads: int | None = None
                    ) -> tuple[list[DoseFoldJob], np.ndarray]:
    """One :class:`DoseFoldJob` per GroupKFold fold of ``table``, and the dose levels (classes, mGy)."""
    from ctdose.stats.classify import varying_columns

    if settings.recons:
        table = table.subset(table.ident["recon"].isin(settings.recons).to_numpy())
        if not len(table.X):
            raise ValueError(f"{table.name}: no rows with reconstruction(s) {', '.join(settings.recons)}")
    dose = table.ident["dose_mgy"].to_numpy(float)
    levels = np.unique(dose)
    if levels.size < 2:
        raise ValueError(f"{table.name}: dose models need at least 2 dose levels, got {levels.tolist()}")
    level = np.searchsorted(levels, dose)  # class index: a dose like 2.5 mGy is a class, not a continuous target
    folds = grouped_folds(scanner_roi_groups(table.ident), settings.n_folds, settings.seed)
    X = table.X[:, varying_columns(table.X)]
    return [DoseFoldJob(table.name, f, X, level, dose, train, test, levels.size, settings, threads)
            for f, (train, test) in enumerate(folds)], levels


def dose_fold(job: DoseFoldJob) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Fit and score every model of one fold (torch and BLAS limited to ``job.threads``): the fold's
    rows of :func:`dose_models`' ``folds`` table and each classifier's confusion counts (levels x levels)."""
    import torch
    from threadpoolctl import threadpool_limits

    settings, X, level, dose, train, test = job.settings, job.X, job.level, job.dose, job.train, job.test
    base = {"extractor": job.extractor, "fold": job.fold, "n_train": int(train.size), "n_test": int(test.size)}
    rows, counts = [], {}
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    with threadpool_limits(limits=job.threads):  # None: no limit
        for name in settings.classifiers:
            if np.unique(level[train]).size < 2:
                raise ValueError(f"{job.extractor}: training rows of fold {job.fold} hold a single dose")
            pred = make_model(name, "classifier", settings).fit(X[train], level[train]).predict(X[test])
            counts[name] = confusion_matrix(level[test], pred, labels=np.arange(job.n_levels))
            rows.append({**base, "task": "classification", "model": name,
                         "accuracy": float(np.mean(pred == level[test])), "chance": chance_level(level[test])})
        for name in settings.regressors:
            pred = make_model(name, "regressor", settings).fit(X[train], dose[train]).predict(X[test])
            rows.append({**base, "task": "regression", "model": name,
                         "mae_mgy": float(np.mean(np.abs(pred - dose[test]))),
                         "baseline_mae_mgy": float(np.mean(np.abs(dose[train].mean() - dose[test])))})
    return rows, counts


def gather_dose_folds(name: str, levels: np.ndarray, settings: DoseModelSettings,
                      outs: list[tuple[list[dict], dict[str, np.ndarray]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`dose_fold` results of one extractor's folds (in fold order) as :func:`dose_models` returns them."""
    rows = [r for fold_rows, _ in outs for r in fold_rows]
    counts = {c: np.zeros((levels.size, levels.size), int) for c in settings.classifiers}
    for _, fold_counts in outs:
        for c, m in fold_counts.items():
            counts[c] += m
    confusion = pd.DataFrame([{"extractor": name, "model": c, "true_dose": t, "pred_dose": p,
                               "count": int(m[i, j])}
                              for c, m in counts.items() for i, t in enumerate(levels)
                              for j, p in enumerate(levels)],
                             columns=["extractor", "model", "true_dose", "pred_dose", "count"])
    return pd.DataFrame(rows), confusion


def dose_models(table: FeatureTable, settings: DoseModelSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Grouped-CV dose classification and regression of one extractor (in-process; analyze/dose_effects.py
    runs the same :func:`dose_fold` jobs on parallel workers with ``--workers``).

    Returns ``folds``: one row per (task, model, fold): extractor, task ('classification' /
    'regression'), model, fold, n_train, n_test, accuracy and chance (classification) or mae_mgy and
    baseline_mae_mgy (regression); and ``confusion``: one row per (model, true dose, predicted dose)
    with the count of test rows, summed over folds (rows of one true dose sum to its row count).
    """
    jobs, levels = dose_model_jobs(table, settings)
    outs = [dose_fold(job) for job in tqdm(jobs, desc=f"{table.name} dose models", unit="fold", leave=False)]
    return gather_dose_folds(table.name, levels, settings, outs)


def summarize_dose_models(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd (ddof 1) over the folds per extractor x task x model, with ``n`` folds and ``over``:
    accuracy with mean chance (classification); mae_mgy with the baseline's mean MAE (regression)."""
    out = []
    for (extractor, task, model), g in folds.groupby(["extractor", "task", "model"], sort=False):
        value, ref = ("accuracy", "chance") if task == "classification" else ("mae_mgy", "baseline_mae_mgy")
        out.append({"extractor": extractor, "task": task, "model": model, "metric": value,
                    "mean": g[value].mean(), "sd": g[value].std(ddof=1) if len(g) > 1 else np.nan,
                    "n": len(g), "over": OVER, "reference": ref, "reference_mean": g[ref].mean()})
    return pd.DataFrame(out)
