"""DICOM CT series: write a Volume as a valid CT Image Storage series, and read one back.

Reading orders slices by their position along the slice normal (never by InstanceNumber) and
refuses a series with a missing slice or uneven spacing, naming the series and the gap. The
returned :class:`~ctdose.volume.Volume` is float32 HU indexed ``[z, y, x]`` with LPS geometry.
"""

from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctdose import __version__
from ctdose.atomic import atomic_path
from ctdose.volume import Volume

#: Stored pixel = HU - RESCALE_INTERCEPT (signed 16 bit, slope 1).
RESCALE_INTERCEPT = -1024.0
#: SOP Class UID of DICOM Segmentation Storage.
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: Relative tolerance on slice steps (fraction of the median step) before a series is refused.
SPACING_RTOL = 0.01
#: Absolute tolerance on slice steps and in-plane alignment, mm.
SPACING_ATOL_MM = 0.01


@dataclass(kw_only=True)
class CTSeriesMeta:
    """Acquisition metadata written into (and read from) the headers of a CT series.

    UIDs left as ``None`` are generated: deterministically from ``series_uid`` where one is given
    (SOP instance and frame-of-reference UIDs), at random otherwise.
    """

    manufacturer: str = "UNKNOWN"
    model: str = "UNKNOWN"
    kvp: float = 120.0
    tube_current_ma: float | None = None
    exposure_mas: float | None = None
    ctdivol: float | None = None  # mGy; None leaves the CTDIvol tag out
    kernel: str = ""
    slice_thickness: float | None = None  # mm; None = slice spacing
    series_description: str = ""
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    patient_id: str = "PHANTOM"
    patient_name: str = "Liver^Phantom"
    series_datetime: _dt.datetime = field(default_factory=lambda: _dt.datetime(2024, 1, 1, 12, 0, 0))
    series_number: int = 1
    station: str = ""  # scanner code, e.g. "A1"
    body_part: str = "ABDOMEN"
    institution: str = "ctdose digital twin"


