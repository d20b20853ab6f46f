"""Other datasets (CT-ORG, OrganMNIST3D): loaders, organ centres, scaling, extractors, organ classification.

Neither dataset can be downloaded here: the tests write tiny files in each format (a synthetic CT-ORG
NIfTI pair with blob organs incl. two lungs and two kidneys; an npz with MedMNIST's documented keys).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from ctdose.datasets import ctorg, medmnist3d
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout

from conftest import run_script

SPACING_XYZ = (2.0, 2.0, 3.0)  # mm
SHAPE_ZYX = (40, 48, 64)
#: organ -> (label, HU, centre (z, y, x) voxel, radii (z, y, x) voxels); x grows towards patient left (LPS)
BLOBS = {
    "liver": (1, 60.0, (20, 24, 20), (5, 6, 7)),
    "bladder": (2, 10.0, (5, 24, 32), (3, 4, 4)),
    "lung_left": (3, -800.0, (32, 24, 46), (4, 5, 5)),
    "lung_right": (3, -800.0, (32, 24, 18), (4, 5, 5)),
    "kidney_left": (4, 30.0, (18, 30, 44), (3, 4, 3)),
    "kidney_right": (4, 30.0, (18, 30, 12), (3, 4, 3)),
}


def _ellipsoid(center, radii) -> np.ndarray:
    z, y, x = np.ogrid[:SHAPE_ZYX[0], :SHAPE_ZYX[1], :SHAPE_ZYX[2]]
    return sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), center, radii)) <= 1.0


def _write_nifti(array: np.ndarray, path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-60.0, -40.0, 100.0))
    sitk.WriteImage(image, str(path))


def make_ctorg_case(folder, number: int, bone_ring: bool = True, touching_lungs: bool = False) -> None:
    """``volume-N.nii.gz`` (HU) and ``labels-N.nii.gz``: body of water, blob organs, a bone ring whose
    centroid lies outside the bone; ``touching_lungs``: one lung slab across the midline."""
    hu = np.full(SHAPE_ZYX, -1000.0, np.float32)
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    hu[_ellipsoid((20, 24, 32), (30, 20, 30))] = 0.0  # body, centred at x = 32
    blobs = dict(BLOBS)
    if touching_lungs:
        del blobs["lung_left"], blobs["lung_right"]
        blobs["lungs"] = (3, -800.0, (32, 24, 32), (4, 5, 18))
    for label, value, center, radii in blobs.values():
        inside = _ellipsoid(center, radii)
        hu[inside], labels[inside] = value, label
    if bone_ring:  # a ring around the liver's level: its centroid (the ring's centre) is not bone
        z, y, x = np.ogrid[:SHAPE_ZYX[0], :SHAPE_ZYX[1], :SHAPE_ZYX[2]]
        radius = np.sqrt((y - 24.0) ** 2 + (x - 32.0) ** 2)
        ring = (radius >= 17) & (radius <= 19) & (z >= 8) & (z < 14)
        hu[ring], labels[ring] = 700.0, 5
    folder.mkdir(parents=True, exist_ok=True)
    _write_nifti(hu, folder / f"volume-{number}.nii.gz")
    _write_nifti(labels, folder / f"labels-{number}.nii.gz")


def make_organmnist(path, side: int = 28, counts=(4, 2, 3), seed: int = 0) -> dict[str, np.ndarray]:
    """An npz with MedMNIST's keys: grey-level crops whose mean depends on the class; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(medmnist3d.SPLITS, counts):
        labels = rng.integers(0, 11, size=(n, 1)).astype(np.uint8)
        base = 20.0 * labels[:, 0, None, None, None]
        images = np.clip(base + rng.normal(0, 10, size=(n, side, side, side)), 0, 255).astype(np.uint8)
        images[:, 0, 0, 0] = 255  # a grey level an HU window (e.g. the CNN's -160..240) would clip
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez_compressed(path, **arrays)
    return arrays


def _label_at(case: ctorg.Case, xyz: np.ndarray) -> int:
    image = sitk.ReadImage(str(case.labels))
    index = image.TransformPhysicalPointToIndex(tuple(float(v) for v in xyz))
    return int(image[index])


# --------------------------------------------------------------------------- CT-ORG loader and centres


@pytest.fixture(scope="module")
def ctorg_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctorg")
    make_ctorg_case(folder / "OrganSegmentations", 3)
    return folder


