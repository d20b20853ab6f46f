"""The one results/ contract of the analysis steps: skip when current, recompute when an input changed,
refuse a damaged input with one line, and the image-metrics pair cache follows its transforms."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.features import load_tables, synthetic_feature_table
from ctdose.layout import CATALOG_COLUMNS, ResultsLayout
from ctdose.plots import figure_files
from ctdose.provenance import file_sha256, read_sidecar, sidecar_path, write_sidecar
from ctdose.transform_io import save_transform
from ctdose.volume import Volume
from conftest import load_script

torch.set_num_threads(1)
LOGREG = ["--classifier", "logreg", "--n-folds", "3"]


def _table(layout: ResultsLayout, name: str, seed: int = 0) -> Path:
    """A synthetic feature table written as its extractor would: CSV + sidecar (checksum, rows)."""
    df = synthetic_feature_table(name, scanners=("A1", "B1", "C1"), doses=(1, 14), patches_per_roi=2,
                                 n_features=6, seed=seed)
    write_csv(df, layout.feature_table(name))
    write_sidecar(layout.feature_table(name), {"seed": seed}, untrained=False)
    return layout.feature_table(name)


@pytest.fixture
def layout(tmp_path) -> ResultsLayout:
    layout = ResultsLayout(tmp_path / "results")
    for n, name in enumerate(("radiomics", "cnn")):
        _table(layout, name, seed=n)
    return layout


def _run(capsys, script: str, layout: ResultsLayout, *flags: str) -> tuple[int, str, str]:
    """Run ``analyze/<script>.py`` as its command line does; (status, stdout, stderr)."""
    capsys.readouterr()
    status = run_main(load_script(f"analyze/{script}.py").main, ["--results", str(layout.root), *flags])
    out = capsys.readouterr()
    return status, out.out, out.err


def _state(paths: list[Path]) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


# ICC and classification share the contract; the outputs each one writes beside its main table
STEPS = {
    "icc": (lambda l: l.icc_summary, lambda l: [l.icc_per_feature, *figure_files(l.icc_boxplots)], []),
    "classify": (lambda l: l.cross_dose_matrix,
                 lambda l: [l.cross_dose, l.curves, l.curves_folds, l.dose_class,
                            *figure_files(l.cross_dose_figure("cnn")), *figure_files(l.curve_figure("loso_n"))],
                 LOGREG),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_same_inputs_skip_and_a_changed_table_recomputes(layout, capsys, step):
    primary, others, flags = STEPS[step]
    assert _run(capsys, step, layout, *flags)[0] == 0
    outputs = [primary(layout), *others(layout)]
    before = _state(outputs)
    status, out, _ = _run(capsys, step, layout, *flags)
    assert status == 0 and "up to date" in out
    assert _state(outputs) == before  # not one byte rewritten, not even touched

    _table(layout, "cnn", seed=7)  # the cnn table is re-extracted with other values
    status, out, _ = _run(capsys, step, layout, *flags)
    assert status == 0 and "up to date" not in out
    record = read_sidecar(primary(layout))
    cnn = layout.feature_table("cnn")
    assert record["inputs"][os.path.abspath(cnn)] == file_sha256(cnn)  # the new table is the one recorded
    assert primary(layout).stat().st_mtime_ns != before[primary(layout)][1]


def test_other_settings_recompute(layout, capsys):
    assert _run(capsys, "icc", layout)[0] == 0
    status, out, _ = _run(capsys, "icc", layout, "--clip")
    assert status == 0 and "up to date" not in out
    assert read_sidecar(layout.icc_summary)["settings"]["clip"] is True


def test_a_truncated_table_is_refused_with_one_line(layout, capsys):
    path = layout.feature_table("cnn")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-5]))  # a half-copied table: 5 rows short, sidecar unchanged
    for step in ("icc", "classify"):
        status, _, err = _run(capsys, step, layout, *STEPS[step][2])
        assert status == 1 and err.count("\n") == 1
        assert err.startswith(f"error: {path} has {len(lines) - 6} rows but its sidecar says {len(lines) - 1}")
        assert "cnn/extract_cnn.py" in err  # the command that remakes it
    assert not layout.analysis_dir.exists()  # nothing written from an incomplete input


def test_a_table_without_sidecar_and_an_unparsable_one_are_named(layout, capsys):
    sidecar_path(layout.feature_table("cnn")).unlink()
    status, _, err = _run(capsys, "icc", layout)
    assert status == 1 and err.count("\n") == 1 and f"{layout.feature_table('cnn')} has no sidecar" in err

    bad = layout.feature_table("cnn")
    bad.write_text("series_uid,scanner\n1,A1\n2,A1,x,y\n")  # pandas: "Expected 2 fields in line 3, saw 4"
    write_sidecar(bad, {})
    status, _, err = _run(capsys, "icc", layout)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {bad}: unreadable CSV (Error tokenizing data")


def test_corrupt_sidecars(layout, capsys):
    # the output's own sidecar is corrupt: the output cannot be trusted, so it is made again
    assert _run(capsys, "icc", layout)[0] == 0
    sidecar_path(layout.icc_summary).write_text("{not json")
    status, out, _ = _run(capsys, "icc", layout)
    assert status == 0 and "up to date" not in out
    assert read_sidecar(layout.icc_summary)["n_rows"] == len(pd.read_csv(layout.icc_summary))
    # an input table's sidecar is corrupt: refused with one line naming that sidecar
    sidecar_path(layout.feature_table("cnn")).write_text('{"sha256": ')
    status, _, err = _run(capsys, "icc", layout, "--force")
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {sidecar_path(layout.feature_table('cnn'))}: corrupt sidecar")


def test_umap_skips_current_extractors_and_redoes_a_changed_one(layout, capsys, monkeypatch):
    import ctdose.umap_job

    script = load_script("analyze/umap_plots.py")
    calls = []

    def fake_embed(table, settings):  # the contract, not UMAP itself (tests/test_report.py runs UMAP)
        calls.append(table.name)
        return np.random.default_rng(0).normal(size=(len(table.X), 2))

    monkeypatch.setattr(ctdose.umap_job, "embed", fake_embed)  # in-process: the default --workers 1
    in_process = script.parallel_map

    def as_sent_to_workers(fn, items, **kwargs):  # what --workers N sends: the task and jobs pickled
        assert pickle.loads(pickle.dumps(fn)) is fn
        return in_process(fn, [pickle.loads(pickle.dumps(item)) for item in items], **kwargs)

    monkeypatch.setattr(script, "parallel_map", as_sent_to_workers)
    argv = ["--results", str(layout.root), "--epochs", "5"]
    assert run_main(script.main, argv) == 0 and sorted(calls) == ["cnn", "radiomics"]
    outputs = [layout.umap_table("radiomics"), *figure_files(layout.umap_figure("radiomics"))]
    before = _state(outputs)
    _table(layout, "cnn", seed=3)
    assert run_main(script.main, argv) == 0 and sorted(calls) == ["cnn", "cnn", "radiomics"]
    assert _state(outputs) == before
    assert run_main(script.main, [*argv[:2], "--epochs", "6"]) == 0 and len(calls) == 5  # new setting: both


def test_os_errors_and_ctrl_c_are_one_line(layout, capsys, monkeypatch):
    layout.analysis_dir.write_text("")  # the analysis folder is a file
    status, _, err = _run(capsys, "icc", layout)
    assert status == 1 and err.count("\n") == 1 and err.startswith("error: ") and str(layout.analysis_dir) in err
    layout.analysis_dir.unlink()

    import ctdose.stats.icc

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ctdose.stats.icc, "summarize_icc", interrupted)
    script = load_script("analyze/icc.py")
    capsys.readouterr()
    assert run_main(script.main, ["--results", str(layout.root)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted")
    assert not layout.icc_summary.exists()


def test_load_tables_gives_the_verified_sidecar(layout):
    tables = load_tables(layout.root)
    assert list(tables) == ["radiomics", "cnn"]
    assert tables["cnn"].sidecar["sha256"] == file_sha256(layout.feature_table("cnn"))


# --------------------------------------------------------------------------- image metrics


def _series(tmp: Path, layout: ResultsLayout) -> None:
    """Scanner A1 at 10 and 14 mGy; B1 at 10 and 14 mGy sits 2 mm further along x (its transform says so)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:12, :24, :24]
    phantom = np.where((y - 12) ** 2 + (x - 12) ** 2 < 80, 40.0 + 60 * (x > 12), -1000.0)
    rows = []
    for s, scanner in enumerate(("A1", "B1")):
        for dose in (10.0, 14.0):
            uid = f"1.2.826.0.1.3680043.9.7.{s}.{int(dose)}"
            shift = 2.0 * s
            vol = Volume(phantom + rng.normal(0, 30 / np.sqrt(dose), phantom.shape), origin=(shift, 0, 0),
                         spacing=(1, 1, 2))
            write_ct_series(vol, tmp / "dicom" / uid, CTSeriesMeta(series_uid=uid, ctdivol=dose, station=scanner))
            _transform(layout, uid, shift)
            row = {c: "" for c in CATALOG_COLUMNS}
            row.update(series_uid=uid, path=str(tmp / "dicom" / uid), scanner=scanner, manufacturer="M",
                       model="m", dose_mgy=dose, recon="FBP", repetition=1)
            rows.append(row)
    write_csv(pd.DataFrame(rows, columns=list(CATALOG_COLUMNS)), layout.catalog)
    write_sidecar(layout.catalog, {})


