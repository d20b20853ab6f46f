"""The dataset paper's Fig. 4: the registered texture of one series per scanner, on one axial slice.

For each scanner, one series at the chosen dose and reconstruction (default 10 mGy IR; the lowest
repetition) is resampled (linear) onto one axial slice of the reference series' grid through the ROI
center, using the rigid transforms data/prepare.py wrote (reference -> series, as
:func:`ctdose.image_metrics.resample_into` reads them), and cropped to a square around that center.
A scanner without such a series is skipped and named in the caption, never an error. The ROI center
is the centroid of the ROI's voxels in the reference series' label map (masks/<uid>.nii.gz).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ctdose.layout import ResultsLayout
from ctdose.volume import Volume


@dataclass(frozen=True)
class TextureSettings:
    """dose (mGy) and recon of the series shown; roi: ROI whose center the slice passes through
    ("" = the first label of the reference mask); half_width_mm: half the side of the square shown;
    level / width: the display window in HU (the paper: 50 / 400)."""

    dose: float = 10.0
    recon: str = "IR"
    roi: str = ""
    half_width_mm: float = 60.0
    level: float = 50.0
    width: float = 400.0

    def __post_init__(self) -> None:
        if self.half_width_mm <= 0:
            raise ValueError(f"texture half_width_mm={self.half_width_mm}; must be > 0")
        if self.width <= 0:
            raise ValueError(f"texture window width={self.width}; must be > 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TextureFigure:
    """The slices to draw (scanner -> (rows, cols) HU), their pixel size (row, col) mm, the series shown
    (one row per scanner), the scanners skipped with the reason, and the caption."""

    slices: dict[str, np.ndarray]
    pixel_mm: tuple[float, float]
    shown: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    caption: str = ""


def texture_series(catalog: pd.DataFrame, settings: TextureSettings) -> tuple[pd.DataFrame, dict[str, str]]:
    """One catalog row per scanner at ``settings.dose`` / ``settings.recon`` (lowest repetition, then
    UID), and {scanner: why skipped} for the scanners without one."""
    dose = np.isclose(catalog["dose_mgy"].to_numpy(float), settings.dose)
    rows = catalog[dose & (catalog["recon"].astype(str) == settings.recon)]
    chosen = rows.sort_values(["scanner", "repetition", "series_uid"]).groupby("scanner", sort=True).head(1)
    skipped = {}
    for scanner in sorted(set(catalog["scanner"].astype(str)) - set(chosen["scanner"].astype(str))):
        recons = sorted(catalog.loc[dose & (catalog["scanner"].astype(str) == scanner), "recon"].astype(str).unique())
        skipped[scanner] = (f"no {settings.recon} series at {settings.dose:g} mGy"
                            + (f" (has {', '.join(recons)})" if recons else " (no series at that dose)"))
    return chosen.reset_index(drop=True), skipped


def roi_center_index(label_map: Volume, label: int, name: str = "ROI") -> np.ndarray:
    """(3,) continuous (i, j, k) index of the centroid of the voxels equal to ``label``."""
    zyx = np.argwhere(np.rint(label_map.array) == label)
    if not len(zyx):
        raise ValueError(f"{name}: label {label} has no voxel in the reference label map")
    return zyx.mean(axis=0)[::-1]


def slice_grid(reference: Volume, center_ijk: np.ndarray, half_width_mm: float) -> Volume:
    """A one-slice Volume on ``reference``'s grid: the axial slice nearest ``center_ijk`` (i, j, k),
    cropped to the square of ``half_width_mm`` around it (clipped to the image); values are the
    reference's own (a placeholder: only the grid is used)."""
    k = int(np.clip(np.rint(center_ijk[2]), 0, reference.array.shape[0] - 1))
    nz, ny, nx = reference.array.shape
    half = np.ceil(half_width_mm / reference.spacing[:2]).astype(int)  # (x, y) voxels
    i0, i1 = (int(np.clip(np.rint(center_ijk[0]) + d, 0, nx)) for d in (-half[0], half[0] + 1))
    j0, j1 = (int(np.clip(np.rint(center_ijk[1]) + d, 0, ny)) for d in (-half[1], half[1] + 1))
    origin = reference.index_to_physical(np.array([i0, j0, k], float))
    return Volume(reference.array[k:k + 1, j0:j1, i0:i1], origin, reference.spacing, reference.direction)


