"""The --protocol presets: each equals the papers' settings (issue 10), the study's ICC equals pingouin's
ICC3k on per-ROI means, the dataset paper's Table 7 value equals the mean of clipped pingouin ICC3
across scanners at 10 mGy, explicit flags override a preset, and every analysis sidecar names it.

Tolerance: an ICC is O(1) and both sides compute it in float64 from the same cell means (other
formulas, other summation order: ~1e-13 apart), so 1e-9 absolute holds on any CPU with room to spare.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import torch

import ctdose.plots
from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.extractors.driver import add_common_args
from ctdose.features import FeatureTable, synthetic_feature_table
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout, feature_columns
from ctdose.patches import PATCH_SIZE_XYZ
from ctdose.plots import figure_files
from ctdose.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from ctdose.provenance import read_sidecar, write_sidecar
from ctdose.stats.embedding import UMAPSettings
from ctdose.stats.icc import ICCSettings, icc_views, summarize_icc
from ctdose.stats.mlp import MLPClassifier, build_mlp
from conftest import load_script

TOL = 1e-9

# (protocol, setting, value): the facts, one line each
FACTS = [
    ("toolkit", "icc.statistic", "icc3_1"), ("toolkit", "icc.clip", False), ("toolkit", "icc.recon", "each"),
    ("toolkit", "icc.views", ("dose", "scanner")), ("toolkit", "icc.targets", "roi_patch"),
    ("toolkit", "icc.doses", ()),
    ("toolkit", "umap.n_neighbors", 100), ("toolkit", "umap.min_dist", 1.0), ("toolkit", "umap.epochs", 1000),
    ("toolkit", "patches.patch_size", tuple(PATCH_SIZE_XYZ)),
    ("study", "icc.statistic", "icc3_k"), ("study", "icc.clip", True), ("study", "icc.views", ("dose",)),
    ("study", "icc.targets", "roi"), ("study", "icc.recon", "average"), ("study", "icc.repetitions", "average"),
    ("study", "icc.doses", ()),
    ("study", "umap.n_neighbors", 20), ("study", "umap.min_dist", 0.5), ("study", "patches.patch_size", (64, 64, 32)),
    ("study", "classify.classifier", "mlp"), ("study", "classify.loso_draw", "other-manufacturer-first"),
    ("dataset-paper", "icc.statistic", "icc3_1"), ("dataset-paper", "icc.clip", True),
    ("dataset-paper", "icc.views", ("scanner",)), ("dataset-paper", "icc.doses", (10.0,)),
    ("dataset-paper", "icc.targets", "roi_patch"), ("dataset-paper", "icc.recon", "average"),
    ("dataset-paper", "icc.repetitions", "average"),
    ("dataset-paper", "umap.n_neighbors", 100), ("dataset-paper", "umap.min_dist", 1.0),
    ("dataset-paper", "umap.epochs", 1000), ("dataset-paper", "patches.patch_size", (32, 32, 16)),
    ("dataset-paper", "classify.classifier", "mlp"), ("dataset-paper", "classify.loso_draw", "random"),
    ("dataset-paper", "classify.n_folds", 10), ("dataset-paper", "classify.mlp_hidden", (100, 60, 30)),
    ("dataset-paper", "classify.mlp_activation", "GELU"), ("dataset-paper", "classify.mlp_dropout", 0.2),
]


@pytest.mark.parametrize("name,setting,value", FACTS)
def test_preset_equals_the_papers(name, setting, value):
    step, key = setting.split(".")
    assert getattr(getattr(get_protocol(name), step), key) == value


def test_presets_are_named_and_the_mlp_they_describe_is_the_one_built():
    assert DEFAULT_PROTOCOL == "toolkit" and set(PROTOCOLS) == {"toolkit", "study", "dataset-paper"}
    assert "leak" in PROTOCOLS["study"].classify.cross_dose_note and "held out" in PROTOCOLS["study"].classify.cross_dose_note
    with pytest.raises(ValueError, match="unknown protocol 'paper'; expected one of toolkit, study, dataset-paper"):
        get_protocol("paper")
    # the toolkit preset is today's behaviour: the steps' own defaults
    assert ICCSettings(**asdict(PROTOCOLS["toolkit"].icc)) == ICCSettings()
    assert asdict(PROTOCOLS["toolkit"].umap) == {k: v for k, v in asdict(UMAPSettings()).items() if k != "seed"}
    spec = PROTOCOLS["dataset-paper"].classify
    assert MLPClassifier().hidden == spec.mlp_hidden and MLPClassifier().dropout == spec.mlp_dropout
    layers = [type(m).__name__ for m in build_mlp(8, 3, spec.mlp_hidden, spec.mlp_dropout).modules()]
    assert layers.count(spec.mlp_activation) == len(spec.mlp_hidden)


def _frame(**kw) -> tuple[pd.DataFrame, list[str]]:
    df = synthetic_feature_table("syn", patches_per_roi=2, n_features=4, **kw)
    return df, feature_columns(df.columns)


def _table(df: pd.DataFrame, feats: list[str]) -> FeatureTable:
    return FeatureTable("syn", df[list(IDENTITY_COLUMNS)], df[feats].to_numpy(), feats)


def _pingouin(wide: pd.DataFrame, kind: str) -> float:
    """pingouin's ICC of a (targets x raters) frame; ``kind`` 'ICC(C,1)' = ICC3 or 'ICC(C,k)' = ICC3k
    (pingouin 0.7 names Shrout & Fleiss' ICC3 / ICC3k by McGraw & Wong's consistency labels)."""
    long = wide.reset_index(drop=True).rename_axis("target").reset_index().melt(id_vars="target", var_name="rater")
    res = pg.intraclass_corr(long, targets="target", raters="rater", ratings="value").set_index("Type")
    return float(res.loc[kind, "ICC"])


def _icc_settings(name: str) -> ICCSettings:
    return ICCSettings(**asdict(get_protocol(name).icc))


def test_study_icc_is_pingouin_icc3k_of_per_roi_means_clipped():
    df, feats = _frame(scanners=("A1", "B1"), doses=(1, 6, 14), recons=("FBP", "IR"), repetitions=2, seed=3)
    per = icc_views(_table(df, feats), _icc_settings("study"))
    assert set(per["view"]) == {"dose"} and (per["n_targets"] == 6).all() and (per["recon"] == "FBP+IR").all()
    checked = 0
    for scanner, rows in df.groupby("scanner"):
        # the reference: every row of an ROI at a dose (patches, recons, repetitions) averaged
        means = rows.groupby(["roi", "dose_mgy"])[feats].mean()
        for f in feats:
            ref = max(_pingouin(means[f].unstack("dose_mgy"), "ICC(C,k)"), 0.0)
            got = per.loc[(per["scanner"] == scanner) & (per["feature"] == f), "icc3_k"].item()
            assert abs(got - ref) < TOL
            checked += 1
    assert checked == 2 * len(feats)


def _table7_reference(df: pd.DataFrame, feats: list[str]) -> float:
    """Mean over features of clipped pingouin ICC3: targets = ROI patches, raters = scanners at 10 mGy,
    reconstructions and repetitions averaged."""
    means = df[df["dose_mgy"] == 10].groupby(["roi", "patch", "scanner"])[feats].mean()
    return float(np.mean([max(_pingouin(means[f].unstack("scanner"), "ICC(C,1)"), 0.0) for f in feats]))


def test_dataset_paper_table7_is_mean_of_clipped_pingouin_icc3_across_scanners_at_10_mgy():
    df, feats = _frame(scanners=("A1", "B1", "C1", "D1"), doses=(6, 10), recons=("FBP", "IR"), repetitions=2,
                       seed=5)
    settings = _icc_settings("dataset-paper")
    per = icc_views(_table(df, feats), settings)
    summary = summarize_icc(per, statistic=settings.statistic)
    assert len(summary) == 1 and summary.loc[0, "view"] == "scanner" and summary.loc[0, "dose_mgy"] == 10
    assert abs(summary.loc[0, "mean"] - _table7_reference(df, feats)) < TOL


def test_explicit_flags_override_the_preset_wherever_they_stand():
    icc = load_script("analyze/icc.py")
    args = icc.parse_args(["--no-clip", "--protocol", "study", "--targets", "roi_patch"])
    assert (args.clip, args.targets, args.statistic, args.views) == (False, "roi_patch", "icc3_k", ["dose"])
    umap = load_script("analyze/umap_plots.py").parse_args(["--min-dist", "0.1", "--protocol", "study"])
    assert (umap.n_neighbors, umap.min_dist) == (20, 0.1)
    parser = argparse.ArgumentParser()
    add_common_args(parser, "results")
    for argv, size in (([], [64, 64, 32]), (["--protocol", "dataset-paper"], [32, 32, 16]),
                       (["--patch-size", "64", "64", "32", "--protocol", "dataset-paper"], [64, 64, 32]),
                       (["--protocol", "dataset-paper", "--patch-size", "8", "8", "4"], [8, 8, 4])):
        assert parser.parse_args(argv).patch_size == size, argv
    # SwinUNETR cannot take 16 slices: its dataset-paper patches keep 32 x 32 in-plane with 32 slices,
    # and the swin script's --protocol gives it that
    swin = load_script("swin/extract_swin.py")
    assert swin.parse_args(["--protocol", "dataset-paper"]).patch_size == [32, 32, 32]
    assert swin.parse_args(["--protocol", "study"]).patch_size == [64, 64, 32]
    assert all(s % 32 == 0 for s in PROTOCOLS["dataset-paper"].patches.size_for("swin"))
    assert PROTOCOLS["dataset-paper"].patches.size_for("radiomics") == (32, 32, 16)


def _placeholder_figure(fig, stem):
    """Stand-in for :func:`ctdose.plots.save_figure`: closes the figure, writes empty files."""
    plt.close(fig)
    paths = figure_files(stem)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return paths


def test_sidecars_name_the_protocol_and_a_change_of_protocol_recomputes(tmp_path, capsys):
    torch.set_num_threads(1)
    layout = ResultsLayout(tmp_path / "results")
    df, feats = _frame(scanners=("A1", "B1", "C1"), doses=(6, 10), recons=("FBP", "IR"), seed=7)
    write_csv(df, layout.feature_table("radiomics"))
    write_sidecar(layout.feature_table("radiomics"), {"seed": 7}, untrained=False)
    base = ["--results", str(layout.root), "--extractors", "radiomics"]
    icc = load_script("analyze/icc.py")
    assert run_main(icc.main, [*base, "--protocol", "dataset-paper"]) == 0
    record = read_sidecar(layout.icc_summary)
    assert record["settings"]["protocol"] == "dataset-paper" and record["settings"]["doses"] == [10.0]
    summary = pd.read_csv(layout.icc_summary)
    assert abs(summary.loc[0, "mean"] - _table7_reference(df, feats)) < TOL
    capsys.readouterr()
    assert run_main(icc.main, [*base, "--protocol", "study"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert read_sidecar(layout.icc_summary)["settings"]["protocol"] == "study"
    assert set(pd.read_csv(layout.icc_summary)["statistic"]) == {"icc3_k"}
    classify = load_script("analyze/classify.py")
    with pytest.MonkeyPatch.context() as mp:  # its figures are not under test here: skip ~4 s of rendering
        mp.setattr(ctdose.plots, "save_figure", _placeholder_figure)
        assert run_main(classify.main, [*base, "--protocol", "study", "--classifier", "logreg",
                                        "--n-folds", "2"]) == 0
    record = read_sidecar(layout.cross_dose_matrix)
    assert record["settings"]["protocol"] == "study"
    assert record["settings"]["loso_draw"] == "other-manufacturer-first"
    assert "leak" in record["protocol_notes"]["cross_dose"]
