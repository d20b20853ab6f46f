"""Classification protocols: the dataset paper's Algorithms 1 and 2 exactly, no scanner or acquisition
leaks, scaler fitted on training rows only, seeded runs, every mean with its n, what it is over and
the chance level."""

import statistics
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from ctdose.atomic import write_csv
from ctdose.features import synthetic_feature_table
from ctdose.layout import ResultsLayout
from ctdose.provenance import read_sidecar, write_sidecar
from ctdose.stats.classify import (ClassifySettings, acquisition_groups, accuracy_matrix, chance_level,
                                   classify_extractor, cross_dose_splits, curve, dose_splits, group_folds,
                                   kfold_n_splits, loso_n_splits, make_pipeline, run_splits, summarize)
from conftest import load_script

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def table():
    return synthetic_feature_table(scanners=("A1", "B1", "C1", "D1"), patches_per_roi=2, n_features=12,
                                   class_signal=1.5, seed=4)


def _feature_matrix(df):
    return df[[c for c in df.columns if c.startswith("synthetic_")]].to_numpy()


def _as_feature_table(df, name="synthetic"):
    from ctdose.features import FeatureTable
    from ctdose.layout import IDENTITY_COLUMNS

    cols = [c for c in df.columns if c.startswith(f"{name}_")]
    return FeatureTable(name, df[list(IDENTITY_COLUMNS)].reset_index(drop=True), df[cols].to_numpy(float), cols)


def test_cross_dose_never_tests_on_a_training_scanner(table):
    scanner, dose = table["scanner"].to_numpy(), table["dose_mgy"].to_numpy()
    splits = list(cross_dose_splits(scanner, dose))
    assert len(splits) == 4 * 5
    for s in splits:
        train_scanners = set(scanner[s.train])
        assert s.labels["fold"] not in train_scanners
        assert set(dose[s.train]) == {s.labels["train_dose"]}
        assert set(s.tests) == {"1", "3", "6", "10", "14"}  # diagonal included, still held out
        for key, idx in s.tests.items():
            assert set(scanner[idx]) == {s.labels["fold"]}
            assert set(dose[idx]) == {float(key)}
            assert not set(idx) & set(s.train)


def test_diagonal_is_not_training_accuracy():
    """On features that carry no class information a memorising model scores ~1 on its training rows;
    the A == B cell, scored on the held-out scanner, must stay near chance."""
    df = synthetic_feature_table(scanners=("A1", "B1", "C1", "D1"), doses=(1, 14), patches_per_roi=2,
                                 n_features=2, seed=1)
    X = np.random.default_rng(0).normal(size=(len(df), 60))  # 60 noise features > 36 training rows
    y, scanner, dose = df["roi_class"].to_numpy(), df["scanner"].to_numpy(), df["dose_mgy"].to_numpy()
    splits = list(cross_dose_splits(scanner, dose))
    make = lambda: make_pipeline("logreg")  # noqa: E731
    train_acc = [np.mean(make().fit(X[s.train], y[s.train]).predict(X[s.train]) == y[s.train]) for s in splits]
    assert min(train_acc) == 1.0  # separable: training accuracy is perfect
    mean, _ = accuracy_matrix(run_splits(X, y, splits, make))
    diagonal = np.diag(mean.to_numpy())
    # 12 test rows per cell x 4 scanners: a noise classifier's mean is ~1/3 +- 0.07; 0.6 is far from 1.0
    assert (diagonal < 0.6).all()


