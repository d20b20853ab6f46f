"""Cross-validation protocols for ROI-class and dose-level classification from feature tables.

Every protocol is a generator of :class:`Split` (row indices into one feature table), so tests can
check the indices directly, and one runner (:func:`run_splits`) fits a fresh classifier pipeline per
split. The pipeline (:func:`make_pipeline`) holds the feature filter (drop features constant in the
training rows) and the ``StandardScaler`` before the classifier, so both are fitted on training rows
only. Every scored test set also records its chance level (:func:`chance_level`: the share of its
majority class, e.g. 1/3 for the six phantom ROIs in four classes).

Protocols
---------
* :func:`cross_dose_splits`: train at dose A, test at dose B, leave one scanner out. For every
  held-out scanner and every training dose A, one model is trained on all other scanners at dose A
  and tested on the held-out scanner at every dose B: no cell, the A == B diagonal included,
  tests on a scanner seen in training.
* :func:`loso_n_splits` (dataset paper, Algorithm 1): every scanner is the test scanner in turn; for
  N = 1 .. S-1 one model is trained on N scanners drawn (seeded) from the other S-1, all doses:
  S x (S-1) splits, averaged over the S test scanners. ``draw="other-manufacturer-first"`` is the
  study code's variant: the N training scanners are drawn from the other manufacturers first, then
  from the test scanner's own manufacturer.
* :func:`kfold_n_splits` (Algorithm 2): rows dealt into 10 folds grouped by acquisition
  (:func:`acquisition_groups`: scanner, dose, repetition), so the FBP / IR / DL series of one scan
  and all its patches stay in one fold; every fold is the test fold in turn, trained on n = 1..9 of
  the other folds (the first n of a seeded permutation). Scanners are shared between training and
  test here: it is the optimistic random-split estimate the paper contrasts with Algorithm 1.
* :func:`dose_splits`: dose-level classification, leave one scanner out (groups = scanner): a test
  series' scanner is never in training. ROIs cannot be held out as well (every scanner images the
  same six ROIs and every class must be in training), so ROI identity is shared by design.

:func:`classify_extractor` runs every protocol the table allows for one extractor under
:class:`ClassifySettings`; :func:`summarize` turns the per-split results of all extractors into the
tables the analysis step writes (per split, accuracy matrices, curves), each mean with its sd, what
it is taken over (``over``), how many (``n``) and the chance level (``chance``).
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
#: How LOSO-N draws its N training scanners: the dataset paper's Algorithm 1 (uniformly from the
#: other scanners) or the study code's (other manufacturers first, then the test scanner's own).
LOSO_DRAWS: tuple[str, ...] = ("random", "other-manufacturer-first")
#: Protocols in the order they are run and reported.
PROTOCOLS: tuple[str, ...] = ("cross_dose", "loso_n", "kfold_n", "dose_level")
#: What each protocol's mean and sd are taken over (one accuracy per such unit).
OVER: dict[str, str] = {"cross_dose": "held-out scanners", "loso_n": "test scanners (held out)",
                        "kfold_n": "test folds", "dose_level": "held-out scanners"}
#: Columns that identify one acquisition: its reconstructions and patches never straddle train and test.
ACQUISITION_COLUMNS: tuple[str, ...] = ("scanner", "dose_mgy", "repetition")


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


def chance_level(labels: np.ndarray) -> float:
    """Accuracy of always predicting the majority class of ``labels`` (its share among them)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


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


def loso_n_splits(scanner: np.ndarray, manufacturer: np.ndarray | None = None, seed: int = 0,
                  draw: str = "random") -> Iterator[Split]:
    """Algorithm 1: each scanner as the test scanner x N = 1..S-1 training scanners drawn from the others.

    ``scanner``, ``manufacturer``: (rows,) labels; ``draw``: one of :data:`LOSO_DRAWS`
    ('other-manufacturer-first' needs ``manufacturer``). Draws are seeded by ``seed`` only: the same
    seed gives the same S x (S-1) splits.
    """
    if draw not in LOSO_DRAWS:
        raise ValueError(f"unknown LOSO-N draw {draw!r}; expected one of {', '.join(LOSO_DRAWS)}")
    scanner = np.asarray(scanner)
    names = np.unique(scanner)
    maker: dict[str, str] = {}
    if draw == "other-manufacturer-first":
        if manufacturer is None:
            raise ValueError("LOSO-N draw 'other-manufacturer-first' needs the manufacturer of each row")
        pairs = pd.DataFrame({"s": scanner, "m": np.asarray(manufacturer)}).drop_duplicates()
        several = pairs["s"][pairs["s"].duplicated()]
        if len(several):
            raise ValueError(f"scanner {several.iloc[0]} has rows with more than one manufacturer")
        maker = dict(zip(pairs["s"], pairs["m"]))
    rng = np.random.default_rng(seed)
    for held_out in names:
        others = names[names != held_out]
        for n_train in range(1, len(names)):
            if draw == "random":
                training = rng.choice(others, n_train, replace=False)
            else:
                other_maker = np.array([maker[s] != maker[held_out] for s in others])
                order = np.concatenate([rng.permutation(others[other_maker]), rng.permutation(others[~other_maker])])
                training = order[:n_train]
            yield Split(np.flatnonzero(np.isin(scanner, training)),
                        {"test": np.flatnonzero(scanner == held_out)},
                        {"n_train": n_train, "fold": held_out, "train_scanners": " ".join(sorted(training))})


