"""Patient size and size-specific dose (ctdose.size_dose, AAPM TG-220 / TG-204), the organ-dose input table
and model slot (ctdose.organ_dose_inputs), data/size_dose.py and its report section.

Analytic objects: a water cylinder of diameter D has WED = D; a cylinder of half the density of water
(-500 HU) has A_w = A / 2, so WED = D / sqrt(2); the TG-204 fits against the report's tables.
"""

from __future__ import annotations

import math
import pickle
import statistics

import numpy as np
import pandas as pd
import pytest
from pydicom.sr.codedict import codes

from conftest import run_script
from ctdose.organ_dose_inputs import (INPUT_COLUMNS, MODEL_FEATURES, PREDICTION_COLUMN, load_organ_model,
                                      organ_slice_table, predict_organ_doses)
from ctdose.size_dose import (SizeSettings, choose_phantom, conversion_factor, join_size_columns, object_mask,
                              published_factors, series_size_dose, truncation_share, water_equivalent_diameter)

PIXEL_MM = 1.0


def disk_slice(diameter_mm: float, hu: float = 0.0, n_pix: int = 320, pixel_mm: float = PIXEL_MM,
               centre_mm: tuple[float, float] = (0.0, 0.0), noise_sd: float = 5.0, seed: int = 0) -> np.ndarray:
    """(n_pix, n_pix) HU slice: air (-1000) with a disk of ``hu`` (centre relative to the image centre)."""
    c = (np.arange(n_pix) - (n_pix - 1) / 2) * pixel_mm
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = (xx - centre_mm[0]) ** 2 + (yy - centre_mm[1]) ** 2 <= (diameter_mm / 2) ** 2
    image = np.where(inside, hu, -1000.0)
    return image + np.random.default_rng(seed).normal(0.0, noise_sd, image.shape)


def wed_of(image: np.ndarray, pixel_mm: float = PIXEL_MM, **kw) -> float:
    mask = object_mask(image, (pixel_mm, pixel_mm), **kw)
    return water_equivalent_diameter(image, mask, (pixel_mm, pixel_mm))


# --------------------------------------------------------------------------- WED


@pytest.mark.parametrize("diameter_mm", [100.0, 250.0])
def test_water_cylinder_wed_is_its_diameter(diameter_mm):
    wed = wed_of(disk_slice(diameter_mm))
    assert abs(wed - diameter_mm / 10) <= PIXEL_MM / 10  # within one voxel width (cm)


def test_half_density_cylinder_wed_is_diameter_over_sqrt2():
    wed = wed_of(disk_slice(250.0, hu=-500.0))
    assert abs(wed - 25.0 / math.sqrt(2)) <= PIXEL_MM / 10
    assert abs(wed - 25.0) > 5  # clearly not the geometric diameter


def test_table_under_the_cylinder_is_removed():
    base = disk_slice(200.0, n_pix=320)
    c = (np.arange(320) - 159.5) * PIXEL_MM
    yy, xx = np.meshgrid(c, c, indexing="ij")
    touching = base.copy()
    touching[(yy >= 100.0) & (yy < 104.0) & (np.abs(xx) < 140.0)] = 400.0  # 4 mm dense table, touching
    apart = base.copy()
    apart[(yy >= 112.0) & (yy < 116.0) & (np.abs(xx) < 140.0)] = 400.0  # 12 mm below, separated by air
    reference = wed_of(base)
    assert abs(wed_of(touching) - reference) <= 0.1
    assert abs(wed_of(apart) - reference) <= 0.01
    # without the opening the touching table is counted: the removal is what keeps WED right
    assert wed_of(touching, opening_mm=0.0) - reference > 0.3