def test_loso_n_is_algorithm_1():
    scanner = np.repeat(["A1", "A2", "B1", "C1", "D1", "E1"], 3)  # S = 6, three rows each
    S = 6
    splits = list(loso_n_splits(scanner, seed=5))
    assert len(splits) == S * (S - 1)
    assert Counter(s.labels["fold"] for s in splits) == {name: S - 1 for name in np.unique(scanner)}
    for s in splits:
        test, train = s.labels["fold"], set(scanner[s.train])
        assert set(scanner[s.tests["test"]]) == {test} and s.tests["test"].size == 3
        assert test not in train and len(train) == s.labels["n_train"]
        assert set(s.train) == set(np.flatnonzero(np.isin(scanner, list(train))))  # every row of those scanners
        assert s.labels["train_scanners"] == " ".join(sorted(train))
    for test in np.unique(scanner):
        assert sorted(s.labels["n_train"] for s in splits if s.labels["fold"] == test) == list(range(1, S))
    again = [s.labels["train_scanners"] for s in loso_n_splits(scanner, seed=5)]
    assert again == [s.labels["train_scanners"] for s in splits]  # same seed, same splits
    other = [s.labels["train_scanners"] for s in loso_n_splits(scanner, seed=6)]
    assert other != again  # 4 x 6 draws of 1-4 of 5 scanners: equal by chance with probability < 1e-9
    # drawn, not the first N in order: over the six test scanners the single training scanner varies
    assert len({s.labels["train_scanners"] for s in splits if s.labels["n_train"] == 1}) > 1


def test_loso_n_other_manufacturer_first():
    makers = {"A1": "Siemens", "A2": "Siemens", "A3": "Siemens", "B1": "Philips", "B2": "Philips",
              "C1": "GE", "C2": "GE"}
    scanner = np.repeat(list(makers), 2)
    maker = np.array([makers[s] for s in scanner])
    splits = list(loso_n_splits(scanner, maker, seed=2, draw="other-manufacturer-first"))
    assert len(splits) == 7 * 6
    for s in splits:
        test, n = s.labels["fold"], s.labels["n_train"]
        train = s.labels["train_scanners"].split()
        n_other = sum(makers[o] != makers[test] for o in makers if o != test)
        same = [t for t in train if makers[t] == makers[test]]
        assert len(same) == max(0, n - n_other)  # own manufacturer only once the others are used up
        assert test not in train and len(train) == n
    with pytest.raises(ValueError, match="more than one manufacturer"):
        list(loso_n_splits(["A1", "A1", "B1"], ["x", "y", "z"], draw="other-manufacturer-first"))
    with pytest.raises(ValueError, match="unknown LOSO-N draw"):
        list(loso_n_splits(scanner, draw="first"))


def test_kfold_n_is_algorithm_2_grouped_by_acquisition():
    df = synthetic_feature_table(scanners=("A1", "B1", "C1", "D1"), recons=("FBP", "IR", "DL"), repetitions=2,
                                 patches_per_roi=1, n_features=2, seed=0)
    acq = acquisition_groups(df)
    assert np.unique(acq).size == 4 * 5 * 2  # scanner x dose x repetition; recons share their scan
    # the old grouping (by series) lets the FBP / IR / DL series of one scan straddle folds
    by_series = group_folds(df["series_uid"].to_numpy(), 10, seed=0)
    assert any(np.unique(by_series[acq == a]).size > 1 for a in np.unique(acq))
    splits = list(kfold_n_splits(acq, n_folds=10, seed=0))
    assert len(splits) == 10 * 9
    folds = group_folds(acq, 10, seed=0)
    assert sorted({s.labels["fold"] for s in splits}) == list(range(10))
    for f in range(10):
        assert sorted(s.labels["n_train"] for s in splits if s.labels["fold"] == f) == list(range(1, 10))
    for s in splits:
        test = s.tests["test"]
        assert not set(acq[s.train]) & set(acq[test])  # no acquisition on both sides
        assert set(folds[test]) == {s.labels["fold"]}
        assert np.unique(folds[s.train]).size == s.labels["n_train"]
    with pytest.raises(ValueError, match="acquisitions cannot fill"):
        group_folds(acq[:5], 10)


def test_dose_splits_hold_scanners_out(table):
    scanner = table["scanner"].to_numpy()
    for s in dose_splits(scanner):
        assert not set(scanner[s.train]) & set(scanner[s.tests["test"]])


def test_chance_is_the_majority_class_share():
    from ctdose.naming import ROI_CLASSES

    assert chance_level(list(ROI_CLASSES.values())) == pytest.approx(1 / 3)  # 2 cysts, 2 normals of 6
    assert chance_level(["a", "b", "b", "c"]) == 0.5
    assert chance_level(["1", "3", "6", "10", "14"]) == 0.2


