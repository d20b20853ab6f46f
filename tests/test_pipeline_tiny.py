"""End to end on the tiny twin: every step of `make demo`, from the simulation to the report.

This is the integration test of the whole toolkit: the same scripts as `make demo` on the `tiny`
preset (made by ``data/make_twin.py`` once per session, conftest's ``tiny_twin``). The steps between
run in this process through their ``main`` as their ``__main__`` does (``conftest.run_script``): one
import of torch, MONAI and numba for all of them instead of one per step; the report runs as a
separate process, as a user runs it. The deep extractors take the FBP series and 32x32x32 patches
(SwinUNETR and CT-FM cost ~0.3 s per patch on a CPU core), radiomics 32x32x16 patches on every
series, the CNN the default 64x64x32 patches on every series.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_script
from ctdose.extractors.cnn import ShallowCNN
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout, feature_columns
from ctdose.naming import ROI_NAMES
from ctdose.segmentation.builtin import BuiltinConfig, build_network, save_model
from ctdose.transform_io import load_transform
from ctdose.twin.phantom import Pose

EXTRACTORS = ("radiomics", "cnn", "swin", "ctfm")
#: radiomics on every series, 32x32x16 patches (PyRadiomics costs ~0.25 s per 64x64x32 patch)
RADIOMICS_ARGS = ("--workers", "1", "--patches-per-roi", "1", "--patch-size", "32", "32", "16")
#: the segmentation step's stand-in model: a small U-Net on a coarse 4 mm working grid
SEG_CONFIG = BuiltinConfig(channels=(4, 8), strides=(2,), num_res_units=0, work_spacing_zyx_mm=(4.0, 4.0, 4.0),
                           patch_zyx=(16, 32, 32))


def _run(script: str, *args: str | Path) -> str:
    """Run a step's ``main`` in this process (as its ``__main__`` does); returns what it printed."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run_script(script, [str(a) for a in args])
    return stdout.getvalue()