def test_ctorg_finds_pairs_and_reads_case(ctorg_dir, tmp_path):
    cases = ctorg.find_cases(ctorg_dir)
    assert [c.number for c in cases] == [3] and cases[0].case_id == "ctorg-003"
    volume, labels = ctorg.read_case(cases[0])
    assert volume.array.shape == SHAPE_ZYX == labels.shape
    np.testing.assert_allclose(volume.spacing, SPACING_XYZ)
    assert volume.array[20, 24, 20] == 60.0 and labels[20, 24, 20] == 1
    (tmp_path / "volume-7.nii.gz").write_bytes((ctorg_dir / "OrganSegmentations" / "volume-3.nii.gz").read_bytes())
    with pytest.raises(ValueError, match="no labels-7"):
        ctorg.find_cases(tmp_path)


def test_ctorg_centroids_inside_right_organ_and_sides(ctorg_dir):
    case = ctorg.find_cases(ctorg_dir)[0]
    centers = ctorg.case_centers(case, "centroid")
    assert list(centers["roi"]) == ["liver", "bladder", "lung_left", "lung_right", "kidney_left", "kidney_right",
                                    "bone"]
    assert (centers["patch"] == 0).all()
    expected_label = {"liver": 1, "bladder": 2, "lung_left": 3, "lung_right": 3, "kidney_left": 4,
                      "kidney_right": 4, "bone": 5}
    for row in centers.itertuples():
        xyz = np.array([row.x_mm, row.y_mm, row.z_mm])
        assert _label_at(case, xyz) == expected_label[row.roi], row.roi
    # the blobs' own centres in mm (origin + spacing * index): left = larger LPS x
    by_roi = centers.set_index("roi")
    for roi in ("liver", "lung_left", "lung_right", "kidney_left", "kidney_right"):
        z, y, x = BLOBS[roi][2]
        expected = np.array([-60.0 + 2.0 * x, -40.0 + 2.0 * y, 100.0 + 3.0 * z])
        np.testing.assert_allclose(by_roi.loc[roi, ["x_mm", "y_mm", "z_mm"]].to_numpy(float), expected, atol=1e-6)
    assert by_roi.loc["lung_left", "x_mm"] > by_roi.loc["lung_right", "x_mm"]
    assert by_roi.loc["bone", "roi_class"] == "bone" and by_roi.loc["kidney_left", "roi_class"] == "kidney"


def test_ctorg_midline_split_when_lungs_touch(tmp_path):
    make_ctorg_case(tmp_path, 1, bone_ring=False, touching_lungs=True)
    case = ctorg.find_cases(tmp_path)[0]
    volume, labels = ctorg.read_case(case)
    left, right, how = ctorg.split_left_right(labels == 3, volume)
    assert how == "midline"
    xs = np.argwhere(labels == 3)[:, 2]
    assert xs.min() < 32 < xs.max()  # one slab across the body's midline (x index 32)
    assert np.argwhere(left)[:, 2].min() > 32 and np.argwhere(right)[:, 2].max() <= 32
    assert left.sum() + right.sum() == (labels == 3).sum()


def test_ctorg_seeded_centres_inside_and_reproducible(ctorg_dir):
    case = ctorg.find_cases(ctorg_dir)[0]
    a = ctorg.case_centers(case, "seeded", k=4, seed=1)
    b = ctorg.case_centers(case, "seeded", k=4, seed=1)
    c = ctorg.case_centers(case, "seeded", k=4, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a[["x_mm", "y_mm", "z_mm"]], c[["x_mm", "y_mm", "z_mm"]])
    assert all(sorted(patches) == [0, 1, 2, 3] for patches in a.groupby("roi")["patch"].apply(list))
    side_ok = {"lung_left": lambda x: x > -60 + 2 * 32, "lung_right": lambda x: x < -60 + 2 * 32}
    for row in a.itertuples():
        assert _label_at(case, np.array([row.x_mm, row.y_mm, row.z_mm])) == {"liver": 1, "bladder": 2, "lung": 3,
                                                                             "kidney": 4, "bone": 5}[row.roi_class]
        assert side_ok.get(row.roi, lambda x: True)(row.x_mm)


# --------------------------------------------------------------------------- OrganMNIST3D


def test_organmnist_keys_rows_and_sample(tmp_path):
    path = tmp_path / "organmnist3d.npz"
    arrays = make_organmnist(path)
    assert medmnist3d.check_keys(path) == 28
    rows = medmnist3d.case_rows(tmp_path)  # the folder holding the one npz
    assert len(rows) == 9 and list(rows["recon"]) == ["train"] * 4 + ["val"] * 2 + ["test"] * 3
    assert rows.loc[4, "series_uid"] == "organmnist3d-val-0000" and rows.loc[4, "item"] == "val:0"
    label = int(arrays["val_labels"][0, 0])
    assert rows.loc[4, "roi"] == medmnist3d.LABELS[label].replace("-", "_")
    assert rows.loc[4, "x_mm"] == 13.5  # centre of 28 voxels (0..27) of 1 mm
    np.testing.assert_array_equal(medmnist3d.load_sample(path, "test:2").array, arrays["test_images"][2])
    assert medmnist3d.LABELS[1] == "kidney-right" and medmnist3d.roi_class(7) == "lung"
    np.savez(tmp_path / "bad.npz", train_images=arrays["train_images"])
    with pytest.raises(ValueError, match="train_labels missing"):
        medmnist3d.check_keys(tmp_path / "bad.npz")