def test_summaries_say_over_what_how_many_and_chance(table):
    small = table[table["dose_mgy"].isin([1.0, 14.0])].reset_index(drop=True)
    results = classify_extractor(_as_feature_table(small), ClassifySettings("logreg", n_folds=4))
    summary = summarize({"synthetic": results})
    m = summary.matrix
    assert {"train_dose", "test_dose", "mean", "sd", "n", "over", "chance", "extractor"} <= set(m.columns)
    assert (m["n"] == 4).all() and (m["over"] == "held-out scanners").all()
    assert np.allclose(m["chance"], 1 / 3)  # six ROIs in four classes on every held-out scanner
    per = results["cross_dose"]
    cell = per[(per["train_dose"] == 1.0) & (per["test"] == "14")]["accuracy"].tolist()
    row = m[(m["train_dose"] == 1.0) & (m["test_dose"] == 14.0)].iloc[0]
    # pandas' and statistics' sums of 4 accuracies: equal to float rounding (~1e-16)
    assert row["mean"] == pytest.approx(statistics.mean(cell), abs=1e-12)
    assert row["sd"] == pytest.approx(statistics.stdev(cell), abs=1e-12)
    c = summary.curve_table
    loso, kfold = c[c["protocol"] == "loso_n"], c[c["protocol"] == "kfold_n"]
    assert loso["n_train"].tolist() == [1, 2, 3] and (loso["n"] == 4).all()
    assert set(loso["over"]) == {"test scanners (held out)"}
    assert kfold["n_train"].tolist() == [1, 2, 3] and (kfold["n"] == 4).all() and set(kfold["over"]) == {"test folds"}
    assert np.allclose(loso["chance"], 1 / 3)
    assert np.allclose(results["dose_level"]["chance"], 1 / 2)  # two doses, equal counts
    assert ((results["loso_n"]["n_train_rows"] / results["loso_n"]["n_train"]) == len(small) / 4).all()


def test_scaler_fitted_on_training_rows_only(table):
    X, y = _feature_matrix(table), table["roi_class"].to_numpy()
    split = next(iter(cross_dose_splits(table["scanner"].to_numpy(), table["dose_mgy"].to_numpy())))
    model = make_pipeline("logreg").fit(X[split.train], y[split.train])
    kept = model.named_steps["drop_constant"].get_support()
    # float64 means of the same rows (another summation order: ~1e-15 relative)
    assert np.allclose(model.named_steps["scale"].mean_, X[split.train][:, kept].mean(axis=0))
    assert not np.allclose(model.named_steps["scale"].mean_, X[:, kept].mean(axis=0))


def test_constant_feature_dropped_using_training_rows(table):
    X, y = _feature_matrix(table).copy(), table["roi_class"].to_numpy()
    train = np.flatnonzero(table["scanner"].to_numpy() != "A1")
    X[train, 0] = 3.0  # constant in training rows only
    model = make_pipeline("logreg").fit(X[train], y[train])
    assert not model.named_steps["drop_constant"].get_support()[0]


def test_mlp_seeded_and_learns(table):
    X, y = _feature_matrix(table), table["roi_class"].to_numpy()
    scanner, dose = table["scanner"].to_numpy(), table["dose_mgy"].to_numpy()
    splits = [s for s in cross_dose_splits(scanner, dose) if s.labels["train_dose"] == 14.0]
    run1 = run_splits(X, y, splits, lambda: make_pipeline("mlp", seed=3, epochs=60))
    run2 = run_splits(X, y, splits, lambda: make_pipeline("mlp", seed=3, epochs=60))
    assert run1["accuracy"].tolist() == run2["accuracy"].tolist()
    high = run1.loc[run1["test"] == "14", "accuracy"].mean()
    assert high > 0.6  # chance is 1/3 (majority class share of the six ROIs)
    mean, sd = accuracy_matrix(run1)
    assert list(mean.index) == [14.0] and list(mean.columns) == [1.0, 3.0, 6.0, 10.0, 14.0]
    assert (sd.to_numpy() >= 0).all()
    assert curve(run_splits(X, y, loso_n_splits(scanner, seed=0), lambda: make_pipeline("logreg")))["n"].tolist() \
        == [4, 4, 4]


