"""Catalog of a DICOM tree: one row per CT series with its metadata and its SEG.

Only headers are read (``stop_before_pixels``), so a tree is catalogued fast whatever its layout:
files are grouped by SeriesInstanceUID, CT is told from SEG by SOPClassUID / Modality, and each SEG
is linked to its CT through its ReferencedSeriesSequence. Metadata come from DICOM tags and are
cross-checked against the TCIA series name (SeriesDescription, else the folder names); a
disagreement is reported as a warning and in the ``name_mismatch`` column, never hidden.
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

from ctdose.dicom_io import dicom_files, is_ct_image, is_seg
from ctdose.layout import CATALOG_COLUMNS
from ctdose.naming import SCANNER_CODES, SeriesName, nominal_dose, parse_series_name

#: Columns after CATALOG_COLUMNS.
EXTRA_COLUMNS: tuple[str, ...] = (
    "series_description", "scan_id", "study_uid", "frame_of_reference_uid", "series_number",
    "series_datetime", "station", "name_mismatch",
)
#: Header tags the catalog needs (parsing only these keeps the scan fast).
_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
    "FrameOfReferenceUID", "SeriesDescription", "SeriesNumber", "SeriesDate", "SeriesTime",
    "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
    "Manufacturer", "ManufacturerModelName", "StationName", "KVP", "XRayTubeCurrent", "Exposure",
    "ExposureTime", "CTDIvol", "ConvolutionKernel", "SliceThickness", "PixelSpacing",
    "ImagePositionPatient", "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "SamplesPerPixel",
    "ReferencedSeriesSequence",
]


#: A CTDIvol within this fraction of a nominal level counts as that level (else: unknown dose).
DOSE_TOLERANCE = 0.3


class CatalogWarning(UserWarning):
    """Something in the tree was skipped or disagrees with the series name."""


def _warn(message: str) -> None:
    warnings.warn(message, CatalogWarning, stacklevel=3)


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (no pixels); None for a non-DICOM file (not DICOM at all, or
    unreadable), None with a warning for a truncated one."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception:  # pydicom raises many types on junk; every one means "not usable"
        return None
    if "Rows" in ds and "Columns" in ds:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        pixel_bytes = math.ceil(int(ds.Rows) * int(ds.Columns) * frames * samples * bits / 8)
        if path.stat().st_size < pixel_bytes:
            _warn(f"skipping {path}: truncated DICOM file ({path.stat().st_size} bytes, pixel data "
                  f"alone needs {pixel_bytes})")
            return None
    return ds


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
    if nominal is not None and abs(ctdivol - nominal) <= DOSE_TOLERANCE * nominal:
        dose = nominal
        if name is not None and name.dose_mgy != dose:
            mismatches.append(f"CTDIvol {ctdivol:g} mGy (nominal {dose:g}) but name says "
                              f"{name.dose_mgy:g} mGy")
    elif name is not None:
        dose = name.dose_mgy
        why = "no CTDIvol tag" if ctdivol is None else f"CTDIvol {ctdivol:g} mGy is near no dose level"
        _warn(f"series {label}: {why}; dose {dose:g} mGy taken from the series name")
    else:
        why = "no CTDIvol tag" if ctdivol is None else f"CTDIvol {ctdivol:g} mGy is near no dose level"
        raise ValueError(f"series {label} ({folder}): {why} and no dose in a TCIA-style name")

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

    n_slices = len({str(d.get("SOPInstanceUID", p)) for p, d in items})
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
    }


def build_catalog(data_root: str | Path) -> pd.DataFrame:
    """Scan ``data_root`` for DICOM files and return one row per CT series.

    Columns: ``layout.CATALOG_COLUMNS`` then ``EXTRA_COLUMNS``; rows sorted by scanner, dose,
    recon, repetition. ``repetition`` is the 1-based order of acquisition (series date/time, then
    series number) within scanner x dose x recon. ``dose_mgy`` is the nominal level of the median
    CTDIvol over the slices; without a usable CTDIvol (absent, or > 30 % from every level) it comes
    from the series name, with a warning. Non-DICOM and truncated files are skipped with a warning.
    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` for a tree without CT
    series, a SEG whose referenced series is absent, or a series without any dose.
    """
    root = Path(data_root)
    files = dicom_files(root)
    if not files:
        raise ValueError(f"no DICOM files in {root}")
    ct: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    segs: list[tuple[Path, Dataset]] = []
    unreadable: list[Path] = []
    for path in files:
        ds = read_header(path)
        if ds is None:
            unreadable.append(path)
            continue
        if is_seg(ds):
            segs.append((path, ds))
        elif is_ct_image(ds):
            ct[str(ds.SeriesInstanceUID)].append((path, ds))
    if unreadable:
        shown = ", ".join(str(p) for p in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        _warn(f"skipped {len(unreadable)} file(s) that are not readable DICOM: {shown}{more}")
    if not ct:
        raise ValueError(f"no CT series found in {root} ({len(files)} files scanned)")

    rows = {uid: _series_row(uid, sorted(items, key=lambda item: str(item[0])), root)
            for uid, items in ct.items()}
    for path, ds in segs:
        referenced = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])
                      if "SeriesInstanceUID" in item]
        if not referenced:
            raise ValueError(f"SEG {path} references no series (no ReferencedSeriesSequence)")
        for uid in referenced:
            if uid not in rows:
                raise ValueError(f"SEG {path} references series {uid}, which is not in {root}")
            if rows[uid]["seg_path"]:
                _warn(f"series {uid} has two SEGs ({rows[uid]['seg_path']}, {path}); keeping the first")
                continue
            rows[uid]["seg_path"] = str(path)
    for uid, row in rows.items():
        if not row["seg_path"]:
            _warn(f"series {row['series_description'] or uid}: no SEG references it")

    df = pd.DataFrame(list(rows.values()), columns=[*CATALOG_COLUMNS, *EXTRA_COLUMNS])
    order = df.sort_values(["series_datetime", "series_number", "scan_id", "series_uid"],
                           na_position="last").index
    df.loc[order, "repetition"] = (df.loc[order].groupby(["scanner", "dose_mgy", "recon"]).cumcount() + 1)
    df["repetition"] = df["repetition"].astype(int)
    return df.sort_values(["scanner", "dose_mgy", "recon", "repetition"]).reset_index(drop=True)


def read_catalog(path: str | Path) -> pd.DataFrame:
    """Read ``catalog.csv`` with stable types (UIDs and paths as text, empty seg_path as "")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no catalog at {path}; run data/prepare.py first")
    df = pd.read_csv(path, dtype={"series_uid": str, "path": str, "seg_path": str, "scanner": str,
                                  "recon": str, "study_uid": str, "frame_of_reference_uid": str,
                                  "series_description": str, "name_mismatch": str, "station": str},
                     keep_default_na=False, na_values={c: [""] for c in ("kvp", "mas", "ctdivol",
                                                                            "slice_thickness",
                                                                            "pixel_spacing", "scan_id")})
    missing = [c for c in CATALOG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"catalog {path} lacks columns {', '.join(missing)}")
    df["dose_mgy"] = df["dose_mgy"].astype(float)
    df["repetition"] = df["repetition"].astype(int)
    return df


#: Default reference: the first series of this dose and reconstruction ...
REFERENCE_DOSE_MGY = 10.0
REFERENCE_RECON = "IR"
#: ... of this scanner, else of the first scanner present.
REFERENCE_SCANNER = "A1"


def choose_reference(catalog: pd.DataFrame, reference: str = "auto") -> str:
    """Series UID of the registration reference (it must have a SEG: its masks give the patch centres).

    ``reference`` is a series UID from the catalog, or ``"auto"``: the first repetition of the
    10 mGy IR series of scanner A1, else of the first scanner (sorted) that has one. A tree without
    any 10 mGy IR series falls back, with a warning, to the IR (else any) series closest to 10 mGy.
    """
    with_seg = catalog[catalog["seg_path"].fillna("") != ""]
    if reference != "auto":
        if reference not in set(catalog["series_uid"]):
            raise ValueError(f"reference series {reference} is not in the catalog")
        if reference not in set(with_seg["series_uid"]):
            raise ValueError(f"reference series {reference} has no SEG (its masks give the patch centres)")
        return reference
    if with_seg.empty:
        raise ValueError("no series in the catalog has a SEG; a reference needs ROI masks")
    ranked = with_seg.assign(
        _recon=with_seg["recon"] != REFERENCE_RECON,
        _dose=(with_seg["dose_mgy"] - REFERENCE_DOSE_MGY).abs(),
        _scanner=with_seg["scanner"] != REFERENCE_SCANNER,
    ).sort_values(["_dose", "_recon", "_scanner", "scanner", "repetition", "series_uid"])
    best = ranked.iloc[0]
    if best["_dose"] != 0 or best["_recon"]:
        _warn(f"no {REFERENCE_DOSE_MGY:g} mGy {REFERENCE_RECON} series with a SEG; reference is "
              f"{best['scanner']} {best['dose_mgy']:g} mGy {best['recon']} repetition {best['repetition']}")
    return str(best["series_uid"])
