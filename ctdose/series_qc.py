"""Series QC: is a CT series what its header says? Imaging axis from geometry, header and image.

Three views of one question, compared to give short warnings a user can filter on:

* **geometry** (:func:`geometry_axis`, exact): the slice normal n = row x column of
  ImageOrientationPatient (IOP). A series is ``axial`` / ``coronal`` / ``sagittal`` when n lies within
  ``AXIS_TOLERANCE_DEG`` of the patient z / y / x axis, else ``oblique``. A series whose normal is
  tilted from z only about the patient x axis (the way a gantry tilts) and whose GantryDetectorTilt
  tag gives that angle (within ``TILT_AGREEMENT_DEG``) stays ``axial``. The gantry tilt
  (:func:`gantry_tilt_deg`, degrees, unsigned) is the angle between the patient z axis and the
  direction the slices are *stacked* along (first to last ImagePositionPatient), which covers both
  ways scanners store a tilted acquisition: an IOP tilted with the gantry (stack along the tilted
  normal) and an axial IOP with positions sheared along y (GE). It is defined for axial-family
  series only (normal within 45 deg of z), NaN otherwise.
* **header** (:func:`header_axis`): what SeriesDescription and ImageType claim. SeriesDescription
  keywords win (``AX``/``AXIAL``/``TRA``/``TRANSVERSE`` -> axial, ``COR``/``CORONAL`` -> coronal,
  ``SAG``/``SAGITTAL`` -> sagittal, ``OBL``/``OBLIQUE`` -> oblique); then ImageType values
  ``CORONAL``/``SAGITTAL``/``OBLIQUE``; ``MPR``/``REFORMATTED``/``REFORMAT`` alone -> ``reformat``
  (a reformat of unstated axis, compatible with any geometry); ImageType value 3 ``AXIAL`` last: the CT
  Image IOD requires AXIAL (or LOCALIZER) there for *every* CT image, reformats included, so it is the
  weakest claim. No keyword: ``""`` (no claim).
* **image** (:func:`image_axis`, heuristic): from the pixels and voxel spacing alone, never the
  direction cosines. The patient's long (z) axis is the array axis along which the smoothed image
  changes least (bodies, spines, vessels and the phantom's rods are elongated along z): the mean
  absolute gradient, HU/mm, of the image block-averaged to ``IMAGE_GRID_MM`` and clipped to
  [-1000, 1000] HU. It must be below ``LONG_AXIS_RATIO`` x the next axis' value, else
  ``undetermined``. Long axis = slice axis -> ``axial``. Otherwise coronal and sagittal differ by which
  remaining axis runs left-right: the wider body extent (HU > -500, bodies are wider left-right than
  front-back); when the body is cut by the field of view so that this cannot be told, ``non-axial``.

Warnings (:func:`qc_warnings`) are short strings joined by ``"; "`` in the catalog's ``qc_warnings``
column: header vs geometry axis, GantryDetectorTilt vs geometry tilt, image vs geometry axis.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from ctdose.volume import BODY_THRESHOLD_HU, Volume

#: Imaging axes from geometry (``axis`` column), and what the image check may also say.
AXES: tuple[str, ...] = ("axial", "coronal", "sagittal", "oblique")
IMAGE_AXES: tuple[str, ...] = ("axial", "coronal", "sagittal", "non-axial", "undetermined")
#: A slice normal within this angle (degrees) of a patient axis names the series after that axis.
#: 10 deg: small positioning rotations stay on their axis; deliberate obliques (usually 15-45 deg) do not.
AXIS_TOLERANCE_DEG = 10.0
#: GantryDetectorTilt and the geometry's tilt agree within this (degrees); beyond, a warning.
TILT_AGREEMENT_DEG = 1.0
#: The image check works on blocks of about this size (mm).
IMAGE_GRID_MM = 4.0
#: The long axis' gradient must be below this fraction of the next smallest one.
LONG_AXIS_RATIO = 0.8
#: Patient axes (LPS unit vectors) of each geometric axis' slice normal.
_NORMALS = {"sagittal": np.array([1.0, 0.0, 0.0]), "coronal": np.array([0.0, 1.0, 0.0]),
            "axial": np.array([0.0, 0.0, 1.0])}
_DESCRIPTION_WORDS = {
    "axial": {"AX", "AXI", "AXIAL", "TRA", "TRANS", "TRANSVERSE", "TRANSVERSAL", "TRV"},
    "coronal": {"COR", "CORO", "CORONAL"},
    "sagittal": {"SAG", "SAGITTAL", "SAGITAL"},
    "oblique": {"OBL", "OBLIQUE"},
}
_REFORMAT_WORDS = {"MPR", "REFORMATTED", "REFORMAT", "MIP", "MINIP", "VRT", "CPR"}


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit slice normal (3,) = row x column direction of ImageOrientationPatient (6 values)."""
    values = np.asarray([float(v) for v in iop], dtype=float)
    if values.shape != (6,):
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {len(values)}")
    normal = np.cross(values[:3], values[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(values)} has parallel row and column directions")
    return normal / norm


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees, 0..90) between two lines (directions up to sign)."""
    c = abs(float(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, c)))


def axis_angles(iop: Sequence[float]) -> dict[str, float]:
    """Angle (degrees, 0..90) between the slice normal and each patient axis' normal."""
    normal = slice_normal(iop)
    return {axis: _angle_deg(normal, vector) for axis, vector in _NORMALS.items()}