def registered_slice(series: Volume, transform: sitk.Transform | None, grid: Volume,
                     reference_transform: sitk.Transform | None) -> np.ndarray:
    """``series`` resampled (linear) on the one-slice ``grid`` of the reference (rows, cols) HU; voxels
    the series does not cover are NaN."""
    from ctdose.image_metrics import resample_into

    moved, covered = resample_into(series, transform, grid, reference_transform)
    return np.where(covered, moved, np.nan)[0]


def caption(figure: TextureFigure, settings: TextureSettings, roi: str, n_scanners: int) -> str:
    """What the figure shows: which series per scanner, pooled over nothing, and the scanners skipped."""
    text = (f"Fig. 4 layout (dataset paper): registered {settings.dose:g} mGy {settings.recon} texture, one series "
            f"per scanner ({len(figure.slices)} of {n_scanners} scanners; the lowest repetition, nothing pooled), "
            f"resampled (linear) through the prepare step's rigid transforms onto the reference series' axial "
            f"slice through the center of ROI {roi}, a {2 * settings.half_width_mm:g} mm square; window level "
            f"{settings.level:g} / width {settings.width:g} HU; uncovered pixels blank.")
    if figure.skipped:
        text += " Skipped: " + "; ".join(f"{s}: {why}" for s, why in figure.skipped.items()) + "."
    return text


def texture_inputs(catalog: pd.DataFrame, layout: ResultsLayout, settings: TextureSettings) -> list:
    """Files the figure depends on: reference.json, the reference mask, the reference's transform and the
    transform of each series shown (checked against their sidecars by :func:`texture_figure`)."""
    from ctdose.provenance import verify

    reference = str(verify(layout.reference, layout.command("prepare"))["settings"]["series_uid"])
    verify(layout.mask(reference), layout.command("prepare"))
    chosen, _ = texture_series(catalog, settings)
    uids = [reference, *(u for u in chosen["series_uid"].astype(str) if u != reference)]
    return [layout.reference, layout.mask(reference), *(layout.transform(u) for u in uids)]


def texture_figure(catalog: pd.DataFrame, layout: ResultsLayout, settings: TextureSettings) -> TextureFigure:
    """Read the reference series and its label map, then each scanner's series and transform, and return
    the slices of Fig. 4 with their caption; every file is checked against its sidecar first
    (:func:`ctdose.provenance.verify`: one line naming a missing or damaged one and data/prepare.py)."""
    from ctdose.dicom_io import read_ct_series, read_reference_series
    from ctdose.label_map_io import read_label_map
    from ctdose.provenance import verify
    from ctdose.transform_io import load_transform

    remedy = layout.command("prepare")
    reference_uid = str(verify(layout.reference, remedy)["settings"]["series_uid"])
    paths = catalog.set_index(catalog["series_uid"].astype(str))["path"].astype(str)
    if reference_uid not in paths.index:
        raise ValueError(f"{layout.reference}: reference series {reference_uid} is not in {layout.catalog}")
    mask_record = verify(layout.mask(reference_uid), remedy)
    labels = list(mask_record.get("labels") or [])
    roi = settings.roi or (labels[0] if labels else "")
    if roi not in labels:
        raise ValueError(f"texture ROI {roi!r} is not in the reference label map {layout.mask(reference_uid)} "
                         f"(its ROIs: {', '.join(labels) or 'none recorded'})")
    reference = read_reference_series(paths[reference_uid], reference_uid)
    center = roi_center_index(read_label_map(layout.mask(reference_uid)), labels.index(roi) + 1, roi)
    grid = slice_grid(reference, center, settings.half_width_mm)
    verify(layout.transform(reference_uid), remedy)
    reference_tx = load_transform(layout.transform(reference_uid))
    chosen, skipped = texture_series(catalog, settings)
    slices = {}
    for row in chosen.itertuples(index=False):
        uid = str(row.series_uid)
        verify(layout.transform(uid), remedy)
        series = read_ct_series(row.path, uid)
        slices[str(row.scanner)] = registered_slice(series, load_transform(layout.transform(uid)), grid, reference_tx)
    figure = TextureFigure(slices, (float(grid.spacing[1]), float(grid.spacing[0])), chosen, skipped)
    figure.caption = caption(figure, settings, roi, catalog["scanner"].nunique())
    return figure
