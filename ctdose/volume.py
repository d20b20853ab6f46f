"""A CT volume with its geometry, in the conventions used throughout ctdose.

Conventions
-----------
* ``array`` is float32 Hounsfield units indexed ``[k, j, i]`` = ``[z, y, x]`` (as SimpleITK's
  ``GetArrayFromImage``): slices first, then rows, then columns.
* ``origin``, ``spacing`` and ``direction`` follow SimpleITK / DICOM patient (LPS) coordinates in
  millimetres and are given in ``(x, y, z)`` = ``(i, j, k)`` order; ``direction`` is a 3x3 matrix whose
  columns are the physical directions of the i, j, k axes.
* physical point = origin + direction @ (spacing * (i, j, k)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

#: The phantom (body) is every voxel above this, HU: air and lung-free phantoms separate cleanly.
BODY_THRESHOLD_HU = -500.0


def body_mask(array: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Boolean mask (same shape as ``array``, HU) of the phantom: voxels above ``threshold_hu``."""
    return np.asarray(array) > threshold_hu


@dataclass
class Volume:
    """A 3-D image in HU with its physical geometry (see module docstring for axis order)."""

    array: np.ndarray  # (nz, ny, nx) float32 HU
    origin: np.ndarray  # (3,) mm, x y z
    spacing: np.ndarray  # (3,) mm, x y z
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3), columns = i j k

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.array.ndim != 3:
            raise ValueError(f"volume array must be 3-D (z, y, x), got shape {self.array.shape}")

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Size along x, y, z (the reverse of ``array.shape``)."""
        nz, ny, nx = self.array.shape
        return nx, ny, nz

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous indices ``(..., 3)`` in (i, j, k) order -> LPS points in mm ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=float)
        return self.origin + (ijk * self.spacing) @ self.direction.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS points in mm ``(..., 3)`` -> continuous indices ``(..., 3)`` in (i, j, k) order."""
        points = np.asarray(points, dtype=float)
        return ((points - self.origin) @ np.linalg.inv(self.direction).T) / self.spacing

    def to_sitk(self) -> sitk.Image:
        """The same image as a SimpleITK image (shares no memory)."""
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(tuple(self.origin))
        image.SetSpacing(tuple(self.spacing))
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Build a Volume from a 3-D SimpleITK image (values cast to float32)."""
        return cls(
            array=sitk.GetArrayFromImage(image).astype(np.float32),
            origin=np.array(image.GetOrigin()),
            spacing=np.array(image.GetSpacing()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )
