"""DICOM SEG: label map round trip (incl. the `metastatsis` label), frame order, refusals, ROI sets,
pixel spacing, and SEGs written by other tools (dcmqi, highdicom; ../shared/realdata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pack_bits

from conftest import phantom_volume
from ctdose.naming import ROI_NAMES
from ctdose.rois import load_rois
from ctdose.seg import SegStamp, read_seg_label_map, read_seg_masks, write_seg

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"no {REALDATA}")


def test_round_trip_with_misspelt_label(tmp_path, make_ct_series):
    names = ["metastatsis" if r == "metastasis" else r for r in ROI_NAMES]
    case = make_ct_series(tmp_path / "ct", roi_names=names)
    seg = pydicom.dcmread(case.seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert "metastatsis" in [s.SegmentLabel for s in seg.SegmentSequence]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case.meta.series_uid
    label_map, roi_names = read_seg_label_map(case.seg_path, tmp_path / "ct", case.meta.series_uid)
    assert roi_names == ROI_NAMES
    assert label_map.dtype == np.uint8
    np.testing.assert_array_equal(label_map, case.label_map)
    masks = read_seg_masks(case.seg_path, tmp_path / "ct")
    assert set(masks) == set(ROI_NAMES)
    for n, roi in enumerate(ROI_NAMES, start=1):
        assert masks[roi].sum() > 0
        np.testing.assert_array_equal(masks[roi], case.label_map == n)


@pytest.mark.parametrize("series_uid", [None, "1.2.826.0.1.3680043.8.498.12"],
                         ids=["uids-of-one-length", "short-series-uid"])
def test_seg_written_like_another_series_is_the_file_write_seg_gives(tmp_path, make_ct_series, series_uid):
    """Two series on one grid (another dose, reconstruction, date, study, frame of reference and UIDs):
    the SEG re-stamped from the first's is byte for byte the one built for the second, both when every
    UID keeps its length (the template's bytes are spliced) and when the series UID is shorter (nested
    references change length: the dataset is rewritten)."""
    first = make_ct_series(tmp_path / "a", dose=10, recon="IR", scan_id=11)
    extra = {"series_uid": series_uid} if series_uid else {}
    second = make_ct_series(tmp_path / "b", dose=3, recon="FBP", scan_id=12, repetition=2, seed=4, **extra)
    assert first.meta.study_uid != second.meta.study_uid  # the test exercises every reference
    like = SegStamp(first.seg_path, first.files).write(second.files, tmp_path / "like.dcm")
    assert like.read_bytes() == second.seg_path.read_bytes()
    label_map, _ = read_seg_label_map(like, tmp_path / "b", second.meta.series_uid)
    np.testing.assert_array_equal(label_map, second.label_map)


def test_one_seg_stamp_writes_several_series_each_as_write_seg_would(tmp_path, make_ct_series):
    """The stamp keeps the template parsed and rewrites it in place: each series' SEG must still be the
    bytes write_seg gives for it, in any order and again (nothing of an earlier series is left over)."""
    first = make_ct_series(tmp_path / "a", dose=10, recon="IR", scan_id=11)
    others = [make_ct_series(tmp_path / "b", dose=3, recon="FBP", scan_id=12, repetition=2, seed=4),
              make_ct_series(tmp_path / "c", dose=1, recon="IR", scan_id=13, repetition=3, seed=5)]
    stamp = SegStamp(first.seg_path, first.files)
    for n, case in enumerate([*others, others[0], first]):
        out = stamp.write(case.files, tmp_path / f"stamped{n}.dcm")
        assert out.read_bytes() == case.seg_path.read_bytes(), n


def test_seg_written_like_a_series_on_another_grid_is_refused(tmp_path, make_ct_series):
    first = make_ct_series(tmp_path / "a")
    volume = phantom_volume()
    volume.origin = volume.origin + np.array([0.0, 0.0, 1.0])  # shifted by half a slice
    other = make_ct_series(tmp_path / "b", volume=volume, scan_id=2, with_seg=False)
    with pytest.raises(ValueError, match="does not share the slice geometry"):
        SegStamp(first.seg_path, first.files).write(other.files, tmp_path / "like.dcm")


def test_frame_order_does_not_matter(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "ct")
    seg = pydicom.dcmread(case.seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    perm = np.random.default_rng(0).permutation(len(frames))
    groups = list(seg.PerFrameFunctionalGroupsSequence)
    seg.PerFrameFunctionalGroupsSequence = [groups[i] for i in perm]
    seg.PixelData = pack_bits(frames[perm])
    shuffled = tmp_path / "shuffled.dcm"
    seg.save_as(shuffled)
    label_map, _ = read_seg_label_map(shuffled, tmp_path / "ct")
    np.testing.assert_array_equal(label_map, case.label_map)


def test_seg_missing_an_roi_is_refused_naming_it(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "ct", with_seg=False)
    labels = case.label_map.copy()
    labels[labels == ROI_NAMES.index("hemangioma") + 1] = 0
    write_seg(case.files, labels, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="hemangioma"):
        read_seg_label_map(tmp_path / "seg.dcm", tmp_path / "ct")
    masks = read_seg_masks(tmp_path / "seg.dcm", tmp_path / "ct",
                           required=[r for r in ROI_NAMES if r != "hemangioma"])
    assert "hemangioma" not in masks and len(masks) == 5


def test_seg_not_on_the_ct_grid_is_refused_naming_both_files(tmp_path, make_ct_series):
    first = make_ct_series(tmp_path / "ct1")
    second = make_ct_series(tmp_path / "ct2", with_seg=False, seed=7)
    # a SEG made on CT 1 read against CT 2 (other SOP instances)
    with pytest.raises(ValueError, match=rf"{first.seg_path}.*ct2.*SOP instance"):
        read_seg_label_map(first.seg_path, tmp_path / "ct2")
    # same SOP instances but frames moved off the slices
    seg = pydicom.dcmread(first.seg_path)
    for group in seg.PerFrameFunctionalGroupsSequence:
        position = group.PlanePositionSequence[0].ImagePositionPatient
        position[2] = float(position[2]) + 1.1
    seg.save_as(tmp_path / "moved.dcm")
    with pytest.raises(ValueError, match=r"moved.dcm.*not on a CT slice"):
        read_seg_label_map(tmp_path / "moved.dcm", tmp_path / "ct1")
    assert second.seg_path is None


def test_label_map_shape_must_match(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "ct", with_seg=False)
    with pytest.raises(ValueError, match="shape"):
        write_seg(case.files, case.label_map[:-1], tmp_path / "seg.dcm")


def test_extra_non_roi_segment_is_ignored_with_a_warning(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "ct", with_seg=False)
    labels = case.label_map.copy()
    labels[0, :5, :5] = 7  # a seventh segment, "liver", outside the six ROIs
    write_seg(case.files, labels, tmp_path / "seg.dcm", roi_names=[*ROI_NAMES, "liver"])
    with pytest.warns(UserWarning, match="segment 7 'liver' not a ROI of ctdose/data/rois_phantom.yaml"):
        label_map, _ = read_seg_label_map(tmp_path / "seg.dcm", tmp_path / "ct")
    np.testing.assert_array_equal(label_map, case.label_map)


def test_seg_pixel_spacing_must_match_the_ct_axis_by_axis(tmp_path, make_ct_series):
    # non-square CT pixels: 2.0 mm columns (x), 2.6 mm rows (y); the SEG written on it reads back exactly
    case = make_ct_series(tmp_path / "ct", volume=phantom_volume(spacing_xyz=(2.0, 2.6, 2.5)))
    label_map, _ = read_seg_label_map(case.seg_path, tmp_path / "ct")
    np.testing.assert_array_equal(label_map, case.label_map)
    seg = pydicom.dcmread(case.seg_path)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [2.6, 2.0]  # DICOM order: row, column
    measures.PixelSpacing = [2.0, 2.6]  # transposed: same pixel size, other axes
    seg.save_as(tmp_path / "transposed.dcm")
    with pytest.raises(ValueError, match=r"transposed.dcm and CT series .* in .*ct do not match: pixel "
                                         r"spacing \(row, column\) is \[2.0, 2.6\] mm in the SEG, "
                                         r"\[2.6, 2.0\] mm in the CT"):
        read_seg_label_map(tmp_path / "transposed.dcm", tmp_path / "ct")


def test_roi_set_relabels_and_orders_the_label_map(tmp_path, make_ct_series):
    # a user's own ROI set: two of the phantom's segments under other names, in another order
    case = make_ct_series(tmp_path / "ct")
    yaml_path = tmp_path / "rois.yaml"
    yaml_path.write_text("rois:\n  - {name: lesion, class: tumour, aliases: [Metastatsis, METASTASIS]}\n"
                         "  - {name: background_liver, class: liver, aliases: [normal 1]}\n")
    rois = load_rois(yaml_path)
    with pytest.warns(UserWarning, match=r"segment 1 'cyst1', 2 'cyst2', 3 'hemangioma', 6 'normal2' not "
                                         r"a ROI of .*rois.yaml"):
        masks = read_seg_masks(case.seg_path, tmp_path / "ct", rois=rois)
    assert list(masks) == ["lesion", "background_liver"]
    np.testing.assert_array_equal(masks["lesion"], case.label_map == ROI_NAMES.index("metastasis") + 1)
    np.testing.assert_array_equal(masks["background_liver"], case.label_map == ROI_NAMES.index("normal1") + 1)


@needs_realdata
def test_dcmqi_liver_seg_needs_a_roi_yaml_then_reads_onto_the_ct_grid(tmp_path):
    seg_path, ct_dir = REALDATA / "dcmqi" / "liver.dcm", REALDATA / "dcmqi" / "ct-3slice"
    with pytest.raises(ValueError, match=r"liver.dcm: none of its segment labels \('Liver'\) is a ROI of "
                                         r"ctdose/data/rois_phantom.yaml; describe them in a ROI YAML"):
        read_seg_label_map(seg_path, ct_dir)
    (tmp_path / "liver.yaml").write_text("rois:\n  - name: liver\n    class: organ\n")
    label_map, names = read_seg_label_map(seg_path, ct_dir, rois=load_rois(tmp_path / "liver.yaml"))
    assert names == ("liver",) and label_map.shape == (3, 512, 512) and label_map.dtype == np.uint8
    # independent reference: pydicom's own decoding of the 3 frames, each placed on the CT slice at its z
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(-1, 512, 512)
    ct_z = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in sorted(ct_dir.iterdir()))
    expected = np.zeros_like(label_map)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        z = float(group.PlanePositionSequence[0].ImagePositionPatient[2])
        expected[int(np.argmin(np.abs(np.array(ct_z) - z)))] |= frame.astype(np.uint8)
    np.testing.assert_array_equal(label_map, expected)
    assert int(label_map.sum()) == 107098 and np.all(label_map.sum(axis=(1, 2)) > 0)  # liver on all 3 slices


@needs_realdata
@pytest.mark.parametrize("variant", ["binary", "binary_fractional"])
def test_highdicom_segs_of_another_ct_are_refused_by_spacing(variant):
    seg_path = REALDATA / "highdicom" / f"seg_image_ct_{variant}.dcm"
    with pytest.raises(ValueError, match=rf"seg_image_ct_{variant}.dcm and CT series .*ct_image.dcm do not "
                                         r"match: pixel spacing \(row, column\) is \[0.488281, 0.488281\] mm "
                                         r"in the SEG, \[0.661468, 0.661468\] mm in the CT"):
        read_seg_label_map(seg_path, REALDATA / "highdicom" / "ct_image.dcm")


@needs_realdata
def test_highdicom_single_frame_seg_reads_with_its_label(tmp_path):
    seg_path = REALDATA / "highdicom" / "seg_image_ct_binary_single_frame.dcm"
    ct = REALDATA / "highdicom" / "ct_image.dcm"
    with pytest.raises(ValueError, match=r"none of its segment labels \('first segment'\)"):
        read_seg_label_map(seg_path, ct)
    (tmp_path / "rois.yaml").write_text("rois:\n  - {name: region, class: x, aliases: [First Segment]}\n")
    label_map, names = read_seg_label_map(seg_path, ct, rois=load_rois(tmp_path / "rois.yaml"))
    assert names == ("region",) and label_map.shape == (1, 128, 128)
    np.testing.assert_array_equal(label_map[0], pydicom.dcmread(seg_path).pixel_array.astype(np.uint8))
    assert int(label_map.sum()) == 1832
