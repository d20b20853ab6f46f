"""Cross-validation protocols for ROI-class and dose-level classification from feature tables.

Every protocol is a generator of :class:`Split` (row indices into one feature table), so tests can
check the indices directly, and one runner (:func:`run_splits`) fits a fresh classifier pipeline per
split. The pipeline (:func:`make_pipeline`) holds the feature filter (drop features constant in the
training rows) and the ``StandardScaler`` before the classifier, so both are fitted on training rows
only.

Protocols
---------
* :func:`cross_dose_splits`: train at dose A, test at dose B, leave one scanner out. For every
  held-out scanner and every training dose A, one model is trained on all other scanners at dose A
  and tested on the held-out scanner at every dose B: no cell, the A == B diagonal included,
  tests on a scanner seen in training.
* :func:`loso_n_splits` (dataset paper, Algorithm 1): a held-out scanner and N other training
  scanners (N = 1 .. n_scanners - 1), drawn at random ``draws`` times per N (seeded), all doses.
* :func:`kfold_n_splits` (Algorithm 2): rows split into 10 folds grouped by series (all patches of
  one series in one fold); for a test fold, train on n of the other folds (n = 1..9, first n of a
  seeded permutation). Scanners are shared between training and test here: it is the optimistic
  random-split estimate that the paper contrasts with leave-one-scanner-out.
* :func:`dose_splits`: dose-level classification, leave one scanner out (groups = scanner): a test
  series' scanner is never in training. ROIs cannot be held out as well (every scanner images the
  same six ROIs and every class must be in training), so ROI identity is shared by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ctdose.stats.mlp import MLPClassifier

CLASSIFIERS: tuple[str, ...] = ("mlp", "logreg")


@dataclass
class Split:
    """Training rows and one or more named test row sets (e.g. one per test dose)."""

    train: np.ndarray
    tests: dict[str, np.ndarray]
    labels: dict[str, object] = field(default_factory=dict)  # protocol-specific: fold, dose, N ...


def make_pipeline(classifier: str = "mlp", seed: int = 0, epochs: int = 100) -> Pipeline:
    """Constant-feature filter + StandardScaler + classifier ('mlp' or 'logreg'), all fit on training rows."""
    if classifier == "mlp":
        clf = MLPClassifier(epochs=epochs, seed=seed)
    elif classifier == "logreg":
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    else:
        raise ValueError(f"unknown classifier {classifier!r}; expected one of {', '.join(CLASSIFIERS)}")
    return Pipeline([("drop_constant", VarianceThreshold(0.0)), ("scale", StandardScaler()), ("clf", clf)])


def cross_dose_splits(scanner: np.ndarray, dose: np.ndarray) -> Iterator[Split]:
    """Leave-one-scanner-out x training dose; tests keyed by test dose (see module docstring)."""
    scanner, dose = np.asarray(scanner), np.asarray(dose, dtype=float)
    doses = np.unique(dose)
    for held_out in np.unique(scanner):
        is_test = scanner == held_out
        for a in doses:
            train = np.flatnonzero(~is_test & (dose == a))
            tests = {f"{b:g}": np.flatnonzero(is_test & (dose == b)) for b in doses}
            tests = {k: v for k, v in tests.items() if v.size}
            if train.size and tests:
                yield Split(train, tests, {"fold": held_out, "train_dose": a})


def loso_n_splits(scanner: np.ndarray, draws: int = 3, seed: int = 0) -> Iterator[Split]:
    """For N = 1 .. n_scanners-1 and each draw: a random held-out scanner and N random training scanners."""
    scanner = np.asarray(scanner)
    names = np.unique(scanner)
    rng = np.random.default_rng(seed)
    for n_train in range(1, len(names)):
        for draw in range(draws):
            perm = rng.permutation(names)
            held_out, training = perm[0], perm[1:1 + n_train]
            yield Split(np.flatnonzero(np.isin(scanner, training)),
                        {"test": np.flatnonzero(scanner == held_out)},
                        {"n_train": n_train, "draw": draw, "fold": held_out,
                         "train_scanners": " ".join(sorted(training))})


def group_folds(groups: np.ndarray, n_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold number (rows,) with all rows of a group in one fold; groups dealt to folds at random (seeded)."""
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(uniq) < n_folds:
        raise ValueError(f"{len(uniq)} groups cannot fill {n_folds} folds")
    fold_of_group = np.random.default_rng(seed).permutation(len(uniq)) % n_folds
    return fold_of_group[inverse]


def kfold_n_splits(groups: np.ndarray, n_folds: int = 10, test_folds: int | None = 3,
                   seed: int = 0) -> Iterator[Split]:
    """Test fold f (the first ``test_folds`` of them, all when None) x n = 1..n_folds-1 training folds."""
    folds = group_folds(groups, n_folds, seed)
    rng = np.random.default_rng(seed + 1)
    for f in range(n_folds if test_folds is None else min(test_folds, n_folds)):
        others = rng.permutation([g for g in range(n_folds) if g != f])
        for n_train in range(1, n_folds):
            yield Split(np.flatnonzero(np.isin(folds, others[:n_train])), {"test": np.flatnonzero(folds == f)},
                        {"n_train": n_train, "fold": f})


def dose_splits(scanner: np.ndarray) -> Iterator[Split]:
    """Leave one scanner out (for dose-level classification)."""
    scanner = np.asarray(scanner)
    for held_out in np.unique(scanner):
        yield Split(np.flatnonzero(scanner != held_out), {"test": np.flatnonzero(scanner == held_out)},
                    {"fold": held_out})


def run_splits(X: np.ndarray, y: np.ndarray, splits: Iterator[Split],
               make_model: Callable[[], Pipeline], progress: Callable | None = None) -> pd.DataFrame:
    """Fit a fresh model per split on its training rows and score every test set.

    Returns one row per (split, test set): the split's labels, ``test`` (test-set key), accuracy,
    n_train_rows, n_test_rows. A split whose training rows hold a single class is an error (no classifier).
    """
    X, y = np.asarray(X), np.asarray(y)
    rows = []
    splits = list(splits)
    for split in (progress(splits) if progress else splits):
        if np.unique(y[split.train]).size < 2:
            raise ValueError(f"training rows of split {split.labels} hold a single class")
        model = make_model().fit(X[split.train], y[split.train])
        for key, test in split.tests.items():
            acc = float(np.mean(model.predict(X[test]) == y[test]))
            rows.append({**split.labels, "test": key, "accuracy": acc,
                         "n_train_rows": int(split.train.size), "n_test_rows": int(test.size)})
    return pd.DataFrame(rows)


def accuracy_matrix(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sd over folds of cross-dose accuracy: rows = training dose, columns = test dose (mGy)."""
    res = results.assign(test_dose=results["test"].astype(float))
    mean = res.pivot_table(index="train_dose", columns="test_dose", values="accuracy", aggfunc="mean")
    sd = res.pivot_table(index="train_dose", columns="test_dose", values="accuracy",
                         aggfunc=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else np.nan)
    return mean, sd


def curve(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count of accuracy per number of training scanners / folds (``n_train``)."""
    return (results.groupby("n_train")["accuracy"].agg(["mean", "std", "count"])
            .rename(columns={"std": "sd", "count": "n"}).reset_index())
