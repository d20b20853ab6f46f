"""Catalog of a DICOM tree: one row per CT series with its metadata and its ROI file (SEG or RTSTRUCT).

Only headers are read (``stop_before_pixels``, ``specific_tags``), so a tree is catalogued fast
whatever its layout: files are grouped by SeriesInstanceUID, CT is told from SEG and RTSTRUCT by
SOPClassUID / Modality, and each SEG is linked to its CT through its ReferencedSeriesSequence, each
RTSTRUCT through ReferencedFrameOfReferenceSequence > RTReferencedStudySequence >
RTReferencedSeriesSequence (``seg_path`` holds either; ``roi_format`` says which). Compressed
transfer syntaxes and Enhanced / Legacy Converted Enhanced CT (one row per multi-frame series, a
slice per frame) enter like any series. Metadata come from DICOM tags and are cross-checked against
the TCIA series name (SeriesDescription, else the folder names); a disagreement is reported as a
warning and in the ``name_mismatch`` column (``dose_mismatch`` when it is about the dose), never
hidden. Damaged files are named in a warning; localizers and single-slice series are left out with
their reason; a series with no dose anywhere gets an empty (NaN) dose and a warning. Series QC
columns (``QC_HEADER_COLUMNS``, from the same headers: :func:`ctdose.series_qc.header_qc`) give the
imaging axis from ImageOrientationPatient, the gantry tilt, the axis the header claims and the
header-vs-geometry warnings (``qc_warnings``, empty when none), for users to filter on.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from ctdose.dicom_io import (NotDicomError, ct_frames, dicom_files, is_ct_image, is_localizer, is_rtstruct,
                             is_seg, read_dicom)
from ctdose.csv_io import read_csv
from ctdose.layout import CATALOG_COLUMNS, TEXT_DTYPES
from ctdose.naming import SCANNER_CODES, SeriesName, nominal_dose, parse_series_name
from ctdose.series_qc import header_qc

#: Series QC columns (ctdose.series_qc.header_qc, header only): geometric imaging axis, gantry tilt
#: (degrees, NaN when not axial-family), the axis the header claims, and "; "-joined QC warnings.
QC_HEADER_COLUMNS: tuple[str, ...] = ("axis", "gantry_tilt_deg", "header_axis", "qc_warnings")

#: Columns after CATALOG_COLUMNS.
EXTRA_COLUMNS: tuple[str, ...] = (
    "series_description", "scan_id", "study_uid", "frame_of_reference_uid", "series_number",
    "series_datetime", "station", "name_mismatch", "dose_mismatch", "roi_format",
    *QC_HEADER_COLUMNS,
)
#: ``roi_format`` values: what ``seg_path`` points at ("" when no ROI file references the series).
ROI_FORMATS: tuple[str, ...] = ("SEG", "RTSTRUCT")
#: Header tags the catalog needs (parsing only these keeps the scan fast).
_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
    "FrameOfReferenceUID", "SeriesDescription", "SeriesNumber", "SeriesDate", "SeriesTime",
    "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
    "Manufacturer", "ManufacturerModelName", "StationName", "KVP", "XRayTubeCurrent", "Exposure",
    "ExposureTime", "CTDIvol", "ConvolutionKernel", "SliceThickness", "PixelSpacing",
    "ImagePositionPatient", "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "SamplesPerPixel",
    "ImageType", "ImageOrientationPatient", "GantryDetectorTilt", "ReferencedSeriesSequence", "ReferencedFrameOfReferenceSequence",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
]


#: A CTDIvol within this fraction of a nominal level counts as that level (else: unknown dose); a
#: CTDIvol further than this fraction from the dose in the series name disagrees with the name.
DOSE_TOLERANCE = 0.3


class CatalogWarning(UserWarning):
    """Something in the tree was skipped, left out, incomplete or disagrees with the series name."""


def _warn(message: str) -> None:
    warnings.warn(message, CatalogWarning, stacklevel=3)


def read_header(path: Path) -> Dataset:
    """The header of a DICOM file (no pixels, only the tags the catalog needs).

    Raises ``NotDicomError`` for a file that is not DICOM and ``ValueError`` naming the file for a
    damaged one (header cut off, uncompressed pixel data truncated): see :func:`dicom_io.read_dicom`.
    """
    return read_dicom(path, stop_before_pixels=True, specific_tags=_TAGS)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value or "").strip()


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _median(items: list[tuple[Path, Dataset]], keyword: str) -> float | None:
    """Median of a numeric tag over the slices that have it (None if none has it)."""
    values = [v for v in (_number(ds, keyword) for _, ds in items) if v is not None]
    return float(np.median(values)) if values else None


def _series_datetime(ds: Dataset) -> _dt.datetime | None:
    """Series (else acquisition, else content) date and time."""
    for date_kw, time_kw in (("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime"),
                             ("ContentDate", "ContentTime")):
        date = _text(ds, date_kw)
        if date:
            time = (_text(ds, time_kw) or "000000").split(".")[0].ljust(6, "0")
            try:
                return _dt.datetime.strptime(date + time[:6], "%Y%m%d%H%M%S")
            except ValueError:
                continue
    stamp = _text(ds, "AcquisitionDateTime").split(".")[0]
    if len(stamp) >= 8:
        try:
            return _dt.datetime.strptime(stamp[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
        except ValueError:
            pass
    return None


def _name_of(ds: Dataset, folder: Path, root: Path) -> tuple[SeriesName | None, str]:
    """The TCIA name of a series (SeriesDescription first, then folder names up to ``root``)."""
    description = _text(ds, "SeriesDescription")
    parsed = parse_series_name(description) if description else None
    if parsed is not None:
        return parsed, description
    for part in [folder, *folder.parents]:
        if part == root.parent:
            break
        parsed = parse_series_name(part.name)
        if parsed is not None:
            return parsed, part.name
    return None, description


def _series_row(uid: str, items: list[tuple[Path, Dataset]], root: Path) -> dict[str, Any]:
    """One catalog row from the headers of one CT series (cross-checked against its name)."""
    paths = [p for p, _ in items]
    ds = items[0][1]
    folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
    name, name_text = _name_of(ds, folder, root)
    label = name_text or uid
    mismatches: list[str] = []
    if name is not None:
        folder_name = parse_series_name(folder.name)
        if folder_name is not None and folder.name != name_text and (
                (folder_name.scanner, folder_name.dose_mgy, folder_name.recon)
                != (name.scanner, name.dose_mgy, name.recon)):
            mismatches.append(f"folder name {folder.name} disagrees with SeriesDescription {name_text}")

    ctdivol = _median(items, "CTDIvol")  # per-slice values differ under tube current modulation
    nominal = nominal_dose(ctdivol) if ctdivol is not None else None
    dose_mismatch = (ctdivol is not None and name is not None
                     and abs(ctdivol - name.dose_mgy) > DOSE_TOLERANCE * name.dose_mgy)
    why = "no CTDIvol tag" if ctdivol is None else f"CTDIvol {ctdivol:g} mGy is near no dose level"
    if nominal is not None and abs(ctdivol - nominal) <= DOSE_TOLERANCE * nominal:
        dose = nominal
    elif name is not None:
        dose = name.dose_mgy
        _warn(f"series {label}: {why}; dose {dose:g} mGy taken from the series name")
    else:
        dose = math.nan
        _warn(f"series {label} ({folder}): {why} and no dose in a TCIA-style name; dose left empty")
    if dose_mismatch:
        mismatches.append(f"CTDIvol {ctdivol:g} mGy (dose {dose:g} mGy) but name says "
                          f"{name.dose_mgy:g} mGy")

    station = _text(ds, "StationName")
    if name is not None:
        scanner = name.scanner
        if station.upper() in SCANNER_CODES and station.upper() != scanner:
            mismatches.append(f"StationName {station} but name says scanner {scanner}")
    elif station.upper() in SCANNER_CODES:
        scanner = station.upper()
    else:
        scanner = f"{_text(ds, 'Manufacturer')} {_text(ds, 'ManufacturerModelName')}".strip() or "unknown"
        _warn(f"series {label}: no scanner code in its name; using {scanner!r}")
    recon = name.recon if name is not None else "unknown"
    if name is None:
        _warn(f"series {label}: not a TCIA-style name; reconstruction unknown")

    n_slices = _n_slices(items)
    if name is not None and name.n_files is not None and name.n_files != n_slices:
        mismatches.append(f"name says {name.n_files} files, found {n_slices} slices")
    for message in mismatches:
        _warn(f"series {label}: {message}")

    exposure = _median(items, "Exposure")
    current, exposure_time = _median(items, "XRayTubeCurrent"), _median(items, "ExposureTime")
    if exposure is None and current is not None and exposure_time:
        exposure = current * exposure_time / 1000.0
    spacing = ds.get("PixelSpacing")
    stamp = _series_datetime(ds)
    return {
        "series_uid": uid,
        "path": str(folder),
        "seg_path": "",
        "scanner": scanner,
        "manufacturer": _text(ds, "Manufacturer"),
        "model": _text(ds, "ManufacturerModelName"),
        "dose_mgy": float(dose),
        "recon": recon,
        "repetition": 0,
        "kernel": _text(ds, "ConvolutionKernel"),
        "kvp": _number(ds, "KVP"),
        "mas": exposure,  # median over slices, like ctdivol
        "ctdivol": ctdivol,
        "slice_thickness": _number(ds, "SliceThickness"),
        "pixel_spacing": float(spacing[0]) if spacing else None,
        "n_slices": n_slices,
        "series_description": _text(ds, "SeriesDescription"),
        "scan_id": name.scan_id if name is not None else None,
        "study_uid": _text(ds, "StudyInstanceUID"),
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
        "series_number": int(ds.get("SeriesNumber", 0) or 0),
        "series_datetime": stamp.isoformat() if stamp else "",
        "station": station,
        "name_mismatch": "; ".join(mismatches),
        "dose_mismatch": bool(dose_mismatch),
        "roi_format": "",
        **header_qc([d for _, d in items]),
    }


def _n_slices(items: list[tuple[Path, Dataset]]) -> int:
    """Distinct slices: SOP instances, and frames within a multi-frame image."""
    return len({(str(d.get("SOPInstanceUID", p)), getattr(d, "frame_index", 0)) for p, d in items})


def _left_out_reason(items: list[tuple[Path, Dataset]]) -> str | None:
    """Why a CT series is not a volume to catalogue (a localizer, a single slice), None if it is one."""
    if any(is_localizer(ds) for _, ds in items):
        return "a localizer (ImageType LOCALIZER)"
    if _n_slices(items) == 1:
        return "a single slice, not a volume"
    return None


def _referenced_series(ds: Dataset, roi_format: str) -> list[str]:
    """Series UIDs a SEG (ReferencedSeriesSequence) or an RTSTRUCT (ReferencedFrameOfReferenceSequence
    > RTReferencedStudySequence > RTReferencedSeriesSequence) references."""
    if roi_format == "SEG":
        return [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])
                if "SeriesInstanceUID" in item]
    return [str(series.SeriesInstanceUID)
            for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in frame.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in series]


def _link_roi_files(rows: dict[str, dict[str, Any]], rois: list[tuple[Path, Dataset, str]],
                    left_out: dict[str, str], root: Path) -> None:
    """Fill ``seg_path`` / ``roi_format`` of ``rows`` from the SEGs, then the RTSTRUCTs, that reference them.

    An RTSTRUCT without referenced series is linked through its frame of reference when exactly one
    series shares it. A series with two ROI files keeps the first (SEG before RTSTRUCT, then by
    path) with a warning; a reference to a left-out series is a warning; a ROI file that references
    no series, or a series absent from the tree, is a ``ValueError`` naming it.
    """
    for path, ds, roi_format in sorted(rois, key=lambda r: (ROI_FORMATS.index(r[2]), str(r[0]))):
        referenced = _referenced_series(ds, roi_format)
        if not referenced and roi_format == "RTSTRUCT":
            frames = {str(item.get("FrameOfReferenceUID", ""))
                      for item in ds.get("ReferencedFrameOfReferenceSequence", [])} - {""}
            sharing = [uid for uid, row in rows.items() if row["frame_of_reference_uid"] in frames]
            referenced = sharing if len(sharing) == 1 else []
        if not referenced:
            where = ("no ReferencedSeriesSequence" if roi_format == "SEG"
                     else "no RTReferencedSeriesSequence, and no single series shares its frame of reference")
            raise ValueError(f"{roi_format} {path} references no series ({where})")
        for uid in referenced:
            if uid in left_out:
                _warn(f"{roi_format} {path} references series {uid}, left out ({left_out[uid]}); ignored")
                continue
            if uid not in rows:
                raise ValueError(f"{roi_format} {path} references series {uid}, which is not in {root}")
            row = rows[uid]
            if row["seg_path"]:
                kind = f"two {roi_format}s" if row["roi_format"] == roi_format else \
                    f"a {row['roi_format']} and an {roi_format}"
                _warn(f"series {uid} has {kind} ({row['seg_path']}, {path}); keeping the first")
                continue
            row["seg_path"], row["roi_format"] = str(path), roi_format


def _first_five(paths: list) -> str:
    return ", ".join(str(p) for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def build_catalog(data_root: str | Path) -> pd.DataFrame:
    """Scan ``data_root`` for DICOM files and return one row per CT series.

    Columns: ``layout.CATALOG_COLUMNS`` then ``EXTRA_COLUMNS``; rows sorted by scanner, dose,
    recon, repetition. ``repetition`` is the 1-based order of acquisition (series date/time, then
    series number) within scanner x dose x recon. ``dose_mgy`` is the nominal level of the median
    CTDIvol over the slices; without a usable CTDIvol (absent, or > 30 % from every level) it comes
    from the series name, with a warning, and without either it is NaN, with a warning.
    ``dose_mismatch`` is True where CTDIvol and the name's dose differ by more than 30 %.
    ``seg_path`` is the SEG or RTSTRUCT that references the series (``roi_format`` says which).

    Non-DICOM files are skipped with one summary warning; each damaged DICOM file (header cut off,
    pixel data truncated, an unsupported multi-frame CT) with a warning naming it. Localizers and
    single-slice series are left out with a warning giving the reason. ``df.attrs["skipped"]``
    maps each skipped file and left-out series folder to its reason. Raises ``FileNotFoundError``
    for a missing folder and ``ValueError`` for a tree without CT series, or a SEG / RTSTRUCT that
    references no series or one absent from the tree.
    """
    root = Path(data_root)
    files = dicom_files(root)
    if not files:
        raise ValueError(f"no DICOM files in {root}")
    ct: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    rois: list[tuple[Path, Dataset, str]] = []
    not_dicom: list[Path] = []
    skipped: dict[str, str] = {}
    for path in files:
        try:
            ds = read_header(path)
            if is_seg(ds):
                rois.append((path, ds, "SEG"))
            elif is_rtstruct(ds):
                rois.append((path, ds, "RTSTRUCT"))
            elif is_ct_image(ds):
                frames = ct_frames(ds)
                ct[str(ds.SeriesInstanceUID)].extend((path, frame) for frame in frames)
            elif ds.get("Modality") == "CT" and "Rows" in ds:
                raise ValueError(f"{path}: a CT image without ImagePositionPatient cannot be placed in space")
        except NotDicomError:
            not_dicom.append(path)
        except (ValueError, OSError) as error:
            reason = str(error) if isinstance(error, ValueError) else f"{path}: {error.strerror or error}"
            skipped[str(path)] = reason
            _warn(f"skipping a damaged or unsupported DICOM file: {reason}")
    for path in not_dicom:
        skipped[str(path)] = "not DICOM"
    if skipped:
        damaged = [p for p, why in skipped.items() if why != "not DICOM"]
        parts = [f"{len(group)} {what} ({_first_five(group)})"
                 for group, what in ((not_dicom, "not DICOM"), (damaged, "damaged or unsupported")) if group]
        _warn(f"skipped {len(skipped)} file(s) that are not readable DICOM: {'; '.join(parts)}")

    left_out: dict[str, str] = {}
    for uid, items in ct.items():
        reason = _left_out_reason(items)
        if reason is not None:
            folder = os.path.commonpath([str(p.parent) for p, _ in items])
            left_out[uid] = reason
            skipped[folder] = f"series {uid}: {reason}"
            _warn(f"leaving out series {_text(items[0][1], 'SeriesDescription') or uid} ({folder}): {reason}")
    if len(ct) == len(left_out):
        why = f"; left out: {', '.join(f'{uid} ({r})' for uid, r in left_out.items())}" if left_out else ""
        raise ValueError(f"no CT series found in {root} ({len(files)} files scanned{why})")

    rows = {uid: _series_row(uid, sorted(items, key=lambda item: str(item[0])), root)
            for uid, items in ct.items() if uid not in left_out}
    _link_roi_files(rows, rois, left_out, root)
    for uid, row in rows.items():
        if not row["seg_path"]:
            _warn(f"series {row['series_description'] or uid}: no SEG or RTSTRUCT references it")

    df = pd.DataFrame(list(rows.values()), columns=[*CATALOG_COLUMNS, *EXTRA_COLUMNS])
    order = df.sort_values(["series_datetime", "series_number", "scan_id", "series_uid"],
                           na_position="last").index
    groups = df.loc[order].groupby(["scanner", "dose_mgy", "recon"], dropna=False)
    df.loc[order, "repetition"] = groups.cumcount() + 1
    df["repetition"] = df["repetition"].astype(int)
    df = df.sort_values(["scanner", "dose_mgy", "recon", "repetition"]).reset_index(drop=True)
    df.attrs["skipped"] = skipped
    return df


def read_catalog(path: str | Path) -> pd.DataFrame:
    """Read ``catalog.csv`` with stable types (UIDs and paths as text, empty seg_path as "", an empty
    dose as NaN, ``dose_mismatch`` as bool). A catalog written before ``dose_mismatch`` /
    ``roi_format`` existed gets False / "SEG" (where it has a seg_path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no catalog at {path}; run data/prepare.py first")
    df = read_csv(path, dtype={**TEXT_DTYPES, "path": str, "seg_path": str,
                                  "study_uid": str, "frame_of_reference_uid": str,
                                  "series_description": str, "name_mismatch": str, "station": str,
                                  "roi_format": str, "dose_mismatch": str, "axis": str,
                                  "header_axis": str, "qc_warnings": str},
                     keep_default_na=False, na_values={c: [""] for c in ("dose_mgy", "kvp", "mas", "ctdivol",
                                                                            "slice_thickness",
                                                                            "pixel_spacing", "scan_id",
                                                                            "gantry_tilt_deg")})
    missing = [c for c in CATALOG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"catalog {path} lacks columns {', '.join(missing)}")
    df["dose_mgy"] = df["dose_mgy"].astype(float)
    df["repetition"] = df["repetition"].astype(int)
    if "dose_mismatch" in df.columns:
        df["dose_mismatch"] = df["dose_mismatch"].str.lower().eq("true")
    else:
        df["dose_mismatch"] = False
    if "roi_format" not in df.columns:
        df["roi_format"] = np.where(df["seg_path"] != "", "SEG", "")
    return df


#: Default reference: the first series of this dose and reconstruction ...
REFERENCE_DOSE_MGY = 10.0
REFERENCE_RECON = "IR"
#: ... of this scanner, else of the first scanner present.
REFERENCE_SCANNER = "A1"


def choose_reference(catalog: pd.DataFrame, reference: str = "auto") -> str:
    """Series UID of the registration reference (it must have a SEG or RTSTRUCT: its masks give the
    patch centers).

    ``reference`` is a series UID from the catalog, or ``"auto"``: the first repetition of the
    10 mGy IR series of scanner A1, else of the first scanner (sorted) that has one. A tree without
    any 10 mGy IR series falls back, with a warning, to the IR (else any) series closest to 10 mGy;
    a series of unknown (NaN) dose comes after every series of known dose. ``"auto"`` never picks
    a series whose name and CTDIvol disagree on dose (``dose_mismatch``); a UID given explicitly is
    used with a warning.
    """
    with_seg = catalog[catalog["seg_path"].fillna("") != ""]
    mismatch = (with_seg["dose_mismatch"].fillna(False).astype(bool) if "dose_mismatch" in with_seg
                else pd.Series(False, index=with_seg.index))
    if reference != "auto":
        if reference not in set(catalog["series_uid"]):
            raise ValueError(f"reference series {reference} is not in the catalog")
        if reference not in set(with_seg["series_uid"]):
            raise ValueError(f"reference series {reference} has no SEG or RTSTRUCT (its masks give the "
                             f"patch centers)")
        if mismatch[with_seg["series_uid"] == reference].any():
            _warn(f"reference series {reference}: its name and its CTDIvol disagree on dose "
                  f"(dose_mismatch); used because it was asked for")
        return reference
    if with_seg.empty:
        raise ValueError("no series in the catalog has a SEG or RTSTRUCT; a reference needs ROI masks")
    candidates = with_seg[~mismatch]
    if candidates.empty:
        raise ValueError(f"every series with ROI masks ({len(with_seg)}) has a name that disagrees with its "
                         f"CTDIvol on dose (dose_mismatch); give the reference series UID explicitly")
    ranked = candidates.assign(
        _recon=candidates["recon"] != REFERENCE_RECON,
        _dose=(candidates["dose_mgy"].astype(float) - REFERENCE_DOSE_MGY).abs().fillna(math.inf),
        _scanner=candidates["scanner"] != REFERENCE_SCANNER,
    ).sort_values(["_dose", "_recon", "_scanner", "scanner", "repetition", "series_uid"])
    best = ranked.iloc[0]
    if best["_dose"] != 0 or best["_recon"]:
        dose = "unknown dose" if math.isinf(best["_dose"]) else f"{best['dose_mgy']:g} mGy"
        _warn(f"no {REFERENCE_DOSE_MGY:g} mGy {REFERENCE_RECON} series with a SEG or RTSTRUCT; reference is "
              f"{best['scanner']} {dose} {best['recon']} repetition {best['repetition']}")
    return str(best["series_uid"])
