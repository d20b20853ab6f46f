"""Patch centres: seeded points inside each ROI of the reference series, in reference-space mm.

The same centres are used for every series (each series reaches them through its transform to the
reference), so every extractor sees the same anatomy in every scan. Centres are drawn from ROI
voxels at least ``min_edge_distance_mm`` from the ROI's edge (Euclidean distance transform in mm,
the field-of-view border counting as an edge) so that patches are centred in the tissue; an ROI
with fewer such voxels than centres asked for falls back to all its voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ctdose.layout import PATCH_CENTER_COLUMNS
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.volume import Volume

#: Default minimum distance (mm) of a centre from its ROI's edge.
MIN_EDGE_DISTANCE_MM = 5.0


def edge_distance_mm(mask: np.ndarray, spacing_xyz: np.ndarray) -> np.ndarray:
    """Conservative distance (mm) of every mask voxel (z, y, x) to the mask's edge.

    The Euclidean distance to the nearest non-mask voxel centre (the array border counts as
    non-mask) minus half the largest voxel size, since the edge lies between the two voxel centres.
    """
    padded = np.pad(mask.astype(bool), 1)
    distance = ndimage.distance_transform_edt(padded, sampling=tuple(np.asarray(spacing_xyz)[::-1]))
    return np.where(mask, distance[1:-1, 1:-1, 1:-1] - 0.5 * float(np.max(spacing_xyz)), 0.0)


def draw_patch_centers(label_map: Volume, n_per_roi: int = 10, seed: int = 0,
                       min_edge_distance_mm: float = MIN_EDGE_DISTANCE_MM,
                       roi_names: tuple[str, ...] = ROI_NAMES) -> pd.DataFrame:
    """Draw ``n_per_roi`` centres per ROI from a label map (values 1..6 = ``roi_names`` order).

    Returns a DataFrame with ``layout.PATCH_CENTER_COLUMNS`` (``patch`` = 0-based number within
    the ROI; x_mm, y_mm, z_mm = LPS voxel centres of ``label_map``'s space, rounded to 0.1 um),
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
            rows.append((roi, ROI_CLASSES[roi], patch, *(round(float(v), 4) for v in (x, y, z))))
    return pd.DataFrame(rows, columns=list(PATCH_CENTER_COLUMNS))


def read_patch_centers(path: str | Path) -> pd.DataFrame:
    """Read ``patch_centers.csv`` (checks its columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no patch centres at {path}; run data/patch_centers.py first")
    df = pd.read_csv(path)
    missing = [c for c in PATCH_CENTER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"patch centres {path} lack columns {', '.join(missing)}")
    return df
