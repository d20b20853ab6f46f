"""Harmonization bench: every method scored with the baseline's ICC, classification and embedding protocols.

Scores per extractor x method (the same folds, draws and seeds for every method):

* ICC (:func:`score_icc`): the toolkit's ICC views (:func:`ctdose.stats.icc.icc_views`) of the table
  harmonized on all its rows (descriptive, no held-out score): per view (dose: raters = doses within a
  scanner; scanner: raters = scanners at a dose) the mean, median and share > 0.75 / 0.9 of ICC(3,1)
  over feature x group values, and the dataset paper's Table 7 value (ICC(3,1) across scanners at
  10 mGy, clipped at 0, averaged over features). ICC(3,*) is a consistency ICC: an additive per-rater
  shift does not change it; a per-scanner scale does.
* Classification of the ROI class (:func:`score_classification`): LOSO-N (Algorithm 1), k-fold-n
  (Algorithm 2) and, optionally, the cross-dose matrix, with the splits of :mod:`ctdose.stats.classify`.
  In every split the harmonizer is fitted on the training rows only and applied to the training rows
  and to each test set (see :mod:`ctdose.stats.harmonize` for unseen batches); each result row
  records the ``scheme`` that was applied to its test rows. ``loso_n="ends"`` runs only N = 1 and
  N = S-1 (Table 7's columns; the draws are those of the full curve), ``kfold_n="last"`` only n = k-1.
* Silhouettes (:func:`silhouettes`) by manufacturer and by ROI class of the z-scored features
  (harmonization should lower the first without lowering the second), and UMAP embeddings before /
  after (:func:`umap_pair`).

:func:`table7` gathers one row per extractor x method in the dataset paper's Table 7 layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import pandas as pd

from ctdose.features import FeatureTable
from ctdose.stats.classify import (Split, acquisition_groups, cross_dose_cells, cross_dose_splits,
                                   kfold_n_splits, loso_n_splits, make_pipeline, run_splits)
from ctdose.stats.harmonize import (DESCRIPTIONS, HarmonizeSettings, fit_method, harmonize_table,
                                    load_plugins, unlabelled)
from ctdose.stats.icc import ICCSettings, icc_views

LOSO_CHOICES: tuple[str, ...] = ("ends", "all")
KFOLD_CHOICES: tuple[str, ...] = ("last", "all")
#: Dose of the Table 7 ICC (across scanners) and of the UMAP rows (Fig. 6 layout).
TABLE7_DOSE = 10.0
SILHOUETTE_LABELS: tuple[str, ...] = ("manufacturer", "roi_class")


@dataclass(frozen=True)
class BenchSettings:
    """Everything the bench's numbers depend on (recorded in the sidecar).

    methods: registered harmonization methods (``none`` first: the baseline); harmonize: batch and unseen
    scheme; classifier / epochs / seed / loso_draw / n_folds: as :class:`ctdose.stats.classify.ClassifySettings`;
    loso_n: 'ends' (N = 1 and S-1) or 'all'; kfold_n: 'last' (n = k-1) or 'all'; cross_dose: run the
    cross-dose matrix (S x doses fits per method); icc: the ICC views' settings; silhouette_rows: rows
    sampled for a silhouette (0 = all); umap: draw the before/after UMAPs, of method ``umap_method``.
    """

    methods: tuple[str, ...] = ("none", "zscore", "combat", "combat_cov")
    harmonize: HarmonizeSettings = HarmonizeSettings()
    classifier: str = "mlp"
    epochs: int = 100
    seed: int = 0
    loso_draw: str = "random"
    n_folds: int = 10
    loso_n: str = "ends"
    kfold_n: str = "last"
    cross_dose: bool = False
    icc: ICCSettings = ICCSettings(views=("dose", "scanner"), recon="average", clip=False)
    silhouette_rows: int = 2000
    umap: bool = True
    umap_method: str = "combat"
    umap_neighbors: int = 30
    umap_min_dist: float = 0.5
    umap_epochs: int = 200
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if not self.methods:
            raise ValueError("harmonization bench: no method given")
        if self.loso_n not in LOSO_CHOICES:
            raise ValueError(f"bench setting loso_n={self.loso_n!r}; expected one of {LOSO_CHOICES}")
        if self.kfold_n not in KFOLD_CHOICES:
            raise ValueError(f"bench setting kfold_n={self.kfold_n!r}; expected one of {KFOLD_CHOICES}")
        if self.n_folds < 2:
            raise ValueError(f"bench setting n_folds={self.n_folds}; must be >= 2")

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(methods=list(self.methods), plugins=list(self.plugins), harmonize=self.harmonize.as_dict(), icc=self.icc.as_dict(),
                 descriptions={m: DESCRIPTIONS.get(m, "user method") for m in self.methods},
                 fitting="classification: harmonizer fitted on each split's training rows only; ICC, "
                         "silhouettes, UMAP: fitted on all rows (descriptive)")
        return d


# ----------------------------------------------------------------------------- ICC

def score_icc(table: FeatureTable, method: str, settings: BenchSettings) -> tuple[pd.DataFrame, float]:
    """ICC summary per view of the table harmonized with ``method`` on all rows, and the Table 7 mean
    ICC (NaN when there is no 10 mGy view across scanners).

    Summary columns: extractor, method, view, statistic, n_groups, n_values (feature x group ICCs
    included), n_excluded, mean, median, share_gt_0.75, share_gt_0.9.
    """
    harmonized = harmonize_table(table, method, settings.harmonize)
    per_feature = icc_views(harmonized, settings.icc)
    rows = []
    for view, g in per_feature.groupby("view", sort=False):
        ok = g.loc[g["status"] == "ok", "icc3_1"].to_numpy()
        rows.append({"extractor": table.name, "method": method, "view": view, "statistic": "icc3_1",
                     "n_groups": int(g[["scanner", "dose_mgy", "recon"]].drop_duplicates().shape[0]),
                     "n_values": int(ok.size), "n_excluded": int(len(g) - ok.size),
                     "mean": float(ok.mean()) if ok.size else np.nan,
                     "median": float(np.median(ok)) if ok.size else np.nan,
                     "share_gt_0.75": float((ok > 0.75).mean()) if ok.size else np.nan,
                     "share_gt_0.9": float((ok > 0.9).mean()) if ok.size else np.nan})
    at10 = per_feature[(per_feature["view"] == "scanner") & np.isclose(per_feature["dose_mgy"], TABLE7_DOSE)
                       & (per_feature["status"] == "ok")]
    mean_icc = float(at10["icc3_1"].clip(lower=0).mean()) if len(at10) else np.nan
    return pd.DataFrame(rows), mean_icc


# ----------------------------------------------------------------------------- classification

def bench_splits(table: FeatureTable, settings: BenchSettings) -> dict[str, list[Split]]:
    """The splits of each protocol the table allows, the same for every method: {protocol: splits}."""
    ident = table.ident
    scanner = ident["scanner"].astype(str).to_numpy()
    n_scanners = np.unique(scanner).size
    out: dict[str, list[Split]] = {}
    if n_scanners >= 2:
        loso = list(loso_n_splits(scanner, ident["manufacturer"].to_numpy(), settings.seed, settings.loso_draw))
        if settings.loso_n == "ends":
            loso = [s for s in loso if s.labels["n_train"] in (1, n_scanners - 1)]
        out["loso_n"] = loso
        if settings.cross_dose:
            out["cross_dose"] = list(cross_dose_splits(scanner, ident["dose_mgy"].to_numpy()))
    groups = acquisition_groups(ident)
    n_folds = min(settings.n_folds, np.unique(groups).size)
    if n_folds >= 2:
        kfold = list(kfold_n_splits(groups, n_folds, settings.seed))
        if settings.kfold_n == "last":
            kfold = [s for s in kfold if s.labels["n_train"] == n_folds - 1]
        out["kfold_n"] = kfold
    return out


def harmonized_split(table: FeatureTable, split: Split, method: str, settings: HarmonizeSettings
                     ) -> tuple[np.ndarray, dict[str, str]]:
    """(rows, features) array whose training and test rows of ``split`` are harmonized (others NaN) and the
    scheme applied to each test set. The harmonizer is fitted on ``split.train`` rows alone; each test set is
    mapped on its own, from its features and unlabelled identity columns."""
    mask = np.zeros(len(table.X), bool)
    mask[split.train] = True
    train = table.subset(mask)
    transform = fit_method(method, train, settings)
    Xh = np.full(table.X.shape, np.nan)
    Xh[split.train] = transform(table.X[split.train], unlabelled(train.ident))
    schemes = {}
    for key, test in split.tests.items():
        Xh[test] = transform(table.X[test], unlabelled(table.ident.iloc[test]))
        schemes[key] = getattr(transform, "last_scheme", "") or "user method"
    return Xh, schemes


def score_classification(table: FeatureTable, method: str, settings: BenchSettings,
                         progress: Callable | None = None) -> pd.DataFrame:
    """ROI-class accuracy per split and test set of every protocol (:func:`bench_splits`), harmonized per
    split. Columns: run_splits' (fold, n_train / train_dose, test, accuracy, chance, n_train_rows,
    n_test_rows ...), protocol, method, scheme, extractor."""
    y = table.ident["roi_class"].astype(str).to_numpy()
    make = partial(make_pipeline, settings.classifier, settings.seed, settings.epochs)
    parts = []
    for protocol, splits in bench_splits(table, settings).items():
        for split in (progress(splits, desc=f"{table.name} {method} {protocol}") if progress else splits):
            Xh, schemes = harmonized_split(table, split, method, settings.harmonize)
            res = run_splits(Xh, y, [split], make)
            parts.append(res.assign(protocol=protocol, method=method, scheme=res["test"].map(schemes)))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True).assign(extractor=table.name)


def cross_dose_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Cross-dose cells (train_dose, test_dose, mean, sd, n, chance, over) per extractor x method."""
    cross = folds[folds["protocol"] == "cross_dose"] if len(folds) else folds
    if cross.empty:
        return pd.DataFrame()
    parts = [cross_dose_cells(g).assign(extractor=e, method=m)
             for (e, m), g in cross.groupby(["extractor", "method"], sort=False)]
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------- embeddings

