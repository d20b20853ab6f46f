"""2-D UMAP embedding of a feature table (for the per-extractor scatter plots).

Features constant over all rows are dropped (tested as max == min, exact whatever the value, where
a standard deviation can come out as 1e-17 for a constant column), the rest z-scored over all rows,
then embedded with umap-learn, seeded and single-threaded so that a layout repeats exactly.
The dataset paper used n_neighbors 100, min_dist 1.0, 1000 epochs; the study's code 20 / 0.5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ctdose.features import FeatureTable


@dataclass(frozen=True)
class UMAPSettings:
    """UMAP parameters (recorded in the output sidecar); ``n_neighbors`` is capped at rows - 1."""

    n_neighbors: int = 100
    min_dist: float = 1.0
    epochs: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise ValueError(f"UMAP n_neighbors={self.n_neighbors}; must be >= 2")
        if self.epochs < 1:
            raise ValueError(f"UMAP epochs={self.epochs}; must be >= 1")
        if self.min_dist < 0:
            raise ValueError(f"UMAP min_dist={self.min_dist}; must be >= 0")

    def as_dict(self) -> dict:
        return {**asdict(self), "features": "non-constant, z-scored over all rows"}


def standardised_features(table: FeatureTable) -> np.ndarray:
    """(rows, kept features) z-scores of the features that are not constant over all rows."""
    X = table.X
    keep = np.ptp(X, axis=0) > 0
    if not keep.any():
        raise ValueError(f"{table.name}: every feature is constant; nothing to embed")
    kept = X[:, keep]
    return (kept - kept.mean(axis=0)) / kept.std(axis=0)


def embed(table: FeatureTable, settings: UMAPSettings) -> np.ndarray:
    """2-D UMAP embedding (rows, 2) of the z-scored non-constant features of ``table``."""
    import umap  # compiles with numba on first use (tens of seconds)

    if len(table.X) < 4:
        raise ValueError(f"{table.name}: {len(table.X)} rows are too few for UMAP")
    Z = standardised_features(table)
    reducer = umap.UMAP(n_neighbors=min(settings.n_neighbors, len(Z) - 1), min_dist=settings.min_dist,
                        n_epochs=settings.epochs, random_state=settings.seed, n_components=2, n_jobs=1)
    return reducer.fit_transform(Z)


def embedding_frame(table: FeatureTable, embedding: np.ndarray) -> pd.DataFrame:
    """Identity columns of ``table`` then ``umap_1``, ``umap_2`` (one row per feature-table row)."""
    return pd.concat([table.ident.reset_index(drop=True),
                      pd.DataFrame(np.asarray(embedding), columns=["umap_1", "umap_2"])], axis=1)
