"""DICOM RTSTRUCT: the contours of a structure set rasterised onto the CT grid as a ROI label map.

Each closed planar contour is moved from patient coordinates (mm, LPS) to continuous voxel indices
of the CT series, must lie on a CT slice, and is filled with scikit-image's polygon rasteriser
(``skimage.draw.polygon``: the pixels whose centers lie inside the polygon). Contours of one ROI on
one slice combine by the even-odd rule (a contour inside another is a hole), as DICOM's RT
structure sets draw holes. ROI names map to ROIs through a :class:`ctdose.rois.RoiSet`; the label
map follows :mod:`ctdose.seg`'s conventions (uint8 ``[z, y, x]``, label n = ``rois.names[n - 1]``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon

from ctdose.dicom_io import ct_slice_grid
from ctdose.rois import RoiSet, default_rois

#: SOP Class UID of RT Structure Set Storage.
RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"
#: Largest distance (in slices) between a contour's plane and a CT slice, and of any vertex from
#: the contour's own plane: contours are drawn on the CT slices, so anything further is another grid.
_SLICE_TOL = 0.05


def read_rtstruct_label_map(rtstruct_path: str | Path, ct_dir: str | Path, series_uid: str | None = None,
                            rois: RoiSet | None = None, required: Sequence[str] | None = None
                            ) -> tuple[np.ndarray, tuple[str, ...]]:
    """The RTSTRUCT's ROIs as a uint8 label map (z, y, x) on the CT grid, and the ROI names (label order).

    ``rois`` (default: the phantom's six) maps RTSTRUCT ROI names (or aliases) to ROIs; ``required``
    (default: every ROI of the set) must each have a contour. Structures that are none of the ROIs
    are ignored with one warning; where two ROIs overlap the later one (``rois`` order) keeps the
    voxel, with a warning. Raises ``ValueError`` in one line naming the RTSTRUCT (and the CT) when
    the file is no RTSTRUCT, its frame of reference is not the CT's, a contour is off the CT slices,
    none of its ROI names is in ``rois``, or a required ROI is missing.
    """
    rois = rois or default_rois()
    required = rois.names if required is None else tuple(required)
    rtstruct_path = Path(rtstruct_path)
    ct_slices, ct_uid, geom = ct_slice_grid(ct_dir, series_uid)
    ds = _read(rtstruct_path)
    where = f"RTSTRUCT {rtstruct_path} and CT series {ct_uid} in {ct_dir}"

    structures = {int(item.ROINumber): item for item in ds.get("StructureSetROISequence", [])}
    roi_of_number = {number: rois.find(str(item.get("ROIName", ""))) for number, item in structures.items()}
    names = [str(item.get("ROIName", "")) for item in structures.values()]
    if not any(roi_of_number.values()):
        raise ValueError(f"RTSTRUCT {rtstruct_path}: none of its ROI names ({', '.join(map(repr, names))}) "
                         f"is a ROI of {rois.source}; describe them in a ROI YAML like "
                         f"ctdose/data/rois_phantom.yaml and pass rois=ctdose.rois.load_rois(FILE)")
    ignored = [repr(str(structures[n].get("ROIName", ""))) for n, roi in roi_of_number.items() if roi is None]
    if ignored:
        warnings.warn(f"RTSTRUCT {rtstruct_path}: ROI {', '.join(ignored)} not a ROI of {rois.source}; "
                      f"ignored", stacklevel=2)
    ct_frame = str(ct_slices[0].get("FrameOfReferenceUID", ""))
    for number, roi in roi_of_number.items():
        frame = str(structures[number].get("ReferencedFrameOfReferenceUID", ""))
        if roi is not None and ct_frame and frame and frame != ct_frame:
            raise ValueError(f"{where} do not match: ROI {roi!r} is in frame of reference {frame}, "
                             f"the CT in {ct_frame}")

    masks: dict[str, np.ndarray] = {}
    for item in ds.get("ROIContourSequence", []):
        roi = roi_of_number.get(int(item.ReferencedROINumber))
        if roi is None:
            continue
        mask = masks.setdefault(roi, np.zeros(geom.shape_zyx, dtype=bool))
        for c, contour in enumerate(item.get("ContourSequence", []), start=1):
            if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue  # points and open polylines enclose no voxels
            k, rows, cols = _contour_on_grid(contour, geom, lambda why: ValueError(
                f"{where} do not match: ROI {roi!r} contour {c} {why}"))
            rr, cc = polygon(rows, cols, shape=geom.shape_zyx[1:])
            mask[k, rr, cc] ^= True  # even-odd: a contour inside another is a hole
    missing = [roi for roi in required if roi not in masks or not masks[roi].any()]
    if missing:
        raise ValueError(f"RTSTRUCT {rtstruct_path} has no contour for ROI {', '.join(missing)}")

    label_map = np.zeros(geom.shape_zyx, dtype=np.uint8)
    for roi in rois.names:
        if roi not in masks:
            continue
        label = rois.label_of(roi)
        overlap = masks[roi] & (label_map > 0)
        if overlap.any():
            earlier = rois.names[int(label_map[overlap].max()) - 1]
            warnings.warn(f"RTSTRUCT {rtstruct_path}: ROIs {earlier!r} and {roi!r} overlap in "
                          f"{int(overlap.sum())} voxels; the label map gives them to {roi!r}", stacklevel=2)
        label_map[masks[roi]] = label
    return label_map, rois.names


def _read(path: Path) -> pydicom.Dataset:
    """The RTSTRUCT dataset; ``FileNotFoundError`` / ``ValueError`` naming the file otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"no RTSTRUCT file {path}")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read RTSTRUCT {path}: {str(err).strip() or type(err).__name__}") from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS_UID:
        raise ValueError(f"{path} is not an RTSTRUCT (SOP class {ds.get('SOPClassUID', 'missing')}, "
                         f"modality {ds.get('Modality', 'missing')})")
    return ds


def _contour_on_grid(contour: pydicom.Dataset, geom, refuse) -> tuple[int, np.ndarray, np.ndarray]:
    """Slice index and continuous (row, column) vertex coordinates of one closed planar contour."""
    data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=float)
    if data.size < 9 or data.size % 3:
        raise refuse(f"has {data.size} coordinates (need >= 3 points of x, y, z)")
    points = data.reshape(-1, 3)
    ijk = ((points - geom.origin) @ np.linalg.inv(geom.direction).T) / geom.spacing
    k = int(round(float(np.median(ijk[:, 2]))))
    if np.abs(ijk[:, 2] - k).max() > _SLICE_TOL or not 0 <= k < geom.shape_zyx[0]:
        z = np.round(points[0], 2).tolist()
        raise refuse(f"at {z} mm is not on a CT slice")
    return k, ijk[:, 1], ijk[:, 0]
