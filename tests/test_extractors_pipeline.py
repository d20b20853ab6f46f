"""End-to-end tests of the extractor scripts on small DICOM series (catalog, transforms, centers on disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from ctdose.atomic import write_csv
from ctdose.catalog import build_catalog, read_catalog
from ctdose.extractors import driver
from ctdose.features import read_feature_table
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.provenance import write_sidecar
from ctdose.transform_io import save_transform
from conftest import run_script

torch.set_num_threads(1)
# the test series are small (24 slices of 2 mm): a 16- or 32-slice patch around a ROI reaches outside
OUTSIDE = ["--max-outside-share", "0.6"]
SMALL = ["--patch-size", "32", "32", "16", "--patches-per-roi", "1", *OUTSIDE]


@pytest.fixture(scope="module")
def results(small_tree, tmp_path_factory) -> Path:
    """A results folder for ``small_tree``: catalog, identity transforms, two centers per ROI."""
    root = tmp_path_factory.mktemp("results")
    layout = ResultsLayout(root)
    catalog = build_catalog(small_tree)
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, {"data": str(small_tree)})
    for uid in catalog["series_uid"]:
        save_transform(sitk.Euler3DTransform(), layout.transform(uid))
        write_sidecar(layout.transform(uid), {"series_uid": uid})
    from conftest import ROI_SPHERES
    rows = [{"roi": roi, "roi_class": ROI_CLASSES[roi], "patch": p,
             "x_mm": ROI_SPHERES[roi][0][0] + p, "y_mm": ROI_SPHERES[roi][0][1], "z_mm": ROI_SPHERES[roi][0][2]}
            for roi in ROI_NAMES for p in range(2)]
    write_csv(pd.DataFrame(rows), layout.patch_centers)
    write_sidecar(layout.patch_centers, {"per_roi": 2})
    return root


def _fresh(results: Path, tmp_path: Path) -> Path:
    """A private copy of the shared results inputs (without features)."""
    out = tmp_path / "results"
    shutil.copytree(results, out, ignore=shutil.ignore_patterns("features"))
    return out


def _run(relpath: str, argv: list[str], default_weights: str | None = None) -> None:
    """Run a script's main; ``default_weights`` replaces a network script's WEIGHTS setting."""
    run_script(relpath, argv, **({"WEIGHTS": default_weights} if default_weights else {}))


def test_radiomics_patch_table_and_resume_after_crash(results, tmp_path):
    res = _fresh(results, tmp_path)
    layout = ResultsLayout(res)
    _run("radiomics/extract_radiomics.py", ["--results", str(res), "--workers", "1", *SMALL])
    table = read_feature_table(layout.feature_table("radiomics"))
    catalog = read_catalog(layout.catalog)
    assert len(table.ident) == len(catalog) * len(ROI_NAMES)  # one row per (series, ROI, patch)
    assert list(table.ident["series_uid"].unique()) == list(catalog["series_uid"])  # catalog order
    assert list(table.ident["roi"][:6]) == list(ROI_NAMES) and set(table.ident["patch"]) == {0}
    assert all(n.startswith("radiomics_original_") for n in table.feature_names) and len(table.feature_names) > 80
    sidecar = json.loads(layout.feature_table("radiomics").with_suffix(".json").read_text())
    assert sidecar["settings"]["protocol"] == "toolkit"  # the protocol is named beside every table
    assert sidecar["n_features"] == len(table.feature_names) and sidecar["settings"]["params"]["setting"]["binWidth"] == 25
    first = layout.feature_table("radiomics").read_text()

    # simulated crash: the merged table and one partial are gone; the re-run redoes only that series
    layout.feature_table("radiomics").unlink()
    victim = layout.feature_partial("radiomics", catalog["series_uid"][1])
    victim.unlink()
    kept = layout.feature_partial("radiomics", catalog["series_uid"][0])
    stamp = kept.stat().st_mtime_ns
    _run("radiomics/extract_radiomics.py", ["--results", str(res), "--workers", "1", *SMALL])
    assert layout.feature_table("radiomics").read_text() == first
    assert victim.exists() and kept.stat().st_mtime_ns == stamp  # finished series were skipped

    # other value-changing settings: every partial is recomputed (never mixed), then back again
    _run("radiomics/extract_radiomics.py", ["--results", str(res), "--workers", "1", "--patch-size",
                                             "16", "16", "16", "--patches-per-roi", "1", *OUTSIDE])
    other = read_feature_table(layout.feature_table("radiomics"))
    assert not np.allclose(other.X, table.X)
    assert json.loads(kept.with_suffix(".json").read_text())["settings"]["patch_size"] == [16, 16, 16]
    _run("radiomics/extract_radiomics.py", ["--results", str(res), "--workers", "1", *SMALL[:4], *OUTSIDE,
                                             "--patches-per-roi", "2"])
    assert len(read_feature_table(layout.feature_table("radiomics")).ident) == len(catalog) * 12
    _run("radiomics/extract_radiomics.py", ["--results", str(res), "--workers", "1", *SMALL])
    assert layout.feature_table("radiomics").read_text() == first


def test_radiomics_roi_mode_rows_per_roi(results, tmp_path):
    res = _fresh(results, tmp_path)
    _run("radiomics/extract_radiomics.py", ["--results", str(res), "--workers", "1", "--mode", "roi",
                                             "--max-series", "1"])
    df = pd.read_csv(ResultsLayout(res).feature_table("radiomics"))
    assert list(df["roi"]) == list(ROI_NAMES) and set(df["patch"]) == {driver.WHOLE_ROI_PATCH}
    # cysts are darker than the hemangioma in the test phantom (5 vs 130 HU)
    mean = df.set_index("roi")["radiomics_original_firstorder_Mean"]
    assert mean["cyst1"] < mean["hemangioma"] - 50


@pytest.mark.parametrize("script,name,width", [("cnn/extract_cnn.py", "cnn", 64 * 2 * 2 * 1),
                                               ("swin/extract_swin.py", "swin", 768),
                                               ("ct-fm/extract_ctfm.py", "ctfm", 512)])
def test_deep_tables_untrained(results, tmp_path, script, name, width):
    res = _fresh(results, tmp_path)
    layout = ResultsLayout(res)
    size = ["--patch-size", "32", "32", "32"] if name == "swin" else SMALL[:4]
    size = [*size, *OUTSIDE]
    n_series = 1 if name == "swin" else 2  # Swin is the slowest on CPU
    argv = ["--results", str(res), "--max-series", str(n_series), "--patches-per-roi", "1", "--device", "cpu",
            "--weights", str(tmp_path / "absent.pt"), *size]
    with pytest.raises(SystemExit, match="absent.pt not found"):
        _run(script, argv)
    argv = [a for a in argv if a not in ("--weights", str(tmp_path / "absent.pt"))]
    absent_default = str(tmp_path / "default_weights_not_made.pt")
    with pytest.raises(SystemExit, match="--allow-untrained"):
        _run(script, argv, absent_default)
    _run(script, [*argv, "--allow-untrained"], absent_default)  # missing default weights: untrained, as asked
    table = read_feature_table(layout.feature_table(name))
    assert table.untrained and table.sidecar["init_seed"] == 0
    assert len(table.ident) == n_series * len(ROI_NAMES) and len(table.feature_names) == width
    assert table.feature_names[0] == f"{name}_0000"
    assert list(pd.read_csv(layout.feature_table(name)).columns[:len(IDENTITY_COLUMNS)]) == list(IDENTITY_COLUMNS)
    first = table.X.copy()
    shutil.rmtree(layout.features_dir)  # deterministic on CPU: a second full run is identical
    _run(script, [*argv, "--allow-untrained"], absent_default)
    np.testing.assert_array_equal(read_feature_table(layout.feature_table(name)).X, first)


def test_cnn_with_a_weights_file_records_its_checksum(results, tmp_path):
    from ctdose.extractors import cnn
    from ctdose.extractors.weights import sha256

    res = _fresh(results, tmp_path)
    torch.manual_seed(42)
    path = tmp_path / "shallow_cnn.pt"
    torch.save(cnn.ShallowCNN().state_dict(), path)
    _run("cnn/extract_cnn.py", ["--results", str(res), "--max-series", "1", "--weights", str(path), *SMALL])
    table = read_feature_table(ResultsLayout(res).feature_table("cnn"))
    assert not table.untrained and table.sidecar["weights_sha256"] == sha256(path)
    assert table.sidecar["missing_keys"] == [] and table.sidecar["unexpected_keys"] == []
    assert len(table.feature_names) == 64 * 2 * 2 * 1 and np.isfinite(table.X).all()


def test_missing_series_files_and_nan_are_errors(results, tmp_path, monkeypatch):
    res = _fresh(results, tmp_path)
    layout = ResultsLayout(res)
    catalog = read_catalog(layout.catalog)
    catalog.loc[0, "path"] = str(tmp_path / "gone")
    write_csv(catalog, layout.catalog)  # edited behind prepare's back: refused
    with pytest.raises(SystemExit, match=r"catalog.csv changed since it was written; run data/prepare.py"):
        _run("cnn/extract_cnn.py", ["--results", str(res), "--allow-untrained", "--max-series", "1", *SMALL])
    write_sidecar(layout.catalog, {"data": "moved"})  # a current catalog whose DICOM folder has gone since
    with pytest.raises(SystemExit, match=f"series {catalog['series_uid'][0]}: CT folder .*gone.* is missing"):
        _run("cnn/extract_cnn.py", ["--results", str(res), "--allow-untrained", "--max-series", "1", *SMALL])

    res2 = _fresh(results, tmp_path / "b")
    from ctdose.extractors import deep

    def nan_embed(net, patches, batch_size=8, device="cpu"):
        out = np.zeros((len(patches), net.n_features), np.float32)
        out[2, 5] = np.nan
        return out

    monkeypatch.setattr(deep, "embed_patches", nan_embed)
    with pytest.raises(SystemExit, match=rf"cnn_0005 = nan in series .*, roi {ROI_NAMES[2]}, patch 0"):
        _run("cnn/extract_cnn.py", ["--results", str(res2), "--allow-untrained", "--max-series", "1", *SMALL])
    assert not list((ResultsLayout(res2).features_dir / "partial" / "cnn").glob("*.csv"))  # nothing written
