"""Where every step reads and writes under the results folder (one place, so scripts agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Columns of ``catalog.csv``, one row per CT series (extra columns may follow).
CATALOG_COLUMNS: tuple[str, ...] = (
    "series_uid", "path", "seg_path", "scanner", "manufacturer", "model", "dose_mgy", "recon",
    "repetition", "kernel", "kvp", "mas", "ctdivol", "slice_thickness", "pixel_spacing", "n_slices",
)
#: Identity columns that open every feature table, in this order; feature columns follow,
#: prefixed by the extractor's name (``radiomics_original_glcm_Contrast``, ``swin_0000`` ...).
IDENTITY_COLUMNS: tuple[str, ...] = (
    "series_uid", "scanner", "manufacturer", "model", "dose_mgy", "recon", "repetition",
    "roi", "roi_class", "patch",
)
#: Columns of ``patch_centers.csv`` (centres in reference-space LPS millimetres).
PATCH_CENTER_COLUMNS: tuple[str, ...] = ("roi", "roi_class", "patch", "x_mm", "y_mm", "z_mm")


@dataclass(frozen=True)
class ResultsLayout:
    """Paths of all outputs below one results root (default ``results/``)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.csv"

    @property
    def transforms_dir(self) -> Path:
        return self.root / "transforms"

    def transform(self, series_uid: str) -> Path:
        """Rigid transform reference -> series (SimpleITK ``.tfm``)."""
        return self.transforms_dir / f"{series_uid}.tfm"

    @property
    def registration(self) -> Path:
        """One row per series: quality before/after, whether the identity was kept."""
        return self.root / "registration.csv"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    def mask(self, series_uid: str) -> Path:
        """ROI label map on the series' CT grid (0 = background, 1..6 = ROI_NAMES order)."""
        return self.masks_dir / f"{series_uid}.nii.gz"

    @property
    def patch_centers(self) -> Path:
        return self.root / "patch_centers.csv"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def feature_table(self, extractor: str) -> Path:
        """Merged feature table of one extractor; its JSON sidecar sits beside it."""
        return self.features_dir / f"{extractor}.csv"

    def feature_partial(self, extractor: str, series_uid: str) -> Path:
        """Per-series partial table, written atomically so that a re-run skips finished series."""
        return self.features_dir / "partial" / extractor / f"{series_uid}.csv"

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def report(self) -> Path:
        return self.root / "report.html"