def gantry_tilt_deg(iop: Sequence[float], positions: np.ndarray | None = None) -> float:
    """Gantry tilt (degrees, unsigned): the angle between patient z and the slice stacking direction.

    ``positions`` (n, 3) ImagePositionPatient of the slices (any order); with fewer than two distinct
    positions the slice normal stands in for the stacking direction. Only the y-z component counts
    (a gantry tilts about the patient x axis). NaN for series that are not axial-family (normal more
    than 45 deg from z).
    """
    normal = slice_normal(iop)
    if _angle_deg(normal, _NORMALS["axial"]) > 45.0:
        return math.nan
    direction = normal
    if positions is not None and len(positions) >= 2:
        positions = np.asarray(positions, dtype=float)
        along = positions @ normal
        step = positions[int(np.argmax(along))] - positions[int(np.argmin(along))]
        if np.linalg.norm(step) > 1e-6:
            direction = step
    return math.degrees(math.atan2(abs(direction[1]), abs(direction[2])))


def geometry_axis(iop: Sequence[float], tilt_tag_deg: float | None = None,
                  tolerance_deg: float = AXIS_TOLERANCE_DEG) -> str:
    """``axial`` / ``coronal`` / ``sagittal`` / ``oblique`` from ImageOrientationPatient (see module doc).

    ``tilt_tag_deg``: GantryDetectorTilt (degrees), which keeps a normal tilted about x by that angle axial.
    """
    angles = axis_angles(iop)
    best = min(angles, key=angles.get)
    if angles[best] <= tolerance_deg:
        return best
    normal = slice_normal(iop)
    if tilt_tag_deg is not None and abs(normal[0]) <= math.sin(math.radians(tolerance_deg)):
        tilt = math.degrees(math.atan2(abs(normal[1]), abs(normal[2])))
        if abs(tilt - abs(float(tilt_tag_deg))) <= TILT_AGREEMENT_DEG:
            return "axial"
    return "oblique"


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^A-Z0-9]+", text.upper()) if w}


def header_axis(series_description: str = "", image_type: Iterable[str] | str = ()) -> str:
    """The axis the header claims: ``axial``/``coronal``/``sagittal``/``oblique``, ``reformat``
    (a reformat of unstated axis) or ``""`` (no claim); see the module docstring for the keywords."""
    words = _words(series_description or "")
    found = [axis for axis, keys in _DESCRIPTION_WORDS.items() if words & keys]
    if len(found) == 1:
        return found[0]
    values = ([str(v).upper() for v in image_type.split("\\")] if isinstance(image_type, str)
              else [str(v).upper() for v in image_type])
    for axis in ("coronal", "sagittal", "oblique"):
        if axis.upper() in values:
            return axis
    if words & _REFORMAT_WORDS or {v for v in values if v} & _REFORMAT_WORDS:
        return "reformat"
    if len(values) >= 3 and values[2] == "AXIAL":
        return "axial"
    return ""


def qc_warnings(axis: str, claimed: str, tilt_deg: float = math.nan, tilt_tag_deg: float | None = None,
                image: str | None = None) -> list[str]:
    """Short warnings: header claim vs geometry, GantryDetectorTilt vs geometry tilt, image vs geometry.

    ``claimed`` "" or "reformat" never disagrees; ``image`` None (not checked), ``undetermined`` never
    disagrees, ``non-axial`` disagrees with ``axial`` only.
    """
    out = []
    if claimed in AXES and claimed != axis:
        out.append(f"header says {claimed}, geometry is {axis}")
    if tilt_tag_deg is not None and math.isfinite(tilt_deg) and \
            abs(abs(float(tilt_tag_deg)) - tilt_deg) > TILT_AGREEMENT_DEG:
        out.append(f"GantryDetectorTilt {float(tilt_tag_deg):g} deg, geometry tilt {tilt_deg:.1f} deg")
    if image is not None and image != "undetermined" and axis in ("axial", "coronal", "sagittal"):
        disagree = (axis == "axial") if image == "non-axial" else image != axis
        if disagree:
            out.append(f"image looks {image}, geometry is {axis}")
    return out


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def header_qc(datasets: Sequence[Dataset]) -> dict[str, Any]:
    """Header-only QC columns of one CT series from its slice headers (pydicom datasets, any order).

    Returns ``axis`` (geometry), ``gantry_tilt_deg`` (float, NaN when not axial-family), ``header_axis``
    (claim) and ``qc_warnings`` (``"; "``-joined). Reads ImageOrientationPatient, ImagePositionPatient,
    GantryDetectorTilt, SeriesDescription and ImageType of the first slice (positions of all).
    A series without ImageOrientationPatient gets axis ``""`` and a warning.
    """
    first = datasets[0]
    description = str(first.get("SeriesDescription", "") or "")
    image_type = first.get("ImageType", ())
    image_type = [str(v) for v in image_type] if not isinstance(image_type, str) else image_type
    claimed = header_axis(description, image_type)
    iop = first.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return {"axis": "", "gantry_tilt_deg": math.nan, "header_axis": claimed,
                "qc_warnings": "no ImageOrientationPatient"}
    tag = _float_or_none(first.get("GantryDetectorTilt"))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets
                          if ds.get("ImagePositionPatient") is not None and len(ds.ImagePositionPatient) == 3])
    try:
        axis = geometry_axis(iop, tag)
        tilt = gantry_tilt_deg(iop, positions if len(positions) else None)
    except ValueError as error:
        return {"axis": "", "gantry_tilt_deg": math.nan, "header_axis": claimed, "qc_warnings": str(error)}
    return {"axis": axis, "gantry_tilt_deg": tilt, "header_axis": claimed,
            "qc_warnings": "; ".join(qc_warnings(axis, claimed, tilt, tag))}


