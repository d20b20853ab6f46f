"""Classification protocols: no scanner leaks, scaler fitted on training rows only, seeded runs."""

import numpy as np
import pytest
import torch

from ctdose.features import synthetic_feature_table
from ctdose.stats.classify import (accuracy_matrix, cross_dose_splits, curve, dose_splits, group_folds,
                                   kfold_n_splits, loso_n_splits, make_pipeline, run_splits)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def table():
    return synthetic_feature_table(scanners=("A1", "B1", "C1", "D1"), patches_per_roi=2, n_features=12,
                                   class_signal=1.5, seed=4)


def _feature_matrix(df):
    return df[[c for c in df.columns if c.startswith("synthetic_")]].to_numpy()


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


def test_loso_n_and_dose_splits_hold_scanners_out(table):
    scanner = table["scanner"].to_numpy()
    seen_n = set()
    for s in loso_n_splits(scanner, draws=2, seed=1):
        train = set(scanner[s.train])
        assert len(train) == s.labels["n_train"]
        assert set(scanner[s.tests["test"]]) == {s.labels["fold"]} and s.labels["fold"] not in train
        seen_n.add(s.labels["n_train"])
    assert seen_n == {1, 2, 3}
    for s in dose_splits(scanner):
        assert not set(scanner[s.train]) & set(scanner[s.tests["test"]])


def test_kfold_n_groups_stay_together(table):
    uid = table["series_uid"].to_numpy()
    folds = group_folds(uid, 10, seed=0)
    for g in np.unique(uid):
        assert np.unique(folds[uid == g]).size == 1
    for s in kfold_n_splits(uid, n_folds=10, test_folds=2, seed=0):
        assert not set(uid[s.train]) & set(uid[s.tests["test"]])
        assert np.unique(folds[s.train]).size == s.labels["n_train"]


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
    assert high > 0.5  # chance is 0.25 for 4 classes
    mean, sd = accuracy_matrix(run1)
    assert list(mean.index) == [14.0] and list(mean.columns) == [1.0, 3.0, 6.0, 10.0, 14.0]
    assert (sd.to_numpy() >= 0).all()


def test_curve_is_indexed_by_training_scanners(table):
    X, y = _feature_matrix(table), table["roi_class"].to_numpy()
    res = run_splits(X, y, loso_n_splits(table["scanner"].to_numpy(), draws=2, seed=0), lambda: make_pipeline("logreg"))
    c = curve(res)
    assert c["n_train"].tolist() == [1, 2, 3] and (c["n"] == 2).all()
    assert ((res["n_train_rows"] / res["n_train"]) == len(table) / 4).all()  # N scanners' rows each


def test_mlp_architecture_is_the_papers():
    from torch import nn

    from ctdose.stats.mlp import build_mlp

    net = build_mlp(17, 4)
    linear = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(17, 100), (100, 60), (60, 30), (30, 4)]
    assert sum(isinstance(m, nn.GELU) for m in net) == 3
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.2]