def silhouettes(table: FeatureTable, method: str, settings: BenchSettings) -> pd.DataFrame:
    """Silhouette (euclidean, z-scored non-constant features of the table harmonized on all rows) by
    manufacturer and by ROI class: rows extractor, method, label, silhouette, n_rows, n_levels."""
    from sklearn.metrics import silhouette_score

    from ctdose.stats.embedding import standardised_features

    harmonized = harmonize_table(table, method, settings.harmonize)
    Z = standardised_features(harmonized)
    rows = []
    for label in SILHOUETTE_LABELS:
        values = table.ident[label].astype(str).to_numpy()
        n_levels = np.unique(values).size
        sample = settings.silhouette_rows if 0 < settings.silhouette_rows < len(Z) else None
        value = (float(silhouette_score(Z, values, sample_size=sample, random_state=settings.seed))
                 if 2 <= n_levels < len(Z) else np.nan)
        rows.append({"extractor": table.name, "method": method, "label": label, "silhouette": value,
                     "n_rows": int(sample or len(Z)), "n_levels": int(n_levels)})
    return pd.DataFrame(rows)


def umap_pair(table: FeatureTable, settings: BenchSettings) -> dict[str, tuple[np.ndarray, pd.DataFrame]] | None:
    """UMAP of the Table 7 dose's rows (Fig. 6 layout: every ROI) before ('none') and after
    ``settings.umap_method`` (harmonized on all rows): {method: (embedding (rows, 2), identity rows)};
    None when the table has too few such rows."""
    from ctdose.stats.embedding import UMAPSettings, embed

    at_dose = np.isclose(table.ident["dose_mgy"].to_numpy(float), TABLE7_DOSE)
    sub = table.subset(at_dose) if at_dose.sum() >= 10 else table
    if len(sub.X) < 10 or sub.ident["scanner"].nunique() < 2:
        return None
    umap_settings = UMAPSettings(n_neighbors=settings.umap_neighbors, min_dist=settings.umap_min_dist,
                                 epochs=settings.umap_epochs, seed=settings.seed)
    out = {}
    for method in ("none", settings.umap_method):
        harmonized = harmonize_table(sub, method, settings.harmonize)
        out[method] = (embed(harmonized, umap_settings), sub.ident)
    return out