def image_axis(volume: Volume, grid_mm: float = IMAGE_GRID_MM) -> tuple[str, dict[str, float]]:
    """The imaging axis seen in the pixels (see module docstring), with its measurements.

    ``volume.array`` (slices, rows, cols) HU and ``volume.spacing`` (col, row, slice mm) are used;
    ``volume.direction`` is not. Returns (axis in IMAGE_AXES, {"grad_slice", "grad_row", "grad_col"
    (HU/mm), "extent_slice_mm", "extent_row_mm", "extent_col_mm"}; an extent is NaN when the body
    reaches both ends of that axis).
    """
    spacing_zyx = np.asarray(volume.spacing, dtype=float)[::-1]
    hu = np.clip(np.asarray(volume.array, dtype=np.float32), -1000.0, 1000.0)
    factors = np.maximum(1, np.round(grid_mm / spacing_zyx)).astype(int)
    shape = np.asarray(hu.shape) // factors
    if np.any(shape < 3):
        return "undetermined", {}
    hu = hu[:shape[0] * factors[0], :shape[1] * factors[1], :shape[2] * factors[2]]
    blocks = hu.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))
    step_mm = spacing_zyx * factors
    blocks = ndimage.gaussian_filter(blocks, sigma=1.0, mode="nearest")
    grads = [float(np.mean(np.abs(np.diff(blocks, axis=a)))) / step_mm[a] for a in range(3)]
    body = blocks > BODY_THRESHOLD_HU
    extents = []
    for a in range(3):
        profile = body.any(axis=tuple(b for b in range(3) if b != a))
        idx = np.flatnonzero(profile)
        if idx.size == 0 or (idx[0] == 0 and idx[-1] == profile.size - 1):
            extents.append(math.nan)  # cut by the field of view (or no body)
        else:
            extents.append(float((idx[-1] - idx[0] + 1) * step_mm[a]))
    info = {"grad_slice": grads[0], "grad_row": grads[1], "grad_col": grads[2],
            "extent_slice_mm": extents[0], "extent_row_mm": extents[1], "extent_col_mm": extents[2]}
    order = np.argsort(grads)
    if not grads[order[0]] < LONG_AXIS_RATIO * grads[order[1]]:
        return "undetermined", info
    long_axis = int(order[0])
    if long_axis == 0:
        return "axial", info
    # the other in-plane axis and the slice axis: which one runs left-right (the wider body)?
    in_plane = 2 if long_axis == 1 else 1
    full = [float(body.shape[a] * step_mm[a]) for a in range(3)]
    width_slice = extents[0] if math.isfinite(extents[0]) else full[0]
    width_plane = extents[in_plane] if math.isfinite(extents[in_plane]) else full[in_plane]
    cut_slice, cut_plane = not math.isfinite(extents[0]), not math.isfinite(extents[in_plane])
    if cut_slice and cut_plane:
        return "non-axial", info
    if (cut_slice and width_slice <= width_plane) or (cut_plane and width_plane <= width_slice) \
            or width_slice == width_plane:
        return "non-axial", info
    # coronal: the in-plane axis runs left-right; sagittal: the slice axis does
    return ("coronal" if width_plane > width_slice else "sagittal"), info


def series_image_check(item: tuple[str, str]) -> dict[str, Any]:
    """:func:`image_axis` of the series (folder, SeriesInstanceUID) ``item``: {"image_axis", "grad_slice",
    "grad_row", "grad_col"} (a top-level function, so that Dask workers can run it)."""
    from ctdose.dicom_io import read_ct_series

    path, uid = item
    axis, info = image_axis(read_ct_series(path, uid or None))
    return {"image_axis": axis, **{k: float(info.get(k, math.nan)) for k in ("grad_slice", "grad_row", "grad_col")}}
