"""Bad input and stale outputs: one line, non-zero exit, nothing lost, nothing silently reused.

Covers the prepare step (catalog, masks, transforms, reference), the patch centers, the one-line
wrapper of every script and the sidecar contract (:mod:`ctdose.provenance`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import phantom_volume, run_script
from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.layout import ResultsLayout
from ctdose.provenance import StaleInputError, is_current, read_sidecar, verify, write_sidecar
from ctdose.registration import RegistrationSettings, register_rigid


@pytest.fixture(scope="module")
def prepared(small_tree, tmp_path_factory) -> Path:
    """``small_tree`` through data/prepare.py and data/patch_centers.py, in-process (shared, copy before use)."""
    results = tmp_path_factory.mktemp("prepared") / "results"
    run_script("data/prepare.py", ["--data", str(small_tree), "--results", str(results), "--workers", "1"])
    run_script("data/patch_centers.py", ["--results", str(results), "--per-roi", "2"])
    return results


@pytest.fixture
def results(prepared, tmp_path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(prepared, out)
    return out


def _stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


# --- the sidecar contract ---------------------------------------------------------------------

def test_sidecar_records_checksums_rows_and_inputs(tmp_path):
    source = tmp_path / "in.csv"
    write_csv(pd.DataFrame({"a": [1, 2, 3]}), source)
    out = tmp_path / "out.csv"
    write_csv(pd.DataFrame({"b": [4, 5]}), out)
    write_sidecar(out, {"k": (1, 2)}, inputs=[source])
    record = read_sidecar(out)
    assert record["n_rows"] == 2 and record["settings"] == {"k": [1, 2]}
    assert list(record["inputs"]) == [os.path.abspath(source)] and len(record["sha256"]) == 64
    assert is_current(out, {"k": [1, 2]}, inputs=[source])
    assert not is_current(out, {"k": [1, 3]}, inputs=[source])          # other settings
    write_csv(pd.DataFrame({"a": [1, 2, 4]}), source)
    assert not is_current(out, {"k": [1, 2]}, inputs=[source])          # changed input
    assert not is_current(tmp_path / "none.csv", {}, inputs=[])         # no output


def test_verify_names_truncated_and_unrecorded_files(tmp_path):
    out = tmp_path / "catalog.csv"
    write_csv(pd.DataFrame({"a": range(10)}), out)
    write_sidecar(out, {})
    assert verify(out, "prep")["n_rows"] == 10
    out.write_text("\n".join(out.read_text().splitlines()[:6]) + "\n")  # cut after 5 rows
    with pytest.raises(StaleInputError, match=r"catalog.csv has 5 rows but its sidecar says 10 .*run prep"):
        verify(out, "prep")
    other = tmp_path / "other.csv"
    other.write_text("a\n1\n")
    with pytest.raises(StaleInputError, match="other.csv has no sidecar"):
        verify(other, "prep")
    with pytest.raises(FileNotFoundError, match="gone.csv not found; run prep"):
        verify(tmp_path / "gone.csv", "prep")
    (tmp_path / "bad.csv").write_text("a\n")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: corrupt sidecar"):
        verify(tmp_path / "bad.csv", "prep")
    assert not is_current(tmp_path / "bad.csv", {})  # a corrupt sidecar means "redo", never a crash


# --- one line for every script --------------------------------------------------------------

@pytest.mark.parametrize("error,line,status", [
    (ValueError("bad value x"), "error: bad value x", 1),
    (PermissionError(13, "Permission denied", "/r/o/catalog.csv"), "error: /r/o/catalog.csv: Permission denied", 1),
    (OSError(28, "No space left on device", "/full/x.csv"), "error: /full/x.csv: No space left on device", 1),
    (KeyboardInterrupt(), "interrupted", 130),
])
def test_run_main_turns_errors_into_one_line(capsys, error, line, status):
    def main(argv):
        raise error

    assert run_main(main, []) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line)


def test_results_path_that_is_a_file_is_one_line(small_tree, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=r"^error: .*results.*(Not a directory|File exists)"):
        run_script("data/prepare.py", ["--data", str(small_tree), "--results", str(blocker), "--workers", "1"])


# --- prepare: what a re-run redoes -----------------------------------------------------------

def test_prepare_rerun_keeps_current_outputs_and_redoes_another_seed(prepared, small_tree, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(prepared, results)
    layout = ResultsLayout(results)
    catalog = pd.read_csv(layout.catalog, dtype=str)
    other = next(uid for uid in catalog["series_uid"] if uid != json.loads(layout.reference.read_text())["series_uid"])
    before = {p: _stamp(p) for p in (layout.catalog, layout.mask(other), layout.transform(other))}
    run_script("data/prepare.py", ["--data", str(small_tree), "--results", str(results), "--workers", "1"])
    assert {p: _stamp(p) for p in before} == before  # nothing redone
    run_script("data/prepare.py", ["--data", str(small_tree), "--results", str(results), "--workers", "1",
                                   "--seed", "7"])
    assert read_sidecar(layout.transform(other))["settings"]["registration"]["seed"] == 7  # redone
    assert _stamp(layout.mask(other)) == before[layout.mask(other)]  # the mask does not depend on the seed


def test_prepare_rebuilds_a_truncated_catalog(results, small_tree):
    layout = ResultsLayout(results)
    full = layout.catalog.read_text()
    layout.catalog.write_text("\n".join(full.splitlines()[:2]) + "\n")
    run_script("data/prepare.py", ["--data", str(small_tree), "--results", str(results), "--workers", "1"])
    assert layout.catalog.read_text() == full


def test_corrupt_transform_and_mask_are_redone_by_prepare(results, small_tree):
    layout = ResultsLayout(results)
    uid = pd.read_csv(layout.catalog, dtype=str)["series_uid"].iloc[-1]
    layout.transform(uid).write_text("#Insight Transform File V1.0\ngarbage\n")
    layout.mask(uid).write_bytes(b"\x1f\x8b broken")
    run_script("data/prepare.py", ["--data", str(small_tree), "--results", str(results), "--workers", "1"])
    verify(layout.transform(uid), "prepare")
    verify(layout.mask(uid), "prepare")
    from ctdose.transform_io import load_transform
    assert isinstance(load_transform(layout.transform(uid)), sitk.Transform)


def test_corrupt_transform_file_is_named(tmp_path):
    from ctdose.transform_io import load_transform

    path = tmp_path / "x.tfm"
    path.write_text("#Insight Transform File V1.0\ngarbage\n")
    with pytest.raises(ValueError, match=r"x.tfm: not a readable transform file"):
        load_transform(path)


def test_prepare_where_every_series_fails_lists_the_errors(small_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(small_tree, tree)
    for folder in tree.iterdir():  # every series loses one slice in the middle
        slices = sorted(p for p in folder.iterdir() if p.suffix == ".dcm" and "seg" not in p.name.lower())
        slices[len(slices) // 2].unlink()
    with pytest.raises(SystemExit, match=r"series failed .*registration.csv was not written"):
        run_script("data/prepare.py", ["--data", str(tree), "--results", str(tmp_path / "r"), "--workers", "1"])


def test_registration_is_the_same_with_any_number_of_itk_threads():
    """The registration runs on a fixed thread count: the global ITK default (what a worker sets) does
    not change the transform, so --workers 1 and --workers 2 give the same files."""
    fixed = phantom_volume(noise_sd=10, seed=0)
    moving_truth = sitk.Euler3DTransform()
    moving_truth.SetTranslation((2.0, -1.0, 1.0))
    moving = phantom_volume(noise_sd=10, seed=1, transform=moving_truth.GetInverse())
    settings = RegistrationSettings(iterations=(20, 10, 5))
    default = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        results = []
        for threads in (1, 2, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            results.append(register_rigid(fixed, moving, settings).transform.GetParameters())
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(default)
    assert results[0] == results[1] == results[2]  # bit-identical, not merely close


# --- patch centers -----------------------------------------------------------------------------

def _rewrite_centers(layout: ResultsLayout, edit) -> None:
    """Edit patch_centers.csv and re-record its sidecar, as a (buggy) producer would have written it."""
    record = read_sidecar(layout.patch_centers)
    df = pd.read_csv(layout.patch_centers)
    write_csv(edit(df), layout.patch_centers)
    write_sidecar(layout.patch_centers, record["settings"])


@pytest.mark.parametrize("edit,message", [
    (lambda df: df.assign(x_mm=df["x_mm"].where(df.index != 3, np.nan)), r"line 5 .* missing or non-numeric"),
    (lambda df: df.drop(index=[0]), r"ROI cyst1 has 1 centers, fewer than the 2 per ROI"),
    (lambda df: pd.concat([df, df.iloc[[0]]]), r"patch 0 of ROI cyst1 appears twice"),
])
def test_bad_patch_centers_are_refused_by_the_extractors(results, edit, message):
    layout = ResultsLayout(results)
    _rewrite_centers(layout, edit)
    with pytest.raises(SystemExit, match=message):
        run_script("radiomics/extract_radiomics.py", ["--results", str(results), "--workers", "1",
                                                      "--max-series", "1", "--patches-per-roi", "1"])


def test_edited_centers_and_too_many_patches_per_roi_are_refused(results):
    layout = ResultsLayout(results)
    with pytest.raises(SystemExit, match=r"--patches-per-roi 3: ROI cyst1 has only 2 centers"):
        run_script("radiomics/extract_radiomics.py", ["--results", str(results), "--workers", "1",
                                                      "--max-series", "1", "--patches-per-roi", "3"])
    with layout.patch_centers.open("a") as handle:
        handle.write("cyst1,cyst,9,1.0,2.0,3.0\n")
    with pytest.raises(SystemExit, match=r"patch_centers.csv has 13 rows but its sidecar says 12"):
        run_script("radiomics/extract_radiomics.py", ["--results", str(results), "--workers", "1",
                                                      "--max-series", "1", "--patches-per-roi", "1"])


def test_patches_outside_the_field_of_view_are_counted_and_refused_by_default(results):
    layout = ResultsLayout(results)
    reference = json.loads(layout.reference.read_text())  # its transform is the identity
    from ctdose.dicom_io import read_ct_series
    volume = read_ct_series(reference["path"], reference["series_uid"])
    last_x = float(volume.index_to_physical(np.array([volume.shape_xyz[0] - 1, 0, 0]))[0])
    assert np.allclose(volume.direction, np.eye(3))

    def to_edge(df):  # cyst1's centers 5 mm inside the last voxel center along x
        df.loc[df["roi"] == "cyst1", "x_mm"] = last_x - 5.0
        return df
    _rewrite_centers(layout, to_edge)
    argv = ["--results", str(results), "--workers", "1", "--scanners", "A1", "--doses", "10", "--recons", "IR",
            "--max-series", "1", "--patches-per-roi", "1", "--patch-size", "32", "32", "8"]
    with pytest.raises(SystemExit, match=r"roi cyst1, patch 0: .* outside the field of view"):
        run_script("radiomics/extract_radiomics.py", argv)
    run_script("radiomics/extract_radiomics.py", [*argv, "--max-outside-share", "0.6"])
    table = pd.read_csv(layout.feature_table("radiomics"))
    assert list(table["series_uid"].unique()) == [reference["series_uid"]]
    outside = table.set_index("roi")["outside_fraction"]
    # the patch's x columns lie at (i - 15.5) * 0.6836 mm from its center; those beyond +5 mm are outside
    columns_out = int(np.sum((np.arange(32) - 15.5) * 0.6836 > 5.0))
    assert columns_out == 9 and outside["cyst1"] == pytest.approx(columns_out / 32)
    assert (outside.drop("cyst1") == 0).all()


# --- weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["weights/model.pt", "missing_dir/model_swinvit.pth", "tests/none"])
def test_a_missing_local_weights_path_is_no_such_file_not_a_hub_lookup(source, monkeypatch):
    from ctdose.extractors import weights

    def no_hub(*args, **kwargs):  # would mean the path was taken for a hub id
        raise AssertionError("hub lookup attempted")

    monkeypatch.setattr(weights, "_hub_download", no_hub)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(FileNotFoundError, match=rf"weights file {source} not found \(no such file"):
        weights.resolve_weights(source)
    assert weights.looks_like_hub_id("project-lighter/ct_fm_feature_extractor")


def test_a_failed_atomic_write_names_the_output_not_its_temporary_file(tmp_path):
    from ctdose.atomic import write_text

    target = tmp_path / "out.txt"
    target.mkdir()  # the final rename onto a folder fails
    with pytest.raises(OSError) as info:
        write_text("x", target)
    assert info.value.filename == str(target)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left


def test_unreadable_catalog_with_a_valid_sidecar_is_named(results):
    """A catalog that is intact by checksum but not a CSV pandas can read (written so by a bad tool)."""
    layout = ResultsLayout(results)
    layout.catalog.write_bytes(b"series_uid,path\n\"unterminated,quote\nx,y,z,w\n\xff\xfe")
    write_sidecar(layout.catalog, {"data": "x"})
    with pytest.raises(SystemExit, match=r"^error: .*catalog.csv: unreadable CSV"):
        run_script("radiomics/extract_radiomics.py", ["--results", str(results), "--workers", "1"])


def test_corrupt_label_map_is_named(tmp_path):
    from ctdose.label_map_io import read_label_map

    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(ValueError, match=r"mask.nii.gz"):
        read_label_map(path)