def test_organmnist_patch_covers_crop():
    assert medmnist3d.patch_geometry(28, "radiomics") == ([28, 28, 28], [1.0] * 3)
    size, spacing = medmnist3d.patch_geometry(28, "swin")
    assert size == [32] * 3 and spacing[0] * 31 == pytest.approx(27.0)  # first to last voxel centre
    assert medmnist3d.patch_geometry(64, "ctfm") == ([64] * 3, [1.0] * 3)


# --------------------------------------------------------------------------- extractors end to end


@pytest.fixture(scope="module")
def small_params(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump({"setting": {"binWidth": 25, "label": 1},
                                    "imageType": {"Original": {}}, "featureClass": {"firstorder": []}}))
    return str(path)


def _check_identity(table: pd.DataFrame, dataset: str) -> None:
    assert list(table.columns[:len(IDENTITY_COLUMNS)]) == list(IDENTITY_COLUMNS)
    assert (table["scanner"] == dataset).all() and (table["manufacturer"] == dataset).all()
    assert table["dose_mgy"].isna().all() and (table["repetition"] == 1).all()


def test_radiomics_script_on_ctorg(ctorg_dir, small_params, tmp_path):
    results = tmp_path / "results"
    argv = ["--dataset", "ctorg", "--dataset-path", str(ctorg_dir), "--results", str(results),
            "--params", small_params, "--workers", "1", "--patch-size", "4", "4", "2", "--patch-spacing", "1", "1", "2"]
    run_script("radiomics/extract_radiomics.py", argv)
    layout = ResultsLayout(results)
    table = pd.read_csv(layout.feature_table("radiomics"), dtype={"series_uid": str})
    _check_identity(table, "ctorg")
    assert (table["series_uid"] == "ctorg-003").all() and table["recon"].eq("original").all()
    assert list(table["roi"]) == ["liver", "bladder", "lung_left", "lung_right", "kidney_left", "kidney_right",
                                  "bone"]
    means = table.set_index("roi")["radiomics_original_firstorder_Mean"]
    for roi in ("liver", "lung_left", "kidney_right"):  # a 4x4x4 mm patch inside a uniform organ
        assert means[roi] == pytest.approx(BLOBS[roi][1], abs=1e-3)
    side = json.loads(layout.feature_table("radiomics").with_suffix(".json").read_text())
    assert side["settings"]["dataset"] == "ctorg" and side["n_rows"] == 7
    assert str(layout.dataset_centers) in side["inputs"]
    partial = layout.feature_partial("radiomics", "ctorg-003")
    stamp = (partial.stat().st_mtime_ns, layout.dataset_centers.stat().st_mtime_ns)
    run_script("radiomics/extract_radiomics.py", argv)  # a re-run finds everything current
    assert (partial.stat().st_mtime_ns, layout.dataset_centers.stat().st_mtime_ns) == stamp


