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
from ctdose.layout import CATALOG_COLUMNS, IDENTITY_COLUMNS, ResultsLayout
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
    # the two extractors that were not run are reported missing, with their commands; no step run here is
    # (steps this test does not run, e.g. analyze/dose_effects.py, may be)
    missing = [line for line in html.splitlines() if "Missing:" in line]
    assert any("swin/extract_swin.py" in m for m in missing) and any("ct-fm/extract_ctfm.py" in m for m in missing)
    for ran in ("data/prepare.py", "radiomics/", "cnn/", "analyze/icc.py", "analyze/classify.py",
                "analyze/image_metrics.py", "analyze/umap_plots.py"):
        assert not any(ran in m for m in missing), ran
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


# --- Findings first, Table 7 layout, self-contained HTML (synthetic analysis outputs, no analysis run) ---

def _png(path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.zeros((4, 4)))


def _cross_dose_matrix() -> pd.DataFrame:
    """Doses 1, 3, 10 mGy; accuracy[train][test] chosen so the drops are easy to work out by hand."""
    acc = {(1, 1): 0.9, (3, 3): 0.8, (10, 10): 0.7, (3, 1): 0.6, (1, 3): 0.5, (10, 3): 0.7, (3, 10): 0.6,
           (1, 10): 0.4, (10, 1): 0.3}
    return pd.DataFrame([{"train_dose": float(a), "test_dose": float(b), "mean": m, "sd": 0.05, "n": 5,
                          "chance": 1 / 3, "over": "held-out scanners", "extractor": "radiomics"}
                         for (a, b), m in acc.items()])


@pytest.fixture()
def analysis_outputs(tmp_path):
    """A results folder holding only what the Findings and Table 7 read, each with its sidecar."""
    layout = ResultsLayout(tmp_path / "results")
    (tmp_path / "twin" / "s1").mkdir(parents=True)
    (tmp_path / "twin" / "ground_truth.json").write_text("{}")
    catalog = pd.DataFrame([{**{c: "" for c in CATALOG_COLUMNS}, "series_uid": f"1.2.{d}", "scanner": s,
                             "path": str(tmp_path / "twin" / "s1"), "dose_mgy": float(d), "recon": "FBP",
                             "repetition": 1} for s in ("A1", "B1") for d in (1, 3, 10)])
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, {})
    for name, untrained in (("radiomics", False), ("cnn", True)):
        write_csv(pd.DataFrame([{**{c: "x" for c in IDENTITY_COLUMNS}, f"{name}_0000": 1.0}]),
                  layout.feature_table(name))
        write_sidecar(layout.feature_table(name), {}, untrained=untrained, weights={})
    # ICC: scanner view at 10 mGy = [0.8, -0.2, 0.5] + one excluded; other views must not enter Table 7
    icc = [("scanner", 10.0, 0.8, "ok"), ("scanner", 10.0, -0.2, "ok"), ("scanner", 10.0, 0.5, "ok"),
           ("scanner", 10.0, np.nan, "excluded: constant (every value equal)"), ("scanner", 14.0, 0.1, "ok"),
           ("dose", np.nan, 0.9, "ok")]
    per_feature = pd.DataFrame([{"extractor": n, "view": v, "scanner": "all", "dose_mgy": d, "recon": "FBP",
                                 "n_targets": 12, "n_raters": 5, "feature": f"{n}_{i}", "icc3_1": x, "status": st}
                                for n in ("radiomics", "cnn") for i, (v, d, x, st) in enumerate(icc)])
    summary = pd.DataFrame([{"extractor": n, "view": v, "scanner": "A1" if v == "dose" else "all",
                             "dose_mgy": d, "recon": "FBP", "mean": 0.5, "median": med, "sd": 0.1,
                             "share_gt_0.75": share, "share_gt_0.9": 0.0, "n_features": nf, "n_excluded": 0}
                            for n in ("radiomics", "cnn")
                            for v, d, med, share, nf in (("dose", np.nan, 0.9, 1.0, 10), ("scanner", 10.0, 0.4, 0.5, 10),
                                                         ("scanner", 14.0, 0.2, 0.0, 30))])
    write_csv(per_feature, layout.icc_per_feature)
    write_csv(summary, layout.icc_summary)
    _png(figure_files(layout.icc_boxplots)[0])
    write_sidecar(layout.icc_summary, {"recon": "each", "clip": False},
                  outputs=[layout.icc_per_feature, figure_files(layout.icc_boxplots)[0]],
                  boxplot_caption="Reconstructions pooled: FBP only.")
    # curves: LOSO-N with 5 scanners (N = 1..4), 10-fold-n (n = 1..9); accuracy = 0.5 + n_train / 100
    curves = pd.DataFrame([{"n_train": k, "mean": 0.5 + k / 100, "sd": 0.01, "n": n, "chance": 1 / 3,
                            "over": over, "extractor": "radiomics", "protocol": p}
                           for p, top, n, over in (("loso_n", 4, 5, "test scanners (held out)"),
                                                   ("kfold_n", 9, 10, "test folds"))
                           for k in range(1, top + 1)])
    write_csv(_cross_dose_matrix(), layout.cross_dose_matrix)
    write_csv(curves, layout.curves)
    write_sidecar(layout.cross_dose_matrix, {"classifier": "logreg", "kfold_groups": "acquisition"},
                  outputs=[layout.curves])
    return layout


