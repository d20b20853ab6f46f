"""CT-ORG (TCIA): CT volumes with organ label maps, and organ patch centres inside them.

Files: ``volume-N.nii.gz`` (CT in HU) and ``labels-N.nii.gz`` (same grid), anywhere below one folder
(the TCIA download keeps both in ``OrganSegmentations/``). Label values (Rister et al., Sci Data 7:381,
2020; the same order in torch-em's CT-ORG loader and the Hugging Face mirror's card):
0 background, 1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain (brain only on the minority
of scans that show it).

Organ ROIs: liver, bladder, lung_left, lung_right, kidney_left, kidney_right, bone, brain. Lungs and
kidneys are split left / right (as the study did): the two largest connected components (26-connected)
are the two sides when the smaller has at least :data:`MIN_SIDE_SHARE` of the larger's voxels; the side
with the larger LPS x (patient left) is ``_left``; any further small components go to the side whose
centroid is nearer in x. Otherwise (one component, e.g. lungs touching) the mask is cut at the body
midline, the x centroid of the body (voxels above -500 HU). An organ (or side) with fewer than
``min_voxels`` voxels is left out for that case.

Centres (LPS mm of the case itself; the volume is its own reference, no transform):

* ``centroid``: one per ROI, its centroid; when the centroid voxel is not in the organ (curved organs,
  bone), the nearest organ voxel centre instead, so every centre lies inside its organ.
* ``seeded``: ``k`` voxel centres drawn uniformly inside the ROI with a generator seeded by
  (seed, case number, ROI), so a re-run draws the same centres.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ctdose.volume import BODY_THRESHOLD_HU, Volume

#: CT-ORG label value -> organ (the dataset's documented order).
LABELS: dict[int, str] = {1: "liver", 2: "bladder", 3: "lungs", 4: "kidneys", 5: "bone", 6: "brain"}
#: Label value -> organ class written to ``roi_class``.
ORGAN_CLASS: dict[int, str] = {1: "liver", 2: "bladder", 3: "lung", 4: "kidney", 5: "bone", 6: "brain"}
#: Labels whose mask is split into left and right ROIs.
PAIRED: tuple[int, ...] = (3, 4)
#: ROIs in table order.
ROI_ORDER: tuple[str, ...] = ("liver", "bladder", "lung_left", "lung_right", "kidney_left", "kidney_right",
                              "bone", "brain")
#: The smaller of the two largest components must hold this share of the larger's voxels to be a side.
MIN_SIDE_SHARE = 0.1
#: Default smallest organ (or side) in voxels that gets centres.
MIN_VOXELS = 100
_VOLUME_RE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_LABELS_RE = re.compile(r"^labels-(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class Case:
    """One CT-ORG case: its number N and the paths of ``volume-N`` and ``labels-N``."""

    number: int
    volume: Path
    labels: Path

    @property
    def case_id(self) -> str:
        return f"ctorg-{self.number:03d}"


def find_cases(root: str | os.PathLike) -> list[Case]:
    """Every ``volume-N.nii[.gz]`` below ``root`` paired with its ``labels-N``, by N ascending.

    FileNotFoundError when ``root`` is missing or holds no volume; ValueError for a volume without
    labels or a number found twice.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"CT-ORG folder {root} not found (see README: CT-ORG from TCIA)")
    volumes: dict[int, Path] = {}
    labels: dict[int, Path] = {}
    for path in sorted(root.rglob("*.nii*")):
        for regex, found in ((_VOLUME_RE, volumes), (_LABELS_RE, labels)):
            match = regex.match(path.name)
            if match:
                number = int(match.group(1))
                if number in found:
                    raise ValueError(f"CT-ORG case {number} found twice: {found[number]} and {path}")
                found[number] = path
    if not volumes:
        raise FileNotFoundError(f"no CT-ORG volume-N.nii.gz below {root}")
    missing = sorted(set(volumes) - set(labels))
    if missing:
        raise ValueError(f"CT-ORG {volumes[missing[0]]} has no labels-{missing[0]}.nii.gz below {root}")
    return [Case(n, volumes[n], labels[n]) for n in sorted(volumes)]


def read_volume(path: str | os.PathLike) -> Volume:
    """A CT-ORG volume (HU, LPS geometry from the NIfTI header through SimpleITK)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CT-ORG volume {path} not found")
    try:
        return Volume.from_sitk(sitk.ReadImage(str(path)))
    except RuntimeError as err:
        raise ValueError(f"{path}: not a readable NIfTI image ({str(err).strip().splitlines()[-1]})") from None


def read_case(case: Case) -> tuple[Volume, np.ndarray]:
    """The case's volume and its label map (int array (Z, Y, X) on the same grid; ValueError if not)."""
    volume = read_volume(case.volume)
    try:
        image = sitk.ReadImage(str(case.labels))
    except RuntimeError as err:
        raise ValueError(f"{case.labels}: not a readable NIfTI image ({str(err).strip().splitlines()[-1]})") from None
    labels = sitk.GetArrayFromImage(image)
    if labels.shape != volume.array.shape:
        raise ValueError(f"{case.labels}: label map of shape {labels.shape} != volume shape {volume.array.shape}")
    if (not np.allclose(image.GetSpacing(), volume.spacing, rtol=1e-4, atol=1e-4)
            or not np.allclose(image.GetOrigin(), volume.origin, atol=1e-2)):
        raise ValueError(f"{case.labels}: geometry (origin, spacing) differs from {case.volume.name}")
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *LABELS})
    if unknown:
        raise ValueError(f"{case.labels}: unknown label value(s) {unknown}; CT-ORG has 0..6")
    return volume, labels.astype(np.uint8)


