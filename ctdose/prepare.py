"""The per-series prepare step: ROI label map and rigid transform to the reference, one Dask task each.

Series that share a FrameOfReferenceUID share one patient coordinate system (DICOM PS3.3 C.7.4.1), so
one registration serves them all (:func:`registration_sources`): the group's source series is
registered and the others take its transform (their sidecar names the source and lists its transform
as an input, so a new source registration redoes them). On the collection this is every dose and
reconstruction of one placement of the phantom; registering the best-dose series of the group also
keeps the noisiest series from registering themselves. ``share_frame=False`` registers every series.

Each output has a sidecar (:mod:`ctdose.provenance`): the label map's records the SEG or RTSTRUCT
and the ROI YAML it came from (checksums) and its ROI names and classes (label n = ``labels[n-1]``), the transform's records the reference series, the registration settings and seed, and
the registration row. A re-run redoes exactly the outputs that are missing, damaged or made from
another SEG, reference or seed (:func:`ctdose.provenance.is_current`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import SimpleITK as sitk

from ctdose.dicom_io import read_ct_series, read_reference_series
from ctdose.label_map_io import write_label_map
from ctdose.layout import ResultsLayout
from ctdose.provenance import is_current, read_sidecar, verify, write_sidecar
from ctdose.registration import RegistrationResult, RegistrationSettings, register_rigid
from ctdose.rois import RoiSet, load_rois
from ctdose.rtstruct import read_rtstruct_label_map
from ctdose.seg import read_seg_label_map
from ctdose.transform_io import load_transform, save_transform


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
    source_uid: str = ""              # series whose transform this one takes ("" = registered itself)


#: Reconstruction preference of a frame-of-reference group's source series (after the highest dose).
SOURCE_RECON_ORDER = ("IR", "FBP", "DL")


def registration_sources(catalog: pd.DataFrame, reference_uid: str, share_frame: bool = True) -> dict[str, str]:
    """{series UID: UID of the series whose registration it takes} (itself when registered itself).

    With ``share_frame``, series with the same non-empty ``frame_of_reference_uid`` take one
    registration: the reference's group takes the reference (identity); any other group takes its
    highest-dose series, IR before FBP before DL, then the lowest UID.
    """
    sources = {uid: uid for uid in catalog["series_uid"].astype(str)}
    if not share_frame or "frame_of_reference_uid" not in catalog.columns:
        return sources
    rank = {r: i for i, r in enumerate(SOURCE_RECON_ORDER)}
    frames = catalog.assign(frame=catalog["frame_of_reference_uid"].fillna("").astype(str),
                            recon_rank=catalog["recon"].astype(str).map(rank).fillna(len(rank)),
                            dose=catalog["dose_mgy"].astype(float).fillna(-1.0))
    for frame, group in frames[frames["frame"] != ""].groupby("frame"):
        uids = group["series_uid"].astype(str)
        if reference_uid in set(uids):
            source = reference_uid
        else:
            source = str(group.sort_values(["dose", "recon_rank", "series_uid"],
                                           ascending=[False, True, True])["series_uid"].iloc[0])
        sources.update({uid: source for uid in uids})
    return sources


def transform_settings(task: PrepareTask) -> dict[str, Any]:
    """What a transform depends on: the two series and the registration settings (seed included), and
    the source series when the transform is taken from one."""
    settings = {"series_uid": task.series_uid, "reference_uid": task.reference_uid,
                "registration": asdict(task.registration)}
    return {**settings, "source_uid": task.source_uid} if task.source_uid else settings


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
    source_inputs = [layout.transform(task.source_uid)] if task.source_uid else []
    need_registration = not is_current(transform_path, transform_settings(task), inputs=source_inputs)
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
    if task.source_uid:  # same frame of reference as the source: its transform, unchanged
        source_path = layout.transform(task.source_uid)
        verify(source_path, "re-run prepare")
        row = {**read_sidecar(source_path)["row"], "series_uid": task.series_uid,
               "reason": f"frame of reference shared with series {task.source_uid}",
               "registered_with": task.source_uid}
        save_transform(load_transform(source_path), transform_path)
        write_sidecar(transform_path, transform_settings(task), inputs=source_inputs, row=row)
        return {**row, "skipped": False}
    if task.series_uid == task.reference_uid:
        result = RegistrationResult(sitk.Euler3DTransform(), 1.0, 1.0, True, "reference series", 0.0, 0, 0.0)
    else:
        reference = read_reference_series(task.reference_path, task.reference_uid)
        result = register_rigid(reference, volume, task.registration)
    row = {"series_uid": task.series_uid, "reference_uid": task.reference_uid,
           "quality_before": result.quality_before, "quality_after": result.quality_after,
           "kept_identity": result.kept_identity, "reason": result.reason, **result.parameters(),
           "metric": result.metric, "iterations": result.iterations, "seconds": round(result.seconds, 3),
           "registered_with": task.series_uid}
    save_transform(result.transform, transform_path)
    write_sidecar(transform_path, transform_settings(task), row=row)
    return {**row, "skipped": False}
