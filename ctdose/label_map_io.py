"""NIfTI label maps: a uint8 ROI label map (z, y, x) on a CT grid, written and read with its geometry.

Labels are 0 = background, n = the n-th ROI of the ROI set (:mod:`ctdose.rois`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctdose.atomic import atomic_path
from ctdose.volume import Volume


def write_label_map(label_map: np.ndarray, like: Volume, path: str | Path) -> Path:
    """Write a uint8 label map (z, y, x) with the geometry of ``like`` as NIfTI (``.nii.gz``), atomically.

    SimpleITK converts the LPS geometry to NIfTI's RAS convention and back on reading.
    """
    label_map = np.asarray(label_map, dtype=np.uint8)
    if label_map.shape != like.array.shape:
        raise ValueError(f"label map shape {label_map.shape} differs from the volume's {like.array.shape}")
    image = sitk.GetImageFromArray(label_map)
    image.SetOrigin(tuple(like.origin))
    image.SetSpacing(tuple(like.spacing))
    image.SetDirection(tuple(like.direction.ravel()))
    path = Path(path)
    with atomic_path(path) as tmp:
        staged = tmp.with_name(tmp.name + ".nii.gz")  # SimpleITK picks the format by extension
        try:
            sitk.WriteImage(image, str(staged), useCompression=True)
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    return path


def read_label_map(path: str | Path) -> Volume:
    """Read a label map written by :func:`write_label_map` as a Volume (labels as float32 values).

    Raises ``FileNotFoundError`` if missing, ``ValueError`` naming the file if SimpleITK cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no label map {path}; run data/prepare.py first")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ValueError(f"cannot read label map {path}: {str(err).strip().splitlines()[-1]}") from None
    return Volume.from_sitk(image)
