"""Read and validate feature tables (``results/features/<extractor>.csv``) and their JSON sidecars.

A feature table has the identity columns of :data:`ctdose.layout.IDENTITY_COLUMNS` first, one row per
(series_uid, roi, patch), then numeric feature columns prefixed by the extractor's name. The analysis
steps only ever see tables that passed :func:`read_feature_table`, so a malformed table fails early with
one line naming the file and the problem. :func:`load_tables` first checks each table against its
extractor's sidecar (:func:`ctdose.provenance.verify`: checksum and row count), so a truncated or
edited table is refused with one line naming it and the command that remakes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ctdose.csv_io import read_csv
from ctdose.layout import IDENTITY_COLUMNS, TEXT_DTYPES, ResultsLayout, feature_columns
from ctdose.provenance import read_sidecar, verify

#: Extractor names, in the order the report shows them.
EXTRACTORS: tuple[str, ...] = ("radiomics", "cnn", "swin", "ctfm")


@dataclass
class FeatureTable:
    """One extractor's features: ``ident`` (rows x identity columns), ``X`` (rows, features) float64."""

    name: str
    ident: pd.DataFrame
    X: np.ndarray
    feature_names: list[str]
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        """True when the sidecar says the extractor ran with untrained (random) weights."""
        return bool(self.sidecar.get("untrained", False))

    def subset(self, mask: np.ndarray) -> "FeatureTable":
        """Rows where ``mask`` (bool, rows) is true."""
        mask = np.asarray(mask, dtype=bool)
        return FeatureTable(self.name, self.ident.loc[mask].reset_index(drop=True), self.X[mask],
                            self.feature_names, self.sidecar)


def read_feature_table(path: str | os.PathLike, name: str | None = None,
                       sidecar: dict[str, Any] | None = None) -> FeatureTable:
    """Read and validate one feature table (its contents; :func:`load_tables` also checks its sidecar).

    Checks: the identity columns are present, at least one feature column, all feature columns
    numeric and finite, and no duplicated (series_uid, roi, patch). Raises ``ValueError`` naming
    the file and the first problem found (an unparsable CSV included); ``FileNotFoundError`` when
    the file is missing. ``sidecar``: the table's sidecar when already read (else read here, {} if none).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature table {path} not found")
    name = name or path.stem
    df = read_csv(path, dtype=TEXT_DTYPES)
    missing = [c for c in IDENTITY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing identity column(s) {', '.join(missing)}")
    feature_names = feature_columns(list(df.columns))
    if not feature_names:
        raise ValueError(f"{path}: no feature columns after the identity columns")
    non_numeric = [c for c in feature_names if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise ValueError(f"{path}: non-numeric feature column(s) {', '.join(non_numeric[:5])}")
    X = df[feature_names].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{path}: {int(bad.sum())} non-finite value(s), first in column "
                         f"{feature_names[col]} row {row + 2}")
    dup = df.duplicated(["series_uid", "roi", "patch"])
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise ValueError(f"{path}: duplicated row for series {first['series_uid']} roi {first['roi']} "
                         f"patch {first['patch']}")
    ident = df[list(IDENTITY_COLUMNS)].copy()
    ident["dose_mgy"] = ident["dose_mgy"].astype(float)
    if sidecar is None:
        sidecar = read_sidecar(path) or {}
    return FeatureTable(name, ident, X, feature_names, sidecar)


def available_tables(results: str | os.PathLike,
                     extractors: Iterable[str] = EXTRACTORS) -> dict[str, Path]:
    """Existing feature tables under ``results/features`` in report order (missing ones left out)."""
    layout = ResultsLayout(results)
    return {e: layout.feature_table(e) for e in extractors if layout.feature_table(e).exists()}


def load_tables(results: str | os.PathLike, extractors: Iterable[str] = EXTRACTORS) -> dict[str, FeatureTable]:
    """Every existing feature table, each checked against its sidecar, then read and validated.

    ``FileNotFoundError`` if there is none; :class:`ctdose.provenance.StaleInputError` (one line:
    the table, e.g. "has 58 rows but its sidecar says 60", and the command that remakes it) for a
    table that is not what its extractor wrote.
    """
    layout = ResultsLayout(results)
    extractors = list(extractors)
    paths = available_tables(results, extractors)
    if not paths:
        raise FileNotFoundError(f"no feature tables under {layout.features_dir} "
                                f"(expected one of {', '.join(f'{e}.csv' for e in extractors)})")
    return {name: read_feature_table(path, name, verify(path, layout.command(name)))
            for name, path in paths.items()}


def synthetic_feature_table(name: str = "synthetic", scanners: Iterable[str] = ("A1", "B1", "C1", "D1"),
                            doses: Iterable[float] = (1, 3, 6, 10, 14), recons: Iterable[str] = ("FBP",),
                            repetitions: int = 1, patches_per_roi: int = 3, n_features: int = 20,
                            class_signal: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """A feature table with known structure, for tests and benchmarks (not for analysis of real data).

    Each feature = ROI-class signal x ``class_signal`` + a per-patch term (stable across series)
    + a per-scanner offset + noise whose sd falls with dose (sd = 1 / sqrt(dose / 14 mGy)).
    Returns the identity columns and ``<name>_0000``... feature columns.
    """
    from ctdose.naming import ROI_CLASSES, ROI_NAMES

    rng = np.random.default_rng(seed)
    scanners, doses, recons = list(scanners), [float(d) for d in doses], list(recons)
    classes = sorted(set(ROI_CLASSES.values()))
    class_center = rng.normal(size=(len(classes), n_features)) * class_signal
    patch_term = rng.normal(size=(len(ROI_NAMES), patches_per_roi, n_features)) * 0.5
    scanner_offset = rng.normal(size=(len(scanners), n_features)) * 0.3
    rows, X = [], []
    for s, scanner in enumerate(scanners):
        for dose in doses:
            for recon in recons:
                for rep in range(repetitions):
                    uid = f"1.2.826.0.1.{s}.{int(dose)}.{recons.index(recon)}.{rep}"
                    for r, roi in enumerate(ROI_NAMES):
                        for p in range(patches_per_roi):
                            cls = ROI_CLASSES[roi]
                            rows.append((uid, scanner, f"maker{s % 2}", f"model{s}", dose, recon, rep,
                                         roi, cls, p))
                            X.append(class_center[classes.index(cls)] + patch_term[r, p] + scanner_offset[s]
                                     + rng.normal(size=n_features) / np.sqrt(dose / 14.0))
    df = pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS))
    feats = pd.DataFrame(np.array(X), columns=[f"{name}_{i:04d}" for i in range(n_features)])
    return pd.concat([df, feats], axis=1)
