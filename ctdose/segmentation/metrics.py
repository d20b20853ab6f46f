"""Per-label overlap and surface metrics of two label maps (MONAI), and the label's effective radius.

Definitions (``pred`` against ``ref``, one label at a time, boolean masks ``A = pred == l``,
``B = ref == l`` on the same (z, y, x) grid with spacing in mm):

* Dice = 2 |A & B| / (|A| + |B|)  (``monai.metrics.compute_dice``).
* HD95 (mm) = MONAI's ``compute_hausdorff_distance(percentile=95, directed=False, spacing=...)``:
  surface voxels are ``mask XOR binary_erosion(mask)`` (face-connected erosion); the distance of
  each surface voxel of one mask to the nearest surface voxel of the other (Euclidean, in mm); the
  95th percentile (linear interpolation) of each directed set; HD95 = the larger of the two.
* Empty cases (defined here, not left to MONAI's warnings):
  both empty -> Dice 1, HD95 0 (the two agree that the label is absent);
  one empty  -> Dice 0, HD95 NaN (no surface to measure against; it counts as a failure through
  its Dice, and aggregations of HD95 skip it and say how many were skipped: ``hd95_missing``).
* r_eff (mm) = (3 V / 4 pi)^(1/3), V the volume (mm^3) of the *reference* label (0 when absent):
  the radius of a sphere of the same volume, the size axis of Tsanda et al. 2024, Fig. 5.

Both masks are cropped to the bounding box of their union (plus one voxel) before the metrics, which
changes no value (surfaces and distances are translation invariant) and bounds the cost.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

#: Columns of :func:`label_metrics` rows.
METRIC_COLUMNS: tuple[str, ...] = ("label", "label_name", "dice", "hd95_mm", "ref_voxels", "pred_voxels",
                                   "ref_volume_ml", "r_eff_mm")


def effective_radius_mm(n_voxels: int, spacing_zyx_mm: tuple[float, float, float]) -> float:
    """r_eff = (3 V / 4 pi)^(1/3) in mm of ``n_voxels`` voxels of ``spacing_zyx_mm``."""
    volume = float(n_voxels) * float(np.prod(spacing_zyx_mm))
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` cut to the bounding box of ``a | b`` with a one-voxel margin."""
    where = np.argwhere(a | b)
    lo = np.maximum(where.min(axis=0) - 1, 0)
    hi = np.minimum(where.max(axis=0) + 2, a.shape)
    box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))
    return a[box], b[box]


def dice_hd95(pred_mask: np.ndarray, ref_mask: np.ndarray,
              spacing_zyx_mm: tuple[float, float, float]) -> tuple[float, float]:
    """(Dice, HD95 in mm) of two boolean masks (z, y, x) with the empty cases of the module docstring."""
    a, b = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 1.0, 0.0
    if has_a != has_b:
        return 0.0, float("nan")
    if np.array_equal(a, b):  # identical masks: exactly what MONAI gives, without the surface search
        return 1.0, 0.0
    a, b = _crop(a, b)
    ta = torch.from_numpy(a)[None, None].float()
    tb = torch.from_numpy(b)[None, None].float()
    dice = float(compute_dice(ta, tb, include_background=True)[0, 0])
    with warnings.catch_warnings():  # MONAI's own deprecation notice about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        hd = float(compute_hausdorff_distance(ta, tb, include_background=True, percentile=95, directed=False,
                                              spacing=[float(s) for s in spacing_zyx_mm])[0, 0])
    return dice, hd


def label_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx_mm: tuple[float, float, float],
                  labels: dict[int, str] | Iterable[int]) -> list[dict[str, object]]:
    """One row per label (``METRIC_COLUMNS``): Dice, HD95 and r_eff of ``pred`` against ``ref``.

    ``pred`` and ``ref`` are label maps (z, y, x) on the same grid; ``labels`` the values to score
    (a dict gives their names; background 0 is never scored).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    names = dict(labels) if isinstance(labels, dict) else {int(v): str(v) for v in labels}
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    rows = []
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        a, b = pred == value, ref == value
        dice, hd = dice_hd95(a, b, spacing_zyx_mm)
        n_ref = int(b.sum())
        rows.append({"label": int(value), "label_name": name, "dice": dice, "hd95_mm": hd,
                     "ref_voxels": n_ref, "pred_voxels": int(a.sum()), "ref_volume_ml": n_ref * voxel_ml,
                     "r_eff_mm": effective_radius_mm(n_ref, spacing_zyx_mm)})
    return rows