def test_holes_inside_the_body_are_counted():
    image = disk_slice(240.0)
    c = (np.arange(320) - 159.5) * PIXEL_MM
    yy, xx = np.meshgrid(c, c, indexing="ij")
    image[(xx - 50) ** 2 + yy ** 2 <= 40 ** 2] = -1000.0  # an air pocket (a "lung") inside the body
    mask = object_mask(image, (PIXEL_MM, PIXEL_MM))
    assert mask[160, 210]  # the pocket lies inside the contour
    expected_area = math.pi * 120 ** 2 - math.pi * 40 ** 2  # water area; the pocket adds ~0
    expected = 2 * math.sqrt(expected_area / math.pi) / 10
    assert abs(water_equivalent_diameter(image, mask, (PIXEL_MM, PIXEL_MM)) - expected) <= 0.1


def test_truncation_flagged_when_the_fov_cuts_the_cylinder():
    inside = disk_slice(200.0, n_pix=256)
    cut = disk_slice(200.0, n_pix=160)  # 160 mm field of view through a 200 mm cylinder
    assert truncation_share(inside, object_mask(inside, (1.0, 1.0))) == 0.0
    share = truncation_share(cut, object_mask(cut, (1.0, 1.0)))
    assert share > 0.2
    # padding outside a reconstruction circle that cuts the object is truncation too
    c = (np.arange(256) - 127.5)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    padded = disk_slice(200.0, n_pix=256, centre_mm=(40.0, 0.0))
    padded[xx ** 2 + yy ** 2 > 120 ** 2] = -3024.0
    assert truncation_share(padded, object_mask(padded, (1.0, 1.0))) > 0.0
    # and a truncated water cylinder's WED is too small
    assert wed_of(cut) < 20.0 - 1.0


# --------------------------------------------------------------------------- conversion factors


def test_fit_reproduces_the_published_tables():
    table = published_factors()
    assert set(table["phantom"]) == {"body32", "head16"}
    for phantom, sub in table.groupby("phantom"):
        fit = conversion_factor(sub["effective_diameter_cm"].to_numpy(), phantom)
        # the report tabulates the fit to two decimals: every row within half a unit of the last place
        assert np.abs(fit - sub["conversion_factor"].to_numpy()).max() < 0.005
        assert np.array_equal(np.round(fit, 2), sub["conversion_factor"].to_numpy())
    body, head = published_factors("body32"), published_factors("head16")
    assert (body["effective_diameter_cm"].min(), body["effective_diameter_cm"].max()) == (8, 45)
    assert (head["effective_diameter_cm"].min(), head["effective_diameter_cm"].max()) == (6, 55)
    # anchors read from AAPM Report 204 (guards against an edited table file)
    assert body.set_index("effective_diameter_cm").loc[[8, 32, 45], "conversion_factor"].tolist() == [2.76, 1.14, 0.71]
    assert head.set_index("effective_diameter_cm").loc[[6, 16, 55], "conversion_factor"].tolist() == [1.49, 1.01, 0.22]


def test_phantom_choice_from_header_fields():
    assert choose_phantom("IEC Head Dosimetry Phantom", "ABDOMEN")[0] == "head16"  # the code wins
    assert choose_phantom("IEC Body Dosimetry Phantom", "HEAD")[0] == "body32"
    assert choose_phantom(None, "BRAIN") == ("head16", "BodyPartExamined")
    assert choose_phantom(None, "CHEST")[0] == "body32"
    assert choose_phantom(None, None)[0] == "body32"
    with pytest.raises(ValueError, match="unknown CTDI phantom"):
        conversion_factor(20.0, "pmma10")


