"""Organ classification from a feature table of another dataset (CT-ORG, OrganMNIST3D).

Does a feature space carry organ identity on real anatomy? For every extractor, target (``roi_class``:
organ class, e.g. lung; ``roi``: organ with its side, e.g. lung_left, or OrganMNIST3D's 11 classes) and
classifier, stratified k-fold cross-validation (default 10 folds, seeded, shuffled) *grouped by case*
(``series_uid``): every organ and patch of one CT-ORG case lands in the same fold, so no patient is in
training and test at once (scikit-learn's ``StratifiedGroupKFold``). An OrganMNIST3D sample is its own
case (the npz has no patient ids), which makes this plain stratified k-fold there. The number of folds
is capped at the number of cases.

Classifiers (each in a pipeline: constant-feature filter and ``StandardScaler`` fitted on the training
fold only, then the model): the papers' MLP (100-60-30, GELU, dropout 0.2, fixed epochs, no early
stopping), logistic regression, k-nearest neighbours, random forest. Accuracy per fold with the fold's
chance level (share of its majority class); summaries are mean and sd (ddof 1) over the folds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ctdose.features import FeatureTable
from ctdose.stats.classify import chance_level
from ctdose.stats.mlp import MLPClassifier

CLASSIFIERS: tuple[str, ...] = ("mlp", "logreg", "knn", "rf")
TARGETS: tuple[str, ...] = ("roi_class", "roi")
#: What the fold means and sds are taken over.
OVER = "test folds (stratified by organ, grouped by case)"


@dataclass(frozen=True)
class OrganSettings:
    """Cross-validation and model settings (recorded in the output sidecar)."""

    folds: int = 10
    seed: int = 0
    targets: tuple[str, ...] = ("roi_class",)
    classifiers: tuple[str, ...] = CLASSIFIERS
    mlp_epochs: int = 100
    knn_neighbors: int = 5
    rf_trees: int = 200

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {self.folds}")
        bad = [t for t in self.targets if t not in TARGETS] + [c for c in self.classifiers if c not in CLASSIFIERS]
        if bad:
            raise ValueError(f"unknown target / classifier {bad[0]!r}; targets {TARGETS}, classifiers {CLASSIFIERS}")

    def as_dict(self) -> dict:
        return {**asdict(self), "grouping": "series_uid (case)", "over": OVER}


def make_organ_pipeline(classifier: str, settings: OrganSettings) -> Pipeline:
    """Constant-feature filter + StandardScaler + the classifier, all fitted on training rows only."""
    if classifier == "mlp":
        model = MLPClassifier(epochs=settings.mlp_epochs, seed=settings.seed)
    elif classifier == "logreg":
        model = LogisticRegression(max_iter=2000, random_state=settings.seed)
    elif classifier == "knn":
        model = KNeighborsClassifier(n_neighbors=settings.knn_neighbors)
    elif classifier == "rf":
        model = RandomForestClassifier(n_estimators=settings.rf_trees, random_state=settings.seed, n_jobs=1)
    else:
        raise ValueError(f"unknown classifier {classifier!r}; expected one of {', '.join(CLASSIFIERS)}")
    return Pipeline([("drop_constant", VarianceThreshold(0.0)), ("scale", StandardScaler()), ("clf", model)])


def organ_folds(y: np.ndarray, groups: np.ndarray, folds: int = 10,
                seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices of stratified k-fold grouped by ``groups`` (cases); k capped at the
    number of groups. ValueError with fewer than two cases or classes."""
    y, groups = np.asarray(y), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2 or len(np.unique(y)) < 2:
        raise ValueError(f"organ classification needs at least 2 cases and 2 organs, got {n_groups} case(s) and "
                         f"{len(np.unique(y))} organ(s)")
    splitter = StratifiedGroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
    yield from splitter.split(np.zeros(len(y)), y, groups)


def _knn_fits(classifier: str, settings: OrganSettings, n_train: int) -> OrganSettings:
    """kNN with at most as many neighbours as training rows."""
    if classifier == "knn" and settings.knn_neighbors > n_train:
        from dataclasses import replace

        return replace(settings, knn_neighbors=n_train)
    return settings


def classify_organs(table: FeatureTable, settings: OrganSettings) -> pd.DataFrame:
    """One row per target x classifier x fold: extractor, target, classifier, fold, n_train, n_test,
    n_classes_train, accuracy, chance."""
    X = table.X
    groups = table.ident["series_uid"].astype(str).to_numpy()
    rows = []
    for target in settings.targets:
        y = table.ident[target].astype(str).to_numpy()
        for fold, (train, test) in enumerate(organ_folds(y, groups, settings.folds, settings.seed)):
            for classifier in settings.classifiers:
                model = make_organ_pipeline(classifier, _knn_fits(classifier, settings, len(train)))
                model.fit(X[train], y[train])
                accuracy = float(np.mean(model.predict(X[test]) == y[test]))
                rows.append({"extractor": table.name, "target": target, "classifier": classifier, "fold": fold,
                             "n_train": len(train), "n_test": len(test),
                             "n_classes_train": len(np.unique(y[train])), "accuracy": accuracy,
                             "chance": chance_level(y[test])})
    return pd.DataFrame(rows)


def summarize_organs(folds: pd.DataFrame, tables: dict[str, FeatureTable]) -> pd.DataFrame:
    """Mean / sd (ddof 1) accuracy over folds per extractor x target x classifier, with the chance level
    (mean over folds), the number of folds, rows, cases and classes, and what it is taken over."""
    keys = ["extractor", "target", "classifier"]
    summary = (folds.groupby(keys, sort=False)
               .agg(accuracy_mean=("accuracy", "mean"), accuracy_sd=("accuracy", lambda v: v.std(ddof=1)),
                    chance=("chance", "mean"), n_folds=("fold", "nunique"))
               .reset_index())
    info = {name: (len(t.X), t.ident["series_uid"].nunique()) for name, t in tables.items()}
    summary["n_rows"] = summary["extractor"].map(lambda e: info[e][0])
    summary["n_cases"] = summary["extractor"].map(lambda e: info[e][1])
    summary["n_classes"] = [tables[e].ident[t].nunique() for e, t in zip(summary["extractor"], summary["target"])]
    summary["over"] = OVER
    return summary