def acquisition_groups(ident: pd.DataFrame) -> np.ndarray:
    """One label per row naming its acquisition (scanner, dose, repetition): (rows,) str.

    The reconstructions of one scan share its raw data, and its patches share its noise: grouping by
    acquisition keeps them on one side of a split.
    """
    missing = [c for c in ACQUISITION_COLUMNS if c not in ident.columns]
    if missing:
        raise ValueError(f"feature table lacks the acquisition column(s) {', '.join(missing)}")
    return (ident["scanner"].astype(str) + "|" + ident["dose_mgy"].map("{:g}".format) + "|"
            + ident["repetition"].astype(str)).to_numpy()


def group_folds(groups: np.ndarray, n_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold number (rows,) with all rows of a group in one fold; groups dealt to folds at random (seeded)."""
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(uniq) < n_folds:
        raise ValueError(f"{len(uniq)} acquisitions cannot fill {n_folds} folds")
    fold_of_group = np.random.default_rng(seed).permutation(len(uniq)) % n_folds
    return fold_of_group[inverse]


def kfold_n_splits(groups: np.ndarray, n_folds: int = 10, seed: int = 0) -> Iterator[Split]:
    """Algorithm 2: every fold as the test fold x n = 1..n_folds-1 training folds (grouped by ``groups``)."""
    folds = group_folds(groups, n_folds, seed)
    rng = np.random.default_rng(seed + 1)
    for f in range(n_folds):
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
    chance (:func:`chance_level` of the test labels), n_train_rows, n_test_rows. A split whose
    training rows hold a single class is an error (no classifier).
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
            rows.append({**split.labels, "test": key, "accuracy": acc, "chance": chance_level(y[test]),
                         "n_train_rows": int(split.train.size), "n_test_rows": int(test.size)})
    return pd.DataFrame(rows)


def _sd(values: pd.Series) -> float:
    """Sample sd (ddof 1); NaN for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else np.nan


def summarize_by(results: pd.DataFrame, keys: list[str], over: str) -> pd.DataFrame:
    """Mean, sd (ddof 1), n of accuracy and mean chance per ``keys``, with the unit they are over.

    Each row of ``results`` is one accuracy (one split's test set); ``over`` names what those rows
    are (e.g. 'held-out scanners') and lands in the ``over`` column.
    """
    out = (results.groupby(keys, sort=True)
           .agg(mean=("accuracy", "mean"), sd=("accuracy", _sd), n=("accuracy", "size"),
                chance=("chance", "mean")).reset_index())
    return out.assign(over=over)


def cross_dose_cells(results: pd.DataFrame) -> pd.DataFrame:
    """Cross-dose results per (train_dose, test_dose) cell: :func:`summarize_by` over held-out scanners."""
    return summarize_by(results.assign(test_dose=results["test"].astype(float)), ["train_dose", "test_dose"],
                        OVER["cross_dose"])


def matrix_of(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, sd) of :func:`cross_dose_cells` as matrices: rows = training dose, columns = test dose (mGy)."""
    return (cells.pivot(index="train_dose", columns="test_dose", values="mean"),
            cells.pivot(index="train_dose", columns="test_dose", values="sd"))


def accuracy_matrix(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sd over held-out scanners of cross-dose accuracy: rows = training dose, columns = test dose (mGy)."""
    return matrix_of(cross_dose_cells(results))


def curve(results: pd.DataFrame, over: str = OVER["loso_n"]) -> pd.DataFrame:
    """Mean, sd, n, chance and ``over`` of accuracy per number of training scanners / folds (``n_train``)."""
    return summarize_by(results, ["n_train"], over)


@dataclass(frozen=True)
class ClassifySettings:
    """What the classification results depend on (recorded in the output sidecar).

    classifier: 'mlp' (100-60-30 GELU, dropout 0.2, fixed ``epochs``) or 'logreg'; seed: the
    classifier's and every random draw's; loso_draw: how LOSO-N draws its training scanners (one of
    :data:`LOSO_DRAWS`); n_folds: folds of Algorithm 2, grouped by acquisition (capped at the number
    of acquisitions); recons: reconstructions used (empty: all).
    """

    classifier: str = "mlp"
    epochs: int = 100
    seed: int = 0
    loso_draw: str = "random"
    n_folds: int = 10
    recons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {self.classifier!r}; "
                             f"expected one of {', '.join(CLASSIFIERS)}")
        if self.loso_draw not in LOSO_DRAWS:
            raise ValueError(f"unknown LOSO-N draw {self.loso_draw!r}; expected one of {', '.join(LOSO_DRAWS)}")
        if self.epochs < 1:
            raise ValueError(f"classification setting epochs={self.epochs}; must be >= 1")
        if self.n_folds < 2:
            raise ValueError(f"classification setting n_folds={self.n_folds}; must be >= 2")
        object.__setattr__(self, "recons", tuple(self.recons))

    def as_dict(self) -> dict:
        return {**asdict(self), "recons": list(self.recons),
                "mlp": "hidden 100-60-30, GELU, dropout 0.2, Adam lr 1e-3, weight decay 1e-4, full batch",
                "loso_n": "dataset paper Algorithm 1: every scanner as test scanner, N = 1..S-1 training "
                          "scanners drawn from the others (seeded)",
                "kfold_n": "dataset paper Algorithm 2: every fold as test fold, n = 1..k-1 training folds",
                "kfold_groups": "acquisition (" + ", ".join(ACQUISITION_COLUMNS) + ")",
                "dose_level_groups": "scanner (leave one scanner out)",
                "chance": "majority-class share of the test labels"}