def test_series_ssde_mean_centre_and_roi_slabs():
    small, large = disk_slice(200.0, seed=1), disk_slice(300.0, seed=2)
    volume = np.stack([small] * 6 + [large] * 5)  # slices 0-5: 20 cm, 6-10: 30 cm
    z = np.arange(11) * 5.0
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[:6, 150:170, 150:170] = 1
    labels[6:, 150:170, 150:170] = 2
    row, slices, masks = series_size_dose("uid1", volume, (1.0, 1.0), z, 10.0, "body32", "test",
                                          tube_current_ma=np.linspace(100, 200, 11), label_map=labels,
                                          roi_names={1: "a", 2: "b"}, noise_labels=[1])
    f20, f30 = 3.704369 * math.exp(-0.03671937 * 20), 3.704369 * math.exp(-0.03671937 * 30)
    tol = 0.1 * 0.0367 * 3.71 * 10  # one voxel of WED error, through the slope of f, times CTDIvol
    assert abs(row["wed_cm_a"] - 20) <= 0.1 and abs(row["wed_cm_b"] - 30) <= 0.1
    assert abs(row["ssde_mgy_a"] - 10 * f20) <= tol and abs(row["ssde_mgy_b"] - 10 * f30) <= tol
    assert abs(row["ssde_mgy"] - 10 * (6 * f20 + 5 * f30) / 11) <= tol
    assert abs(row["wed_center_cm"] - 20) <= 0.1  # z = 25 mm: slice 5
    assert abs(row["ssde_center_mgy"] - 10 * f20) <= tol
    assert row["phantom"] == "body32" and not row["truncated"] and row["n_measured"] == 11
    assert abs(row["noise_hu"] - 5.0) < 0.5  # the seeded noise SD inside ROI a
    assert list(slices["tube_current_ma"]) == pytest.approx(np.linspace(100, 200, 11))
    assert slices["ssde_mgy"].to_numpy() == pytest.approx(slices["conversion_factor"].to_numpy() * 10)
    assert masks.shape == volume.shape
    # without an ROI the global noise level (mode of the local SD in soft tissue) finds the same noise
    row2, _, _ = series_size_dose("uid1", volume, (1.0, 1.0), z, 10.0, "body32")
    assert abs(row2["noise_hu"] - 5.0) < 1.0 and "global" in row2["noise_source"]
    # every 4th slice and the middle one: slices 0, 4, 5 (20 cm) and 8 (30 cm)
    row3, slices3, _ = series_size_dose("uid1", volume, (1.0, 1.0), z, 10.0, "body32",
                                        settings=SizeSettings(slice_step=4))
    assert slices3.loc[slices3["measured"], "slice_index"].tolist() == [0, 4, 5, 8] and row3["n_measured"] == 4
    assert abs(row3["ssde_mgy"] - 10 * (3 * f20 + f30) / 4) <= tol and abs(row3["wed_center_cm"] - 20) <= 0.1
    catalog = pd.DataFrame({"series_uid": ["uid1", "uid2"], "scanner": ["A1", "B1"]})
    joined = join_size_columns(catalog, pd.DataFrame([row]))
    assert joined.loc[0, "wed_cm"] == row["wed_cm"] and np.isnan(joined.loc[1, "ssde_mgy"])
    assert list(joined.columns[:2]) == ["series_uid", "scanner"]


# --------------------------------------------------------------------------- organ inputs and the model slot


def test_organ_slice_table_on_a_known_label_map():
    volume = np.full((3, 8, 8), -1000.0)
    labels = np.zeros((3, 8, 8), dtype=np.uint8)
    organ1 = [40.0, 60.0, 50.0, 70.0]
    volume[0, 1, 1:5] = organ1
    labels[0, 1, 1:5] = 1
    volume[1, 2, 2:4] = [10.0, 30.0]
    labels[1, 2, 2:4] = 1
    volume[1, 5, 5] = 200.0
    labels[1, 5, 5] = 7
    table = organ_slice_table("s", volume, labels, {1: "liver"}, z_mm=[-2.0, 0.0, 2.0],
                              tube_current_ma=[100.0, 110.0, 120.0], wed_cm=[20.0, 21.0, 22.0])
    assert list(table.columns) == list(INPUT_COLUMNS)
    assert table[["slice_index", "organ"]].values.tolist() == [[0, "liver"], [1, "liver"], [1, "label_7"]]
    first = table.iloc[0]
    assert first["hu_mean"] == pytest.approx(statistics.mean(organ1))
    assert first["hu_std"] == pytest.approx(statistics.stdev(organ1))
    assert first["n_voxels"] == 4 and first["tube_current_ma"] == 100.0 and first["wed_cm"] == 20.0
    assert table.iloc[1]["z_mm"] == 0.0 and table.iloc[1]["hu_mean"] == 20.0
    assert np.isnan(table.iloc[2]["hu_std"])  # a single voxel has no SD
    with pytest.raises(ValueError, match="label map shape"):
        organ_slice_table("s", volume, labels[:2], {}, z_mm=[0.0, 1.0, 2.0])


