"""Real-world DICOM into the catalog and into Volumes: compressed transfer syntaxes, damaged files named,
Enhanced / Legacy Converted Enhanced CT, series without dose, localizers, RTSTRUCT linking.

Data: pydicom's own test files and the `pydicom-data` wheel (both installed, found offline by
``pydicom.data.get_testdata_file``), and ../shared/realdata (dcmqi, highdicom, IBSI CT phantom).
Independent references: the uncompressed original of each compressed file, GDCM (through SimpleITK),
highdicom's own Enhanced CT geometry, and the IBSI phantom's NIfTI conversion.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         generate_uid)

from ctdose.catalog import CatalogWarning, build_catalog
from ctdose.dicom_io import NotDicomError, is_rtstruct, read_ct_series, read_dicom
from ctdose.volume import Volume

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
DCMQI, IBSI = REALDATA / "dcmqi", REALDATA / "ibsi1_ct_phantom" / "dicom"
pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent")


def _testdata(name: str) -> Path:
    """A pydicom / pydicom-data test file, never downloaded (pydicom-data ships its files in the wheel)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom-data is pinned in requirements.txt)"
    return Path(path)


def _pixels(path: Path) -> np.ndarray:
    return read_dicom(path, stop_before_pixels=False).pixel_array


# --- 1. compressed transfer syntaxes ---------------------------------------------------------------

@pytest.mark.parametrize("compressed, original", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),                    # RLE Lossless
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),       # JPEG-LS Lossless
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),           # JPEG 2000 Lossless
    ("emri_small_RLE.dcm", "emri_small.dcm"),                # multi-frame RLE (pydicom-data)
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),   # multi-frame JPEG-LS (pydicom-data)
    ("693_J2KR.dcm", "693_UNCR.dcm"),                        # a 512x512 CT slice, JPEG 2000 (pydicom-data)
])
def test_compressed_files_decode_to_their_uncompressed_original(compressed, original):
    """Lossless syntaxes: the decoded pixels equal the uncompressed file's, bit for bit, and the header
    read (the catalog's) does not call the compressed file truncated."""
    path = _testdata(compressed)
    header = read_dicom(path)  # raised "truncated" before: the file is smaller than its raw pixels
    assert header.file_meta.TransferSyntaxUID.is_compressed
    raw_bytes = int(header.Rows) * int(header.Columns) * int(header.get("NumberOfFrames", 1)) * 2
    assert path.stat().st_size < raw_bytes
    np.testing.assert_array_equal(_pixels(path), _pixels(_testdata(original)))


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
def test_jpeg_lossless_process14_matches_gdcm(name):
    """JPEG Lossless (process 14, selection value 1) has no uncompressed twin in pydicom-data: GDCM,
    through SimpleITK, is the independent decoder."""
    path = _testdata(name)
    assert read_dicom(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(_pixels(path), reference.reshape(_pixels(path).shape))


def _recompress(files: list[Path], syntax: str) -> None:
    for file in files:
        ds = pydicom.dcmread(file)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)  # pydicom's encoders: RLE (its own), JPEG-LS (pyjpegls), J2K (openjpeg)
        ds.save_as(file, enforce_file_format=True)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless,
                                    DeflatedExplicitVRLittleEndian])