def _prepared(table: FeatureTable, settings: ClassifySettings) -> FeatureTable:
    """``table`` restricted to ``settings.recons`` (ValueError when no row is left)."""
    if settings.recons:
        table = table.subset(table.ident["recon"].isin(settings.recons).to_numpy())
        if not len(table.X):
            raise ValueError(f"{table.name}: no rows with reconstruction(s) {', '.join(settings.recons)}")
    return table


def protocol_splits(table: FeatureTable, settings: ClassifySettings) -> dict[str, tuple[np.ndarray, list[Split]]]:
    """Every protocol the table allows, in :data:`PROTOCOLS` order: {protocol: (labels (rows,), splits)}.

    Cross-dose, LOSO-N and dose level need two scanners (dose level also two doses); k-fold-n needs
    two acquisitions. Absent protocols are absent keys. ``table`` is already restricted to the recons.
    """
    ident = table.ident
    y_roi, y_dose = ident["roi_class"].to_numpy(), ident["dose_mgy"].to_numpy()
    scanner = ident["scanner"].to_numpy()
    out: dict[str, tuple[np.ndarray, list[Split]]] = {}
    if np.unique(scanner).size >= 2:
        out["cross_dose"] = (y_roi, list(cross_dose_splits(scanner, y_dose)))
        out["loso_n"] = (y_roi, list(loso_n_splits(scanner, ident["manufacturer"].to_numpy(), settings.seed,
                                                   settings.loso_draw)))
    groups = acquisition_groups(ident)
    n_folds = min(settings.n_folds, np.unique(groups).size)
    if n_folds >= 2:
        out["kfold_n"] = (y_roi, list(kfold_n_splits(groups, n_folds, settings.seed)))
    if np.unique(scanner).size >= 2 and np.unique(y_dose).size >= 2:
        out["dose_level"] = (y_dose.astype(str), list(dose_splits(scanner)))
    return {p: out[p] for p in PROTOCOLS if p in out}


def varying_columns(X: np.ndarray) -> np.ndarray:
    """(features,) True where a column of ``X`` (rows, features) is not constant over all rows (ptp > 0).

    A column constant over all rows is constant in every training subset, where the pipeline's
    ``VarianceThreshold(0.0)`` drops it (sklearn tests ptp == 0 at threshold 0): dropping it once up
    front leaves every fit's input, and so its result, unchanged (the CNN's table: 2048 -> ~210 columns).
    """
    return np.ptp(np.asarray(X), axis=0) > 0


@dataclass
class SplitJob:
    """One chunk of consecutive splits of one protocol of one extractor (picklable, for parallel_map).

    X: (rows, features) with the columns constant over all rows dropped (:func:`varying_columns`);
    y: (rows,) labels; first: the chunk's position in the protocol's split list; cost: estimated work
    (training rows x (features + 100), summed over the chunk's splits), to start the largest first.
    """

    extractor: str
    protocol: str
    X: np.ndarray
    y: np.ndarray
    splits: list[Split]
    settings: ClassifySettings
    threads: int = 1
    first: int = 0
    cost: float = 0.0