# ----------------------------------------------------------------------------- one job, Table 7

@dataclass
class BenchResult:
    """One extractor x method: ICC summary, Table 7 mean ICC, per-split classification, silhouettes."""

    extractor: str
    method: str
    icc: pd.DataFrame
    mean_icc: float
    folds: pd.DataFrame
    silhouette: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)


def bench_one(table: FeatureTable, method: str, settings: BenchSettings, threads: int = 1) -> BenchResult:
    """Every score of one extractor x method (torch and BLAS limited to ``threads``)."""
    import time

    import torch
    from threadpoolctl import threadpool_limits

    load_plugins(settings.plugins)  # a worker process starts with the built-in methods only
    torch.set_num_threads(threads)
    seconds = {}
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()
        icc, mean_icc = score_icc(table, method, settings)
        t1 = time.perf_counter()
        folds = score_classification(table, method, settings)
        t2 = time.perf_counter()
        sil = silhouettes(table, method, settings)
        seconds = {"icc": t1 - t0, "classification": t2 - t1, "silhouette": time.perf_counter() - t2}
    return BenchResult(table.name, method, icc, mean_icc, folds, sil, seconds)


def bench_job(job: tuple[FeatureTable, str, BenchSettings, int]) -> BenchResult:
    """:func:`bench_one` of a (table, method, settings, threads) tuple (for parallel_map)."""
    return bench_one(*job)


