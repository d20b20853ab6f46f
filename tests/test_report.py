"""Analysis scripts end to end on synthetic results, and the report rendering every section."""

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.features import read_feature_table, synthetic_feature_table
from ctdose.layout import CATALOG_COLUMNS, ResultsLayout
from ctdose.plots import figure_files, umap_panels
from ctdose.provenance import write_sidecar
from ctdose.stats.embedding import embedding_frame
from ctdose.transform_io import save_transform
from ctdose.report import markdown_table
from ctdose.volume import Volume
from conftest import load_script

torch.set_num_threads(1)


def _script(name):
    return load_script(f"analyze/{name}.py")


def _tiny_dicom(tmp: Path, layout: ResultsLayout) -> pd.DataFrame:
    """2 scanners x doses 10/14 mGy, FBP: small phantom volumes, shifted series with their transforms."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:12, :24, :24]
    phantom = np.where((y - 12) ** 2 + (x - 12) ** 2 < 80, 50.0 + 30 * (z > 5), -1000.0)
    rows = []
    for s, scanner in enumerate(("A1", "B1")):
        for dose in (10.0, 14.0):
            uid = f"1.2.826.0.1.3680043.9.{s}.{int(dose)}"
            shift = 1.0 * s  # series of scanner B1 sit 1 mm further along x
            vol = Volume(phantom + rng.normal(0, 40 / np.sqrt(dose), phantom.shape), origin=(shift, 0, 0),
                         spacing=(1, 1, 2))
            folder = tmp / "dicom" / uid
            write_ct_series(vol, folder, CTSeriesMeta(series_uid=uid, ctdivol=dose, station=scanner))
            save_transform(sitk.TranslationTransform(3, (shift, 0.0, 0.0)), layout.transform(uid))
            write_sidecar(layout.transform(uid), {"series_uid": uid})
            row = {c: "" for c in CATALOG_COLUMNS}
            row.update(series_uid=uid, path=str(folder), scanner=scanner, manufacturer="M", model="m",
                       dose_mgy=dose, recon="FBP", repetition=1)
            rows.append(row)
    return pd.DataFrame(rows, columns=list(CATALOG_COLUMNS))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("results")
    layout = ResultsLayout(tmp / "results")
    write_csv(_tiny_dicom(tmp, layout), layout.catalog)
    write_sidecar(layout.catalog, {})
    for n, name in enumerate(("radiomics", "cnn")):
        df = synthetic_feature_table(name, scanners=("A1", "B1", "C1"), doses=(1, 6, 14), patches_per_roi=2,
                                     n_features=8, seed=n)
        df[f"{name}_const"] = 1.0  # a degenerate feature: must be reported as excluded
        write_csv(df, layout.feature_table(name))
        write_sidecar(layout.feature_table(name), {}, untrained=name == "cnn", weights={})
    return layout.root


def test_scripts_and_report(results, capsys):
    assert _script("icc").main(["--results", str(results)]) == 0
    assert _script("classify").main(["--results", str(results), "--classifier", "logreg",
                                     "--n-folds", "4"]) == 0
    assert _script("image_metrics").main(["--results", str(results), "--scanner-shrink", "1"]) == 0  # tiny volumes
    files = ResultsLayout(results)
    # the UMAP script (numba compilation, ~15 s) runs in test_pipeline_tiny; the report only needs its outputs
    table = read_feature_table(files.feature_table("radiomics"))
    emb = np.random.default_rng(0).normal(size=(len(table.X), 2))
    umap_panels(emb, table.ident, "radiomics", files.umap_figure("radiomics"))
    write_csv(embedding_frame(table, emb), files.umap_table("radiomics"))
    write_sidecar(files.umap_table("radiomics"), {"epochs": 0}, inputs=[files.feature_table("radiomics")],
                  outputs=figure_files(files.umap_figure("radiomics")))

    per_feature = pd.read_csv(files.icc_per_feature)
    assert (per_feature.loc[per_feature["feature"].str.endswith("_const"), "status"] != "ok").all()
    matrix = pd.read_csv(files.cross_dose_matrix)
    assert set(matrix["extractor"]) == {"radiomics", "cnn"} and len(matrix) == 2 * 9
    metrics = pd.read_csv(files.image_metrics_series)
    vs_dose = metrics[metrics["comparison"] == "vs_dose"]
    assert len(vs_dose) == 2 and (vs_dose["ssim"] < 1).all() and (vs_dose["ssim"] > 0.5).all()
    # registration undone: B1 vs A1 at 10 mGy differs by noise only (a 1 mm misalignment would add edges)
    vs_scan = metrics[metrics["comparison"] == "vs_scanner"]
    assert len(vs_scan) == 1 and vs_scan["rmse_hu"].item() < 40

    assert _script("report").main(["--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert str((results / "report.html").resolve()) in out
    html = (results / "report.html").read_text()
    for title in ("Data used", "Feature tables and weights", "ICC", "UMAP", "Classification",
                  "Image metrics", "Provenance"):
        assert f">{title}" in html
    assert "UNTRAINED" in html and "class='warn'" in html
    # only the two extractors that were not run are reported missing, with their commands
    assert html.count("Missing:") == 2 and "swin/extract_swin.py" in html and "ct-fm/extract_ctfm.py" in html
    png = html.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    md = (results / "report.md").read_text()
    assert "| train 1 mGy |" in md and "(Table 6 layout)" in md


def test_rerun_skips_and_missing_inputs_are_named(results, tmp_path, capsys):
    assert _script("icc").main(["--results", str(results)]) == 0
    assert "up to date" in capsys.readouterr().out
    empty = tmp_path / "empty"
    assert _script("report").main(["--results", str(empty)]) == 0
    html = (empty / "report.html").read_text()
    assert "analyze/icc.py --results" in html and "data/prepare.py" in html
    capsys.readouterr()
    assert run_main(_script("icc").main, ["--results", str(empty)]) == 1
    assert capsys.readouterr().err.startswith("error: no feature tables")


def test_markdown_table():
    text = markdown_table(pd.DataFrame({"a": [1.0, np.nan], "b": ["x|y", "z"]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.000 | x\\|y |", "|  | z |"]