def _transform(layout: ResultsLayout, uid: str, shift_mm: float) -> None:
    """The transform reference -> series as prepare.py writes it (file + sidecar)."""
    save_transform(sitk.TranslationTransform(3, (shift_mm, 0.0, 0.0)), layout.transform(uid))
    write_sidecar(layout.transform(uid), {"series_uid": uid})


#: The tiny volumes are smaller than the SSIM window once bin-shrunk by the paper's 4: no shrink.
_TINY = ("--scanner-shrink", "1")


def test_image_metric_cache_follows_the_transforms(tmp_path, capsys):
    layout = ResultsLayout(tmp_path / "results")
    _series(tmp_path, layout)
    assert _run(capsys, "image_metrics", layout, *_TINY)[0] == 0
    per_pair = pd.read_csv(layout.image_metrics_series, dtype={"series_uid": str, "reference_uid": str})
    assert sorted(per_pair["comparison"]) == ["vs_dose", "vs_dose", "vs_scanner"]
    caches = {row.series_uid + row.comparison: layout.image_metrics_partial(row.comparison, row.series_uid,
                                                                            row.reference_uid)
              for row in per_pair.itertuples()}
    for cache in caches.values():  # one-row CSV whose sidecar records both transforms
        record = read_sidecar(cache)
        assert len(pd.read_csv(cache)) == 1 and len(record["inputs"]) == 2
    outputs = [layout.image_metrics_dose, layout.image_metrics_series, layout.image_metrics_scanner]
    before, cached = _state(outputs), _state(list(caches.values()))
    status, out, _ = _run(capsys, "image_metrics", layout, *_TINY)
    assert status == 0 and "up to date" in out and _state(outputs) == before

    # B1's 10 mGy series is registered again, wrongly (no shift): its two pairs are measured again
    b1 = per_pair.loc[(per_pair["scanner"] == "B1") & (per_pair["dose_mgy"] == 10), "series_uid"].iloc[0]
    _transform(layout, b1, 0.0)
    status, out, _ = _run(capsys, "image_metrics", layout, *_TINY)
    assert status == 0 and "2 measured, 1 cached" in out
    again = pd.read_csv(layout.image_metrics_series, dtype={"series_uid": str})
    for key, cache in caches.items():
        assert (cache.stat().st_mtime_ns == cached[cache][1]) is (not key.startswith(b1))
    # the 2 mm misregistration adds the 60 HU step edge to the difference: RMSE must rise
    old = per_pair.set_index(["series_uid", "comparison"])["rmse_hu"]
    new = again.set_index(["series_uid", "comparison"])["rmse_hu"]
    assert new[(b1, "vs_scanner")] > old[(b1, "vs_scanner")] + 5
    assert new[(b1, "vs_dose")] > old[(b1, "vs_dose")] + 5

    # a damaged cache sidecar is not trusted: that pair is measured again
    cache = caches[b1 + "vs_dose"]
    sidecar_path(cache).write_text("{")
    status, out, _ = _run(capsys, "image_metrics", layout, "--force", *_TINY)
    assert status == 0 and "1 measured, 2 cached" in out and read_sidecar(cache)["n_rows"] == 1