def _run_process(script: str, *args: str | Path) -> str:
    """Run a script as a user does, in its own process; fail with its output if it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def pipeline(tiny_twin, tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """Run the whole pipeline once; returns (twin folder, results folder, stdout of each step)."""
    twin, _ = tiny_twin
    root = tmp_path_factory.mktemp("pipeline")
    results = root / "results"
    out = {}
    out["prepare"] = _run("data/prepare.py", "--data", twin, "--results", results, "--workers", "1")
    out["series_qc"] = _run("analyze/series_qc.py", "--results", results)
    out["size_dose"] = _run("data/size_dose.py", "--results", results, "--workers", "1", "--slice-step", "4")
    out["centers"] = _run("data/patch_centers.py", "--results", results, "--per-roi", "2")
    few = ("--patches-per-roi", "1")
    out["radiomics"] = _run("radiomics/extract_radiomics.py", "--results", results, *RADIOMICS_ARGS)
    cnn_weights = root / "shallow_cnn.pt"  # stands in for pretrain_cnn.py's output (minutes to make)
    torch.manual_seed(0)
    torch.save(ShallowCNN().state_dict(), cnn_weights)
    out["cnn"] = _run("cnn/extract_cnn.py", "--results", results, "--weights", cnn_weights, *few)
    # the deep models' default weights are absent on a fresh clone: --allow-untrained runs them untrained
    deep = ("--recons", "FBP", "--patch-size", "32", "32", "32", *few, "--weights", "none", "--allow-untrained")
    out["swin"] = _run("swin/extract_swin.py", "--results", results, *deep)
    out["ctfm"] = _run("ct-fm/extract_ctfm.py", "--results", results, *deep)
    out["icc"] = _run("analyze/icc.py", "--results", results)
    # the tiny twin has 3 and 14 mGy only: the papers' 10 mGy figures (Figs. 4-6) are drawn at 14 mGy;
    # in this process (umap-learn compiles its numba functions once per process, about 25 s of CPU, which
    # the harmonization step's UMAPs then reuse; tests/test_contract.py sends the step's jobs through pickle
    # as its workers get them)
    out["umap"] = _run("analyze/umap_plots.py", "--results", results, "--epochs", "50", "--n-neighbors", "5",
                       "--figure-dose", "14", "--workers", "1")
    out["classify"] = _run("analyze/classify.py", "--results", results, "--classifier", "logreg",
                           "--n-folds", "4")
    out["harmonize"] = _run("analyze/harmonize.py", "--results", results, "--n-folds", "4", "--workers", "1",
                            "--extractors", "radiomics", "cnn")
    out["image_metrics"] = _run("analyze/image_metrics.py", "--results", results, "--workers", "1",
                                "--texture-dose", "14")
    out["dose_effects"] = _run("analyze/dose_effects.py", "--results", results, "--low-dose", "3",
                               "--classifiers", "logreg", "--regressors", "ridge", "--n-folds", "2")
    # a seeded, untrained coarse U-Net stands in for train_builtin.py's output (minutes to make); one
    # scanner, two dose levels, no denoising: the step's outputs and report section, not its figures
    seg_weights = root / "builtin_unet.pt"
    torch.manual_seed(0)
    save_model(build_network(SEG_CONFIG), SEG_CONFIG, seg_weights)
    out["segmentation"] = _run("segmentation/dose_robustness.py", "--data", twin, "--results", results,
                               "--builtin-weights", seg_weights, "--scanners", "A1", "--denoisers", "none",
                               "--fractions", "0.5", "1.0", "--no-contrast-variant", "--workers", "1",
                               "--device", "cpu")
    out["report"] = _run_process("analyze/report.py", "--results", results)
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
        assert list(table.columns[:len(IDENTITY_COLUMNS) + 1]) == [*IDENTITY_COLUMNS, "outside_fraction"]
        assert (table["outside_fraction"] == 0).all()  # the default refuses patches reaching outside
        features = feature_columns(list(table.columns))
        assert len(features) > 0 and all(c.startswith(f"{name}_") for c in features)
        assert table["series_uid"].nunique() == n_series
        assert len(table) == n_series * len(ROI_NAMES)  # one patch per ROI
        assert not table.duplicated(["series_uid", "roi", "patch"]).any()
        sidecar = json.loads(layout.feature_table(name).with_suffix(".json").read_text())
        assert sidecar.get("untrained", False) is (name in ("swin", "ctfm"))


def test_umap_embeds_every_row_of_every_table(pipeline):
    """UMAP (numba-compiled, so run here only): one finite 2-D point per feature row, figures written."""
    _, results, _ = pipeline
    layout = ResultsLayout(results)
    for name in EXTRACTORS:
        table = pd.read_csv(layout.feature_table(name))
        emb = pd.read_csv(layout.umap_table(name))
        assert len(emb) == len(table)
        assert emb[["series_uid", "roi", "patch"]].equals(table[["series_uid", "roi", "patch"]])
        assert np.isfinite(emb[["umap_1", "umap_2"]].to_numpy()).all()
        assert emb[["umap_1", "umap_2"]].to_numpy().std(axis=0).min() > 0  # not collapsed to a point
        figure = layout.umap_figure(name)
        assert figure.with_suffix(".png").stat().st_size > 0 and figure.with_suffix(".pdf").is_file()


def test_report_has_every_section_and_flags_untrained_weights(pipeline):
    twin, results, out = pipeline
    html = (results / "report.html").read_text()
    for title in ("Findings", "Data used", "Feature tables and weights", "ICC", "UMAP", "Classification",
                  "Image metrics", "Provenance"):
        assert f">{title}" in html
    for title in ("Series QC", "Patient size", "Harmonization bench", "Segmentation dose robustness",
                  "Table 2 layout"):
        assert title in html
    assert [line for line in html.splitlines() if "Missing:" in line] == []  # every step has its inputs
    assert "UNTRAINED" in html and "digital twin" in html.lower()
    assert str((results / "report.html").resolve()) in out["report"]
    assert (twin / "ground_truth.json").is_file()


def test_paper_figures_drawn_with_captions_and_the_report_links_resolve(pipeline):
    """Figs. 4-6 and the UMAP per scanner: each drawn (PNG + PDF) or skipped with its reason; the report
    shows each with its caption and a link to its PDF; every anchor resolves and every image decodes.
    A real headless browser is not installable from PyPI within 200 MB (PyQt6-WebEngine: 526 MB), so the
    page is checked with html.parser and PIL (test_paper_figures.check_html_links)."""
    from ctdose.stats.embedding import PAPER_FIGURES
    from test_paper_figures import check_html_links

    _, results, _ = pipeline
    layout = ResultsLayout(results)
    html = (results / "report.html").read_text()
    for name in EXTRACTORS:
        side = json.loads(layout.umap_table(name).with_suffix(".json").read_text())
        captions, skipped = side["figure_captions"], side["figures_skipped"]
        assert set(captions) | set(skipped) == set(PAPER_FIGURES) and not set(captions) & set(skipped)
        assert {"fig6_rois", "per_scanner"} <= set(captions)  # 2 scanners x 6 ROIs at 14 mGy: always rows
        for kind, caption in captions.items():
            png, pdf = (f for f in (layout.umap_paper_figure(name, kind).with_suffix(s) for s in (".png", ".pdf")))
            assert png.stat().st_size > 0 and pdf.read_bytes()[:5] == b"%PDF-"
            assert html.count(caption.replace("'", "&#x27;")) == 2  # figcaption and the img's alt text
        for kind, why in skipped.items():
            assert why in html and not layout.umap_paper_figure(name, kind).with_suffix(".png").exists()
    texture = json.loads(layout.image_metrics_dose.with_suffix(".json").read_text())["texture_caption"]
    assert texture.startswith("Fig. 4 layout") and "2 of 2 scanners" in texture
    assert layout.texture_figure().with_suffix(".pdf").is_file() and "Registered texture per scanner" in html
    n_images = check_html_links(html, results)
    assert n_images == html.count("<figure>") == html.count(">[PDF]</a>") > 10
    # a re-run with the same settings keeps every figure (skipped ones are not expected on disk)
    again = _run("analyze/umap_plots.py", "--results", results, "--epochs", "50", "--n-neighbors", "5",
                 "--figure-dose", "14")
    assert f"0 extractor(s) embedded, {len(EXTRACTORS)} up to date" in again
    assert "up to date" in _run("analyze/image_metrics.py", "--results", results, "--workers", "1",
                                "--texture-dose", "14")


def test_registration_recovers_the_twins_repositioning(pipeline):
    """The transforms of prepare.py match the twin's known rigid repositioning within 1 mm at the ROIs."""
    twin, results, _ = pipeline
    layout = ResultsLayout(results)
    truth = json.loads((twin / "ground_truth.json").read_text())
    poses = {s["series_uid"]: Pose(s["pose"]["rotation_z_deg"], tuple(s["pose"]["translation_mm"]))
             for s in truth["series"]}
    reference = json.loads(layout.reference.read_text())["series_uid"]
    roi_centers = np.array(list(truth["roi_centers_phantom_mm"].values()), dtype=float)
    in_reference = poses[reference].to_scanner(roi_centers)
    for uid, pose in poses.items():
        expected = pose.to_scanner(poses[reference].to_phantom(in_reference))
        transform = load_transform(layout.transform(uid))
        found = np.array([transform.TransformPoint(tuple(p)) for p in in_reference])
        assert np.abs(found - expected).max() < 1.0, uid


