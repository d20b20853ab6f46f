"""Patch centers: inside their ROI, away from its edge, deterministic, small-ROI fallback, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROI_SPHERES, SPACING_XYZ, default_origin, phantom_label_map
from ctdose.centers import draw_patch_centers, read_patch_centers
from ctdose.layout import PATCH_CENTER_COLUMNS
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.provenance import write_sidecar
from ctdose.volume import Volume

SHAPE = (30, 70, 70)


@pytest.fixture
def label_map() -> Volume:
    return Volume(phantom_label_map(SHAPE), default_origin(SHAPE), SPACING_XYZ)


def test_centers_inside_their_roi_and_away_from_its_edge(label_map):
    centers = draw_patch_centers(label_map, n_per_roi=10, seed=0, min_edge_distance_mm=1.5)
    assert list(centers.columns) == list(PATCH_CENTER_COLUMNS)
    assert centers["roi"].tolist() == [roi for roi in ROI_NAMES for _ in range(10)]
    assert (centers["roi_class"] == centers["roi"].map(ROI_CLASSES)).all()
    assert centers.groupby("roi")["patch"].apply(list).map(lambda p: p == list(range(10))).all()
    points = centers[["x_mm", "y_mm", "z_mm"]].to_numpy()
    idx = np.rint(label_map.physical_to_index(points)).astype(int)
    labels = label_map.array[idx[:, 2], idx[:, 1], idx[:, 0]]
    np.testing.assert_array_equal(labels, centers["roi"].map(lambda r: ROI_NAMES.index(r) + 1))
    # independent check on the spheres: >= 1.5 mm from the surface means <= radius - 1.5 mm from the center
    # (+ half a voxel: the label map is the sphere voxelised)
    for roi, group in centers.groupby("roi"):
        (cx, cy, cz), radius, _ = ROI_SPHERES[roi]
        distance = np.linalg.norm(group[["x_mm", "y_mm", "z_mm"]].to_numpy() - [cx, cy, cz], axis=1)
        assert distance.max() <= radius - 1.5 + 0.5 * max(SPACING_XYZ)
        assert len({tuple(p) for p in group[["x_mm", "y_mm", "z_mm"]].to_numpy()}) == 10  # distinct voxels


def test_deterministic_for_a_seed(label_map):
    a = draw_patch_centers(label_map, seed=3)
    b = draw_patch_centers(label_map, seed=3)
    c = draw_patch_centers(label_map, seed=4)
    assert a.equals(b)
    assert not a[["x_mm", "y_mm", "z_mm"]].equals(c[["x_mm", "y_mm", "z_mm"]])


def test_small_roi_falls_back_to_all_its_voxels(label_map):
    array = label_map.array.copy()
    array[array == 1] = 0
    array[10, 20, 20:23] = 1  # cyst1 is three voxels in a row: no voxel is 3 mm from the edge
    small = Volume(array, label_map.origin, label_map.spacing)
    centers = draw_patch_centers(small, n_per_roi=10, seed=0, min_edge_distance_mm=3.0)
    cyst = centers[centers["roi"] == "cyst1"][["x_mm", "y_mm", "z_mm"]].to_numpy()
    idx = np.rint(small.physical_to_index(cyst)).astype(int)
    assert set(map(tuple, idx)) <= {(20, 20, 10), (21, 20, 10), (22, 20, 10)}
    assert len(cyst) == 10


def test_missing_roi_is_an_error(label_map):
    array = label_map.array.copy()
    array[array == ROI_NAMES.index("normal2") + 1] = 0
    with pytest.raises(ValueError, match="normal2"):
        draw_patch_centers(Volume(array, label_map.origin, label_map.spacing))


def test_read_patch_centers(tmp_path, label_map):
    draw_patch_centers(label_map, n_per_roi=2).to_csv(tmp_path / "c.csv", index=False)
    write_sidecar(tmp_path / "c.csv", {"per_roi": 2})
    assert len(read_patch_centers(tmp_path / "c.csv")) == 12
    (tmp_path / "bad.csv").write_text("roi,x\ncyst1,1\n")
    write_sidecar(tmp_path / "bad.csv", {})
    with pytest.raises(ValueError, match="lack columns"):
        read_patch_centers(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="patch_centers.py"):
        read_patch_centers(tmp_path / "none.csv")
