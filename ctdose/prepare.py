"""The per-series prepare step: ROI label map and rigid transform to the reference, one Dask task each.

Each output has a sidecar (:mod:`ctdose.provenance`): the label map's records the SEG or RTSTRUCT
and the ROI YAML it came from (checksums) and its ROI names and classes (label n = ``labels[n-1]``), the transform's records the reference series, the registration settings and seed, and
the registration row. A re-run redoes exactly the outputs that are missing, damaged or made from
another SEG, reference or seed (:func:`ctdose.provenance.is_current`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import SimpleITK as sitk

from ctdose.dicom_io import read_ct_series, read_reference_series
from ctdose.label_map_io import write_label_map
from ctdose.layout import ResultsLayout
from ctdose.provenance import is_current, read_sidecar, write_sidecar
from ctdose.registration import RegistrationResult, RegistrationSettings, register_rigid
from ctdose.rois import RoiSet, load_rois
from ctdose.rtstruct import read_rtstruct_label_map
from ctdose.seg import read_seg_label_map
from ctdose.transform_io import save_transform


@dataclass(frozen=True)
class PrepareTask:
    """What :func:`prepare_series` needs for one series (small and picklable for Dask)."""

    series_uid: str
    path: str
    seg_path: str
    reference_uid: str
    reference_path: str
    results: str
    registration: RegistrationSettings = RegistrationSettings()
    roi_format: str = "SEG"           # "SEG" or "RTSTRUCT" (the catalog's roi_format column)
    rois_path: str | None = None      # ROI YAML (default: the phantom's six ROIs)


def transform_settings(task: PrepareTask) -> dict[str, Any]:
    """What a transform depends on: the two series and the registration settings (seed included)."""
    return {"series_uid": task.series_uid, "reference_uid": task.reference_uid,
            "registration": asdict(task.registration)}


def read_roi_label_map(task: PrepareTask, rois: RoiSet) -> tuple[Any, tuple[str, ...]]:
    """The series' ROI label map (z, y, x) uint8 from its SEG or RTSTRUCT, and the ROI names."""
    if task.roi_format == "RTSTRUCT":
        return read_rtstruct_label_map(task.seg_path, task.path, task.series_uid, rois=rois)
    return read_seg_label_map(task.seg_path, task.path, task.series_uid, rois=rois)


def prepare_series(task: PrepareTask) -> dict[str, Any]:
    """Write one series' ROI label map and its transform to the reference; return its registration row.

    Outputs that are current are kept (``skipped`` True when both were). Bad input of this series
    (ValueError / FileNotFoundError / OSError: missing slice, SEG off the grid, unreadable file ...)
    does not stop the others: it comes back as a row with only ``series_uid`` and ``error`` filled.
    """
    try:
        return {**_prepare_series(task), "error": ""}
    except (ValueError, FileNotFoundError, OSError) as error:
        message = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.filename}: {error.strerror}"
        return {"series_uid": task.series_uid, "error": message, "skipped": False}


def _prepare_series(task: PrepareTask) -> dict[str, Any]:
    layout = ResultsLayout(task.results)
    mask_path, transform_path = layout.mask(task.series_uid), layout.transform(task.series_uid)
    mask_settings = {"series_uid": task.series_uid, "roi_format": task.roi_format}
    mask_inputs = [task.seg_path, *([task.rois_path] if task.rois_path else [])]
    need_mask = bool(task.seg_path) and not is_current(mask_path, mask_settings, inputs=mask_inputs)
    need_registration = not is_current(transform_path, transform_settings(task))
    if not need_mask and not need_registration:
        return {**read_sidecar(transform_path)["row"], "skipped": True}
    volume = read_ct_series(task.path, task.series_uid)
    if need_mask:
        rois = load_rois(task.rois_path)
        label_map, names = read_roi_label_map(task, rois)
        write_label_map(label_map, volume, mask_path)
        write_sidecar(mask_path, mask_settings, inputs=mask_inputs, labels=list(names),
                      classes={name: rois.classes[name] for name in names})
    if not need_registration:
        return {**read_sidecar(transform_path)["row"], "skipped": False}
    if task.series_uid == task.reference_uid:
        result = RegistrationResult(sitk.Euler3DTransform(), 1.0, 1.0, True, "reference series", 0.0, 0, 0.0)
    else:
        reference = read_reference_series(task.reference_path, task.reference_uid)
        result = register_rigid(reference, volume, task.registration)
    row = {"series_uid": task.series_uid, "reference_uid": task.reference_uid,
           "quality_before": result.quality_before, "quality_after": result.quality_after,
           "kept_identity": result.kept_identity, "reason": result.reason, **result.parameters(),
           "metric": result.metric, "iterations": result.iterations, "seconds": round(result.seconds, 3)}
    save_transform(result.transform, transform_path)
    write_sidecar(transform_path, transform_settings(task), row=row)
    return {**row, "skipped": False}
