"""Series QC: imaging axis from geometry / header / image, twin-derived series, the series classifier."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from conftest import phantom_volume, run_script, write_test_series
from test_dicom_conformance import dciodvfy
from ctdose.atomic import write_csv
from ctdose.catalog import build_catalog
from ctdose.dicom_io import dicom_files, read_ct_series, read_series_datasets
from ctdose.layout import ResultsLayout
from ctdose.provenance import read_sidecar, write_sidecar
from ctdose.series_qc import (AXIS_TOLERANCE_DEG, gantry_tilt_deg, geometry_axis, header_axis, header_qc,
                              image_axis, qc_warnings, series_image_check)
from ctdose.stats.series_classifier import (ClassifierSettings, split_by_group, to_cube, train_series_classifier,
                                            wilson_interval)
from ctdose.twin_qc import (AXIS_DIRECTIONS, contrast_variant, crop_z, reorient, write_derived_series,
                            write_reformat)
from ctdose.volume import Volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rotated_iop(axis_xyz, degrees: float, base=AXIAL) -> list[float]:
    """IOP of ``base`` rotated by ``degrees`` about ``axis_xyz`` (scipy's rotation, an independent route)."""
    r = Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis_xyz, float) / np.linalg.norm(axis_xyz))
    return [*r.apply(base[:3]), *r.apply(base[3:])]


# --------------------------------------------------------------------------- geometry, exact

@pytest.mark.parametrize("iop, expected", [
    (AXIAL, "axial"),
    ((1, 0, 0, 0, 0, -1), "coronal"),
    ((0, 1, 0, 0, 0, -1), "sagittal"),
    ((-1, 0, 0, 0, -1, 0), "axial"),  # feet-first / prone flips stay axial
    (rotated_iop((1, 1, 0), 30.0), "oblique"),
    (rotated_iop((0, 0, 1), 40.0), "axial"),  # in-plane rotation keeps the normal on z
    (rotated_iop((1, 0, 0), AXIS_TOLERANCE_DEG - 0.1), "axial"),
    (rotated_iop((1, 0, 0), AXIS_TOLERANCE_DEG + 0.1), "oblique"),
    (rotated_iop((0, 1, 0), AXIS_TOLERANCE_DEG + 0.1), "oblique"),
    (rotated_iop((0, 1, 0), 20.0, base=(1, 0, 0, 0, 0, -1)), "coronal"),  # in-plane rotation
    (rotated_iop((0, 0, 1), 20.0, base=(1, 0, 0, 0, 0, -1)), "oblique"),
    (rotated_iop((1, 0, 0), 80.0), "coronal"),
    (rotated_iop((0, 1, 0), 85.0), "sagittal"),
])
def test_geometry_axis_from_iop(iop, expected):
    assert geometry_axis(iop) == expected


def test_gantry_tilt_from_iop_and_from_sheared_positions():
    # tilted with the gantry: IOP rotated about x by 17 deg, slices stacked along the tilted normal
    iop = rotated_iop((1, 0, 0), 17.0)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.outer(np.arange(5) * 2.5, normal)
    assert gantry_tilt_deg(iop, positions) == pytest.approx(17.0, abs=1e-6)
    assert geometry_axis(iop) == "oblique"  # beyond the tolerance without a GantryDetectorTilt ...
    assert geometry_axis(iop, tilt_tag_deg=-17.0) == "axial"  # ... axial when the tag explains it
    assert geometry_axis(iop, tilt_tag_deg=12.0) == "oblique"
    # GE style: axial IOP, positions sheared along y by tan(12 deg) per mm of z
    dz = np.arange(6) * 1.25
    sheared = np.column_stack([np.zeros(6), dz * math.tan(math.radians(12.0)), dz])
    assert gantry_tilt_deg(AXIAL, sheared) == pytest.approx(12.0, abs=1e-6)
    assert geometry_axis(AXIAL) == "axial"
    assert math.isnan(gantry_tilt_deg((1, 0, 0, 0, 0, -1)))  # not axial-family
    assert qc_warnings("axial", "", 12.0, tilt_tag_deg=0.0) == ["GantryDetectorTilt 0 deg, geometry tilt 12.0 deg"]
    assert qc_warnings("axial", "", 12.0, tilt_tag_deg=-12.3) == []


