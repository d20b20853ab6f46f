"""DICOM CT series: write a Volume as a valid CT Image Storage series, and read one back.

Reading orders slices by their position along the slice normal (never by InstanceNumber) and
refuses a series with a missing slice or uneven spacing, naming the series and the gap. The
returned :class:`~ctdose.volume.Volume` is float32 HU indexed ``[z, y, x]`` with LPS geometry.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.pixels.utils import get_expected_length
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
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
#: Phantom the CTDIvol tag refers to (CID 4052): the 32 cm IEC body phantom, the one of body CT.
CTDI_BODY_PHANTOM = codes.DCM.IECBodyDosimetryPhantom


class SourceImage(NamedTuple):
    """The image a derived slice was computed from: SOP class and instance UIDs, and its 1-based frame
    number when it is a frame of a multi-frame image (None for a single-frame image)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame: int | None = None


@dataclass(frozen=True)
class Derivation:
    """How a derived CT series was computed from the slices of another.

    Written as ImageType DERIVED\\SECONDARY\\AXIAL (pixel values computed from other images, after
    the examination; PS3.3 C.7.6.1.1.2), DerivationDescription, DerivationCodeSequence (``code``,
    CID 7203) and, per slice, a SourceImageSequence item naming its source slice.
    ``sources`` holds one :class:`SourceImage` per written slice, in slice order.
    """

    description: str
    sources: tuple[SourceImage, ...]
    code: Code | None = None


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
    ctdi_phantom: Code = CTDI_BODY_PHANTOM  # phantom CTDIvol refers to (CID 4052)
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
    derivation: Derivation | None = None  # None: an ORIGINAL\\PRIMARY series


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


def _code_item(code: Code) -> Dataset:
    """A Code Sequence Macro item (CodeValue, CodingSchemeDesignator, CodeMeaning) for ``code``."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _add_derivation(ds: Dataset, derivation: Derivation, k: int) -> None:
    """Mark slice ``k`` as derived: description, derivation code and its source slice."""
    ds.DerivationDescription = derivation.description
    if derivation.code is not None:
        ds.DerivationCodeSequence = [_code_item(derivation.code)]
    reference = derivation.sources[k]
    source = Dataset()
    source.ReferencedSOPClassUID = reference.sop_class_uid
    source.ReferencedSOPInstanceUID = reference.sop_instance_uid
    if reference.frame is not None:
        source.ReferencedFrameNumber = reference.frame
    source.PurposeOfReferenceCodeSequence = [_code_item(codes.DCM.SourceImageForImageProcessingOperation)]
    source.SpatialLocationsPreserved = "YES"
    ds.SourceImageSequence = [source]


def write_ct_series(volume: Volume, out_dir: str | Path, meta: CTSeriesMeta, *,
                    prefix: str = "CT", per_slice: bool = False) -> list[Path]:
    """Write ``volume`` as one CT Image Storage file per slice in ``out_dir`` (``<prefix>0001.dcm``...).

    Pixels are signed int16 with RescaleSlope 1 and RescaleIntercept -1024 (HU outside
    [-33792, 31743] are clipped). Slice k sits at ``origin + direction[:, 2] * k * spacing_z``.
    CTDIvol, when given, comes with its CTDI phantom; a ``meta.derivation`` marks every slice as
    derived from its source slice. Each file is written atomically. Returns the file paths in slice order.

    Building and encoding a dataset costs about 3 ms a slice, so the first slice's file serves as the
    template of the others: only the elements that differ between slices (:data:`SLICE_VARYING`) are
    encoded per slice, the same bytes as ``per_slice=True`` (every slice's dataset built and encoded;
    tests compare the two). A derived series (per-slice source references) is written per slice.
    """
    out_dir = Path(out_dir)
    if meta.derivation is not None and len(meta.derivation.sources) != volume.array.shape[0]:
        raise ValueError(f"derivation names {len(meta.derivation.sources)} source slices for a volume of "
                         f"{volume.array.shape[0]} slices")
    out_dir.mkdir(parents=True, exist_ok=True)
    series = _SeriesWrite(volume, meta, out_dir, prefix)
    nz = volume.array.shape[0]
    if per_slice or meta.derivation is not None or nz < 2:
        return [series.write_slice(k) for k in range(nz)]
    first = series.write_slice(0)
    return [first, *series.write_from_template(first, range(1, nz))]


#: The elements of a CT slice written by :func:`write_ct_series` that differ between slices of a series
#: (SOPInstanceUID also in the file meta); the others are encoded once per series.
SLICE_VARYING = tuple(Tag(k) for k in ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient",
                                       "SliceLocation", "PixelData"))


def encode_elements(elements: list[DataElement]) -> bytes:
    """Explicit VR little endian encoding of data elements, in the order given."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    for elem in elements:
        write_data_element(fp, elem)
    return fp.getvalue()


