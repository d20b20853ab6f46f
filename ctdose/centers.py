"""Patch centers: seeded points inside each ROI of the reference series, in reference-space mm.

The same centers are used for every series (each series reaches them through its transform to the
reference), so every extractor sees the same anatomy in every scan. Centers are drawn from ROI
voxels at least ``min_edge_distance_mm`` from the ROI's edge (Euclidean distance transform in mm,
the field-of-view border counting as an edge) so that patches are centered in the tissue; an ROI
with fewer such voxels than centers asked for falls back to all its voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ctdose.csv_io import read_csv
from ctdose.layout import PATCH_CENTER_COLUMNS
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.provenance import verify
from ctdose.volume import Volume

#: Default minimum distance (mm) of a center from its ROI's edge.
MIN_EDGE_DISTANCE_MM = 5.0


def edge_distance_mm(mask: np.ndarray, spacing_xyz: np.ndarray) -> np.ndarray:
    """Conservative distance (mm) of every mask voxel (z, y, x) to the mask's edge.

    The Euclidean distance to the nearest non-mask voxel center (the array border counts as
    non-mask) minus half the largest voxel size, since the edge lies between the two voxel centers.
    """
    padded = np.pad(mask.astype(bool), 1)
    distance = ndimage.distance_transform_edt(padded, sampling=tuple(np.asarray(spacing_xyz)[::-1]))
    return np.where(mask, distance[1:-1, 1:-1, 1:-1] - 0.5 * float(np.max(spacing_xyz)), 0.0)


def draw_patch_centers(label_map: Volume, n_per_roi: int = 10, seed: int = 0,
                       min_edge_distance_mm: float = MIN_EDGE_DISTANCE_MM,
                       roi_names: tuple[str, ...] = ROI_NAMES,
                       roi_classes: dict[str, str] | None = None) -> pd.DataFrame:
    """Draw ``n_per_roi`` centers per ROI from a label map (values 1..n = ``roi_names`` order).

    ``roi_classes`` maps each ROI to its class (default: the phantom's).

    Returns a DataFrame with ``layout.PATCH_CENTER_COLUMNS`` (``patch`` = 0-based number within
    the ROI; x_mm, y_mm, z_mm = LPS voxel centers of ``label_map``'s space, rounded to 0.1 um),
    ROIs in ``roi_names``
    order. Deterministic for a seed; distinct voxels unless an ROI has fewer voxels than
    ``n_per_roi``. Raises ``ValueError`` naming an ROI that has no voxel.
    """
    if n_per_roi < 1:
        raise ValueError(f"n_per_roi must be at least 1, got {n_per_roi}")
    labels = np.rint(label_map.array).astype(np.int16)
    rng = np.random.default_rng(seed)
    rows = []
    for number, roi in enumerate(roi_names, start=1):
        mask = labels == number
        if not mask.any():
            raise ValueError(f"ROI {roi} (label {number}) has no voxel in the label map")
        deep = mask & (edge_distance_mm(mask, label_map.spacing) >= min_edge_distance_mm)
        candidates = np.argwhere(deep if deep.sum() >= n_per_roi else mask)  # (m, 3) as k, j, i
        picks = rng.choice(len(candidates), size=n_per_roi, replace=len(candidates) < n_per_roi)
        points = label_map.index_to_physical(candidates[picks][:, ::-1].astype(float))
        for patch, (x, y, z) in enumerate(points):
            rows.append((roi, (roi_classes or ROI_CLASSES)[roi], patch, *(round(float(v), 4) for v in (x, y, z))))
    return pd.DataFrame(rows, columns=list(PATCH_CENTER_COLUMNS))


def roi_short_of(centers: pd.DataFrame, per_roi: int) -> tuple[str, int] | None:
    """The first ROI with fewer than ``per_roi`` centers, and its count; None when every ROI has enough."""
    counts = centers.groupby("roi", sort=False).size()
    short = counts[counts < per_roi]
    return None if short.empty else (str(short.index[0]), int(short.iloc[0]))


def read_patch_centers(path: str | Path, remedy: str = "data/patch_centers.py") -> pd.DataFrame:
    """Read ``patch_centers.csv`` after checking it against its sidecar; refuse bad centers.

    Refused with one line naming the file: a file changed since it was written (or without sidecar),
    missing columns, a missing or non-finite coordinate (row named), a duplicated (roi, patch), or an
    ROI with fewer centers than the ``per_roi`` it was drawn with.
    """
    path = Path(path)
    record = verify(path, remedy)
    df = read_csv(path, dtype={"roi": str, "roi_class": str})
    missing = [c for c in PATCH_CENTER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"patch centers {path} lack columns {', '.join(missing)}")
    xyz = df[["x_mm", "y_mm", "z_mm"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(xyz).all(axis=1) | df[["roi", "patch"]].isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: patch center on line {row + 2} ({df.iloc[row]['roi']}, patch "
                         f"{df.iloc[row]['patch']}) has a missing or non-numeric value; "
                         f"{int(bad.sum())} such row(s)")
    duplicated = df.duplicated(["roi", "patch"])
    if duplicated.any():
        first = df.loc[duplicated].iloc[0]
        raise ValueError(f"{path}: patch {first['patch']} of ROI {first['roi']} appears twice")
    per_roi = (record.get("settings") or {}).get("per_roi")
    short = roi_short_of(df, per_roi) if per_roi is not None else None
    if short is not None:
        raise ValueError(f"{path}: ROI {short[0]} has {short[1]} centers, fewer than the "
                         f"{per_roi} per ROI it was drawn with")
    df["patch"] = df["patch"].astype(int)
    return df