@pytest.mark.parametrize("description, image_type, expected", [
    ("COR MPR 3mm", "DERIVED\\SECONDARY\\AXIAL\\MPR", "coronal"),
    ("Thorax_sag_2.0", "ORIGINAL\\PRIMARY\\AXIAL", "sagittal"),
    ("AX 5mm ABD", "ORIGINAL\\PRIMARY\\AXIAL", "axial"),
    ("CORONARY CTA", "ORIGINAL\\PRIMARY\\AXIAL", "axial"),  # a word, not a substring
    ("Abdomen 3.0 B30f", "DERIVED\\SECONDARY\\REFORMATTED", "reformat"),
    ("Abdomen", "DERIVED\\SECONDARY\\CORONAL", "coronal"),
    ("Abdomen", "", ""),
])
def test_header_claim(description, image_type, expected):
    assert header_axis(description, image_type) == expected


# --------------------------------------------------------------------------- real series written by our code

@pytest.fixture(scope="module")
def qc_tree(tmp_path_factory) -> dict[str, Path]:
    """One axial phantom series, its coronal and sagittal reformats, a coronal reformat whose header says
    AX, and the coronal voxels written with an axial IOP (a lying geometry)."""
    root = tmp_path_factory.mktemp("qc_tree")
    small = phantom_volume(shape_zyx=(20, 40, 40), spacing_xyz=(3.0, 3.0, 3.0))  # few files: fast to write
    case = write_test_series(root / "axial", scanner="A1", dose=10, recon="IR", with_seg=False, volume=small)
    header = read_series_datasets(root / "axial", stop_before_pixels=True)[0]
    volume = read_ct_series(root / "axial")
    write_reformat(volume, header, root / "coronal", "coronal", "test")
    write_reformat(volume, header, root / "sagittal", "sagittal", "test")
    coronal = reorient(volume, AXIS_DIRECTIONS["coronal"])
    write_derived_series(coronal, header, root / "claims_axial", description="AX 2mm abdomen",
                         derivation="test", seed="claims-axial", number_offset=300)
    lying = Volume(coronal.array, coronal.origin, coronal.spacing)  # identity direction: IOP says axial
    write_derived_series(lying, header, root / "lying", description="abdomen", derivation="test",
                         seed="lying", number_offset=400)
    with pytest.warns(UserWarning):  # reformats have no TCIA name: the catalog says so
        catalog = build_catalog(root)
    return {"root": root, "source": case.volume.array, "catalog": catalog,
            **{name: root / name for name in ("axial", "coronal", "sagittal", "claims_axial", "lying")}}


def test_reorient_is_exact_for_every_signed_permutation():
    rng = np.random.default_rng(1)
    volume = Volume(rng.normal(size=(4, 5, 6)).astype(np.float32), (3.0, -7.0, 11.0), (0.7, 0.9, 2.5))
    for axis, direction in AXIS_DIRECTIONS.items():
        out = reorient(volume, direction)
        k, j, i = np.meshgrid(*(np.arange(n) for n in out.array.shape), indexing="ij")
        points = out.index_to_physical(np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float))
        src = np.rint(volume.physical_to_index(points)).astype(int)
        assert np.allclose(volume.index_to_physical(src.astype(float)), points, atol=1e-9), axis  # on the grid
        np.testing.assert_array_equal(out.array.reshape(-1), volume.array[src[:, 2], src[:, 1], src[:, 0]])
    with pytest.raises(ValueError, match="signed permutation"):
        reorient(volume, Rotation.from_rotvec([0, 0, 0.3]).as_matrix())