class _SeriesWrite:
    """One series being written by :func:`write_ct_series`: its UIDs, int16 pixels and slice geometry."""

    def __init__(self, volume: Volume, meta: CTSeriesMeta, out_dir: Path, prefix: str) -> None:
        self.volume, self.meta, self.out_dir, self.prefix = volume, meta, out_dir, prefix
        self.series_uid = meta.series_uid or generate_uid()
        self.study_uid = meta.study_uid or _uid(meta.series_uid, "study")
        self.for_uid = meta.frame_of_reference_uid or _uid(meta.series_uid, "frame-of-reference")
        self.stored = np.clip(np.rint(volume.array - RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
        self.sz = float(volume.spacing[2])
        self.normal = volume.direction[:, 2]

    def path(self, k: int) -> Path:
        return self.out_dir / f"{self.prefix}{k + 1:04d}.dcm"

    def varying(self, k: int) -> dict[Tag, object]:
        """The values of :data:`SLICE_VARYING` for slice ``k``."""
        position = self.volume.origin + self.normal * self.sz * k
        return {Tag("SOPInstanceUID"): _uid(self.series_uid, "sop", str(k)), Tag("InstanceNumber"): k + 1,
                Tag("ImagePositionPatient"): [_ds(v) for v in position],
                Tag("SliceLocation"): _ds(float(np.dot(position, self.normal))),
                Tag("PixelData"): np.ascontiguousarray(self.stored[k]).tobytes()}

    def write_slice(self, k: int) -> Path:
        """Build slice ``k``'s dataset and write it (atomically)."""
        volume, meta = self.volume, self.meta
        _, ny, nx = volume.array.shape
        sx, sy, sz = (float(s) for s in volume.spacing)
        iop = [float(v) for v in (*volume.direction[:, 0], *volume.direction[:, 1])]
        stamp = meta.series_datetime
        date, time = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S.%f")
        study_uid, series_uid, for_uid = self.study_uid, self.series_uid, self.for_uid
        values = self.varying(k)
        sop_uid = values[Tag("SOPInstanceUID")]
        file_meta = FileMetaDataset()
        file_meta.MediaStorageSOPClassUID = CTImageStorage
        file_meta.MediaStorageSOPInstanceUID = sop_uid
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=file_meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = (["DERIVED", "SECONDARY", "AXIAL"] if meta.derivation is not None
                        else ["ORIGINAL", "PRIMARY", "AXIAL"])
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
            ds.CTDIPhantomTypeCodeSequence = [_code_item(meta.ctdi_phantom)]
        if meta.derivation is not None:
            _add_derivation(ds, meta.derivation, k)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(meta.series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = values[Tag("InstanceNumber")]
        ds.ImagePositionPatient = values[Tag("ImagePositionPatient")]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = values[Tag("SliceLocation")]
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
        ds.PixelData = values[Tag("PixelData")]
        path = self.path(k)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return path

    def write_from_template(self, template_path: Path, slices: Iterable[int]) -> list[Path]:
        """Write ``slices`` from the first slice's file: its fixed elements encoded once, the
        :data:`SLICE_VARYING` ones per slice (per slice again when the template lacks one of them)."""
        template = pydicom.dcmread(template_path)
        runs: list[bytes] = []
        current: list[DataElement] = []
        for tag in sorted(template.keys()):  # the fixed elements between the varying ones, each run encoded once
            if tag in SLICE_VARYING:
                runs.append(encode_elements(current))
                current = []
            else:
                current.append(template[tag])
        runs.append(encode_elements(current))
        if len(runs) != len(SLICE_VARYING) + 1:
            return [self.write_slice(k) for k in slices]
        vr = {tag: template[tag].VR for tag in SLICE_VARYING}
        file_meta = template.file_meta
        preamble = bytes(template.preamble) + b"DICM"
        paths = []
        for k in slices:
            values = self.varying(k)
            file_meta.MediaStorageSOPInstanceUID = values[Tag("SOPInstanceUID")]
            head = DicomBytesIO()
            head.is_little_endian, head.is_implicit_VR = True, False
            write_file_meta_info(head, file_meta, enforce_standard=True)
            parts = [preamble, head.getvalue(), runs[0]]
            for tag, run in zip(SLICE_VARYING, runs[1:]):
                parts += [encode_elements([DataElement(tag, vr[tag], values[tag])]), run]
            with atomic_path(self.path(k)) as tmp:
                tmp.write_bytes(b"".join(parts))
            paths.append(self.path(k))
        return paths


#: SOP Class UIDs of the multi-frame CT images read frame by frame through their functional groups:
#: Enhanced CT Image Storage and Legacy Converted Enhanced CT Image Storage.
ENHANCED_CT_SOP_CLASS_UIDS = frozenset({"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"})
#: SOP Class UID of RT Structure Set Storage.
RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"


def is_seg(ds: Dataset) -> bool:
    """True for a DICOM Segmentation object."""
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID or ds.get("Modality") == "SEG"


def is_rtstruct(ds: Dataset) -> bool:
    """True for an RT Structure Set (contours of ROIs drawn on a CT series)."""
    return str(ds.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS_UID or ds.get("Modality") == "RTSTRUCT"


def is_enhanced_ct(ds: Dataset) -> bool:
    """True for an Enhanced CT or Legacy Converted Enhanced CT image (multi-frame, functional groups)."""
    return str(ds.get("SOPClassUID", "")) in ENHANCED_CT_SOP_CLASS_UIDS


def is_ct_image(ds: Dataset) -> bool:
    """True for a CT image (a slice with pixel geometry, or an Enhanced / Legacy Converted Enhanced
    CT multi-frame image), False for SEG and other objects."""
    return (not is_seg(ds)) and ds.get("Modality") == "CT" and (
        "ImagePositionPatient" in ds or is_enhanced_ct(ds))


def is_localizer(ds: Dataset) -> bool:
    """True for a localizer (scout, topogram): ImageType holds LOCALIZER."""
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return "LOCALIZER" in {str(v).strip().upper() for v in image_type}


def series_label(ds: Dataset) -> str:
    """A readable name for messages: SeriesDescription, else SeriesInstanceUID."""
    return str(ds.get("SeriesDescription", "") or ds.get("SeriesInstanceUID", "?"))


class NotDicomError(ValueError):
    """A file that is not DICOM at all (no ``DICM`` prefix), as opposed to a damaged DICOM file."""


class DamagedDicomError(ValueError):
    """A damaged DICOM file; ``dataset`` is its header when that much was readable (else None)."""

    def __init__(self, message: str, dataset: Dataset | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset


#: Tags needed to check that a file holds all of its (native) pixel data.
_SIZE_TAGS = ("SOPClassUID", "Modality", "SeriesDescription", "SeriesInstanceUID", "Rows", "Columns",
              "NumberOfFrames", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")


def _has_dicm_prefix(path: Path) -> bool:
    with open(path, "rb") as fp:
        return fp.read(132)[128:132] == b"DICM"


#: (FFFE,E0DD) with length 0, little endian: the end of encapsulated pixel data.
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _tail(path: Path) -> bytes:
    with open(path, "rb") as fp:
        fp.seek(max(0, os.fstat(fp.fileno()).st_size - 8))
        return fp.read(8)


def _dcmread_checked(path: Path, *, stop_before_pixels: bool,
                     specific_tags: list[str] | None) -> tuple[Dataset, int, int, bool]:
    """``pydicom.dcmread`` that turns parse errors into one line: the dataset, the file size, the file
    position where reading stopped, and whether pydicom met the end of the file inside encapsulated
    pixel data (its warning; other warnings pass through)."""
    # the warning comes only with the pixel data; recording warnings costs ~10 % of a header read
    record = warnings.catch_warnings(record=True) if not stop_before_pixels else contextlib.nullcontext([])
    with open(path, "rb") as fp, record as caught:
        if not stop_before_pixels:
            warnings.simplefilter("always")
        size = os.fstat(fp.fileno()).st_size
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)
        except InvalidDicomError:
            raise NotDicomError(f"{path}: not a DICOM file") from None
        except Exception as error:  # pydicom raises many types on a damaged header; each is one line here
            if not _has_dicm_prefix(path):
                raise NotDicomError(f"{path}: not a DICOM file") from None
            raise DamagedDicomError(f"{path}: damaged DICOM header, cut off or corrupt "
                                    f"({type(error).__name__}: {error})") from None
        end = fp.tell()
    cut = False
    for warning in caught:
        if "End of file reached before delimiter" in str(warning.message):
            cut = True
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return ds, size, end, cut


def read_dicom(path: str | Path, *, stop_before_pixels: bool = True,
               specific_tags: list[str] | None = None) -> Dataset:
    """Read one DICOM file (its header only by default) and check that it is whole.

    Raises :class:`NotDicomError` for a file that is not DICOM, and :class:`DamagedDicomError`
    (a ``ValueError``) naming the file for a damaged one: no SOP Class UID, a header pydicom
    cannot parse after the ``DICM`` prefix, a header cut off before the pixel data of an image
    (or an image written without pixels), uncompressed pixel data shorter than Rows x Columns x
    frames x samples x bits, or compressed (encapsulated) pixel data without its closing sequence
    delimiter (looked for in the file's last 8 bytes; a full read confirms a miss, since elements
    may follow the pixel data). A cut deflated file fails to inflate, naming the file.
    """
    path = Path(path)
    if specific_tags is not None:
        specific_tags = [*specific_tags, *_SIZE_TAGS, *(() if stop_before_pixels else ("PixelData",))]
    ds, size, end, cut = _dcmread_checked(path, stop_before_pixels=stop_before_pixels,
                                          specific_tags=specific_tags)
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    deflated = syntax is not None and syntax.is_deflated
    sop_class = ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    if not sop_class:  # every DICOM object names its SOP class, in its file meta group first of all
        raise DamagedDicomError(f"{path}: DICOM file cut off, or damaged: no SOP Class UID in its "
                                f"{size} bytes")
    sop_name = getattr(sop_class, "name", "")
    if not ("Rows" in ds or str(sop_class) == SEG_SOP_CLASS_UID or sop_name.endswith("Image Storage")):
        return ds  # no pixel data expected (RTSTRUCT, SR, ...)
    # stop_before_pixels leaves the file position at the Pixel Data tag; at the end of the file,
    # that tag was never met (a deflated body is read from memory: nothing to tell from the position)
    reached = ("PixelData" in ds) if not stop_before_pixels else (deflated or end < size)
    if not reached or "Rows" not in ds or "Columns" not in ds:
        raise DamagedDicomError(f"{path}: DICOM file cut off, or written without pixels: it ends "
                                f"({size} bytes) before the pixel data of its image is complete")
    if syntax is not None and syntax.is_encapsulated:
        # encapsulated fragments end with a sequence delimiter, normally the file's last 8 bytes;
        # otherwise (a cut file, or elements after the pixel data) a full read tells which
        if cut or (stop_before_pixels and _tail(path) != _SEQUENCE_DELIMITER
                   and _dcmread_checked(path, stop_before_pixels=False, specific_tags=None)[3]):
            raise DamagedDicomError(f"{path}: DICOM file cut off ({size} bytes; its compressed pixel data "
                                    f"ends before its sequence delimiter)", ds)
        return ds
    if deflated:
        return ds
    try:
        needed = int(get_expected_length(ds, unit="bytes"))  # a malformed IS value can come back as text
    except (AttributeError, TypeError, ValueError) as error:
        raise DamagedDicomError(f"{path}: unusable image header ({type(error).__name__}: {str(error)[:120]})",
                                ds) from None
    available = len(ds.PixelData) if not stop_before_pixels else size - end
    if available < needed:
        raise DamagedDicomError(f"series {series_label(ds)}: cannot read the pixels of {path}: truncated "
                                f"DICOM file ({available} bytes from the pixel data on; the pixel data alone "
                                f"needs {needed})", ds)
    return ds


class FrameDataset(Dataset):
    """One frame of an Enhanced / Legacy Converted Enhanced CT image, as a single-frame CT header.

    Holds the image's top-level attributes and, moved to the top level, the contents of its shared
    then its per-frame functional groups (per-frame wins): ImagePositionPatient (Plane Position),
    ImageOrientationPatient (Plane Orientation), PixelSpacing and SliceThickness (Pixel Measures),
    RescaleSlope / RescaleIntercept (Pixel Value Transformation), CTDIvol, KVP, ConvolutionKernel
    ... read as on a CT Image Storage slice. ``pixel_array`` is the frame's stored values (rows,
    columns), decoded once per image; ``frame_index`` is the 0-based frame number.
    """

    def __init__(self, source: Dataset, frame_index: int, per_frame: Dataset, shared: Dataset) -> None:
        super().__init__()
        for element in source:
            if element.tag not in _NOT_COPIED:
                self.add(element)
        for groups in (shared, per_frame):
            for macro in groups:
                if macro.VR == "SQ" and macro.value and not macro.tag.is_private:
                    for element in macro.value[0]:
                        self.add(element)
        self.source = source
        self.frame_index = frame_index
        self.filename = getattr(source, "filename", None)

    @property
    def pixel_array(self) -> np.ndarray:  # type: ignore[override]
        pixels = self.source.pixel_array
        return pixels[self.frame_index] if int(self.source.get("NumberOfFrames", 1) or 1) > 1 else pixels


#: Top-level elements a frame does not inherit from its multi-frame image.
_NOT_COPIED = frozenset({pydicom.tag.Tag("PixelData"), pydicom.tag.Tag("NumberOfFrames"),
                         pydicom.tag.Tag("SharedFunctionalGroupsSequence"),
                         pydicom.tag.Tag("PerFrameFunctionalGroupsSequence")})


def ct_frames(ds: Dataset) -> list[Dataset]:
    """The slices of one CT image file: ``[ds]`` for a CT Image Storage slice, one
    :class:`FrameDataset` per frame for an Enhanced or Legacy Converted Enhanced CT image.

    Raises ``ValueError`` naming the file for a multi-frame CT Image Storage object (not a
    standard form) and for an enhanced image whose frames lack a plane position, orientation or
    pixel spacing.
    """
    where = getattr(ds, "filename", None) or series_label(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not is_enhanced_ct(ds):
        if n_frames > 1:
            raise ValueError(f"{where}: a {n_frames}-frame CT Image Storage object is not supported "
                             f"(only Enhanced and Legacy Converted Enhanced CT are read frame by frame)")
        return [ds]
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise ValueError(f"{where}: {len(per_frame)} per-frame functional groups for {n_frames} frames")
    frames = [FrameDataset(ds, k, per_frame[k], shared_seq[0]) for k in range(n_frames)]
    for frame in frames:
        missing = [kw for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
                   if kw not in frame]
        if missing:
            raise ValueError(f"{where}: frame {frame.frame_index + 1} of this {ds.SOPClassUID.name} has no "
                             f"{', '.join(missing)} in its functional groups; cannot place it in space")
    return frames


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

    Non-DICOM files, SEG objects and other series are skipped; an Enhanced or Legacy Converted
    Enhanced CT image gives one :class:`FrameDataset` per frame. Without ``series_uid`` the folder
    must hold exactly one CT series. Raises ``FileNotFoundError`` for a missing folder, and
    ``ValueError`` otherwise, naming the file for a damaged DICOM file (see :func:`read_dicom`)
    that may be a slice of the series (unless its readable header says it is not, it is never skipped).
    """
    by_series: dict[str, list[Dataset]] = {}
    for file in dicom_files(path):
        try:
            ds = read_dicom(file, stop_before_pixels=stop_before_pixels)
        except NotDicomError:
            continue
        except DamagedDicomError as error:
            other = error.dataset is not None and (not is_ct_image(error.dataset) or (
                series_uid is not None and str(error.dataset.get("SeriesInstanceUID", "")) != series_uid))
            if other:  # its header says it belongs to another series or object: not a slice of this one
                continue
            raise
        except OSError as error:
            raise ValueError(f"cannot read {file}: {error.strerror or error}") from None
        if not is_ct_image(ds):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if series_uid is None or uid == series_uid:
            by_series.setdefault(uid, []).extend(ct_frames(ds))
    if series_uid is not None and series_uid not in by_series:
        raise ValueError(f"no CT slices of series {series_uid} in {path}")
    if not by_series:
        raise ValueError(f"no CT series in {path}")
    if len(by_series) > 1:
        raise ValueError(f"{path} holds {len(by_series)} CT series ({', '.join(sorted(by_series))}); "
                         f"pass series_uid to choose one")
    return next(iter(by_series.values()))



def ct_slice_grid(ct_dir: str | Path, series_uid: str | None = None) -> tuple[list[Dataset], str, SliceGeometry]:
    """A CT series' slice headers (no pixels), its SeriesInstanceUID and its slice geometry: the grid
    that SEG frames and RTSTRUCT contours are placed on."""
    ct_slices = read_series_datasets(ct_dir, series_uid, stop_before_pixels=True)
    ct_uid = str(ct_slices[0].SeriesInstanceUID)
    return ct_slices, ct_uid, slice_geometry(ct_slices, ct_uid)

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
