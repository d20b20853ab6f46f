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


# --------------------------------------------------------------------------- the papers' UMAP figures

#: How the per-scanner panels are embedded: ``shared`` = the one embedding of all rows, split by
#: scanner (panels comparable, no extra fit); ``fit`` = one UMAP fitted on each scanner's rows.
PER_SCANNER_MODES: tuple[str, ...] = ("shared", "fit")
#: Kinds of :func:`paper_umaps` figures, in report order.
PAPER_FIGURES: tuple[str, ...] = ("fig5_roi", "fig6_rois", "per_scanner")


@dataclass
class PaperUMAP:
    """One paper-layout UMAP figure: ``kind`` (fig5_roi, fig6_rois, per_scanner), its ``caption`` (what
    was pooled, over how many rows and series), the ``panels`` (key -> (embedding (rows, 2), identity
    rows)), the identity columns it is coloured by (``colour_by``: (column, label) pairs), and
    ``skipped``: why it was not drawn ("" when it was)."""

    kind: str
    caption: str
    panels: dict[str, tuple[np.ndarray, pd.DataFrame]]
    colour_by: list[tuple[str, str]]
    skipped: str = ""


def _pooled(ident: pd.DataFrame) -> str:
    """'N series (S scanners; reconstructions FBP, IR; repetitions pooled), R patch rows'."""
    recons = ", ".join(sorted(ident["recon"].astype(str).unique()))
    return (f"{ident['series_uid'].nunique()} series ({ident['scanner'].nunique()} scanners; reconstructions "
            f"{recons}; {ident['repetition'].nunique()} repetition(s); all pooled), {len(ident)} patch rows")


def _settings_text(settings: UMAPSettings) -> str:
    return f"n_neighbors {settings.n_neighbors}, min_dist {settings.min_dist:g}, {settings.epochs} epochs, seed {settings.seed}"


def first_roi(ident: pd.DataFrame) -> str:
    """The ROI of the table's first row (the default ROI of Fig. 5)."""
    if ident.empty:
        raise ValueError("an empty feature table has no ROI")
    return str(ident["roi"].iloc[0])


def _subset_umap(table: FeatureTable, keep: np.ndarray, settings: UMAPSettings, kind: str,
                 colour_by: list[tuple[str, str]], about: str, empty: str) -> PaperUMAP:
    """A UMAP fitted on the rows ``keep`` of ``table`` alone, or a skipped figure with the reason."""
    sub = table.subset(keep)
    if len(sub.X) == 0:
        return PaperUMAP(kind, "", {}, colour_by, skipped=empty)
    try:
        emb = embed(sub, settings)
    except ValueError as err:  # too few rows, every feature constant
        return PaperUMAP(kind, "", {}, colour_by, skipped=str(err))
    caption = (f"{about}: {_pooled(sub.ident)}; UMAP fitted on these rows alone ({_settings_text(settings)}). "
               + "; ".join(f"panel {n + 1}: by {label}" for n, (_, label) in enumerate(colour_by)) + ".")
    return PaperUMAP(kind, caption, {"": (emb, sub.ident)}, colour_by)


def paper_umaps(table: FeatureTable, embedding: np.ndarray, settings: UMAPSettings, dose: float = 10.0,
                roi: str = "", per_scanner: str = "shared") -> list[PaperUMAP]:
    """The dataset paper's Fig. 5 (one ROI, every ``dose`` series, by scanner and manufacturer) and Fig. 6
    (every ROI at ``dose``, by manufacturer and ROI class), each a UMAP fitted on its rows alone, and the
    study code's UMAP per scanner coloured by dose (``per_scanner``: see :data:`PER_SCANNER_MODES`;
    ``embedding`` (rows, 2) is the all-rows embedding the ``shared`` mode splits). ``roi`` "" = the
    table's first ROI. A figure whose rows are absent or too few comes back with ``skipped`` set."""
    if per_scanner not in PER_SCANNER_MODES:
        raise ValueError(f"per-scanner UMAP mode {per_scanner!r}; expected one of {', '.join(PER_SCANNER_MODES)}")
    ident = table.ident
    roi = roi or first_roi(ident)
    at_dose = np.isclose(ident["dose_mgy"].to_numpy(float), dose)
    where = f"in the {dose:g} mGy series (doses present: {', '.join(f'{d:g}' for d in sorted(ident['dose_mgy'].unique()))})"
    figures = [
        _subset_umap(table, at_dose & (ident["roi"].astype(str) == roi).to_numpy(), settings, "fig5_roi",
                     [("scanner", "scanner"), ("manufacturer", "manufacturer")],
                     f"Fig. 5 layout (dataset paper): {table.name} features of ROI {roi} at {dose:g} mGy",
                     f"no rows of ROI {roi} {where}"),
        _subset_umap(table, at_dose, settings, "fig6_rois",
                     [("manufacturer", "manufacturer"), ("roi_class", "ROI class")],
                     f"Fig. 6 layout (dataset paper): {table.name} features of all {ident.loc[at_dose, 'roi'].nunique()} "
                     f"ROIs ({ident.loc[at_dose, 'roi_class'].nunique()} classes) at {dose:g} mGy",
                     f"no rows {where}")]
    panels: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
    skipped = []
    for scanner in sorted(ident["scanner"].astype(str).unique()):
        keep = (ident["scanner"].astype(str) == scanner).to_numpy()
        if per_scanner == "shared":
            panels[scanner] = (np.asarray(embedding)[keep], ident.loc[keep].reset_index(drop=True))
            continue
        sub = table.subset(keep)
        try:
            panels[scanner] = (embed(sub, settings), sub.ident)
        except ValueError as err:
            skipped.append(f"{scanner} ({err})")
    sizes = [len(e) for e, _ in panels.values()]
    how = ("the all-rows embedding (one fit), split by scanner" if per_scanner == "shared"
           else f"one UMAP fitted on each scanner's rows ({_settings_text(settings)})")
    caption = (f"UMAP per scanner (the study's code): {table.name} features, {how}; {len(panels)} panels of "
               f"{min(sizes, default=0)}-{max(sizes, default=0)} rows (every dose, ROI, reconstruction and "
               f"repetition of the scanner pooled; {sum(sizes)} rows in all), coloured by dose"
               + (f"; not drawn: {'; '.join(skipped)}" if skipped else "") + ".")
    figures.append(PaperUMAP("per_scanner", caption, panels, [("dose_mgy", "dose (mGy)")],
                             skipped="" if panels else "no scanner has rows to embed"))
    return figures
