"""Catalog: mixed trees, SEG linking, name cross-checks, dose fallbacks, repetition order, bad input;
then data/prepare.py and data/patch_centers.py end to end on a tiny generated tree (subprocesses)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import phantom_label_map
from ctdose.atomic import write_csv
from ctdose.catalog import CatalogWarning, build_catalog, choose_reference, read_catalog
from ctdose.label_map_io import read_label_map
from ctdose.layout import CATALOG_COLUMNS, PATCH_CENTER_COLUMNS, ResultsLayout
from ctdose.naming import ROI_NAMES
from ctdose.transform_io import load_transform


def test_mixed_tree(tmp_path, make_ct_series):
    a = make_ct_series(tmp_path / "one", scanner="A1", dose=10, recon="IR", scan_id=1, prefix="a")
    b = make_ct_series(tmp_path / "one", scanner="A1", dose=3, recon="FBP", scan_id=2, prefix="b", seed=1)
    c = make_ct_series(tmp_path / "deep" / "er", scanner="B1", dose=14, recon="IR", scan_id=3, seed=2,
                       seg_dir=tmp_path / "segs")
    (tmp_path / "one" / "notes").write_text("not DICOM")  # no suffix: a candidate, skipped with a warning
    (tmp_path / "one" / "README.txt").write_text("not DICOM")  # a known non-DICOM suffix: left out silently
    truncated = tmp_path / "one" / "broken.dcm"
    shutil.copy(c.files[0], truncated)
    truncated.write_bytes(truncated.read_bytes()[:-3000])
    with pytest.warns(CatalogWarning) as record:
        df = build_catalog(tmp_path)
    messages = " ".join(str(w.message) for w in record)
    assert "notes" in messages and "broken.dcm" in messages and "truncated" in messages
    assert "README.txt" not in messages
    assert "skipped 2 file(s)" in messages
    assert list(df.columns[:len(CATALOG_COLUMNS)]) == list(CATALOG_COLUMNS)
    assert len(df) == 3
    rows = {r.series_uid: r for r in df.itertuples()}
    for case, folder in ((a, tmp_path / "one"), (b, tmp_path / "one"), (c, tmp_path / "deep" / "er")):
        row = rows[case.meta.series_uid]
        assert row.path == str(folder)
        assert row.seg_path == str(case.seg_path)
        assert row.n_slices == len(case.files)
        assert row.ctdivol == pytest.approx(case.meta.ctdivol)
        assert row.name_mismatch == ""
    row = rows[b.meta.series_uid]
    assert (row.scanner, row.manufacturer, row.dose_mgy, row.recon) == ("A1", "SIEMENS", 3.0, "FBP")
    assert row.kernel == "Br40"
    assert row.mas == pytest.approx(30) and row.kvp == 120 and row.pixel_spacing == 2.0
    assert row.slice_thickness == 2.5 and row.scan_id == 2


def test_repetition_follows_acquisition_time_not_id(tmp_path, make_ct_series):
    start = dt.datetime(2024, 3, 1, 9, 0)
    uids = {}
    for scan_id, minutes in ((5, 30), (6, 10), (7, 20)):  # acquired in order 6, 7, 5
        case = make_ct_series(tmp_path / f"s{scan_id}", scan_id=scan_id, seed=scan_id,
                              series_datetime=start + dt.timedelta(minutes=minutes))
        uids[scan_id] = case.meta.series_uid
    make_ct_series(tmp_path / "other", dose=3, scan_id=8, seed=8)
    df = build_catalog(tmp_path).set_index("series_uid")
    assert [df.loc[uids[i], "repetition"] for i in (6, 7, 5)] == [1, 2, 3]
    assert df.loc[df["dose_mgy"] == 3, "repetition"].tolist() == [1]


def test_name_disagreement_is_reported(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "s", dose=10, ctdivol=6.2)
    with pytest.warns(CatalogWarning, match="CTDIvol 6.2"):
        df = build_catalog(tmp_path)
    assert df.loc[0, "dose_mgy"] == 6.0  # the tag wins
    assert "name says 10" in df.loc[0, "name_mismatch"]
    assert df.loc[0, "dose_mismatch"] and df["dose_mismatch"].dtype == bool
    assert case.meta.ctdivol == 6.2


@pytest.mark.parametrize("ctdivol, mismatch", [
    (10.3, False),   # 3 % off the name's 10 mGy: agree
    (12.9, False),   # 29 % off: still within DOSE_TOLERANCE (30 %)
    (13.2, True),    # 32 % off: the tag's nominal level is 14 mGy
    (40.0, True),    # near no level: the dose comes from the name, and they disagree
])
def test_dose_mismatch_column(tmp_path, make_ct_series, ctdivol, mismatch):
    make_ct_series(tmp_path / "s", dose=10, ctdivol=ctdivol)
    df = build_catalog(tmp_path)
    assert bool(df.loc[0, "dose_mismatch"]) is mismatch
    assert ("name says 10" in df.loc[0, "name_mismatch"]) is mismatch


def test_absent_dose_tag_falls_back_to_name(tmp_path, make_ct_series):
    make_ct_series(tmp_path / "s", dose=14, ctdivol=None)
    with pytest.warns(CatalogWarning, match="no CTDIvol"):
        df = build_catalog(tmp_path)
    assert df.loc[0, "dose_mgy"] == 14.0


def test_no_dose_at_all_gives_an_empty_dose_not_a_stop(tmp_path, make_ct_series):
    make_ct_series(tmp_path / "s", ctdivol=None, series_description="plain abdomen")
    make_ct_series(tmp_path / "t", dose=3, scan_id=2, seed=1)
    with pytest.warns(CatalogWarning, match="plain abdomen.*no CTDIvol.*dose left empty"):
        df = build_catalog(tmp_path)
    assert len(df) == 2
    plain = df[df["series_description"] == "plain abdomen"].iloc[0]
    assert np.isnan(plain["dose_mgy"]) and not plain["dose_mismatch"] and plain["repetition"] == 1
    assert df.loc[df["dose_mgy"] == 3, "repetition"].tolist() == [1]


def test_name_from_folder_when_description_is_not_a_tcia_name(tmp_path, make_ct_series):
    folder = tmp_path / "G1_123_456_Revolution_CT_ID9_Harmonized_6mGy_DL_NrFiles_24"
    make_ct_series(folder, scanner="G1", dose=6, recon="DL", scan_id=9, series_description="Liver 2.5mm")
    df = build_catalog(tmp_path)
    assert (df.loc[0, "scanner"], df.loc[0, "recon"], df.loc[0, "scan_id"]) == ("G1", "DL", 9)


def test_seg_referencing_absent_series_is_an_error(tmp_path, make_ct_series):
    make_ct_series(tmp_path / "kept", scan_id=2, seed=3)
    orphan = make_ct_series(tmp_path / "gone", scan_id=4, seed=4)
    for f in orphan.files:  # the CT is absent, its SEG stays
        f.unlink()
    expected = rf"SEG {orphan.seg_path} references series {orphan.meta.series_uid}"
    with pytest.raises(ValueError, match=expected):
        build_catalog(tmp_path)


def test_duplicate_seg_is_warned(tmp_path, make_ct_series):
    case = make_ct_series(tmp_path / "s")
    shutil.copy(case.seg_path, tmp_path / "copy_seg.dcm")
    with pytest.warns(CatalogWarning, match="two SEGs"):
        df = build_catalog(tmp_path)
    assert len(df) == 1 and df.loc[0, "seg_path"] in (str(case.seg_path), str(tmp_path / "copy_seg.dcm"))


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no DICOM files"):
        build_catalog(tmp_path)
    (tmp_path / "a.txt").write_text("x")  # never DICOM: still no candidates
    with pytest.raises(ValueError, match="no DICOM files"):
        build_catalog(tmp_path)
    (tmp_path / "a").write_text("x")
    with pytest.raises(ValueError, match="no CT series"), pytest.warns(CatalogWarning):
        build_catalog(tmp_path)
    with pytest.raises(FileNotFoundError):
        build_catalog(tmp_path / "nope")


def test_read_catalog_round_trip(tmp_path, small_tree):
    df = build_catalog(small_tree)
    write_csv(df, tmp_path / "catalog.csv")
    back = read_catalog(tmp_path / "catalog.csv")
    assert back["series_uid"].tolist() == df["series_uid"].tolist()
    assert back["dose_mgy"].dtype == float and back["repetition"].tolist() == df["repetition"].tolist()
    assert (back["seg_path"] != "").all()
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        read_catalog(tmp_path / "missing.csv")


def test_choose_reference_never_picks_a_dose_mismatch_and_puts_unknown_doses_last(small_tree):
    df = build_catalog(small_tree)
    auto = choose_reference(df)
    flagged = df.assign(dose_mismatch=df["series_uid"] == auto)
    second = choose_reference(flagged)
    row = df.set_index("series_uid").loc[second]
    assert second != auto and (row["scanner"], row["dose_mgy"], row["recon"], row["repetition"]) == (
        "A1", 10.0, "IR", 2)
    with pytest.warns(CatalogWarning, match="disagree on dose"):
        assert choose_reference(flagged, auto) == auto  # asked for by UID: used, with a warning
    with pytest.raises(ValueError, match="disagrees with its CTDIvol on dose"):
        choose_reference(df.assign(dose_mismatch=True))
    unknown = df.assign(dose_mgy=np.where(df["scanner"] == "A1", np.nan, df["dose_mgy"]))
    assert unknown.set_index("series_uid").loc[choose_reference(unknown), "scanner"] == "B1"
    only_unknown = df.assign(dose_mgy=np.nan)
    with pytest.warns(CatalogWarning, match="reference is A1 unknown dose IR"):
        assert choose_reference(only_unknown) == auto  # nothing else exists: the best of the rest


def test_read_catalog_keeps_empty_dose_and_flags(tmp_path, small_tree):
    df = build_catalog(small_tree)
    df.loc[0, "dose_mgy"] = np.nan
    df.loc[1, "dose_mismatch"] = True
    write_csv(df, tmp_path / "catalog.csv")
    back = read_catalog(tmp_path / "catalog.csv")
    assert np.isnan(back.loc[0, "dose_mgy"]) and back["dose_mgy"].iloc[1:].notna().all()
    assert back["dose_mismatch"].tolist() == [False, True, False, False]
    assert (back["roi_format"] == "SEG").all()
    old = df.drop(columns=["dose_mismatch", "roi_format"])  # a catalog written before these columns
    write_csv(old, tmp_path / "old.csv")
    back = read_catalog(tmp_path / "old.csv")
    assert not back["dose_mismatch"].any() and (back["roi_format"] == "SEG").all()


def test_choose_reference(small_tree):
    df = build_catalog(small_tree)
    auto = choose_reference(df)
    row = df.set_index("series_uid").loc[auto]
    assert (row["scanner"], row["dose_mgy"], row["recon"], row["repetition"]) == ("A1", 10.0, "IR", 1)
    without_a1 = df[df["scanner"] != "A1"]
    assert without_a1.set_index("series_uid").loc[choose_reference(without_a1), "scanner"] == "B1"
    other = df["series_uid"].iloc[-1]
    assert choose_reference(df, other) == other
    with pytest.raises(ValueError, match="not in the catalog"):
        choose_reference(df, "1.2.3")
    with pytest.warns(CatalogWarning, match="no 10 mGy IR series"):
        fallback = choose_reference(df[df["recon"] == "FBP"])
    assert df.set_index("series_uid").loc[fallback, "dose_mgy"] == 3.0  # the only FBP series
    with pytest.warns(CatalogWarning, match="reference is B1 12 mGy IR"):
        choose_reference(df[(df["dose_mgy"] != 10) | (df["scanner"] == "B1")].assign(
            dose_mgy=lambda d: d["dose_mgy"].where(d["scanner"] != "B1", 12.0)))


# --- data/prepare.py and data/patch_centers.py end to end ----------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "data" / script), *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def prepared(small_tree, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    results = tmp_path_factory.mktemp("results")
    run = _run("prepare.py", "--data", str(small_tree), "--results", str(results), "--workers", "1")
    return results, run


def test_prepare_writes_catalog_masks_transforms(prepared):
    results, run = prepared
    assert run.returncode == 0, run.stderr
    layout = ResultsLayout(results)
    catalog = pd.read_csv(layout.catalog, dtype={"series_uid": str})
    assert list(catalog.columns[:len(CATALOG_COLUMNS)]) == list(CATALOG_COLUMNS) and len(catalog) == 4
    recorded = json.loads(layout.reference.read_text())  # prepare.py records the reference in reference.json
    reference = catalog[(catalog["scanner"] == "A1") & (catalog["dose_mgy"] == 10)
                        & (catalog["recon"] == "IR") & (catalog["repetition"] == 1)]["series_uid"].item()
    assert recorded["series_uid"] == reference
    registration = pd.read_csv(layout.registration, dtype={"series_uid": str})
    assert set(registration["series_uid"]) == set(catalog["series_uid"])
    assert registration.set_index("series_uid").loc[reference, "reason"] == "reference series"
    for uid in catalog["series_uid"]:
        labels = read_label_map(layout.mask(uid))
        np.testing.assert_array_equal(labels.array, phantom_label_map())  # same phantom grid in every series
        transform = load_transform(layout.transform(uid))
        # all series show the phantom at the same place: the transform stays close to the identity
        assert np.allclose(transform.TransformPoint((10.0, -20.0, 5.0)), (10.0, -20.0, 5.0), atol=1.0)
    assert not list(results.rglob("*.tmp"))


def test_rerun_skips_finished_series(prepared, small_tree):
    results, _ = prepared
    layout = ResultsLayout(results)
    outputs = (*layout.transforms_dir.iterdir(), *layout.masks_dir.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    run = _run("prepare.py", "--data", str(small_tree), "--results", str(results), "--workers", "1")
    assert run.returncode == 0, run.stderr
    assert "prepared 0 series, skipped 4" in run.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_rerun_with_another_reference_redoes_registration(prepared, small_tree, tmp_path):
    results = tmp_path / "copy"
    shutil.copytree(prepared[0], results)
    layout = ResultsLayout(results)
    catalog = pd.read_csv(layout.catalog, dtype={"series_uid": str})
    other = catalog[catalog["scanner"] == "B1"]["series_uid"].item()
    masks = {p: p.stat().st_mtime_ns for p in layout.masks_dir.iterdir()}
    run = _run("prepare.py", "--data", str(small_tree), "--results", str(results), "--workers", "1",
               "--reference", other)
    assert run.returncode == 0, run.stderr
    assert "prepared 4 series, skipped 0" in run.stdout
    assert {p: p.stat().st_mtime_ns for p in masks} == masks  # masks do not depend on the reference
    registration = pd.read_csv(layout.registration, dtype={"series_uid": str, "reference_uid": str})
    assert (registration["reference_uid"] == other).all()


def test_patch_centers_script(prepared):
    results, _ = prepared
    run = _run("patch_centers.py", "--results", str(results), "--per-roi", "4", "--seed", "1")
    assert run.returncode == 0, run.stderr
    layout = ResultsLayout(results)
    centers = pd.read_csv(layout.patch_centers)
    assert list(centers.columns) == list(PATCH_CENTER_COLUMNS) and len(centers) == 4 * len(ROI_NAMES)
    reference = json.loads(layout.reference.read_text())["series_uid"]
    labels = read_label_map(layout.mask(reference))
    idx = np.rint(labels.physical_to_index(centers[["x_mm", "y_mm", "z_mm"]].to_numpy())).astype(int)
    found = labels.array[idx[:, 2], idx[:, 1], idx[:, 0]]
    np.testing.assert_array_equal(found, centers["roi"].map(lambda r: ROI_NAMES.index(r) + 1))
    again = _run("patch_centers.py", "--results", str(results), "--per-roi", "4", "--seed", "1")
    assert "kept" in again.stdout


@pytest.mark.parametrize("make_input, message", [
    (lambda root: None, "no DICOM files"),
    (lambda root: (root / "junk.bin").write_bytes(b"\0" * 300), "no CT series"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, make_input, message):
    data = tmp_path / "data"
    data.mkdir()
    make_input(data)
    run = _run("prepare.py", "--data", str(data), "--results", str(tmp_path / "r"), "--workers", "1")
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: ") and message in run.stderr
    assert not (tmp_path / "r" / "catalog.csv").exists()


def test_a_bad_series_fails_alone(tmp_path, make_ct_series):
    make_ct_series(tmp_path / "data" / "good", scan_id=1)
    bad = make_ct_series(tmp_path / "data" / "bad", dose=3, scan_id=2, seed=1)
    bad.files[7].unlink()  # a missing slice
    results = tmp_path / "r"
    run = _run("prepare.py", "--data", str(tmp_path / "data"), "--results", str(results), "--workers", "1")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"error: series {bad.meta.series_uid}: series " in run.stderr and "missing slice" in run.stderr
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line == "error: 1 of 2 series failed (listed above); fix or remove them and re-run"
    layout = ResultsLayout(results)
    registration = pd.read_csv(layout.registration, dtype={"series_uid": str}, keep_default_na=False)
    assert bad.meta.series_uid not in set(registration["series_uid"])  # only finished series are listed
    assert not layout.transform(bad.meta.series_uid).exists()
    assert not layout.mask(bad.meta.series_uid).exists()


def test_dose_is_the_median_ctdivol_over_slices(tmp_path, make_ct_series):
    import pydicom

    case = make_ct_series(tmp_path / "s", dose=3, ctdivol=3.0)
    for n, file in enumerate(case.files):  # tube current modulation: CTDIvol varies per slice
        ds = pydicom.dcmread(file)
        ds.CTDIvol = 2.0 + 2.0 * n / (len(case.files) - 1) + (8.0 if n == 0 else 0.0)
        ds.save_as(file)
    df = build_catalog(tmp_path)
    # the first slice alone (10 mGy) or the mean (3.3) would mislead; the median is 3.09
    assert df.loc[0, "ctdivol"] == pytest.approx(3.09, abs=0.01) and df.loc[0, "dose_mgy"] == 3.0


def test_unknown_dose_value(tmp_path, make_ct_series):
    make_ct_series(tmp_path / "named" / "s", dose=6, ctdivol=40.0)
    with pytest.warns(CatalogWarning, match="CTDIvol 40 mGy is near no dose level; dose 6 mGy taken from"):
        assert build_catalog(tmp_path / "named").loc[0, "dose_mgy"] == 6.0
    make_ct_series(tmp_path / "plain", ctdivol=40.0, series_description="abdomen")
    with pytest.warns(CatalogWarning, match="abdomen .*CTDIvol 40 mGy is near no dose level and no dose"):
        assert np.isnan(build_catalog(tmp_path / "plain").loc[0, "dose_mgy"])