def test_settings_in_sidecar_and_bad_settings(tmp_path, capsys):
    layout = ResultsLayout(tmp_path / "results")
    df = synthetic_feature_table("cnn", scanners=("A1", "B1", "C1"), doses=(1, 14), patches_per_roi=1,
                                 n_features=4, seed=0)
    write_csv(df, layout.feature_table("cnn"))
    write_sidecar(layout.feature_table("cnn"), {}, untrained=False)
    script = load_script("analyze/classify.py")
    assert script.main(["--results", str(layout.root), "--classifier", "logreg", "--n-folds", "3",
                        "--loso-draw", "other-manufacturer-first"]) == 0
    settings = read_sidecar(layout.cross_dose_matrix)["settings"]
    assert settings["loso_draw"] == "other-manufacturer-first" and settings["n_folds"] == 3
    assert settings["kfold_groups"] == "acquisition (scanner, dose_mgy, repetition)"
    folds = pd.read_csv(layout.curves_folds)
    assert len(folds[folds["protocol"] == "loso_n"]) == 3 * 2 and len(folds[folds["protocol"] == "kfold_n"]) == 3 * 2
    with pytest.raises(ValueError, match="unknown LOSO-N draw"):
        ClassifySettings(loso_draw="nearest")
    with pytest.raises(ValueError, match="n_folds=1"):
        ClassifySettings(n_folds=1)


def test_mlp_architecture_is_the_papers():
    from torch import nn

    from ctdose.stats.mlp import build_mlp

    net = build_mlp(17, 4)
    linear = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(17, 100), (100, 60), (60, 30), (30, 4)]
    assert sum(isinstance(m, nn.GELU) for m in net) == 3
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.2]


def test_mlp_dropout_is_inverted_dropout():
    """The MLP's dropout layer: identity in eval mode; in training, each unit zeroed with probability p
    (binomial count within 5 sd) and the others scaled by 1 / (1 - p), as torch.nn.Dropout."""
    import torch

    from ctdose.stats.mlp import Dropout

    layer, x = Dropout(0.2), torch.full((200, 500), 3.0)
    reference = torch.nn.Dropout(0.2)(x)
    out = layer(x)
    n, zeros = x.numel(), int((out == 0).sum())
    assert abs(zeros - 0.2 * n) < 5 * (n * 0.2 * 0.8) ** 0.5
    assert set(torch.unique(out).tolist()) == set(torch.unique(reference).tolist()) == {0.0, 3.0 / 0.8}
    assert torch.equal(layer.eval()(x), x)


def test_fits_in_chunks_on_workers_equal_the_plain_loop_over_the_whole_table(table):
    """analyze/classify.py's chunked jobs (columns constant over all rows dropped up front) give, per
    split, the accuracies of fitting the whole table's rows split by split (the pipeline's own filter)."""
    from ctdose.parallel import parallel_map
    from ctdose.stats.classify import gather_jobs, protocol_splits, run_split_job, split_jobs

    df = table.assign(synthetic_const=7.0)  # constant over all rows: dropped up front by the chunked path
    ft = _as_feature_table(df)
    settings = ClassifySettings(classifier="mlp", epochs=20, n_folds=3, seed=2)
    jobs = split_jobs(ft, settings, fits_per_job=3)
    assert ft.X.shape[1] == 13 and all(j.X.shape[1] == 12 for j in jobs) and len(jobs) > 4
    chunked = gather_jobs(jobs[::-1], parallel_map(run_split_job, jobs[::-1], workers=2, desc="test"))["synthetic"]
    for protocol, (y, splits) in protocol_splits(ft, settings).items():
        plain = run_splits(ft.X, y, splits, lambda: make_pipeline("mlp", seed=2, epochs=20))
        got = chunked[protocol]
        assert got["accuracy"].tolist() == plain["accuracy"].tolist(), protocol  # same fits, same bits
        assert got["n_train_rows"].tolist() == plain["n_train_rows"].tolist()
    assert list(chunked) == [p for p in ("cross_dose", "loso_n", "kfold_n", "dose_level") if p in chunked]