def test_compressed_ct_series_enters_the_catalog_and_reads_back(tmp_path, make_ct_series, syntax):
    case = make_ct_series(tmp_path / "s", dose=6, scan_id=3)
    uncompressed = read_ct_series(tmp_path / "s").array
    _recompress(case.files, syntax)
    assert pydicom.dcmread(case.files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    df = build_catalog(tmp_path)
    assert df.attrs["skipped"] == {}
    row = df.iloc[0]
    assert (row.series_uid, row.n_slices, row.dose_mgy, row.seg_path) == (
        case.meta.series_uid, len(case.files), 6.0, str(case.seg_path))
    np.testing.assert_array_equal(read_ct_series(tmp_path / "s").array, uncompressed)  # lossless


# --- 2. damaged files are named --------------------------------------------------------------------

def _header_length(path: Path) -> int:
    """Bytes before the Pixel Data element (where pydicom stops with stop_before_pixels)."""
    with open(path, "rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        return fp.tell()


def test_damaged_files_are_named_not_dropped(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "good", scan_id=1)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = case.files[0].read_bytes()
    header = _header_length(case.files[0])
    cuts = {"mid_header.dcm": data[:header // 2],            # cut inside the dataset's header
            "in_meta.dcm": data[:150],                        # cut inside the file meta group
            "pixels.dcm": data[:header + 100]}                # a native file cut in its pixel data
    for name, content in cuts.items():
        (damaged / name).write_bytes(content)
    rle = make_ct_series(tmp_path / "rle", dose=3, scan_id=2, seed=1, with_seg=False)
    _recompress(rle.files[:1], RLELossless)
    (damaged / "rle_cut.dcm").write_bytes(rle.files[0].read_bytes()[:-100])  # compressed, cut
    rle.files[0].unlink()
    (damaged / "junk").write_bytes(b"\0" * 300)

    with pytest.warns(CatalogWarning) as record:
        df = build_catalog(tmp_path)
    messages = [str(w.message) for w in record]
    skipped = df.attrs["skipped"]
    for name in (*cuts, "rle_cut.dcm"):
        path = str(damaged / name)
        assert any(path in m and m.startswith("skipping a damaged") for m in messages), name
        assert "cut off" in skipped[path] or "truncated" in skipped[path], skipped[path]
    assert skipped[str(damaged / "junk")] == "not DICOM"
    summary = [m for m in messages if m.startswith("skipped 5 file(s)")]
    assert summary and "1 not DICOM" in summary[0] and "4 damaged" in summary[0]
    assert set(df["series_uid"]) == {case.meta.series_uid, rle.meta.series_uid}  # the rest is catalogued

    # reading a series folder: a damaged file may be one of its slices, so it stops the read, named
    for name in (*cuts, "rle_cut.dcm"):
        folder = tmp_path / f"read_{name}"
        shutil.copytree(tmp_path / "good", folder)
        shutil.copy(damaged / name, folder / name)
        with pytest.raises(ValueError, match=rf"{folder / name}"):
            read_ct_series(folder)
    with pytest.raises(NotDicomError):
        read_dicom(damaged / "junk")
    # ... unless its intact header says it is a slice of another series
    folder = tmp_path / "with_other"
    shutil.copytree(tmp_path / "good", folder)
    (folder / "other.dcm").write_bytes(rle.files[1].read_bytes()[:-500])  # another series, truncated pixels
    np.testing.assert_array_equal(read_ct_series(folder, case.meta.series_uid).array,
                                  read_ct_series(tmp_path / "good").array)
    with pytest.raises(ValueError, match=rf"cannot read the pixels of {folder / 'other.dcm'}"):
        read_ct_series(folder, rle.meta.series_uid)


# --- 3. Enhanced and Legacy Converted Enhanced CT --------------------------------------------------

def _world_and_values(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel centers (mm, LPS) and values of an array indexed like ``affine``'s columns, sorted by position
    (so two descriptions of one volume with flipped or permuted axes compare equal)."""
    index = np.indices(array.shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    order = np.lexsort(np.round(world, 3))
    return world[:, order], array.reshape(-1)[order]


def _affine_kji(volume: Volume) -> np.ndarray:
    """4x4 matrix mapping a (k, j, i) index of ``volume.array`` to LPS mm."""
    affine = np.eye(4)
    affine[:3, :3] = volume.direction[:, ::-1] * volume.spacing[::-1]
    affine[:3, 3] = volume.origin
    return affine


def test_legacy_converted_multiframe_equals_its_single_frame_series():
    """dcmqi's 3-slice series and the same data as one Legacy Converted Enhanced CT file (frames stored in
    reverse order): same voxels, same geometry; GDCM reads the single-frame series the same way."""
    single = read_ct_series(DCMQI / "23x38x3" / "image")
    multi = read_ct_series(DCMQI / "23x38x3" / "multiframe")
    assert multi.array.shape == (3, 38, 23)
    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.origin, single.origin, atol=1e-6)
    np.testing.assert_allclose(multi.spacing, single.spacing, atol=1e-6)
    np.testing.assert_allclose(multi.direction, single.direction, atol=1e-6)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DCMQI / "23x38x3" / "image")))
    gdcm = reader.Execute()
    np.testing.assert_array_equal(single.array, sitk.GetArrayFromImage(gdcm))
    np.testing.assert_allclose(single.origin, gdcm.GetOrigin(), atol=1e-4)  # DS values carry ~1e-5 mm
    np.testing.assert_allclose(single.spacing, gdcm.GetSpacing(), atol=1e-4)


def test_enhanced_ct_matches_highdicom(tmp_path):
    """pydicom-data's Enhanced CT (2 frames, left-handed row/column directions, rescale in the shared
    Pixel Value Transformation group): every voxel lands where highdicom's own reader puts it."""
    path = _testdata("eCT_Supplemental.dcm")
    shutil.copy(path, tmp_path / "ect.dcm")
    ours = read_ct_series(tmp_path)
    theirs = hd.imread(path).get_volume(apply_real_world_transform=False, apply_modality_transform=True)
    world, values = _world_and_values(ours.array, _affine_kji(ours))
    world_ref, values_ref = _world_and_values(theirs.array, theirs.affine)
    np.testing.assert_allclose(world, world_ref, atol=1e-4)  # mm; DS values hold 6 significant digits
    np.testing.assert_array_equal(values, values_ref)
    assert values.min() == -1024.0  # the intercept is applied


def test_multiframe_series_enters_the_catalog(tmp_path):
    df = build_catalog(DCMQI / "23x38x3")
    rows = df.set_index("path")
    multi = rows.loc[str(DCMQI / "23x38x3" / "multiframe")]
    single = rows.loc[str(DCMQI / "23x38x3" / "image")]
    assert multi["n_slices"] == single["n_slices"] == 3
    assert multi["pixel_spacing"] == single["pixel_spacing"] == 0.7  # from the Pixel Measures group
    assert multi["slice_thickness"] == 2.5


def test_unplaceable_or_unsupported_multiframe_is_refused_by_name(tmp_path, make_ct_series):
    ds = pydicom.dcmread(DCMQI / "23x38x3" / "multiframe" / "mf.dcm")
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    bad = tmp_path / "mf" / "mf.dcm"
    bad.parent.mkdir()
    ds.save_as(bad)
    with pytest.raises(ValueError, match=rf"{bad}: frame 2 .* has no ImagePositionPatient"):
        read_ct_series(bad.parent)
    flat = pydicom.dcmread(DCMQI / "23x38x3" / "image" / "IMG0001.dcm")
    flat.NumberOfFrames = 3
    flat.PixelData = flat.PixelData * 3
    odd = tmp_path / "odd" / "odd.dcm"
    odd.parent.mkdir()
    flat.save_as(odd)
    unplaced = pydicom.dcmread(DCMQI / "ct-3slice" / "01.dcm")
    del unplaced.ImagePositionPatient
    (tmp_path / "unplaced").mkdir()
    unplaced.save_as(tmp_path / "unplaced" / "01.dcm")
    make_ct_series(tmp_path / "ok")
    with pytest.warns(CatalogWarning) as record:
        df = build_catalog(tmp_path)
    assert len(df) == 1
    messages = " ".join(str(w.message) for w in record)
    assert f"{bad}: frame 2" in messages
    assert f"{odd}: a 3-frame CT Image Storage object is not supported" in messages
    assert f"{tmp_path / 'unplaced' / '01.dcm'}: a CT image without ImagePositionPatient" in messages
    assert len(df.attrs["skipped"]) == 3


# --- 4. no dose, localizers, single slices ---------------------------------------------------------

def test_real_vendor_headers_are_catalogued_with_an_empty_dose():
    with pytest.warns(CatalogWarning) as record:
        df = build_catalog(DCMQI)
    assert len(df) == 3 and df["dose_mgy"].isna().all() and not df["dose_mismatch"].any()
    assert sum("dose left empty" in str(w.message) for w in record) == 3
    ge = df.set_index("path").loc[str(DCMQI / "ct-3slice")]
    assert (ge["manufacturer"], ge["model"], ge["kernel"], ge["kvp"]) == (
        "GE MEDICAL SYSTEMS", "LightSpeed Ultra", "STANDARD", 120.0)
    assert (ge["n_slices"], ge["pixel_spacing"], ge["slice_thickness"]) == (3, 0.810547, 1.25)
    assert (ge["seg_path"], ge["roi_format"]) == (str(DCMQI / "liver.dcm"), "SEG")


def test_ibsi_ct_phantom_enters_with_its_rtstruct_and_reads_like_its_nifti():
    df = build_catalog(IBSI)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["n_slices"] == 60 and np.isnan(row["dose_mgy"])
    assert row["pixel_spacing"] == pytest.approx(0.977, abs=1e-6)  # written as DS "0.97699999809265"
    assert (row["seg_path"], row["roi_format"]) == (str(IBSI / "mask" / "DCM_RS_00060.dcm"), "RTSTRUCT")
    assert is_rtstruct(pydicom.dcmread(row["seg_path"], stop_before_pixels=True))
    volume = read_ct_series(row["path"], row["series_uid"])
    nifti = sitk.ReadImage(str(REALDATA / "ibsi1_ct_phantom" / "nifti" / "image" / "phantom.nii.gz"))
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(nifti))  # IBSI's own conversion
    np.testing.assert_allclose(volume.origin, nifti.GetOrigin(), atol=1e-4)  # float32 in the NIfTI header
    np.testing.assert_allclose(volume.spacing, nifti.GetSpacing(), atol=1e-4)


def test_localizer_and_single_slice_series_are_left_out_with_a_reason(tmp_path):
    shutil.copytree(DCMQI / "ct-3slice", tmp_path / "axial")
    (tmp_path / "single").mkdir()
    shutil.copy(REALDATA / "highdicom" / "ct_image.dcm", tmp_path / "single")
    (tmp_path / "scout").mkdir()
    scout_uid = generate_uid(entropy_srcs=["scout"])
    for file in sorted((DCMQI / "ct-3slice").iterdir()):
        ds = pydicom.dcmread(file)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesInstanceUID = scout_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[scout_uid, file.name])
        ds.save_as(tmp_path / "scout" / file.name)
    with pytest.warns(CatalogWarning) as record:
        df = build_catalog(tmp_path)
    assert df["path"].tolist() == [str(tmp_path / "axial")]
    messages = " ".join(str(w.message) for w in record)
    assert f"({tmp_path / 'scout'}): a localizer" in messages
    assert f"({tmp_path / 'single'}): a single slice" in messages
    assert set(df.attrs["skipped"]) == {str(tmp_path / "scout"), str(tmp_path / "single")}
    shutil.rmtree(tmp_path / "axial")
    with pytest.raises(ValueError, match="no CT series found .*left out: .*localizer.*single slice|"
                                         "no CT series found .*left out: .*single slice.*localizer"), \
            pytest.warns(CatalogWarning):
        build_catalog(tmp_path)