def test_model_slot_errors_and_a_tiny_model_round_trip(tmp_path):
    import joblib
    from sklearn.linear_model import LinearRegression

    with pytest.raises(ValueError, match="^no organ-dose model given: pass --organ-model FILE"):
        load_organ_model(None)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_organ_model(tmp_path / "absent.joblib")
    not_a_model = tmp_path / "dict.pkl"
    not_a_model.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="has no predict"):
        load_organ_model(not_a_model)
    garbage = tmp_path / "garbage.joblib"
    garbage.write_text("not a model")
    with pytest.raises(ValueError, match="not a joblib or pickle"):
        load_organ_model(garbage)

    rng = np.random.default_rng(0)
    train = pd.DataFrame({c: rng.uniform(1, 50, 40) for c in MODEL_FEATURES})
    target = 2.0 * train["wed_cm"] + 0.01 * train["tube_current_ma"]
    table = pd.DataFrame({"series_uid": "s", "slice_index": range(5), "organ": "liver",
                          **{c: rng.uniform(1, 50, 5) for c in MODEL_FEATURES}})
    expected = 2.0 * table["wed_cm"] + 0.01 * table["tube_current_ma"]
    for name, fit_on in (("frame", train), ("array", train.to_numpy())):  # with / without feature names
        path = tmp_path / f"model_{name}.joblib"
        joblib.dump(LinearRegression().fit(fit_on, target), path)
        out = predict_organ_doses(load_organ_model(path), table)
        assert out[PREDICTION_COLUMN].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-9)
    with pytest.raises(ValueError, match="NaN model inputs"):
        predict_organ_doses(load_organ_model(path), table.assign(tube_current_ma=np.nan))


# --------------------------------------------------------------------------- the script and its report section


@pytest.fixture(scope="module")
def size_run(tmp_path_factory):
    """Two test series (body and head) catalogued, with ROI label maps, run through data/size_dose.py."""
    from conftest import write_test_series
    from ctdose.atomic import write_csv
    from ctdose.catalog import build_catalog
    from ctdose.label_map_io import write_label_map
    from ctdose.layout import ResultsLayout
    from ctdose.naming import ROI_NAMES
    from ctdose.provenance import write_sidecar

    root = tmp_path_factory.mktemp("size")
    body = write_test_series(root / "data" / "A1", scanner="A1", dose=10, scan_id=1)
    head = write_test_series(root / "data" / "B1", scanner="B1", dose=3, scan_id=2, seed=1, body_part="HEAD",
                             ctdi_phantom=codes.DCM.IECHeadDosimetryPhantom)
    layout = ResultsLayout(root / "results")
    catalog = build_catalog(root / "data")
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, {"data": str(root / "data")})
    for case in (body, head):
        mask = layout.mask(case.meta.series_uid)
        write_label_map(case.label_map, case.volume, mask)
        write_sidecar(mask, {}, labels=list(ROI_NAMES))
    run_script("data/size_dose.py", ["--results", str(layout.root), "--workers", "1"])
    return layout, body, head