def _uid(seed: str | None, *parts: str) -> str:
    """A UID derived from ``seed`` and ``parts`` (random when ``seed`` is None)."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *parts])


def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters, as many digits as fit)."""
    for digits in range(12, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def write_ct_series(volume: Volume, out_dir: str | Path, meta: CTSeriesMeta, *,
                    prefix: str = "CT") -> list[Path]:
    """Write ``volume`` as one CT Image Storage file per slice in ``out_dir`` (``<prefix>0001.dcm``...).

    Pixels are signed int16 with RescaleSlope 1 and RescaleIntercept -1024 (HU outside
    [-33792, 31743] are clipped). Slice k sits at ``origin + direction[:, 2] * k * spacing_z``.
    Each file is written atomically. Returns the file paths in slice order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = meta.series_uid or generate_uid()
    study_uid = meta.study_uid or _uid(meta.series_uid, "study")
    for_uid = meta.frame_of_reference_uid or _uid(meta.series_uid, "frame-of-reference")
    nz, ny, nx = volume.array.shape
    sx, sy, sz = (float(s) for s in volume.spacing)
    row_dir, col_dir, normal = (volume.direction[:, n] for n in range(3))
    iop = [float(v) for v in (*row_dir, *col_dir)]
    stamp = meta.series_datetime
    date, time = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S.%f")
    stored = np.clip(np.rint(volume.array - RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
    paths = []
    for k in range(nz):
        sop_uid = _uid(series_uid, "sop", str(k))
        position = volume.origin + normal * sz * k
        file_meta = FileMetaDataset()
        file_meta.MediaStorageSOPClassUID = CTImageStorage
        file_meta.MediaStorageSOPInstanceUID = sop_uid
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=file_meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AcquisitionDateTime = date + time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = meta.manufacturer
        ds.InstitutionName = meta.institution
        ds.ReferringPhysicianName = ""
        ds.StationName = meta.station
        ds.StudyDescription = "Liver phantom"
        ds.SeriesDescription = meta.series_description
        ds.ManufacturerModelName = meta.model
        ds.PatientName = meta.patient_name
        ds.PatientID = meta.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = meta.body_part
        ds.SliceThickness = _ds(meta.slice_thickness if meta.slice_thickness is not None else sz)
        ds.KVP = _ds(meta.kvp)
        ds.SoftwareVersions = f"ctdose {__version__}"
        ds.ConvolutionKernel = meta.kernel
        ds.PatientPosition = "HFS"
        if meta.tube_current_ma is not None:
            ds.XRayTubeCurrent = int(round(meta.tube_current_ma))
        if meta.exposure_mas is not None:
            ds.Exposure = int(round(meta.exposure_mas))
        if meta.ctdivol is not None:
            ds.CTDIvol = float(meta.ctdivol)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(meta.series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(np.dot(position, normal)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (y), column spacing (x)
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = out_dir / f"{prefix}{k + 1:04d}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def is_seg(ds: Dataset) -> bool:
    """True for a DICOM Segmentation object."""
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID or ds.get("Modality") == "SEG"


def is_ct_image(ds: Dataset) -> bool:
    """True for a CT image slice (with pixel geometry), False for SEG and other objects."""
    return (not is_seg(ds)) and ds.get("Modality") == "CT" and "ImagePositionPatient" in ds


def series_label(ds: Dataset) -> str:
    """A readable name for messages: SeriesDescription, else SeriesInstanceUID."""
    return str(ds.get("SeriesDescription", "") or ds.get("SeriesInstanceUID", "?"))


@dataclass
class SliceGeometry:
    """Geometry of a stack of parallel slices sorted along the normal.

    ``order`` sorts the input datasets into slice order; ``origin``/``spacing``/``direction``
    follow :class:`~ctdose.volume.Volume` conventions (x, y, z; columns = i, j, k axes).
    """

    order: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    shape_zyx: tuple[int, int, int]


def slice_geometry(datasets: list[Dataset], name: str) -> SliceGeometry:
    """Sort CT slices along their normal and check they form an evenly spaced, gap-free stack.

    Raises ``ValueError`` naming the series (``name``) on mixed orientations or sizes, duplicated
    positions, a missing slice or uneven spacing.
    """
    if not datasets:
        raise ValueError(f"series {name}: no CT slices")
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise ValueError(f"series {name}: slices have different ImageOrientationPatient")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise ValueError(f"series {name}: slices have different sizes {sorted(sizes)}")
    row_dir, col_dir = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    in_plane = (positions - positions[0]) - np.outer(along - along[0], normal)
    if np.abs(in_plane).max(initial=0.0) > max(SPACING_ATOL_MM, 0.05):
        raise ValueError(f"series {name}: slice positions are not stacked along the slice normal")
    pixel_spacing = [float(v) for v in datasets[0].PixelSpacing]
    if len(datasets) == 1:
        step = float(datasets[0].get("SpacingBetweenSlices", 0) or datasets[0].get("SliceThickness", 1) or 1)
    else:
        steps = np.diff(along)
        if np.any(steps < SPACING_ATOL_MM):
            k = int(np.argmin(steps))
            raise ValueError(f"series {name}: two slices share the position {along[k]:.2f} mm "
                             f"along the normal")
        step = float(np.median(steps))
        tol = max(SPACING_ATOL_MM, SPACING_RTOL * step)
        bad = np.flatnonzero(np.abs(steps - step) > tol)
        if bad.size:
            k = int(bad[0])
            gap = steps[k]
            ratio = gap / step
            what = (f"missing slice(s): gap of {gap:.3g} mm (~{round(ratio) - 1} slice(s))"
                    if round(ratio) >= 2 and abs(ratio - round(ratio)) * step <= tol
                    else f"uneven spacing: step of {gap:.3g} mm")
            raise ValueError(f"series {name}: {what} between slices at {along[k]:.2f} and "
                             f"{along[k + 1]:.2f} mm along the normal (expected step {step:.3g} mm)")
    return SliceGeometry(
        order=order,
        origin=positions[0],
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], step]),
        direction=np.column_stack([row_dir, col_dir, normal]),
        shape_zyx=(len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)),
    )


#: Suffixes of files that are never DICOM (sidecars, tables, images, notes) and are left out silently.
NON_DICOM_SUFFIXES = frozenset({".json", ".csv", ".tsv", ".txt", ".md", ".html", ".yaml", ".yml", ".xml",
                                ".png", ".jpg", ".pdf", ".nii", ".gz", ".zip", ".py"})


def dicom_files(path: str | Path) -> list[Path]:
    """Candidate DICOM files below ``path`` (a folder, searched recursively, or a single file), sorted.

    Hidden files and folders (names starting with ".", e.g. temporary files of atomic writes) and
    files with a suffix in ``NON_DICOM_SUFFIXES`` are left out; anything else is a candidate (DICOM
    files often have no suffix at all).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {path}")
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and p.suffix.lower() not in NON_DICOM_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def read_series_datasets(path: str | Path, series_uid: str | None = None, *,
                         stop_before_pixels: bool = False) -> list[Dataset]:
    """The CT slices (pydicom datasets, file order) of one series found below ``path``.

    Non-DICOM files, SEG objects and other series are skipped. Without ``series_uid`` the folder
    must hold exactly one CT series. Raises ``ValueError`` / ``FileNotFoundError`` otherwise.
    """
    by_series: dict[str, list[Dataset]] = {}
    for file in dicom_files(path):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=stop_before_pixels)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
            continue
        if not is_ct_image(ds):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if series_uid is None or uid == series_uid:
            by_series.setdefault(uid, []).append(ds)
    if series_uid is not None and series_uid not in by_series:
        raise ValueError(f"no CT slices of series {series_uid} in {path}")
    if not by_series:
        raise ValueError(f"no CT series in {path}")
    if len(by_series) > 1:
        raise ValueError(f"{path} holds {len(by_series)} CT series ({', '.join(sorted(by_series))}); "
                         f"pass series_uid to choose one")
    return next(iter(by_series.values()))


def volume_from_datasets(datasets: Iterable[Dataset]) -> Volume:
    """Stack CT slices (with pixel data) into a float32 HU Volume ordered along the slice normal."""
    datasets = list(datasets)
    name = series_label(datasets[0]) if datasets else "?"
    geom = slice_geometry(datasets, name)
    array = np.empty(geom.shape_zyx, dtype=np.float32)
    for k, n in enumerate(geom.order):
        ds = datasets[n]
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        try:
            pixels = ds.pixel_array
        except (ValueError, RuntimeError, AttributeError) as error:  # truncated or undecodable pixel data
            raise ValueError(f"series {name}: cannot read the pixels of {ds.filename}: {error}") from None
        array[k] = pixels.astype(np.float32) * slope + intercept
    return Volume(array=array, origin=geom.origin, spacing=geom.spacing, direction=geom.direction)


def read_ct_series(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read the CT series below folder ``path`` (the one with ``series_uid`` if given) as HU.

    Slices are ordered by position along the slice normal; a missing slice or uneven spacing
    raises ``ValueError`` naming the series and the gap.
    """
    return volume_from_datasets(read_series_datasets(path, series_uid))


@functools.lru_cache(maxsize=2)
def read_reference_series(path: str, series_uid: str) -> Volume:
    """:func:`read_ct_series`, cached per process, for a series that many tasks compare against.

    The returned Volume is shared between callers: treat it as read-only.
    """
    return read_ct_series(path, series_uid)