def test_reformats_written_as_dicom_have_the_right_axis_and_voxels(qc_tree):
    source = read_ct_series(qc_tree["axial"])
    for name in ("coronal", "sagittal"):
        headers = read_series_datasets(qc_tree[name], stop_before_pixels=True)
        qc = header_qc(headers)
        assert (qc["axis"], qc["header_axis"], qc["qc_warnings"]) == (name, name, "")
        assert math.isnan(qc["gantry_tilt_deg"])
        assert headers[0].SeriesInstanceUID != source_uid(qc_tree["axial"])
        assert list(headers[0].ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert dciodvfy(dicom_files(qc_tree[name])[0], "CTImage") == []  # a valid CT Image, no warning
        back = read_ct_series(qc_tree[name])
        assert back.array.size == source.array.size
        # every stored voxel sits at a source voxel's position with the source's value
        k, j, i = (a.ravel() for a in np.meshgrid(*(np.arange(n) for n in back.array.shape), indexing="ij"))
        src = np.rint(source.physical_to_index(back.index_to_physical(np.column_stack([i, j, k]).astype(float))))
        src = src.astype(int)
        np.testing.assert_array_equal(back.array[k, j, i], source.array[src[:, 2], src[:, 1], src[:, 0]])
    assert header_qc(read_series_datasets(qc_tree["axial"], stop_before_pixels=True))["axis"] == "axial"


def source_uid(folder: Path) -> str:
    return str(read_series_datasets(folder, stop_before_pixels=True)[0].SeriesInstanceUID)


def test_header_geometry_mismatch_warns(qc_tree):
    qc = header_qc(read_series_datasets(qc_tree["claims_axial"], stop_before_pixels=True))
    assert (qc["axis"], qc["header_axis"]) == ("coronal", "axial")
    assert qc["qc_warnings"] == "header says axial, geometry is coronal"


def test_image_cross_check_agrees_on_reformats_and_catches_a_lying_geometry(qc_tree):
    for name in ("axial", "coronal", "sagittal"):
        axis, info = image_axis(read_ct_series(qc_tree[name]))
        assert axis == name, info
    found = series_image_check((str(qc_tree["lying"]), ""))
    geometry = header_qc(read_series_datasets(qc_tree["lying"], stop_before_pixels=True))["axis"]
    assert (geometry, found["image_axis"]) == ("axial", "coronal")
    assert qc_warnings(geometry, "", image=found["image_axis"]) == ["image looks coronal, geometry is axial"]
    assert qc_warnings("coronal", "", image="non-axial") == []


def test_catalog_has_the_qc_columns(qc_tree):
    catalog = qc_tree["catalog"].set_index("path")
    rows = {Path(p).name: r for p, r in catalog.iterrows()}
    assert {n: rows[n]["axis"] for n in rows} == {"axial": "axial", "coronal": "coronal", "sagittal": "sagittal",
                                                 "claims_axial": "coronal", "lying": "axial"}
    assert rows["coronal"]["header_axis"] == "coronal" and rows["coronal"]["qc_warnings"] == ""
    assert rows["claims_axial"]["qc_warnings"] == "header says axial, geometry is coronal"
    assert rows["axial"]["gantry_tilt_deg"] == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- twin-derived data helpers

def test_contrast_variant_adds_the_enhancement_inside_the_masks_only():
    volume = Volume(np.zeros((20, 40, 40), np.float32), (0, 0, 0), (1.0, 1.0, 1.0))
    zz, yy, xx = np.mgrid[:20, :40, :40]
    liver = (xx - 20) ** 2 + (yy - 20) ** 2 <= 12 ** 2
    vessels = liver & ((xx - 20) ** 2 + (yy - 20) ** 2 <= 3 ** 2)
    out = contrast_variant(volume, liver, vessels, liver_hu=60.0, vessel_hu=180.0, blur_mm=1.0).array
    ring = liver & ((xx - 20) ** 2 + (yy - 20) ** 2 >= 7 ** 2) & ((xx - 20) ** 2 + (yy - 20) ** 2 <= 9 ** 2)
    assert np.allclose(out[ring], 60.0, atol=0.5)
    assert out[10, 20, 20] == pytest.approx(180.0, abs=2.0)
    assert np.abs(out[(xx - 20) ** 2 + (yy - 20) ** 2 >= 16 ** 2]).max() < 0.5


def test_crop_z_keeps_the_slices_in_range():
    volume = Volume(np.arange(101, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32),
                    (0.0, 0.0, -200.0), (1.0, 1.0, 4.0))
    crop = crop_z(volume, 60.0, 100.0)
    z = crop.origin[2] + np.arange(crop.array.shape[0]) * 4.0
    np.testing.assert_array_equal(z, np.arange(60.0, 100.1, 4.0))
    np.testing.assert_array_equal(crop.array[:, 0, 0], (z + 200.0) / 4.0)  # slice k holds k
    with pytest.raises(ValueError, match="fewer than 2"):
        crop_z(volume, 300.0, 400.0)


# --------------------------------------------------------------------------- classifier

def test_split_by_group_keeps_groups_whole_in_70_20_10():
    groups = np.repeat([f"p{i:02d}" for i in range(20)], 3)
    split = split_by_group(groups, seed=4)
    by_group = pd.Series(split).groupby(groups).nunique()
    assert (by_group == 1).all()  # no group in two splits
    parts = pd.Series(split).groupby(groups).first().value_counts()
    assert parts.to_dict() == {"train": 14, "val": 4, "test": 2}
    assert (split_by_group(groups, seed=4) == split).all()
    assert not (split_by_group(groups, seed=5) == split).all()
    with pytest.raises(ValueError, match=">= 3 groups"):
        split_by_group(["a", "b", "a"])


@pytest.mark.parametrize("k, n", [(0, 5), (3, 10), (17, 20), (40, 40), (1, 1)])
def test_wilson_interval_matches_statsmodels_and_contains_the_accuracy(k, n):
    proportion_confint = pytest.importorskip("statsmodels.stats.proportion").proportion_confint
    lo, hi = wilson_interval(k, n)
    ref = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)
    assert lo <= k / n <= hi


