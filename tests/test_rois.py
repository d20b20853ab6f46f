"""ROI sets from YAML (default = the phantom's six), and RTSTRUCT contours rasterised onto the CT grid
(the IBSI CT phantom's GTV against the IBSI-provided voxel mask, ../shared/realdata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctdose import naming
from ctdose.rois import default_rois, load_rois
from ctdose.rtstruct import read_rtstruct_label_map

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
IBSI_CT = REALDATA / "ibsi1_ct_phantom"
RTSTRUCT = IBSI_CT / "dicom" / "mask" / "DCM_RS_00060.dcm"
needs_realdata = pytest.mark.skipif(not IBSI_CT.is_dir(), reason=f"no {IBSI_CT}")


def test_default_set_is_the_phantoms_six_rois_in_four_classes():
    rois = default_rois()
    assert rois.names == ("cyst1", "cyst2", "hemangioma", "metastasis", "normal1", "normal2")
    assert rois.class_names == ("cyst", "hemangioma", "metastasis", "normal")
    assert naming.ROI_NAMES == rois.names and naming.ROI_CLASSES == rois.classes
    assert load_rois(None) is rois
    for label in ("metastatsis", " Metastatsis ", "META-STASIS", "metastases"):
        assert rois.canonical(label) == "metastasis" == naming.normalise_roi_label(label)
    assert rois.canonical("Normal 1") == "normal1" and rois.label_of("normal1") == 5
    assert rois.find("liver") is None
    with pytest.raises(ValueError, match=r"unknown ROI label 'liver'; ctdose/data/rois_phantom.yaml has "
                                         r"cyst1, cyst2, hemangioma"):
        naming.normalise_roi_label("liver")


def test_user_yaml_with_aliases(tmp_path):
    path = tmp_path / "organs.yaml"
    path.write_text("rois:\n  - name: liver\n    class: organ\n    aliases: [Liver_whole, LIVER-1]\n"
                    "  - {name: gtv, class: tumour, aliases: ['GTV 1']}\n")
    rois = load_rois(path)
    assert rois.names == ("liver", "gtv") and rois.classes == {"liver": "organ", "gtv": "tumour"}
    assert rois.canonical("liver whole") == "liver" and rois.canonical("liver1") == "liver"
    assert rois.canonical("GTV-1") == "gtv" and rois.label_of("gtv") == 2
    assert rois.source == str(path)


@pytest.mark.parametrize("text, message", [
    ("roi:\n  - {name: a, class: b}\n", r"top level: expected one key 'rois'"),
    ("rois: []\n", r"rois: expected a non-empty list"),
    ("rois:\n  - {name: a, clas: b}\n", r"rois\[0\]: unknown key 'clas' \(expected name, class, aliases\)"),
    ("rois:\n  - {name: a, class: b}\n  - {name: c}\n",
     r"rois\[1\]\.class: missing or not a non-empty string"),
    ("rois:\n  - {name: a, class: b, aliases: x}\n", r"rois\[0\]\.aliases: expected a list"),
    ("rois:\n  - {name: a, class: b}\n  - {name: A, class: c}\n",
     r"rois\[1\]: label 'A' already stands for ROI 'a'"),
    ("rois: [\n", r"not valid YAML"),
])
def test_bad_yaml_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^{path}: {message}") as info:
        load_rois(path)
    assert "\n" not in str(info.value)


def test_missing_yaml_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no ROI YAML {tmp_path / 'nope.yaml'}"):
        load_rois(tmp_path / "nope.yaml")


@pytest.fixture
def gtv_rois(tmp_path):
    path = tmp_path / "gtv.yaml"
    path.write_text("rois:\n  - {name: gtv, class: tumour, aliases: [GTV-1]}\n")
    return load_rois(path)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@needs_realdata
def test_rtstruct_gtv_matches_the_ibsi_voxel_mask(gtv_rois):
    import SimpleITK as sitk

    label_map, names = read_rtstruct_label_map(RTSTRUCT, IBSI_CT / "dicom" / "image", rois=gtv_rois)
    assert names == ("gtv",) and label_map.dtype == np.uint8 and label_map.shape == (60, 201, 204)
    # the IBSI NIfTI mask is on the same grid as the DICOM series (same origin, spacing, identity direction)
    reference = sitk.ReadImage(str(IBSI_CT / "nifti" / "mask" / "mask.nii.gz"))
    assert np.allclose(reference.GetOrigin(), (-174.3945, -79.6255, -100.4), atol=1e-3)
    expected = sitk.GetArrayFromImage(reference) > 0
    # Dice >= 0.95: rasterisation rules (pixel center inside vs any overlap) legitimately differ by about
    # one boundary voxel shell, ~5% of this 125k-voxel GTV. Measured: 1.0 (identical masks, 125256 voxels).
    assert _dice(label_map == 1, expected) >= 0.95
    assert abs(int((label_map == 1).sum()) - int(expected.sum())) <= 0.01 * expected.sum()


@needs_realdata
def test_rtstruct_refusals_name_the_file(tmp_path, gtv_rois):
    ct = IBSI_CT / "dicom" / "image"
    with pytest.raises(ValueError, match=r"DCM_RS_00060.dcm: none of its ROI names \('GTV-1'\) is a ROI of "
                                         r"ctdose/data/rois_phantom.yaml"):
        read_rtstruct_label_map(RTSTRUCT, ct)
    with pytest.raises(ValueError, match=r"DCM_IMG_00000.dcm is not an RTSTRUCT "
                                         r"\(SOP class 1.2.840.10008.5.1.4.1.1.2"):
        read_rtstruct_label_map(ct / "DCM_IMG_00000.dcm", ct, rois=gtv_rois)
    ds = pydicom.dcmread(RTSTRUCT)
    contour = ds.ROIContourSequence[0].ContourSequence[3]
    contour.ContourData = [v if n % 3 != 2 else float(v) + 1.1 for n, v in enumerate(contour.ContourData)]
    ds.save_as(tmp_path / "moved.dcm")
    with pytest.raises(ValueError, match=r"RTSTRUCT .*moved.dcm and CT series .* do not match: ROI 'gtv' "
                                         r"contour 4 at .* mm is not on a CT slice"):
        read_rtstruct_label_map(tmp_path / "moved.dcm", ct, rois=gtv_rois)
    ds = pydicom.dcmread(RTSTRUCT)
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "frame.dcm")
    with pytest.raises(ValueError, match=r"frame.dcm and CT series .* do not match: ROI 'gtv' is in frame of "
                                         r"reference 1.2.3.4"):
        read_rtstruct_label_map(tmp_path / "frame.dcm", ct, rois=gtv_rois)


@needs_realdata
def test_rtstruct_inner_contour_is_a_hole(tmp_path, gtv_rois):
    ct = IBSI_CT / "dicom" / "image"
    full, _ = read_rtstruct_label_map(RTSTRUCT, ct, rois=gtv_rois)
    ds = pydicom.dcmread(RTSTRUCT)
    sequence = ds.ROIContourSequence[0].ContourSequence
    first = np.asarray(sequence[10].ContourData, dtype=float).reshape(-1, 3)
    z = first[0, 2]
    # a 10 x 8 mm rectangle drawn around the centroid of that slice's GTV, as a second contour
    cx, cy = first[:, 0].mean(), first[:, 1].mean()
    x0, x1, y0, y1 = cx - 5.0, cx + 5.0, cy - 4.0, cy + 4.0
    hole = pydicom.Dataset()
    hole.ContourGeometricType = "CLOSED_PLANAR"
    hole.NumberOfContourPoints = 4
    hole.ContourData = [x0, y0, z, x1, y0, z, x1, y1, z, x0, y1, z]
    sequence.append(hole)
    ds.save_as(tmp_path / "hole.dcm")
    holed, _ = read_rtstruct_label_map(tmp_path / "hole.dcm", ct, rois=gtv_rois)
    # independent reference: voxel centers strictly inside the rectangle (CT origin and 0.977 mm pixels)
    ds0 = pydicom.dcmread(ct / "DCM_IMG_00000.dcm", stop_before_pixels=True)
    ox, oy = (float(v) for v in ds0.ImagePositionPatient[:2])
    step = float(ds0.PixelSpacing[0])
    xs, ys = ox + step * np.arange(204), oy + step * np.arange(201)
    rect = ((ys[:, None] > y0) & (ys[:, None] < y1)) & ((xs[None, :] > x0) & (xs[None, :] < x1))
    k = int(np.argmin(np.abs(np.array(sorted(float(pydicom.dcmread(f, stop_before_pixels=True)
                                                   .ImagePositionPatient[2]) for f in ct.iterdir())) - z)))
    assert full[k][rect].all() and rect.sum() >= 70  # ~10 x 8 pixels inside the GTV: a real hole
    expected = full.copy()
    expected[k][rect] = 0
    np.testing.assert_array_equal(holed, expected)
