"""Rigid-transform files: SimpleITK ``.tfm`` written atomically, read with one clear error line."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from ctdose.atomic import atomic_path


def save_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write a SimpleITK transform file (``.tfm``) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        staged = tmp.with_name(tmp.name + path.suffix)  # SimpleITK picks the format by extension
        try:
            sitk.WriteTransform(transform, str(staged))
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    return path


def load_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read a transform written by :func:`save_transform` (maps reference -> series points).

    FileNotFoundError for a missing file, ValueError naming a corrupt one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no transform file {path}; run data/prepare.py first")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise ValueError(f"{path}: not a readable transform file (corrupt?); delete it and re-run "
                         "data/prepare.py") from None
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    return transform
