"""DICOM SEG: label map round trip (incl. the `metastatsis` label), frame order, refusals."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pack_bits

from ctdose.naming import ROI_NAMES
from ctdose.seg import read_seg_label_map, read_seg_masks, write_seg


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
    with pytest.warns(UserWarning, match="'liver' is not one of the six ROIs"):
        label_map, _ = read_seg_label_map(tmp_path / "seg.dcm", tmp_path / "ct")
    np.testing.assert_array_equal(label_map, case.label_map)