def test_radiomics_and_cnn_scripts_on_organmnist(small_params, tmp_path):
    npz = tmp_path / "organmnist3d.npz"
    arrays = make_organmnist(npz, counts=(3, 1, 2))
    results = tmp_path / "results"
    run_script("radiomics/extract_radiomics.py",
               ["--dataset", "organmnist3d", "--dataset-path", str(npz), "--results", str(results),
                "--params", small_params, "--workers", "1"])
    layout = ResultsLayout(results)
    table = pd.read_csv(layout.feature_table("radiomics"), dtype={"series_uid": str})
    _check_identity(table, "organmnist3d")
    assert len(table) == 6 and list(table["recon"]) == ["train"] * 3 + ["val"] + ["test"] * 2
    crops = np.concatenate([arrays[f"{s}_images"] for s in medmnist3d.SPLITS]).astype(float)
    # the patch is the whole crop, grey levels as they are (no HU window): Mean and Maximum are the crop's
    np.testing.assert_allclose(table["radiomics_original_firstorder_Mean"], crops.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(table["radiomics_original_firstorder_Maximum"], 255.0)

    # the CNN sees value / 255 (no HU window): its features equal the bare network on crop / 255
    import torch

    from ctdose.extractors import cnn

    run_script("cnn/extract_cnn.py", ["--dataset", "organmnist3d", "--dataset-path", str(npz), "--results",
                                      str(results), "--weights", "none", "--allow-untrained", "--device", "cpu"])
    feats = pd.read_csv(layout.feature_table("cnn"), dtype={"series_uid": str})
    torch.manual_seed(0)
    net = cnn.ShallowCNN().eval()
    with torch.no_grad():
        expected = net(torch.as_tensor(crops[:, None] / 255.0, dtype=torch.float32)).numpy()
    names = [c for c in feats.columns if c.startswith("cnn_")]
    assert len(names) == 64  # 28^3 crop: 64 channels x 1 x 1 x 1
    np.testing.assert_allclose(feats[names].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    side = json.loads(layout.feature_table("cnn").with_suffix(".json").read_text())
    assert side["settings"]["hu_range"] == [0.0, 255.0]


def test_dataset_flags_refuse_phantom_filters(tmp_path):
    npz = tmp_path / "organmnist3d.npz"
    make_organmnist(npz, counts=(2, 1, 1))
    with pytest.raises(SystemExit, match="--doses select phantom catalog series"):
        run_script("radiomics/extract_radiomics.py", ["--dataset", "organmnist3d", "--dataset-path", str(npz),
                                                      "--results", str(tmp_path / "r"), "--doses", "10"])
    with pytest.raises(SystemExit, match="needs --dataset-path"):
        run_script("radiomics/extract_radiomics.py", ["--dataset", "ctorg", "--results", str(tmp_path / "r")])
    phantom = tmp_path / "phantom"
    phantom.mkdir()
    (phantom / "catalog.csv").write_text("series_uid\n")
    with pytest.raises(SystemExit, match="holds the phantom's catalog.csv"):
        run_script("radiomics/extract_radiomics.py", ["--dataset", "organmnist3d", "--dataset-path", str(npz),
                                                      "--results", str(phantom)])


# --------------------------------------------------------------------------- organ classification


def _write_table(results, name: str, seed: int, signal: float) -> None:
    from ctdose.atomic import write_csv
    from ctdose.provenance import write_sidecar

    rng = np.random.default_rng(seed)
    rois = ["liver", "bladder", "lung_left", "lung_right", "kidney_left", "kidney_right"]
    centres = rng.normal(size=(len(rois), 8)) * signal
    rows, X = [], []
    for case in range(12):
        for r, roi in enumerate(rois):
            for p in range(2):
                rows.append((f"ctorg-{case:03d}", "ctorg", "ctorg", "CT-ORG", np.nan, "original", 1, roi,
                             ctorg.roi_class(roi), p))
                X.append(centres[r] + rng.normal(size=8))
    table = pd.concat([pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS)),
                       pd.DataFrame(X, columns=[f"{name}_{i:04d}" for i in range(8)])], axis=1)
    path = ResultsLayout(results).feature_table(name)
    write_csv(table, path)
    write_sidecar(path, {"synthetic": True})


def test_organ_folds_grouped_and_stratified():
    from ctdose.stats.organ_classify import organ_folds

    y = np.tile(["a", "b", "c"], 20)
    groups = np.repeat(np.arange(20), 3)  # each case holds one row of each organ
    seen = []
    for train, test in organ_folds(y, groups, folds=5, seed=0):
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == {"a", "b", "c"}
        seen.extend(test)
    assert sorted(seen) == list(range(60))


def test_organ_classify_script_layout_and_accuracy(tmp_path):
    from ctdose.report_sections.datasets import organ_section

    results = tmp_path / "results"
    layout = ResultsLayout(results)
    assert any("Missing" in n for n in organ_section(layout).notes)
    _write_table(results, "radiomics", seed=0, signal=3.0)  # separable organs
    _write_table(results, "cnn", seed=1, signal=0.0)  # no organ signal
    run_script("analyze/organ_classify.py", ["--results", str(results), "--folds", "4", "--no-umap",
                                             "--mlp-epochs", "40", "--rf-trees", "20"])
    summary = pd.read_csv(layout.organ_accuracy)
    assert len(summary) == 2 * 2 * 4  # extractors x targets x classifiers
    assert set(summary["classifier"]) == {"mlp", "logreg", "knn", "rf"}
    assert (summary["n_folds"] == 4).all() and (summary["n_cases"] == 12).all()
    folds = pd.read_csv(layout.organ_accuracy_folds)
    assert len(folds) == 2 * 2 * 4 * 4
    rad = summary[(summary["extractor"] == "radiomics") & (summary["target"] == "roi_class")]
    np.testing.assert_allclose(rad["chance"], 1 / 3)  # lungs and kidneys are 2 of 6 rows each
    assert (rad["accuracy_mean"] > 0.8).all()  # chance 1/3
    noise = summary[(summary["extractor"] == "cnn") & (summary["target"] == "roi")]
    assert (noise["accuracy_mean"] < 0.45).all()  # 6 organs, chance 1/6
    sec = organ_section(layout)
    assert not sec.warnings and len(sec.tables) == 2
    assert "radiomics" in set(sec.tables[0][1]["extractor"])