def split_jobs(table: FeatureTable, settings: ClassifySettings, threads: int = 1,
               fits_per_job: int = 16) -> list[SplitJob]:
    """The work of :func:`classify_extractor` as jobs of at most ``fits_per_job`` fits each, so that
    parallel workers share one large table's fits instead of one worker taking a whole extractor.
    Every fit is seeded on its own (``make_pipeline``), so how the splits are chunked and which worker
    runs them leaves each result unchanged."""
    table = _prepared(table, settings)
    X = table.X[:, varying_columns(table.X)]
    jobs = []
    for protocol, (y, splits) in protocol_splits(table, settings).items():
        for first in range(0, len(splits), fits_per_job):
            chunk = splits[first:first + fits_per_job]
            cost = float(sum(s.train.size for s in chunk)) * (X.shape[1] + 100)
            jobs.append(SplitJob(table.name, protocol, X, y, chunk, settings, threads, first, cost))
    return jobs


def run_split_job(job: SplitJob) -> pd.DataFrame:
    """:func:`run_splits` of one :class:`SplitJob` with torch and BLAS limited to ``job.threads`` (a
    worker's share of the CPU: BLAS threads beyond the cores oversubscribe it; logreg was 20x slower
    on a busy 2-core machine)."""
    import torch
    from threadpoolctl import threadpool_limits

    s = job.settings
    torch.set_num_threads(job.threads)
    with threadpool_limits(limits=job.threads):
        return run_splits(job.X, job.y, job.splits, partial(make_pipeline, s.classifier, s.seed, s.epochs))


def gather_jobs(jobs: list[SplitJob], outs: list[pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """Results of :func:`run_split_job` (in ``jobs`` order) back as {extractor: {protocol: rows + extractor}},
    each protocol's rows in split order (as :func:`classify_extractor` returns them)."""
    parts: dict[str, dict[str, list[tuple[int, pd.DataFrame]]]] = {}
    for job, out in zip(jobs, outs):
        parts.setdefault(job.extractor, {}).setdefault(job.protocol, []).append((job.first, out))
    return {name: {p: pd.concat([o for _, o in sorted(chunks, key=lambda c: c[0])], ignore_index=True)
                   .assign(extractor=name)
                   for p, chunks in sorted(per.items(), key=lambda kv: PROTOCOLS.index(kv[0]))}
            for name, per in parts.items()}


def classify_extractor(table: FeatureTable, settings: ClassifySettings) -> dict[str, pd.DataFrame]:
    """Every protocol the table allows, per split: {protocol: rows of :func:`run_splits` + ``extractor``}.

    Cross-dose, LOSO-N and dose level need two scanners (dose level also two doses); k-fold-n needs
    two acquisitions. Absent protocols are absent keys. In-process; analyze/classify.py runs the same
    fits as :func:`split_jobs` on parallel workers.
    """
    jobs = split_jobs(table, settings)
    return gather_jobs(jobs, [run_splits(j.X, j.y, j.splits, partial(make_pipeline, settings.classifier,
                                                                      settings.seed, settings.epochs))
                              for j in jobs]).get(table.name, {})


@dataclass
class ClassifySummary:
    """The tables of the classification step (long format, an ``extractor`` column in each).

    per_protocol: per-split rows keyed by protocol (empty frame when no extractor allowed it);
    matrices: {extractor: (mean, sd)} train dose (rows) x test dose (columns); matrix: the same,
    long (train_dose, test_dose, mean, sd, n, chance, over, extractor); curves: {protocol:
    {extractor: curve}} for loso_n / kfold_n, and curve_table: those curves long with a ``protocol``
    column. Every mean comes with its sd (ddof 1), ``n`` and ``over`` (what the n accuracies are) and
    ``chance`` (majority-class share of the test labels, averaged over the same n).
    """

    per_protocol: dict[str, pd.DataFrame]
    matrices: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    matrix: pd.DataFrame
    curves: dict[str, dict[str, pd.DataFrame]]
    curve_table: pd.DataFrame

    @property
    def folds_table(self) -> pd.DataFrame:
        """Per-split rows of the two curve protocols, with a ``protocol`` column."""
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
            cells = cross_dose_cells(res)
            matrices[name] = matrix_of(cells)
            long.append(cells.assign(extractor=name))
    curves, curve_rows = {}, []
    for protocol in ("loso_n", "kfold_n"):
        res = per_protocol[protocol]
        if res.empty:
            continue
        curves[protocol] = {name: curve(r, OVER[protocol]) for name, r in res.groupby("extractor", sort=False)}
        curve_rows += [c.assign(extractor=name, protocol=protocol) for name, c in curves[protocol].items()]
    matrix = pd.concat(long, ignore_index=True) if long else pd.DataFrame()
    curve_table = pd.concat(curve_rows, ignore_index=True) if curve_rows else pd.DataFrame()
    return ClassifySummary(per_protocol, matrices, matrix, curves, curve_table)