def test_cross_dose_drop_by_hand():
    from ctdose.report import cross_dose_drop

    drop = cross_dose_drop(_cross_dose_matrix()).set_index("bin")
    # 2-5x: 3->1 (0.9-0.6), 1->3 (0.8-0.5), 10->3 (0.8-0.7), 3->10 (0.7-0.6); > 5x: 1->10 (0.3), 10->1 (0.6)
    assert list(drop.index) == ["2-5×", "> 5×"] and list(drop["n_cells"]) == [4, 2]
    # sums of four one-decimal accuracies: float64 rounding ~1e-16, far below the 0.05 steps checked
    assert drop["drop"].to_numpy() == pytest.approx([0.2, 0.45], abs=1e-12)


def test_findings_first_and_table7(analysis_outputs):
    from html.parser import HTMLParser
    from ctdose.report import build_sections, write_report

    sections = build_sections(analysis_outputs.root)
    findings, table7 = sections[0], sections[1]
    assert findings.title == "Findings" and not findings.warnings
    assert "simulated digital twin" in findings.notes[0]
    t = findings.tables[0][1].set_index("extractor")
    assert t.loc["radiomics", "weights"] == "not a network" and t.loc["cnn", "weights"] == "UNTRAINED"
    assert t.loc["radiomics", "accuracy, same dose"] == "0.80" and t.loc["radiomics", "chance"] == "0.33"
    assert t.loc["radiomics", "cost of a dose change > 5×"] == "+0.45 (2)"
    # across scanners: median of the group medians 0.4, 0.2 -> 0.30; share > 0.75 = (0.5 x 10) / 40 features
    assert t.loc["cnn", "ICC across scanners"] == "0.30 (12 %, 2 groups)"
    assert t.loc["cnn", "ICC across doses"] == "0.90 (100 %, 1 group)"

    caption, t7 = table7.tables[0]
    t7 = t7.set_index("Features")
    assert list(t7.columns[:4]) == ["Mean ICC", "LOSO 1 scanner", "LOSO 12 scanners", "10-fold 13 scanners"]
    # clipped at 0 and averaged over the three included features at 10 mGy: (0.8 + 0 + 0.5) / 3
    assert t7.loc["cnn", "Mean ICC"] == "0.433" and t7.loc["radiomics", "Mean ICC"] == "0.433"
    assert t7.loc["radiomics", "LOSO 1 scanner"] == "0.51 ± 0.01"
    assert t7.loc["radiomics", "LOSO 12 scanners"] == "0.54 ± 0.01"  # N = 4: the largest with 5 scanners
    assert t7.loc["radiomics", "10-fold 13 scanners"] == "0.59 ± 0.01"  # n = 9 training folds
    assert "5 scanners, not the paper's 13" in caption and "--protocol dataset-paper" in caption

    html_path, _ = write_report(analysis_outputs.root)

    class Parsed(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.hrefs, self.ids, self.h2, self._in_h2 = [], [], set(), [], False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.ids.update([a["id"]] if "id" in a else [])
            self.imgs += [a.get("src", "")] if tag == "img" else []
            self.hrefs += [a["href"]] if tag == "a" and "href" in a else []
            self._in_h2 = tag == "h2"

        def handle_data(self, data):
            if self._in_h2:
                self.h2.append(data)
                self._in_h2 = False

    page = Parsed()
    page.feed(html_path.read_text())
    assert page.h2[0] == "Findings" and page.h2[1] == "Dataset paper's Table 7 layout"
    assert page.imgs  # the ICC boxplot
    for src in page.imgs:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64" and base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    internal = [h[1:] for h in page.hrefs if h.startswith("#")]
    assert internal and set(internal) <= page.ids


def test_findings_missing_inputs_name_commands(tmp_path):
    from ctdose.report import build_sections

    findings, table7 = build_sections(tmp_path / "empty")[:2]
    text = " ".join(findings.notes + table7.notes)
    for command in ("data/prepare.py", "analyze/classify.py", "analyze/icc.py"):
        assert "Missing:" in text and command in text
    assert not findings.tables and not table7.tables
