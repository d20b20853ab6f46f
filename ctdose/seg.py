"""DICOM SEG for the six liver ROIs: write one from a label map, read one back onto the CT grid.

Label maps are uint8 arrays indexed ``[z, y, x]`` on the CT grid in slice order along the normal
(as :func:`ctdose.dicom_io.read_ct_series` returns it): 0 = background, 1..6 = ``naming.ROI_NAMES``
order. Reading maps every SEG frame onto a CT slice through its referenced SOP instance and its
plane position (both must agree), so frame order does not matter.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ctdose import __version__
from ctdose.atomic import atomic_path
from ctdose.dicom_io import read_series_datasets, slice_geometry
from ctdose.naming import ROI_CLASSES, ROI_NAMES, normalise_roi_label
from ctdose.volume import Volume

#: Segmented property (category, type) per ROI class.
_PROPERTY = {
    "cyst": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst),
    "hemangioma": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Hemangioma),
    "metastasis": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    "normal": (codes.SCT.AnatomicalStructure, codes.SCT.Liver),
}
#: Tolerance (voxels) when mapping a frame's plane position onto a CT slice.
_INDEX_TOL = 0.05


def write_seg(ct_files: Sequence[str | Path], label_map: np.ndarray, out_path: str | Path,
              roi_names: Sequence[str] = ROI_NAMES, *, series_uid: str | None = None) -> Path:
    """Write a BINARY DICOM SEG of ``label_map`` (z, y, x) referencing the CT slices ``ct_files``.

    One segment per label present; segment labels are ``roi_names[label - 1]`` written as given
    (so a misspelt or an extra non-ROI label can be written on purpose, e.g. for tests). The
    SEG's series UID is derived from the CT series UID unless given. Written atomically.
    """
    sources = [pydicom.dcmread(f) for f in ct_files]
    ct_uid = str(sources[0].SeriesInstanceUID)
    geom = slice_geometry(sources, ct_uid)
    sources = [sources[n] for n in geom.order]
    label_map = np.asarray(label_map)
    if label_map.shape != geom.shape_zyx:
        raise ValueError(f"label map shape {label_map.shape} does not match CT series {ct_uid} "
                         f"{geom.shape_zyx}")
    present = [int(v) for v in np.unique(label_map) if v != 0]
    if not present:
        raise ValueError(f"label map for CT series {ct_uid} is empty")
    if max(present) > len(roi_names):
        raise ValueError(f"label {max(present)} has no name (roi_names has {len(roi_names)})")
    segment_map = np.zeros(256, dtype=np.uint8)
    descriptions = []
    for number, label in enumerate(present, start=1):
        segment_map[label] = number
        name = roi_names[label - 1]
        try:
            category, prop = _PROPERTY[ROI_CLASSES[normalise_roi_label(name)]]
        except ValueError:  # not one of the six ROIs (allowed: written as plain tissue)
            category, prop = codes.SCT.Tissue, codes.SCT.Tissue
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        ))
    seg_uid = series_uid or generate_uid(entropy_srcs=[ct_uid, "seg"])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segment_map[label_map.astype(np.uint8)],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=seg_uid,
        series_number=int(sources[0].get("SeriesNumber", 1) or 1) + 1000,
        sop_instance_uid=generate_uid(entropy_srcs=[seg_uid, "sop"]),
        instance_number=1,
        manufacturer="ctdose",
        manufacturer_model_name="ctdose",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"SEG {sources[0].get('SeriesDescription', '')}"[:64],
    )
    _make_deterministic(seg, sources[0], seg_uid)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return out_path


def _make_deterministic(seg: hd.seg.Segmentation, source: pydicom.Dataset, seg_uid: str) -> None:
    """Replace what highdicom stamps from the clock or at random, so the same input gives the same file.

    Dates and times come from the source CT's series date/time; the dimension organisation UID is
    derived from the SEG's series UID.
    """
    date = str(source.get("SeriesDate", "") or source.get("StudyDate", "") or "19700101")
    time = str(source.get("SeriesTime", "") or source.get("StudyTime", "") or "000000")
    seg.InstanceCreationDate, seg.InstanceCreationTime = date, time
    seg.ContentDate, seg.ContentTime = date, time
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    dimension_uid = generate_uid(entropy_srcs=[seg_uid, "dimension-organization"])
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = dimension_uid


def read_seg_label_map(seg_path: str | Path, ct_dir: str | Path, series_uid: str | None = None,
                       required: Sequence[str] = ROI_NAMES) -> tuple[np.ndarray, tuple[str, ...]]:
    """The SEG's ROIs as a uint8 label map (z, y, x) on the CT grid, and the ROI names (label order).

    Labels are 1..6 in ``naming.ROI_NAMES`` order whatever the SEG's segment numbering; segment
    labels are normalised (``metastatsis`` -> ``metastasis``). Raises ``ValueError`` naming both
    files when a frame does not map onto a CT slice, and naming the ROI when one of ``required``
    is missing.
    """
    seg_path = Path(seg_path)
    ct_slices = read_series_datasets(ct_dir, series_uid, stop_before_pixels=True)
    ct_uid = str(ct_slices[0].SeriesInstanceUID)
    geom = slice_geometry(ct_slices, ct_uid)
    slice_of_sop = {str(ct_slices[n].SOPInstanceUID): k for k, n in enumerate(geom.order)}
    seg = hd.seg.segread(seg_path)
    where = f"SEG {seg_path} and CT series {ct_uid} in {ct_dir}"

    def refuse(why: str) -> ValueError:
        return ValueError(f"{where} do not match: {why}")

    nz, ny, nx = geom.shape_zyx
    if (int(seg.Rows), int(seg.Columns)) != (ny, nx):
        raise refuse(f"SEG frames are {seg.Rows}x{seg.Columns}, CT slices {ny}x{nx}")
    label_of_segment: dict[int, int] = {}
    for item in seg.SegmentSequence:
        try:
            roi = normalise_roi_label(str(item.SegmentLabel))
        except ValueError:
            warnings.warn(f"SEG {seg_path}: segment {item.SegmentNumber} {item.SegmentLabel!r} is not one of "
                          f"the six ROIs; ignored", stacklevel=2)
            continue
        label_of_segment[int(item.SegmentNumber)] = ROI_NAMES.index(roi) + 1
    missing = [roi for roi in required if ROI_NAMES.index(roi) + 1 not in label_of_segment.values()]
    if missing:
        raise ValueError(f"SEG {seg_path} has no segment for ROI {', '.join(missing)}")

    shared_seq = seg.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else pydicom.Dataset()
    inverse = np.linalg.inv(geom.direction)
    frames = seg.pixel_array.reshape(-1, ny, nx)
    # BINARY frames hold 0/1; FRACTIONAL ones 0..MaximumFractionalValue: inside = at least half
    fractional = seg.SegmentationType == "FRACTIONAL"
    threshold = 0.5 * float(seg.get("MaximumFractionalValue", 1)) if fractional else 0.5
    label_map = np.zeros(geom.shape_zyx, dtype=np.uint8)
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = _item(group, shared, "SegmentIdentificationSequence")
        if identification is None or "ReferencedSegmentNumber" not in identification:
            raise refuse(f"frame {f + 1} names no segment")
        segment = int(identification.ReferencedSegmentNumber)
        if segment not in label_of_segment:  # an ignored (non-ROI) segment
            continue
        referenced = _frame_sources(group)
        known = [slice_of_sop[uid] for uid in referenced if uid in slice_of_sop]
        if referenced and not known:
            raise refuse(f"frame {f + 1} references SOP instance {referenced[0]}, not in the CT series")
        k_sop = known[0] if known else None
        k_pos = None
        plane = _item(group, shared, "PlanePositionSequence")
        if plane is not None:
            position = np.array([float(v) for v in plane.ImagePositionPatient])
            ijk = ((position - geom.origin) @ inverse.T) / geom.spacing
            k_round = int(round(ijk[2]))
            if np.abs(ijk[:2]).max() > _INDEX_TOL or abs(ijk[2] - k_round) > _INDEX_TOL \
                    or not 0 <= k_round < nz:
                raise refuse(f"frame {f + 1} at {np.round(position, 2).tolist()} mm is not on a CT slice")
            k_pos = k_round
        if k_sop is None and k_pos is None:
            raise refuse(f"frame {f + 1} references no CT slice of the series")
        if k_sop is not None and k_pos is not None and k_sop != k_pos:
            raise refuse(f"frame {f + 1} references CT slice {k_sop + 1} but lies on slice {k_pos + 1}")
        k = k_pos if k_pos is not None else k_sop
        label_map[k][frames[f] >= threshold] = label_of_segment[segment]
    return label_map, ROI_NAMES


def read_seg_masks(seg_path: str | Path, ct_dir: str | Path, series_uid: str | None = None,
                   required: Sequence[str] = ROI_NAMES) -> dict[str, np.ndarray]:
    """The SEG's ROIs as boolean masks (z, y, x) on the CT grid, keyed by canonical ROI name
    (every ROI of ``required``, plus any other ROI the SEG holds)."""
    label_map, names = read_seg_label_map(seg_path, ct_dir, series_uid, required)
    return {name: label_map == n for n, name in enumerate(names, start=1)
            if name in required or np.any(label_map == n)}


def _item(group: pydicom.Dataset, shared: pydicom.Dataset, keyword: str) -> pydicom.Dataset | None:
    """First item of a functional-group sequence, per-frame first, else shared; None if absent."""
    for source in (group, shared):
        if keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def _frame_sources(group: pydicom.Dataset) -> list[str]:
    """SOP instance UIDs a frame was derived from (its derivation image sequence)."""
    return [str(source.ReferencedSOPInstanceUID)
            for derivation in group.get("DerivationImageSequence", [])
            for source in derivation.get("SourceImageSequence", [])
            if "ReferencedSOPInstanceUID" in source]


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
    """Read a label map written by :func:`write_label_map` as a Volume (labels 0..6 as float32 values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no label map {path}; run data/prepare.py first")
    return Volume.from_sitk(sitk.ReadImage(str(path)))