def _physical_x(volume: Volume, zyx: np.ndarray) -> np.ndarray:
    """LPS x in mm of voxels given as (n, 3) [z, y, x] indices."""
    ijk = np.asarray(zyx, dtype=float)[:, ::-1]
    return volume.origin[0] + (ijk * volume.spacing) @ volume.direction[0]


def body_midline_x(volume: Volume, step: int = 4) -> float:
    """LPS x (mm) of the body's centroid (voxels above -500 HU, every ``step``-th voxel per axis)."""
    sub = volume.array[::step, ::step, ::step] > BODY_THRESHOLD_HU
    idx = np.argwhere(sub) * step
    if len(idx) == 0:
        raise ValueError("no body voxels above -500 HU to find the midline")
    return float(_physical_x(volume, idx).mean())


def split_left_right(mask: np.ndarray, volume: Volume) -> tuple[np.ndarray, np.ndarray, str]:
    """``(left, right, how)`` halves of a paired organ's mask (see module docstring); ``how`` says which
    rule cut it: ``components`` or ``midline``."""
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n >= 2:
        sizes = np.bincount(components.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        a, b = order[0] + 1, order[1] + 1
        if sizes[b - 1] >= MIN_SIDE_SHARE * sizes[a - 1]:
            xa = _physical_x(volume, np.argwhere(components == a)).mean()
            xb = _physical_x(volume, np.argwhere(components == b)).mean()
            left_label, right_label = (a, b) if xa > xb else (b, a)
            x_left, x_right = max(xa, xb), min(xa, xb)
            left = components == left_label
            right = components == right_label
            for extra in order[2:] + 1:
                x = _physical_x(volume, np.argwhere(components == extra)).mean()
                (left if abs(x - x_left) <= abs(x - x_right) else right)[components == extra] = True
            return left, right, "components"
    midline = body_midline_x(volume)
    idx = np.argwhere(mask)
    is_left = _physical_x(volume, idx) > midline
    left = np.zeros_like(mask, dtype=bool)
    right = np.zeros_like(mask, dtype=bool)
    left[tuple(idx[is_left].T)] = True
    right[tuple(idx[~is_left].T)] = True
    return left, right, "midline"


def organ_masks(labels: np.ndarray, volume: Volume, min_voxels: int = MIN_VOXELS) -> dict[str, np.ndarray]:
    """ROI name -> bool mask (Z, Y, X), in :data:`ROI_ORDER`; organs below ``min_voxels`` left out."""
    masks: dict[str, np.ndarray] = {}
    for value, organ in LABELS.items():
        mask = labels == value
        if mask.sum() < min_voxels:
            continue
        if value in PAIRED:
            left, right, _ = split_left_right(mask, volume)
            stem = ORGAN_CLASS[value]
            masks[f"{stem}_left"], masks[f"{stem}_right"] = left, right
        else:
            masks[ORGAN_CLASS[value]] = mask
    return {roi: masks[roi] for roi in ROI_ORDER if roi in masks and masks[roi].sum() >= min_voxels}


def roi_class(roi: str) -> str:
    """``lung_left`` -> ``lung``; unpaired organs are their own class."""
    return roi.removesuffix("_left").removesuffix("_right")


def centroid_inside(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """(3,) LPS mm: the mask's centroid, or the centre of the nearest mask voxel when the centroid's
    voxel lies outside the mask."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise ValueError("empty organ mask has no centroid")
    centroid = idx.mean(axis=0)  # z, y, x (continuous)
    voxel = np.clip(np.rint(centroid).astype(int), 0, np.array(mask.shape) - 1)
    if not mask[tuple(voxel)]:
        d2 = (((idx - centroid) * volume.spacing[::-1]) ** 2).sum(axis=1)
        centroid = idx[int(np.argmin(d2))].astype(float)
    return volume.index_to_physical(centroid[::-1])


def seeded_inside(mask: np.ndarray, volume: Volume, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, 3) LPS mm: centres of ``k`` mask voxels drawn uniformly (without replacement when possible)."""
    idx = np.argwhere(mask)
    pick = rng.choice(len(idx), size=k, replace=len(idx) < k)
    return volume.index_to_physical(idx[np.sort(pick)][:, ::-1].astype(float))


def case_centers(case: Case, mode: str = "centroid", k: int = 1, seed: int = 0,
                 min_voxels: int = MIN_VOXELS) -> pd.DataFrame:
    """Centre rows (roi, roi_class, patch, x_mm, y_mm, z_mm) of one case, in :data:`ROI_ORDER`."""
    volume, labels = read_case(case)
    masks = organ_masks(labels, volume, min_voxels)
    if not masks:
        raise ValueError(f"{case.labels}: no organ with at least {min_voxels} voxels")
    rows = []
    for n, (roi, mask) in enumerate(masks.items()):
        if mode == "centroid":
            points = centroid_inside(mask, volume)[None, :]
        elif mode == "seeded":
            rng = np.random.default_rng([seed, case.number, ROI_ORDER.index(roi)])
            points = seeded_inside(mask, volume, k, rng)
        else:
            raise ValueError(f"unknown organ centre mode {mode!r}; expected centroid or seeded")
        for p, xyz in enumerate(points):
            rows.append({"roi": roi, "roi_class": roi_class(roi), "patch": p,
                         "x_mm": float(xyz[0]), "y_mm": float(xyz[1]), "z_mm": float(xyz[2])})
    return pd.DataFrame(rows)