# --- 6. RTSTRUCT linking ---------------------------------------------------------------------------

def test_rtstruct_links_through_frame_of_reference_and_yields_to_a_seg(tmp_path):
    shutil.copytree(IBSI / "image", tmp_path / "image")
    ds = pydicom.dcmread(IBSI / "mask" / "DCM_RS_00060.dcm")
    for study in ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence:
        del study.RTReferencedSeriesSequence  # only the frame of reference is left to link it
    ds.save_as(tmp_path / "rs.dcm")
    df = build_catalog(tmp_path)
    assert (df.loc[0, "seg_path"], df.loc[0, "roi_format"]) == (str(tmp_path / "rs.dcm"), "RTSTRUCT")

    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "rs.dcm")
    with pytest.raises(ValueError, match=rf"RTSTRUCT {tmp_path / 'rs.dcm'} references no series"):
        build_catalog(tmp_path)

    absent = pydicom.dcmread(IBSI / "mask" / "DCM_RS_00060.dcm")
    (absent.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
     .RTReferencedSeriesSequence[0].SeriesInstanceUID) = "1.2.3.999"
    absent.save_as(tmp_path / "rs.dcm")
    with pytest.raises(ValueError, match=rf"RTSTRUCT {tmp_path / 'rs.dcm'} references series 1.2.3.999, "
                                         rf"which is not in"):
        build_catalog(tmp_path)


def test_seg_wins_over_rtstruct_on_one_series(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "s")
    ds = pydicom.dcmread(IBSI / "mask" / "DCM_RS_00060.dcm")
    (ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
     .RTReferencedSeriesSequence[0].SeriesInstanceUID) = case.meta.series_uid
    ds.save_as(tmp_path / "a_rs.dcm")  # sorts before the SEG by path: the SEG still wins
    with pytest.warns(CatalogWarning, match=rf"has a SEG and an RTSTRUCT \({case.seg_path}, "):
        df = build_catalog(tmp_path)
    assert (df.loc[0, "seg_path"], df.loc[0, "roi_format"]) == (str(case.seg_path), "SEG")
