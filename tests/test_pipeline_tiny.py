"""End to end on the tiny twin: every script, run as a user runs it, from the simulation to the report.

This is the integration test of the whole toolkit: the same scripts as `make demo`, on the `tiny`
preset, with the deep extractors limited to the FBP series (they cost ~0.5 s per patch on a CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctdose.extractors.cnn import ShallowCNN
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout
from ctdose.naming import ROI_NAMES
from ctdose.registration import load_transform
from ctdose.twin.phantom import Pose

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str | Path) -> str:
    """Run a top-level script with the test's interpreter; fail with its output if it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """Run the whole pipeline once; returns (twin folder, results folder, stdout of each step)."""
    root = tmp_path_factory.mktemp("pipeline")
    twin, results = root / "twin", root / "results"
    out = {}
    out["twin"] = _run("data/make_twin.py", "--preset", "tiny", "--out", twin, "--workers", "1")
    out["prepare"] = _run("data/prepare.py", "--data", twin, "--results", results, "--workers", "1")
    out["centers"] = _run("data/patch_centers.py", "--results", results, "--per-roi", "2")
    few = ("--patches-per-roi", "1")
    out["radiomics"] = _run("radiomics/extract_radiomics.py", "--results", results, "--workers", "1", *few)
    cnn_weights = root / "shallow_cnn.pt"  # stands in for pretrain_cnn.py's output (minutes to make)
    torch.manual_seed(0)
    torch.save(ShallowCNN().state_dict(), cnn_weights)
    out["cnn"] = _run("cnn/extract_cnn.py", "--results", results, "--weights", cnn_weights, *few)
    # the deep models' default weights are absent on a fresh clone: --allow-untrained runs them untrained
    untrained = ("--weights", "none", "--allow-untrained")
    out["swin"] = _run("swin/extract_swin.py", "--results", results, "--recons", "FBP", *few, *untrained)
    out["ctfm"] = _run("ct-fm/extract_ctfm.py", "--results", results, "--recons", "FBP", *few, *untrained)
    out["icc"] = _run("analyze/icc.py", "--results", results)
    out["umap"] = _run("analyze/umap_plots.py", "--results", results, "--epochs", "50",
                       "--n-neighbors", "5")
    out["classify"] = _run("analyze/classify.py", "--results", results, "--classifier", "logreg",
                           "--draws", "1", "--test-folds", "1", "--n-folds", "4")
    out["image_metrics"] = _run("analyze/image_metrics.py", "--results", results, "--workers", "1")
    out["report"] = _run("analyze/report.py", "--results", results)
    return twin, results, out


def test_every_feature_table_has_one_row_per_series_roi_patch(pipeline):
    _, results, _ = pipeline
    layout = ResultsLayout(results)
    catalog = pd.read_csv(layout.catalog)
    n_fbp = int((catalog["recon"] == "FBP").sum())
    assert 0 < n_fbp < len(catalog)
    expected_series = {"radiomics": len(catalog), "cnn": len(catalog), "swin": n_fbp, "ctfm": n_fbp}
    for name, n_series in expected_series.items():
        table = pd.read_csv(layout.feature_table(name))
        assert list(table.columns[:len(IDENTITY_COLUMNS)]) == list(IDENTITY_COLUMNS)
        features = table.columns[len(IDENTITY_COLUMNS):]
        assert len(features) > 0 and all(c.startswith(f"{name}_") for c in features)
        assert table["series_uid"].nunique() == n_series
        assert len(table) == n_series * len(ROI_NAMES)  # one patch per ROI
        assert not table.duplicated(["series_uid", "roi", "patch"]).any()
        sidecar = json.loads(layout.feature_table(name).with_suffix(".json").read_text())
        assert sidecar.get("untrained", False) is (name in ("swin", "ctfm"))


def test_report_has_every_section_and_flags_untrained_weights(pipeline):
    twin, results, out = pipeline
    html = (results / "report.html").read_text()
    for title in ("Data used", "Feature tables and weights", "ICC", "UMAP", "Classification",
                  "Image metrics", "Provenance"):
        assert f">{title}" in html
    assert "Missing:" not in html  # every step ran, so no section lacks its inputs
    assert "UNTRAINED" in html and "digital twin" in html.lower()
    assert str((results / "report.html").resolve()) in out["report"]
    assert (twin / "ground_truth.json").is_file()


def test_registration_recovers_the_twins_repositioning(pipeline):
    """The transforms of prepare.py match the twin's known rigid repositioning within 1 mm at the ROIs."""
    twin, results, _ = pipeline
    layout = ResultsLayout(results)
    truth = json.loads((twin / "ground_truth.json").read_text())
    poses = {s["series_uid"]: Pose(s["pose"]["rotation_z_deg"], tuple(s["pose"]["translation_mm"]))
             for s in truth["series"]}
    reference = json.loads(layout.catalog.with_suffix(".json").read_text())["reference"]["series_uid"]
    roi_centres = np.array(list(truth["roi_centers_phantom_mm"].values()), dtype=float)
    in_reference = poses[reference].to_scanner(roi_centres)
    for uid, pose in poses.items():
        expected = pose.to_scanner(poses[reference].to_phantom(in_reference))
        transform = load_transform(layout.transform(uid))
        found = np.array([transform.TransformPoint(tuple(p)) for p in in_reference])
        assert np.abs(found - expected).max() < 1.0, uid


def test_second_run_skips_finished_series(pipeline):
    _, results, _ = pipeline
    layout = ResultsLayout(results)
    n_series = len(pd.read_csv(layout.catalog))
    table = layout.feature_table("radiomics")
    before, stamp = table.read_bytes(), table.stat().st_mtime_ns
    again = _run("radiomics/extract_radiomics.py", "--results", results, "--workers", "1",
                 "--patches-per-roi", "1")
    assert f"{n_series} series selected, {n_series} already done" in again
    assert "is up to date" in again and table.stat().st_mtime_ns == stamp and table.read_bytes() == before
    # another selection is not "up to date": the table is merged again from the partials (no re-extraction)
    subset = _run("radiomics/extract_radiomics.py", "--results", results, "--workers", "1",
                  "--patches-per-roi", "1", "--recons", "FBP")
    assert "is up to date" not in subset
    assert set(pd.read_csv(table)["recon"]) == {"FBP"}
