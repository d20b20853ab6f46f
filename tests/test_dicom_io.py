"""CT series writing/reading: round trip, slice order from position, refusal of gaps and uneven spacing."""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctdose.dicom_io import (CTSeriesMeta, ct_frames, is_ct_image, is_enhanced_ct, is_localizer, is_rtstruct,
                             is_seg, read_ct_series, write_ct_series)
from ctdose.volume import Volume


def _volume(shape=(8, 12, 10), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1500, size=shape).astype(np.float32)
    return Volume(array, origin=(-12.5, 30.0, -100.0), spacing=(0.8, 0.7, 2.0))


def test_round_trip_values_geometry_and_tags(tmp_path):
    volume = _volume()
    meta = CTSeriesMeta(manufacturer="SIEMENS", model="SOMATOM Force", kvp=100, tube_current_ma=55,
                        exposure_mas=44, ctdivol=6.1, kernel="Br40", series_description="A1_x_ID3",
                        series_uid="1.2.3.4.5", station="A1")
    files = write_ct_series(volume, tmp_path, meta)
    assert len(files) == 8
    back = read_ct_series(tmp_path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.origin, volume.origin)
    np.testing.assert_allclose(back.spacing, volume.spacing)
    np.testing.assert_allclose(back.direction, np.eye(3))
    ds = pydicom.dcmread(files[3])
    assert ds.preamble == b"\0" * 128 and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("SIEMENS", "SOMATOM Force")
    assert ds.ConvolutionKernel == "Br40"
    assert float(ds.CTDIvol) == pytest.approx(6.1) and float(ds.KVP) == 100 and int(ds.Exposure) == 44
    assert ds.SeriesInstanceUID == "1.2.3.4.5" and ds.PatientPosition == "HFS" and ds.StationName == "A1"
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(-100.0 + 3 * 2.0)
    # deterministic UIDs: writing again gives the same SOP instance UIDs
    again = write_ct_series(volume, tmp_path / "again", meta)
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert [pydicom.dcmread(f).SOPInstanceUID for f in again] == uids


