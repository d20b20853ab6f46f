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

:func:`classify_extractor` runs every protocol the table allows for one extractor under
:class:`ClassifySettings`; :func:`summarize` turns the per-fold results of all extractors into the
tables the analysis step writes (per fold, accuracy matrices, curves).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ctdose.features import FeatureTable
from ctdose.stats.mlp import MLPClassifier

CLASSIFIERS: tuple[str, ...] = ("mlp", "logreg")
#: Protocols in the order they are run and reported.
PROTOCOLS: tuple[str, ...] = ("cross_dose", "loso_n", "kfold_n", "dose_level")


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


@dataclass(frozen=True)
class ClassifySettings:
    """What the classification results depend on (recorded in the output sidecar).

    classifier: 'mlp' (100-60-30 GELU, dropout 0.2, fixed ``epochs``) or 'logreg'; seed: the
    classifier's and every random draw's; draws: draws per N training scanners (LOSO-N);
    n_folds, test_folds: the grouped k-fold-n protocol (capped at the number of series);
    recons: reconstructions used (empty: all).
    """

    classifier: str = "mlp"
    epochs: int = 100
    seed: int = 0
    draws: int = 2
    n_folds: int = 10
    test_folds: int = 2
    recons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {self.classifier!r}; "
                             f"expected one of {', '.join(CLASSIFIERS)}")
        for key in ("epochs", "draws", "test_folds"):
            if getattr(self, key) < 1:
                raise ValueError(f"classification setting {key}={getattr(self, key)}; must be >= 1")
        if self.n_folds < 2:
            raise ValueError(f"classification setting n_folds={self.n_folds}; must be >= 2")
        object.__setattr__(self, "recons", tuple(self.recons))

    def as_dict(self) -> dict:
        return {**asdict(self), "recons": list(self.recons),
                "mlp": "hidden 100-60-30, GELU, dropout 0.2, Adam lr 1e-3, weight decay 1e-4, full batch",
                "kfold_groups": "series_uid", "dose_level_groups": "scanner (leave one scanner out)"}


def classify_extractor(table: FeatureTable, settings: ClassifySettings) -> dict[str, pd.DataFrame]:
    """Every protocol the table allows, per fold: {protocol: rows of :func:`run_splits` + ``extractor``}.

    Cross-dose, LOSO-N and dose level need two scanners (dose level also two doses); k-fold-n needs
    two series. Absent protocols are absent keys.
    """
    if settings.recons:
        table = table.subset(table.ident["recon"].isin(settings.recons).to_numpy())
        if not len(table.X):
            raise ValueError(f"{table.name}: no rows with reconstruction(s) {', '.join(settings.recons)}")
    ident, X = table.ident, table.X
    y_roi, y_dose = ident["roi_class"].to_numpy(), ident["dose_mgy"].to_numpy()
    scanner = ident["scanner"].to_numpy()
    make = partial(make_pipeline, settings.classifier, settings.seed, settings.epochs)

    def bar(desc: str) -> Callable:
        from tqdm.auto import tqdm
        return partial(tqdm, leave=False, unit="fit", desc=f"{table.name} {desc}")

    out: dict[str, pd.DataFrame] = {}
    if np.unique(scanner).size >= 2:
        out["cross_dose"] = run_splits(X, y_roi, cross_dose_splits(scanner, y_dose), make, bar("cross-dose"))
        out["loso_n"] = run_splits(X, y_roi, loso_n_splits(scanner, settings.draws, settings.seed), make,
                                   bar("LOSO-N"))
        if np.unique(y_dose).size >= 2:
            out["dose_level"] = run_splits(X, y_dose.astype(str), dose_splits(scanner), make,
                                           bar("dose level"))
    n_folds = min(settings.n_folds, ident["series_uid"].nunique())
    if n_folds >= 2:
        splits = kfold_n_splits(ident["series_uid"].to_numpy(), n_folds, settings.test_folds, settings.seed)
        out["kfold_n"] = run_splits(X, y_roi, splits, make, bar("k-fold-n"))
    return {k: v.assign(extractor=table.name) for k, v in out.items()}


def classify_job(job: tuple[FeatureTable, ClassifySettings, int]) -> dict[str, pd.DataFrame]:
    """:func:`classify_extractor` with torch and BLAS limited to ``threads`` (a worker's share of the CPU).

    BLAS threads beyond the cores oversubscribe the CPU (logreg was 20x slower on a busy 2-core
    machine).
    """
    import torch
    from threadpoolctl import threadpool_limits

    table, settings, threads = job
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return classify_extractor(table, settings)


@dataclass
class ClassifySummary:
    """The tables of the classification step (long format, an ``extractor`` column in each).

    per_protocol: per-fold rows keyed by protocol (empty frame when no extractor allowed it);
    matrices: {extractor: (mean, sd)} train dose (rows) x test dose (columns); matrix: the same,
    long (train_dose, test_dose, mean, sd, extractor, n_folds); curves: {protocol: {extractor: curve}}
    for loso_n / kfold_n, and curve_table: those curves long with a ``protocol`` column.
    """

    per_protocol: dict[str, pd.DataFrame]
    matrices: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    matrix: pd.DataFrame
    curves: dict[str, dict[str, pd.DataFrame]]
    curve_table: pd.DataFrame

    @property
    def folds_table(self) -> pd.DataFrame:
        """Per-fold rows of the two curve protocols, with a ``protocol`` column."""
        return pd.concat([self.per_protocol[p].assign(protocol=p) for p in ("loso_n", "kfold_n")],
                         ignore_index=True)


def summarize(results: dict[str, dict[str, pd.DataFrame]]) -> ClassifySummary:
    """Gather :func:`classify_extractor`'s results of several extractors into :class:`ClassifySummary`."""
    per_protocol = {}
    for protocol in PROTOCOLS:
        parts = [r[protocol] for r in results.values() if protocol in r]
        per_protocol[protocol] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    matrices, long = {}, []
    cross = per_protocol["cross_dose"]
    if not cross.empty:
        for name, res in cross.groupby("extractor", sort=False):
            mean, sd = accuracy_matrix(res)
            matrices[name] = (mean, sd)
            cells = mean.stack().rename("mean").to_frame().join(sd.stack().rename("sd")).reset_index()
            long.append(cells.assign(extractor=name, n_folds=res["fold"].nunique()))
    curves, curve_rows = {}, []
    for protocol in ("loso_n", "kfold_n"):
        res = per_protocol[protocol]
        if res.empty:
            continue
        curves[protocol] = {name: curve(r) for name, r in res.groupby("extractor", sort=False)}
        curve_rows += [c.assign(extractor=name, protocol=protocol) for name, c in curves[protocol].items()]
    matrix = pd.concat(long, ignore_index=True) if long else pd.DataFrame()
    curve_table = pd.concat(curve_rows, ignore_index=True) if curve_rows else pd.DataFrame()
    return ClassifySummary(per_protocol, matrices, matrix, curves, curve_table)