def test_to_cube_pools_in_stored_order():
    array = np.zeros((8, 16, 32), np.float32)
    array[:4] = 1000.0  # first half of the slices bright
    cube = to_cube(array, 4)
    assert cube.shape == (4, 4, 4)
    np.testing.assert_allclose(cube[:2], 1.0)
    np.testing.assert_allclose(cube[2:], 0.0)


@pytest.fixture(scope="module")
def tiny_training():
    rng = np.random.default_rng(0)
    labels = np.array(["axial", "coronal"] * 10)
    cubes = rng.normal(0, 0.3, size=(20, 16, 16, 16)).astype(np.float32)
    cubes[labels == "coronal", :, :8] += 1.0
    groups = [f"g{i // 2}" for i in range(20)]
    settings = ClassifierSettings(cube=16, widen=0.125, epochs=2, batch_size=4, seed=3)
    return cubes, labels, groups, settings, train_series_classifier(cubes, labels, groups, settings)


def test_classifier_trains_and_reports_accuracy_with_ci(tiny_training):
    cubes, labels, groups, settings, result = tiny_training
    assert list(result.history["epoch"]) == [1, 2]
    assert np.isfinite(result.history["train_loss"]).all()
    for part in ("train", "val", "test"):
        acc = result.accuracy[part]
        truth = labels[result.split == part]
        assert acc["n"] == truth.size
        assert acc["accuracy"] == pytest.approx(np.mean(truth == result.predictions[result.split == part]))
        assert acc["ci_low"] <= acc["accuracy"] <= acc["ci_high"]
    assert int(result.confusion.to_numpy().sum()) == result.accuracy["test"]["n"]
    assert int(np.trace(result.confusion.to_numpy())) == result.accuracy["test"]["correct"]


def test_classifier_is_deterministic_on_cpu(tiny_training):
    cubes, labels, groups, settings, first = tiny_training
    again = train_series_classifier(cubes, labels, groups, settings)
    pd.testing.assert_frame_equal(first.history, again.history)
    for key, value in first.state_dict.items():
        assert np.array_equal(value.numpy(), again.state_dict[key].numpy()), key


# --------------------------------------------------------------------------- scripts and report section

def test_scripts_and_report_section(qc_tree, tmp_path):
    from ctdose.report_sections.series_qc import series_qc_section

    layout = ResultsLayout(tmp_path / "results")
    empty = series_qc_section(layout)
    assert any(n.startswith("Missing: series QC table") for n in empty.notes)
    write_csv(qc_tree["catalog"], layout.catalog)
    write_sidecar(layout.catalog, {"test": True})
    run_script("analyze/series_qc.py", ["--results", str(layout.root), "--image-check", "all"])
    table = pd.read_csv(layout.series_qc, keep_default_na=False).set_index("path")
    rows = {Path(p).name: r for p, r in table.iterrows()}
    assert {n: r["image_axis"] for n, r in rows.items()} == {
        "axial": "axial", "coronal": "coronal", "sagittal": "sagittal", "claims_axial": "coronal", "lying": "coronal"}
    assert rows["lying"]["qc_warnings"] == "image looks coronal, geometry is axial"
    assert read_sidecar(layout.series_qc)["with_warnings"] == 2
    # classifier script on a labelled list (the same series in several groups: a tiny, fast list)
    rows = [{"path": str(qc_tree[name]), "label": "axial" if name == "axial" else "reformat", "group": f"g{g}",
             "origin": "ctdose twin (twin-trained)"} for g in range(3) for name in ("axial", "coronal", "sagittal")]
    write_csv(pd.DataFrame(rows), tmp_path / "list.csv")
    run_script("analyze/train_series_classifier.py", ["--list", str(tmp_path / "list.csv"), "--task", "axis",
                                                      "--results", str(layout.root), "--cube", "16", "--widen",
                                                      "0.125", "--epochs", "1", "--batch", "4"])
    out = layout.series_classifier("axis")
    record = read_sidecar(out / "accuracy.csv")["record"]
    assert record["twin_trained"] is True and record["n_series"] == 9
    assert sum(record["split_series"].values()) == 9 and record["split_groups"] == {"train": 1, "val": 1, "test": 1}
    assert (out / "model.pt").is_file() and (out / "confusion.png").is_file()
    sec = series_qc_section(layout)
    titles = " ".join(caption for caption, _ in sec.tables)
    assert "Imaging axis" in titles and "Series classifiers" in titles and not sec.warnings
    assert sec.figures and "twin-trained" in sec.figures[0][0]
    assert dicom_files(qc_tree["coronal"])  # nothing deleted