def test_matches_simpleitk_reader(tmp_path):
    """Independent reference: SimpleITK's GDCM series reader gives the same HU and geometry."""
    volume = _volume(seed=1)
    write_ct_series(volume, tmp_path, CTSeriesMeta(series_uid="1.2.3.9"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    reference = reader.Execute()
    back = read_ct_series(tmp_path)
    np.testing.assert_array_equal(back.array, sitk.GetArrayFromImage(reference).astype(np.float32))
    np.testing.assert_allclose(back.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.spacing, reference.GetSpacing(), atol=1e-4)


def test_slice_order_from_position_not_instance_number(tmp_path):
    volume = _volume(seed=2)
    files = write_ct_series(volume, tmp_path, CTSeriesMeta(series_uid="1.2.3.10"))
    numbers = list(range(1, len(files) + 1))
    random.Random(0).shuffle(numbers)
    names = [f"x{n:03d}.dcm" for n in numbers]
    for file, number, name in zip(files, numbers, names):  # scramble numbers and file names
        ds = pydicom.dcmread(file)
        ds.InstanceNumber = number
        file.unlink()
        ds.save_as(tmp_path / name)
    back = read_ct_series(tmp_path)
    np.testing.assert_array_equal(back.array, volume.array)


def test_oblique_direction_round_trip(tmp_path):
    """A rotated (but right-handed) direction survives the round trip."""
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    volume = _volume(seed=3)
    volume.direction = direction
    write_ct_series(volume, tmp_path, CTSeriesMeta())
    back = read_ct_series(tmp_path)
    np.testing.assert_allclose(back.direction, direction, atol=1e-5)
    np.testing.assert_array_equal(back.array, volume.array)


def test_missing_slice_is_refused_naming_series_and_gap(tmp_path):
    files = write_ct_series(_volume(), tmp_path, CTSeriesMeta(series_description="MySeries"))
    files[4].unlink()
    with pytest.raises(ValueError, match=r"MySeries.*missing slice.*4 mm.*-94.00 and -90.00"):
        read_ct_series(tmp_path)


def test_uneven_spacing_is_refused(tmp_path):
    files = write_ct_series(_volume(), tmp_path, CTSeriesMeta(series_description="Uneven"))
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.7
    ds.save_as(files[5])
    with pytest.raises(ValueError, match=r"Uneven.*uneven spacing"):
        read_ct_series(tmp_path)


def test_two_series_in_one_folder_told_apart(tmp_path):
    a, b = _volume(seed=4), _volume(shape=(5, 12, 10), seed=5)
    write_ct_series(a, tmp_path, CTSeriesMeta(series_uid="1.2.3.100"), prefix="a")
    write_ct_series(b, tmp_path, CTSeriesMeta(series_uid="1.2.3.200"), prefix="b")
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(ValueError, match="2 CT series"):
        read_ct_series(tmp_path)
    np.testing.assert_array_equal(read_ct_series(tmp_path, "1.2.3.200").array, b.array)
    np.testing.assert_array_equal(read_ct_series(tmp_path, "1.2.3.100").array, a.array)
    with pytest.raises(ValueError, match="1.2.3.300"):
        read_ct_series(tmp_path, "1.2.3.300")


def test_truncated_pixel_data_names_the_file(tmp_path):
    files = write_ct_series(_volume(), tmp_path, CTSeriesMeta(series_description="Cut"))
    files[2].write_bytes(files[2].read_bytes()[:-50])
    with pytest.raises(ValueError, match=rf"Cut: cannot read the pixels of .*{files[2].name}"):
        read_ct_series(tmp_path)


# --- reading real-world objects (../shared/realdata) ---------------------------------------------

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent")


@needs_realdata
def test_object_predicates_on_real_files():
    rtstruct = pydicom.dcmread(REALDATA / "ibsi1_ct_phantom/dicom/mask/DCM_RS_00060.dcm",
                               stop_before_pixels=True)
    seg = pydicom.dcmread(REALDATA / "dcmqi/liver.dcm", stop_before_pixels=True)
    multi = pydicom.dcmread(REALDATA / "dcmqi/23x38x3/multiframe/mf.dcm", stop_before_pixels=True)
    single = pydicom.dcmread(REALDATA / "dcmqi/ct-3slice/01.dcm", stop_before_pixels=True)
    assert is_rtstruct(rtstruct) and not is_rtstruct(seg) and not is_rtstruct(single)
    assert is_seg(seg) and not is_ct_image(seg) and not is_ct_image(rtstruct)
    assert is_ct_image(multi) and is_enhanced_ct(multi) and "ImagePositionPatient" not in multi
    assert is_ct_image(single) and not is_enhanced_ct(single)
    assert not is_localizer(single)
    single.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert is_localizer(single)


@needs_realdata
def test_frames_take_their_geometry_and_rescale_from_the_functional_groups():
    source = pydicom.dcmread(REALDATA / "dcmqi/23x38x3/multiframe/mf.dcm")
    frames = ct_frames(source)
    assert len(frames) == 3 and [f.frame_index for f in frames] == [0, 1, 2]
    per_frame = source.PerFrameFunctionalGroupsSequence
    for k, frame in enumerate(frames):
        position = per_frame[k].PlanePositionSequence[0].ImagePositionPatient
        assert list(frame.ImagePositionPatient) == list(position)
        assert list(frame.PixelSpacing) == [0.7, 0.7] and float(frame.SliceThickness) == 2.5
        assert float(frame.RescaleSlope) == 1 and float(frame.RescaleIntercept) == 0
        assert frame.SeriesInstanceUID == source.SeriesInstanceUID and "PixelData" not in frame
        np.testing.assert_array_equal(frame.pixel_array, source.pixel_array[k])
    single = pydicom.dcmread(REALDATA / "dcmqi/ct-3slice/01.dcm")
    assert ct_frames(single) == [single]


def test_template_ct_writer_writes_the_same_files_as_building_every_slice(tmp_path):
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(0, 400, (5, 12, 10)).astype(np.float32), origin=np.array([-3.5, 7.25, -12.0]),
                 spacing=np.array([0.68359375, 0.7, 1.25]))
    meta = CTSeriesMeta(manufacturer="GE MEDICAL SYSTEMS", model="Revolution Apex", kvp=120.0, tube_current_ma=211.3,
                        exposure_mas=103.0, ctdivol=6.0, kernel="STANDARD", slice_thickness=2.5,
                        series_description="E2 test", series_uid="1.2.826.0.1.3680043.8.498.77",
                        study_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5",
                        series_datetime=datetime.datetime(2024, 3, 5, 9, 1, 2), series_number=301, station="E2")
    ref = write_ct_series(vol, tmp_path / "ref", meta, per_slice=True)
    fast = write_ct_series(vol, tmp_path / "fast", meta)
    assert [p.name for p in fast] == [p.name for p in ref] == [f"CT{k:04d}.dcm" for k in range(1, 6)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ref, fast))
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == [p.name for p in ref]  # no temporary left
