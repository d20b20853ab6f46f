"""Dose models (grouped by scanner x ROI), distribution shift 1 vs 14 mGy and silhouettes, against
independent references: the rows of each split, scipy and statsmodels, a hand-written silhouette."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist
from statsmodels.stats.multitest import multipletests

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.features import FeatureTable, read_feature_table, synthetic_feature_table
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout, feature_columns
from ctdose.plots import figure_files
from ctdose.provenance import read_sidecar, write_sidecar
from ctdose.report import dose_effects_section
from ctdose.stats.dose_effects import (ShiftSettings, SilhouetteSettings, distribution_shift, silhouettes,
                                       summarize_shift)
from ctdose.stats.dose_models import DoseModelSettings, dose_models, grouped_folds, scanner_roi_groups
from ctdose.stats.embedding import embedding_frame
from conftest import load_script

torch.set_num_threads(1)
DOSES = (1, 3, 6, 10, 14)


def _table(df: pd.DataFrame, name: str) -> FeatureTable:
    names = feature_columns(list(df.columns))
    return FeatureTable(name, df[list(IDENTITY_COLUMNS)].copy(), df[names].to_numpy(float), names)


def _dose_table(seed: int = 0) -> FeatureTable:
    """4 scanners x 5 doses x FBP/IR x 6 ROIs x 1 patch = 240 rows; 3 of 6 features carry the dose."""
    df = synthetic_feature_table("syn", doses=DOSES, recons=("FBP", "IR"), patches_per_roi=1, n_features=6,
                                 seed=seed)
    for k in range(3):
        df[f"syn_{k:04d}"] += 0.6 * df["dose_mgy"]  # 0.6 per mGy against noise sd 1-3.7 (it falls with dose)
    return _table(df, "syn")


def test_no_scanner_roi_in_both_train_and_test():
    table = _dose_table()
    pairs = list(zip(table.ident["scanner"], table.ident["roi"]))  # the group, built independently
    folds = grouped_folds(scanner_roi_groups(table.ident), 5, seed=3)
    tested = np.concatenate([test for _, test in folds])
    assert len(folds) == 5 and np.array_equal(np.sort(tested), np.arange(len(pairs)))  # each row tested once
    for train, test in folds:
        assert not {pairs[i] for i in train} & {pairs[i] for i in test}
        assert np.intersect1d(train, test).size == 0 and train.size + test.size == len(pairs)
    assert [t.tolist() for _, t in grouped_folds(scanner_roi_groups(table.ident), 5, seed=3)] == \
        [t.tolist() for _, t in folds]  # seeded


def test_dose_models_learn_dose_and_count_every_row_once():
    table = _dose_table()
    settings = DoseModelSettings(n_folds=3, n_trees=30, epochs=60)
    folds, confusion = dose_models(table, settings)
    acc = folds[folds["task"] == "classification"].groupby("model")["accuracy"].mean()
    assert set(acc.index) == {"rf", "logreg", "knn", "mlp"}
    # five balanced dose levels: chance 0.2, and a chance-level accuracy over 240 test rows has an sd of
    # sqrt(0.2 * 0.8 / 240) = 0.026; 0.4 is 8 sd above it (the MLP's 60 fixed epochs keep the test fast)
    assert (acc > 0.4).all(), acc
    assert np.allclose(folds.loc[folds["task"] == "classification", "chance"], 0.2)
    # trivial predictor (overall mean dose 6.8 mGy): mean |d - 6.8| over the five levels = 4.16 mGy
    mae = folds[folds["task"] == "regression"].groupby("model")["mae_mgy"].mean()
    assert (mae < 0.5 * 4.16).all(), mae
    assert (folds.loc[folds["task"] == "regression", "baseline_mae_mgy"] > 3.5).all()
    per_dose = table.ident["dose_mgy"].value_counts()
    for model, c in confusion.groupby("model"):
        rows = c.groupby("true_dose")["count"].sum()
        assert rows.to_dict() == per_dose.sort_index().to_dict()  # every row tested exactly once
        f = folds[(folds["model"] == model) & (folds["task"] == "classification")]
        correct = c.loc[c["true_dose"] == c["pred_dose"], "count"].sum()
        assert correct == pytest.approx((f["accuracy"] * f["n_test"]).sum(), abs=1e-6)  # integer counts


def test_distribution_shift_equals_scipy_and_detects_the_built_in_shift():
    rng = np.random.default_rng(1)
    n, n_null = 120, 20
    low = rng.normal(size=(n, n_null + 3))
    high = rng.normal(size=(n, n_null + 3))
    low[:, n_null] += 1.0          # mean shift of 1 sd at 1 mGy
    low[:, n_null + 1] *= 3.0      # noise 3x at 1 mGy, same mean
    low[:, n_null + 2] = high[:, n_null + 2] = 0.1  # constant (0.1 is not exact in binary)
    ident = pd.DataFrame({c: ["x"] * (2 * n) for c in IDENTITY_COLUMNS})
    ident["dose_mgy"] = [1.0] * n + [14.0] * n
    ident["recon"] = "FBP"
    table = FeatureTable("t", ident, np.vstack([low, high]), [f"t_{i}" for i in range(n_null + 3)])
    out = distribution_shift(table, ShiftSettings())
    ok = out[out["status"] == "ok"]
    assert len(ok) == n_null + 2 and out.iloc[-1]["status"].startswith("excluded: constant")
    for i in (0, 5, n_null, n_null + 1):
        ref = stats.ks_2samp(low[:, i], high[:, i])
        grid = np.concatenate([low[:, i], high[:, i]])  # KS statistic by hand: largest ECDF gap
        ecdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)  # noqa: E731
        row = out.iloc[i]
        assert row["ks_stat"] == pytest.approx(np.abs(ecdf(low[:, i]) - ecdf(high[:, i])).max(), abs=1e-12)
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["delta_mean"] == pytest.approx(low[:, i].mean() - high[:, i].mean(), abs=1e-12)
        assert row["var_ratio"] == pytest.approx(np.var(low[:, i], ddof=1) / np.var(high[:, i], ddof=1), rel=1e-9)
        assert row["delta_skew"] == pytest.approx(stats.skew(low[:, i]) - stats.skew(high[:, i]), abs=1e-9)
        assert row["delta_kurtosis"] == pytest.approx(stats.kurtosis(low[:, i]) - stats.kurtosis(high[:, i]),
                                                      abs=1e-9)
    # BH against statsmodels (p and q are O(1); 1e-12 is float rounding)
    assert np.allclose(ok["q"], multipletests(ok["p"], method="fdr_bh")[1], rtol=0, atol=1e-12)
    assert out.iloc[n_null]["shifted"] and out.iloc[n_null + 1]["shifted"]
    assert not out.iloc[0]["shifted"] and out.iloc[:n_null]["shifted"].sum() <= 1
    summary = summarize_shift(out, 0.05)
    assert summary.loc[0, "n_tested"] == n_null + 2 and summary.loc[0, "n_excluded"] == 1
    with pytest.raises(ValueError, match="no rows at 3 mGy"):
        distribution_shift(table, ShiftSettings(low_dose=3.0))


def _silhouette_by_hand(X: np.ndarray, labels: np.ndarray) -> float:
    """Rousseeuw (1987): s(i) = (b - a) / max(a, b), a = mean distance within the own cluster."""
    D = cdist(X, X)
    s = []
    for i, lab in enumerate(labels):
        same = labels == lab
        a = D[i, same].sum() / (same.sum() - 1)
        b = min(D[i, labels == other].mean() for other in np.unique(labels) if other != lab)
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_silhouette_high_for_clusters_near_zero_for_random_labels():
    rng = np.random.default_rng(2)
    n = 150
    cls = np.repeat(["a", "b", "c"], n // 3)
    X = rng.normal(size=(n, 4)) + 8.0 * np.eye(3, 4)[np.repeat([0, 1, 2], n // 3)]  # centers 11 sd apart
    ident = pd.DataFrame({"roi_class": cls, "manufacturer": rng.choice(["M1", "M2"], n),
                          "scanner": rng.choice(["A1", "B1", "C1", "D1"], n), "dose_mgy": 10.0})
    out = silhouettes(X, ident, SilhouetteSettings()).set_index("label")
    assert out.loc["roi_class", "silhouette"] == pytest.approx(_silhouette_by_hand(X, cls), abs=1e-12)
    assert out.loc["roi_class", "silhouette"] > 0.6
    assert abs(out.loc["manufacturer", "silhouette"]) < 0.05
    assert out.loc["manufacturer", "silhouette"] == pytest.approx(
        _silhouette_by_hand(X, ident["manufacturer"].to_numpy()), abs=1e-12)
    assert np.isnan(out.loc["dose_mgy", "silhouette"]) and out.loc["dose_mgy", "status"].startswith("skipped")


def test_script_writes_outputs_with_sidecars_and_report_section(tmp_path, capsys):
    layout = ResultsLayout(tmp_path / "results")
    df = synthetic_feature_table("radiomics", scanners=("A1", "B1", "C1"), doses=(1, 6, 14), patches_per_roi=2,
                                 n_features=8)
    write_csv(df, layout.feature_table("radiomics"))
    write_sidecar(layout.feature_table("radiomics"), {}, untrained=False)
    table = read_feature_table(layout.feature_table("radiomics"))
    write_csv(embedding_frame(table, table.X[:, :2]), layout.umap_table("radiomics"))
    write_sidecar(layout.umap_table("radiomics"), {}, inputs=[layout.feature_table("radiomics")])
    script = load_script("analyze/dose_effects.py")
    argv = ["--results", str(layout.root), "--classifiers", "logreg", "knn", "--regressors", "ridge",
            "--n-folds", "3"]
    assert script.main(argv) == 0
    for path in (layout.dose_models, layout.dose_shift_summary, layout.silhouette):
        side = read_sidecar(path)
        assert side["inputs"] and side["n_rows"] > 0
    assert all(p.is_file() for p in figure_files(layout.dose_confusion_figure("radiomics")))
    sil = pd.read_csv(layout.silhouette)
    assert set(sil.loc[sil["space"] == "umap", "extractor"]) == {"radiomics"}
    capsys.readouterr()
    assert script.main(argv) == 0 and "up to date" in capsys.readouterr().out
    sec = dose_effects_section(layout)
    assert not sec.warnings and len(sec.tables) == 4 and len(sec.figures) == 1
    assert run_main(script.main, [*argv, "--low-dose", "3"]) == 1
    assert "no rows at 3 mGy" in capsys.readouterr().err


def test_distribution_shift_constant_and_near_constant_features_raise_no_runtime_warning():
    """A column constant at 4.2 (not exact in binary), one constant up to rounding (4.2 + 1e-15 noise,
    where scipy's skew warns of precision loss), and one constant at the low dose only: the first two are
    excluded, the third keeps its KS test with NaN moment deltas and the reason; no RuntimeWarning escapes."""
    import warnings

    rng = np.random.default_rng(3)
    n = 50
    low, high = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    low[:, 1] = high[:, 1] = 4.2
    low[:, 2], high[:, 2] = 4.2 + 1e-15 * rng.normal(size=n), 4.2 + 1e-15 * rng.normal(size=n)
    low[:, 3] = 7.0                # constant at 1 mGy only
    ident = pd.DataFrame({c: ["x"] * (2 * n) for c in IDENTITY_COLUMNS})
    ident["dose_mgy"] = [1.0] * n + [14.0] * n
    ident["recon"] = "FBP"
    table = FeatureTable("t", ident, np.vstack([low, high]), [f"t_{i}" for i in range(4)])
    with warnings.catch_warnings():  # scipy itself warns on these columns (the bug this guards against)
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning):
            stats.skew(np.vstack([low, high])[:, 2])
        out = distribution_shift(table, ShiftSettings())
    assert list(out["status"].str.startswith("excluded: constant")) == [False, True, True, False]
    assert out.loc[0, "moments"] == "ok"
    assert out.loc[0, "delta_skew"] == pytest.approx(stats.skew(low[:, 0]) - stats.skew(high[:, 0]), abs=1e-9)
    assert out.loc[3, "status"] == "ok" and out.loc[3, "moments"] == "undefined: constant at 1 mGy"
    assert np.isnan(out.loc[3, "delta_skew"]) and np.isnan(out.loc[3, "delta_kurtosis"])
    assert out.loc[3, "ks_stat"] == pytest.approx(stats.ks_2samp(low[:, 3], high[:, 3]).statistic, abs=1e-12)
    assert summarize_shift(out, 0.05).loc[0, "n_excluded"] == 2


def test_dose_fold_jobs_on_workers_equal_dose_models_and_constant_columns_change_nothing():
    """analyze/dose_effects.py fits each fold as a job on parallel workers, on the columns not constant
    over all rows: the same folds table and confusion counts as dose_models over the whole table."""
    from ctdose.parallel import parallel_map
    from ctdose.stats.dose_models import dose_fold, dose_model_jobs, gather_dose_folds

    table = _dose_table(seed=1)
    const = FeatureTable("syn", table.ident, np.column_stack([table.X, np.full(len(table.X), 5.0)]),
                         [*table.feature_names, "syn_const"])
    settings = DoseModelSettings(n_folds=3, n_trees=20, epochs=30, classifiers=("rf", "mlp"),
                                 regressors=("ridge",))
    folds, confusion = dose_models(table, settings)
    jobs, levels = dose_model_jobs(const, settings, threads=1)
    assert all(j.X.shape[1] == table.X.shape[1] for j in jobs)
    outs = parallel_map(dose_fold, jobs[::-1], workers=2, desc="test")[::-1]
    got_folds, got_confusion = gather_dose_folds("syn", levels, settings, outs)
    pd.testing.assert_frame_equal(got_folds, folds)
    pd.testing.assert_frame_equal(got_confusion, confusion)