def test_script_writes_size_tables(size_run):
    from ctdose.csv_io import read_csv

    layout, body, head = size_run
    series = read_csv(layout.size_dose_series, dtype={"series_uid": str}).set_index("series_uid")
    b, h = series.loc[body.meta.series_uid], series.loc[head.meta.series_uid]
    # the conftest phantom: an elliptic body of semi-axes 52 x 44 mm at +60 HU (small spheres and rods on top)
    expected_wed = 2 * math.sqrt(52 * 44 * 1.06) / 10
    assert abs(b["wed_cm"] - expected_wed) < 0.3 and not b["truncated"]
    assert b["phantom"] == "body32" and h["phantom"] == "head16"
    assert b["ctdivol_mgy"] == pytest.approx(10 * 1.03) and b["ctdivol_source"] == "per-slice CTDIvol tags"
    assert b["ssde_mgy"] == pytest.approx(b["ctdivol_mgy"] * 3.704369 * math.exp(-0.03671937 * b["wed_cm"]), rel=0.01)
    assert h["ssde_mgy"] == pytest.approx(h["ctdivol_mgy"] * 1.874799 * math.exp(-0.03871313 * h["wed_cm"]), rel=0.01)
    assert {"wed_cm_normal1", "ssde_mgy_metastasis"} <= set(series.columns)
    assert "normal1" in b["noise_source"] and 5 < b["noise_hu"] < 20  # conftest noise SD 10 HU
    slices = read_csv(layout.size_dose_slices, dtype={"series_uid": str})
    assert len(slices) == 2 * 24 and (slices["tube_current_ma"] == 200.0).sum() == 24  # 20 mA x 10 mGy
    organs = read_csv(layout.organ_dose_inputs, dtype={"series_uid": str})
    expected_rows = sum(int((body.label_map[k] == n).any()) for k in range(24) for n in range(1, 7))
    assert (organs["series_uid"] == body.meta.series_uid).sum() == expected_rows
    assert not layout.organ_doses.exists()  # no model, no organ doses


def test_script_resumes_and_report_section(size_run, capsys):
    from ctdose.report_sections.size_dose import size_dose_section

    layout, body, _ = size_run
    partial = layout.size_dose_partial(body.meta.series_uid)
    before = partial.stat().st_mtime_ns
    run_script("data/size_dose.py", ["--results", str(layout.root), "--workers", "1"])
    assert "2 already done" in capsys.readouterr().out
    assert partial.stat().st_mtime_ns == before
    sec = size_dose_section(layout)
    assert not sec.warnings and len(sec.tables) == 2 and len(sec.figures) == 2
    per_scanner = sec.tables[0][1]
    assert per_scanner["scanner"].tolist() == ["A1", "B1"]
    import joblib
    from sklearn.linear_model import LinearRegression

    from ctdose.csv_io import read_csv
    from ctdose.organ_dose_inputs import PREDICTION_COLUMN

    organs = read_csv(layout.organ_dose_inputs)
    model_path = layout.root / "tiny_model.joblib"
    joblib.dump(LinearRegression().fit(organs[["wed_cm", "hu_mean"]], 0.5 * organs["wed_cm"]), model_path)
    run_script("data/size_dose.py", ["--results", str(layout.root), "--workers", "1", "--organ-model", str(model_path)])
    predicted = read_csv(layout.organ_doses)
    assert predicted[PREDICTION_COLUMN].to_numpy() == pytest.approx(0.5 * predicted["wed_cm"].to_numpy())
    with pytest.raises(SystemExit, match="organ-dose model .* not found"):
        run_script("data/size_dose.py", ["--results", str(layout.root), "--workers", "1",
                                         "--organ-model", str(layout.root / "absent.joblib")])


def test_report_section_without_outputs_says_missing(tmp_path):
    from ctdose.layout import ResultsLayout
    from ctdose.report_sections.size_dose import size_dose_section

    sec = size_dose_section(ResultsLayout(tmp_path))
    assert sec.notes and sec.notes[0].startswith("Missing: the size-dose table")
    assert not sec.tables and not sec.figures