def test_image_metrics_refuse_a_damaged_transform_or_catalog(tmp_path, capsys):
    layout = ResultsLayout(tmp_path / "results")
    _series(tmp_path, layout)
    uid = pd.read_csv(layout.catalog, dtype={"series_uid": str})["series_uid"].iloc[0]
    layout.transform(uid).write_text(layout.transform(uid).read_text().replace("0 0 0", "1 0 0", 1) + "\n")
    status, _, err = _run(capsys, "image_metrics", layout, *_TINY)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {layout.transform(uid)} changed since it was written; run data/prepare.py")
    layout.catalog.write_text(layout.catalog.read_text().rsplit("\n", 2)[0] + "\n")  # last row cut off
    status, _, err = _run(capsys, "image_metrics", layout, *_TINY)
    assert status == 1 and err.startswith(f"error: {layout.catalog} has 3 rows but its sidecar says 4")
    assert not layout.analysis_dir.exists()



# --------------------------------------------------------------------------- command lines

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["cnn/extract_cnn.py", "swin/extract_swin.py", "ct-fm/extract_ctfm.py"])
def test_network_scripts_take_their_defaults_from_their_settings_block(script, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # defaults are relative to the repository, not to the current folder
    module = load_script(script)
    args = module.parse_args([])
    assert Path(args.results) == REPO / "results" and Path(args.weights) == REPO / module.WEIGHTS
    assert (args.device, args.seed, args.batch_size, args.patches_per_roi, args.allow_untrained) == \
        (module.DEVICE, module.SEED, module.BATCH_SIZE, module.PATCHES_PER_ROI, module.ALLOW_UNTRAINED)
    module.DEVICE, module.SEED, module.BATCH_SIZE, module.PATCHES_PER_ROI = "cpu", 5, 3, 2
    args = module.parse_args([])
    assert (args.device, args.seed, args.batch_size, args.patches_per_roi) == ("cpu", 5, 3, 2)
    assert module.parse_args(["--seed", "9", "--patches-per-roi", "4"]).seed == 9


@pytest.mark.parametrize("script", ["icc", "umap_plots", "classify", "image_metrics", "report"])
def test_analysis_defaults_are_relative_to_the_repository(script, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Path(load_script(f"analyze/{script}.py").parse_args([]).results) == REPO / "results"


def test_chosen_weights(tmp_path):
    from ctdose.extractors.deep import chosen_weights

    default, other = str(tmp_path / "default.pt"), str(tmp_path / "typo.pt")
    assert chosen_weights("none", default, False) is None and chosen_weights("None", default, True) is None
    assert chosen_weights(default, default, True) is None  # absent default + --allow-untrained: untrained
    assert chosen_weights(default, default, False) == default  # absent default, not allowed: "not found"
    assert chosen_weights(other, default, True) == other  # an explicit path is never dropped
    Path(default).write_bytes(b"")
    assert chosen_weights(default, default, True) == default  # present default: used