def test_series_of_one_placement_share_one_registration(pipeline):
    """The twin's doses and reconstructions of one placement share a FrameOfReferenceUID: prepare registers
    one of them and gives the others its transform, named in registration.csv and in their sidecars."""
    twin, results, _ = pipeline
    layout = ResultsLayout(results)
    catalog = pd.read_csv(layout.catalog, dtype=str)
    table = pd.read_csv(layout.registration, dtype=str).set_index("series_uid")
    for frame, group in catalog.groupby("frame_of_reference_uid"):
        sources = set(table.loc[group["series_uid"], "registered_with"])
        assert len(sources) == 1 and sources <= set(group["series_uid"]), frame
        (source,) = sources
        for uid in group["series_uid"]:
            assert layout.transform(uid).read_bytes() == layout.transform(source).read_bytes()
    assert len(set(catalog["frame_of_reference_uid"])) < len(catalog)  # the test is not vacuous


def test_second_run_skips_finished_series(pipeline):
    _, results, _ = pipeline
    layout = ResultsLayout(results)
    n_series = len(pd.read_csv(layout.catalog))
    table = layout.feature_table("radiomics")
    before, stamp = table.read_bytes(), table.stat().st_mtime_ns
    again = _run("radiomics/extract_radiomics.py", "--results", results, *RADIOMICS_ARGS)
    assert f"{n_series} series selected, {n_series} already done" in again
    assert "is current" in again and table.stat().st_mtime_ns == stamp and table.read_bytes() == before
    # another selection is not "up to date": the table is merged again from the partials (no re-extraction)
    subset = _run("radiomics/extract_radiomics.py", "--results", results, *RADIOMICS_ARGS, "--recons", "FBP")
    assert "is current" not in subset
    assert set(pd.read_csv(table)["recon"]) == {"FBP"}


def test_series_qc_size_dose_and_harmonization_cover_every_series(pipeline):
    """The demo's QC, size-dose and harmonization steps on the tiny twin: one QC row and one size row per
    catalogued series; the twin is axial and untilted, its body a water-like object a few decimetres wide
    (cut by the targeted field of view); the harmonization bench writes one Table 7 row per extractor x method."""
    _, results, _ = pipeline
    layout = ResultsLayout(results)
    catalog = pd.read_csv(layout.catalog)
    qc = pd.read_csv(layout.series_qc)
    assert sorted(qc["series_uid"]) == sorted(catalog["series_uid"])
    assert (qc["axis"] == "axial").all() and qc["gantry_tilt_deg"].abs().max() < 1.0
    size = pd.read_csv(layout.size_dose_series)
    assert sorted(size["series_uid"]) == sorted(catalog["series_uid"])
    assert size["wed_cm"].between(10, 35).all()
    merged = size.merge(catalog[["series_uid", "ctdivol"]], on="series_uid")
    ratio = merged["ssde_mgy"] / merged["ctdivol"]
    assert ratio.between(1.0, 2.5).all()  # TG-204 body factors for 10-35 cm lie in 0.9-2.3
    table7 = pd.read_csv(layout.harmonize_table7)
    pairs = set(zip(table7["extractor"], table7["method"]))
    assert pairs == {(e, m) for e in ("radiomics", "cnn") for m in ("none", "zscore", "combat")}