def _stat(folds: pd.DataFrame, protocol: str, n_train: int | None) -> tuple[float, float, int]:
    sel = folds[folds["protocol"] == protocol] if len(folds) else folds
    if n_train is not None and len(sel):
        sel = sel[sel["n_train"] == n_train]
    if sel.empty:
        return np.nan, np.nan, 0
    acc = sel["accuracy"].to_numpy(float)
    return float(acc.mean()), float(acc.std(ddof=1)) if acc.size > 1 else np.nan, int(acc.size)


def table7(results: list[BenchResult], settings: BenchSettings) -> pd.DataFrame:
    """One row per extractor x method in the dataset paper's Table 7 layout (numbers, not text).

    Columns: extractor, method, batch, mean_icc, loso_1_mean, loso_1_sd, loso_last_mean, loso_last_sd,
    loso_last_n_train, n_test_scanners, kfold_mean, kfold_sd, kfold_n_train, n_test_folds, chance,
    unseen_scheme (what the LOSO test scanners got), description. Means and sds over test scanners
    (LOSO) or test folds (k-fold), sd with ddof 1.
    """
    rows = []
    for r in results:
        f = r.folds
        loso = f[f["protocol"] == "loso_n"] if len(f) else f
        kfold = f[f["protocol"] == "kfold_n"] if len(f) else f
        last = int(loso["n_train"].max()) if len(loso) else 0
        k_last = int(kfold["n_train"].max()) if len(kfold) else 0
        m1, s1, n1 = _stat(f, "loso_n", 1)
        ml, sl, nl = _stat(f, "loso_n", last) if last else (np.nan, np.nan, 0)
        mk, sk, nk = _stat(f, "kfold_n", k_last) if k_last else (np.nan, np.nan, 0)
        scheme = "; ".join(sorted(loso["scheme"].unique())) if len(loso) else ""
        rows.append({"extractor": r.extractor, "method": r.method, "batch": settings.harmonize.batch,
                     "mean_icc": r.mean_icc, "loso_1_mean": m1, "loso_1_sd": s1, "loso_last_mean": ml,
                     "loso_last_sd": sl, "loso_last_n_train": last, "n_test_scanners": max(n1, nl),
                     "kfold_mean": mk, "kfold_sd": sk, "kfold_n_train": k_last, "n_test_folds": nk,
                     "chance": float(f["chance"].mean()) if len(f) else np.nan, "unseen_scheme": scheme,
                     "description": DESCRIPTIONS.get(r.method, "user method")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures

def umap_figure(pair: dict[str, tuple[np.ndarray, pd.DataFrame]], title: str, stem, caption: str = "") -> list:
    """2 x 2 scatter panels: rows = before / after (``pair`` keys), columns = by manufacturer / ROI class."""
    from ctdose.plots import caption_below, plt, save_figure

    fig, axes = plt.subplots(len(pair), 2, figsize=(12, 4.6 * len(pair)), squeeze=False)
    fig.subplots_adjust(wspace=0.45, hspace=0.3)
    for row, (method, (emb, ident)) in zip(axes, pair.items()):
        for ax, column in zip(row, SILHOUETTE_LABELS):
            values = ident[column].astype(str).to_numpy()
            levels = sorted(set(values))
            cmap = plt.get_cmap("tab10")
            for n, level in enumerate(levels):
                sel = values == level
                ax.scatter(emb[sel, 0], emb[sel, 1], s=8, color=cmap(n % 10), alpha=0.8, label=level)
            ax.legend(title=column, fontsize=7, markerscale=2, bbox_to_anchor=(1.01, 1), loc="upper left")
            ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title=f"{title}, {method}: by {column}")
    caption_below(fig, caption, y=0.0)
    return save_figure(fig, stem)


def silhouette_figure(sil: pd.DataFrame, stem) -> list:
    """Bars of the silhouette per extractor (groups) x method (bars), one panel per label."""
    from ctdose.plots import plt, save_figure

    labels = list(SILHOUETTE_LABELS)
    fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 4), squeeze=False)
    extractors = list(dict.fromkeys(sil["extractor"]))
    methods = list(dict.fromkeys(sil["method"]))
    width = 0.8 / max(len(methods), 1)
    cmap = plt.get_cmap("tab10")
    for ax, label in zip(axes[0], labels):
        sub = sil[sil["label"] == label]
        for m, method in enumerate(methods):
            vals = [sub.loc[(sub["extractor"] == e) & (sub["method"] == method), "silhouette"].mean()
                    for e in extractors]
            ax.bar(np.arange(len(extractors)) - 0.4 + width * (m + 0.5), vals, width * 0.9, color=cmap(m % 10),
                   label=method)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(np.arange(len(extractors)))
        ax.set_xticklabels(extractors)
        want = "lower is better" if label == "manufacturer" else "higher is better"
        ax.set(ylabel="silhouette", title=f"by {label} ({want})")
        ax.legend(fontsize=7)
    return save_figure(fig, stem)
