"""Harmonization methods and bench: ComBat against the libraries, z-score, no leaks, errors, Table 7 layout."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ctdose.atomic import write_csv
from ctdose.features import FeatureTable, synthetic_feature_table
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout, feature_columns
from ctdose.provenance import read_sidecar, write_sidecar
from ctdose.stats.classify import Split, make_pipeline
from ctdose.stats.harmonize import (METHODS, HarmonizeSettings, fit_combat, fit_combat_cov, fit_combat_np,
                                    fit_combat_np_cov, fit_method, fit_zscore, harmonize_table,
                                    nonparametric_eb, register_method)
from ctdose.stats.harmonize_bench import (BenchSettings, bench_one, cross_dose_table, harmonized_split,
                                          score_classification, table7)
from conftest import load_script

SCALE = {"A1": 1.0, "B1": 2.0, "C1": 0.5, "D1": 1.5}


def as_table(df: pd.DataFrame, name: str = "synthetic") -> FeatureTable:
    cols = feature_columns(list(df.columns))
    return FeatureTable(name, df[list(IDENTITY_COLUMNS)].copy(), df[cols].to_numpy(float), cols)


@pytest.fixture(scope="module")
def batchy() -> FeatureTable:
    """4 scanners with a per-scanner offset (synthetic_feature_table) and a per-scanner scale, 360 rows x 12."""
    t = as_table(synthetic_feature_table(scanners=tuple(SCALE), doses=(1, 6, 14), patches_per_roi=5,
                                         n_features=12, seed=3))
    rng = np.random.default_rng(7)
    t.X = t.X * t.ident["scanner"].map(SCALE).to_numpy()[:, None] + rng.normal(size=t.X.shape) * 0.1
    return t


def _quiet(fn, *a, **k):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def _harmonize_reference(t: FeatureTable, covariate: bool) -> np.ndarray:
    from neuroHarmonize import harmonizationLearn

    covars = pd.DataFrame({"SITE": t.ident["scanner"].to_numpy()})
    if covariate:  # neuroHarmonize takes numeric covariates: the class dummies after the first
        dummies = pd.get_dummies(t.ident["roi_class"]).astype(float)
        for c in sorted(dummies.columns)[1:]:
            covars[c] = dummies[c].to_numpy()
    return _quiet(harmonizationLearn, t.X.copy(), covars)[1]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_combat_equals_the_libraries(batchy):
    from neuroCombat import neuroCombat

    t = batchy
    scanner, cls = t.ident["scanner"].to_numpy(), t.ident["roi_class"].to_numpy()
    ref = _harmonize_reference(t, covariate=False)
    assert np.abs(ref - t.X).max() > 0.5  # the batch effect is there to remove
    # parametric, no covariate: the label-free transform is ComBat's own output
    np.testing.assert_allclose(fit_combat(t)(t.X, t.ident), ref, rtol=0, atol=1e-9)
    # with the ROI-class covariate: the estimates reproduce ComBat's output when given the labels
    ref_cov = _harmonize_reference(t, covariate=True)
    np.testing.assert_allclose(fit_combat_cov(t).combat.apply_with_covariate(t.X, scanner, cls), ref_cov,
                               rtol=0, atol=1e-9)
    # neuroCombat and neuroHarmonize agree on the parametric case
    covars = pd.DataFrame({"batch": scanner, "roi": cls})
    nc = _quiet(neuroCombat, t.X.T.copy(), covars, "batch", categorical_cols=["roi"])["data"].T
    np.testing.assert_allclose(nc, ref_cov, rtol=0, atol=1e-6)
    # non-parametric: the vectorised posterior against neuroCombat's int_eprior (its loop over features)
    for fit, cov in ((fit_combat_np, None), (fit_combat_np_cov, ["roi"])):
        ref_np = _quiet(neuroCombat, t.X.T.copy(), covars, "batch", categorical_cols=cov, parametric=False)["data"].T
        np.testing.assert_allclose(fit(t).combat.apply_with_covariate(t.X, scanner, cls), ref_np, rtol=0, atol=1e-8)


def test_nonparametric_eb_matches_int_eprior():
    from neuroCombat.neuroCombat import int_eprior

    rng = np.random.default_rng(0)
    s = rng.normal(0.3, 1.2, size=(25, 40))
    g, d = rng.normal(size=25) * 0.5, rng.uniform(0.5, 2, size=25)
    gs, ds = nonparametric_eb(s, g, d)
    ref_g, ref_d = int_eprior(s, g, d)
    np.testing.assert_allclose(gs, ref_g, rtol=1e-10)
    np.testing.assert_allclose(ds, ref_d, rtol=1e-10)


def test_zscore_removes_a_per_scanner_shift_exactly():
    t = as_table(synthetic_feature_table(scanners=("A1",), doses=(1, 14), n_features=6, seed=1))
    parts = []
    for s, (shift, scale) in {"A1": (0.0, 1.0), "B1": (5.0, 3.0), "C1": (-2.0, 0.25)}.items():
        part = t.ident.assign(scanner=s)
        parts.append((part, t.X * scale + shift))
    table = FeatureTable("z", pd.concat([p for p, _ in parts], ignore_index=True),
                         np.vstack([x for _, x in parts]), t.feature_names)
    before = table.X.reshape(3, -1, 6)
    assert np.abs(before[1] - before[0]).max() > 1
    after = fit_zscore(table)(table.X, table.ident).reshape(3, -1, 6)
    np.testing.assert_allclose(after[1], after[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(after[2], after[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(after[0].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(after[0].std(axis=0), 1, atol=1e-12)


def test_no_test_label_reaches_the_fit(batchy):
    t = batchy
    # a label-dependent batch effect: the covariate matters, so a leak would change the numbers
    t = FeatureTable(t.name, t.ident, t.X + (t.ident["roi_class"] == "cyst").to_numpy()[:, None]
                     * t.ident["scanner"].map(SCALE).to_numpy()[:, None], t.feature_names)
    held = t.ident["scanner"].to_numpy() == "D1"
    split = Split(np.flatnonzero(~held), {"test": np.flatnonzero(held)})
    y = t.ident["roi_class"].to_numpy()
    rng = np.random.default_rng(0)
    perm = rng.permutation(np.flatnonzero(held))
    shuffled_ident = t.ident.copy()
    for col in ("roi", "roi_class", "patch"):
        shuffled_ident.loc[np.flatnonzero(held), col] = t.ident.loc[perm, col].to_numpy()
    shuffled = FeatureTable(t.name, shuffled_ident, t.X, t.feature_names)
    for method in ("zscore", "combat", "combat_cov", "combat_np_cov"):
        Xa, scheme = harmonized_split(t, split, method, HarmonizeSettings())
        Xb, _ = harmonized_split(shuffled, split, method, HarmonizeSettings())
        np.testing.assert_array_equal(Xa, Xb)
        assert "unseen batches: location/scale" in scheme["test"]
        model = make_pipeline("logreg").fit(Xa[split.train], y[split.train])
        model_b = make_pipeline("logreg").fit(Xb[split.train], y[split.train])
        np.testing.assert_array_equal(model.predict(Xa[held]), model_b.predict(Xb[held]))
    # the check can fail: permuting *training* labels changes the covariate version's transform
    train_perm = t.ident.copy()
    train_perm["roi_class"] = t.ident["roi_class"].sample(frac=1, random_state=0).to_numpy()
    Xc, _ = harmonized_split(FeatureTable(t.name, train_perm, t.X, t.feature_names), split, "combat_cov",
                             HarmonizeSettings())
    assert np.abs(Xc[split.train] - harmonized_split(t, split, "combat_cov", HarmonizeSettings())[0][split.train]).max() > 1e-3
    # a plug-in sees no label column when applied
    seen_columns: list[list[str]] = []

    def spy(train: FeatureTable, settings: HarmonizeSettings):
        def apply(X, ident):
            seen_columns.append(list(ident.columns))
            return X
        return apply

    register_method("spy", spy)
    try:
        harmonized_split(t, split, "spy", HarmonizeSettings())
    finally:
        METHODS.pop("spy")
    assert seen_columns and all({"roi", "roi_class", "patch"}.isdisjoint(c) for c in seen_columns)


def test_one_scanner_and_bad_settings_are_clear_errors(batchy):
    one = batchy.subset(batchy.ident["scanner"].to_numpy() == "A1")
    with pytest.raises(ValueError, match=r"one scanner batch") as err:
        harmonize_table(one, "combat")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="batch A1 has 1 training row"):
        fit_method("combat", batchy.subset(np.arange(len(batchy.X)) != 0).subset(
            np.r_[True, batchy.ident["scanner"].to_numpy()[1:][1:] != "A1"]))
    with pytest.raises(ValueError, match="unknown harmonization method 'magic'"):
        fit_method("magic", batchy)
    with pytest.raises(ValueError, match="harmonization batch 'site'"):
        HarmonizeSettings(batch="site")


def test_unseen_scanner_dose_batches_use_scanner_groups(batchy):
    settings = HarmonizeSettings(batch="scanner_dose")
    held = batchy.ident["scanner"].to_numpy() == "C1"
    transform = fit_combat(batchy.subset(~held), settings)
    out = transform(batchy.X[held], batchy.ident[held])
    assert "unseen batches" in transform.last_scheme
    # the held-out scanner's rows are mapped onto the harmonized training rows' mean and sd
    np.testing.assert_allclose(out.mean(axis=0), transform.ref_mean, atol=1e-9)
    np.testing.assert_allclose(out.std(axis=0), transform.ref_sd, atol=1e-9)


def test_bench_table7_layout_and_script(tmp_path, batchy, capsys):
    settings = BenchSettings(methods=("none", "zscore", "combat"), classifier="logreg", n_folds=3, umap=False,
                             silhouette_rows=0)
    small = batchy.subset(batchy.ident["patch"].to_numpy() < 1)
    codes = pd.factorize(small.ident["scanner"])[0]
    small.X = small.X + np.random.default_rng(5).normal(0, 3, size=(4, small.X.shape[1]))[codes]  # strong offsets
    results = [bench_one(small, m, settings) for m in settings.methods]
    t7 = table7(results, settings)
    assert t7["method"].tolist() == ["none", "zscore", "combat"]
    assert (t7["loso_last_n_train"] == 3).all() and (t7["n_test_scanners"] == 4).all()
    assert (t7["n_test_folds"] == 3).all() and (t7["kfold_n_train"] == 2).all()
    assert t7[["loso_1_mean", "loso_last_mean", "kfold_mean"]].stack().between(0, 1).all()
    assert t7["mean_icc"].isna().all()  # no 10 mGy series in this table
    # the batch effect is a per-scanner scale: harmonizing helps a classifier trained on one scanner
    assert t7.loc[1, "loso_1_mean"] > t7.loc[0, "loso_1_mean"]
    cross = score_classification(small, "combat", replace(settings, cross_dose=True))
    cells = cross_dose_table(cross)
    assert len(cells) == 9 and (cells["n"] == 4).all()  # 3 x 3 doses, each over the 4 held-out scanners
    assert cross.loc[cross["protocol"] == "cross_dose", "scheme"].str.contains("unseen batches").all()

    from ctdose.report_sections.harmonize import harmonize_section
    from ctdose.report import TABLE7_COLUMNS

    layout = ResultsLayout(tmp_path / "results")
    assert harmonize_section(layout).notes[0].startswith("Missing: harmonization bench")
    df = synthetic_feature_table("radiomics", scanners=("A1", "B1", "C1"), doses=(1, 10), patches_per_roi=1,
                                 n_features=4, seed=0)
    write_csv(df, layout.feature_table("radiomics"))
    write_sidecar(layout.feature_table("radiomics"), {}, untrained=False)
    plugin = tmp_path / "my_method.py"  # a user's method through the plug-in point: per-batch median centring
    plugin.write_text(
        "import numpy as np\n"
        "from ctdose.stats.harmonize import batch_labels, register_method\n"
        "def fit(train, settings):\n"
        "    b = batch_labels(train.ident, settings.batch)\n"
        "    med = {k: np.median(train.X[b == k], axis=0) for k in np.unique(b)}\n"
        "    def apply(X, ident):\n"
        "        names = batch_labels(ident, settings.batch)\n"
        "        return X - np.array([med.get(n, np.median(X[names == n], axis=0)) for n in names])\n"
        "    return apply\n"
        "register_method('median_centre', fit, 'median of each batch removed')\n")
    script = load_script("analyze/harmonize.py")
    argv = ["--results", str(layout.root), "--methods", "median_centre", "--plugins", str(plugin), "--n-folds", "3",
            "--no-umap", "--workers", "1"]
    try:
        assert script.main(argv) == 0
        assert script.main(argv) == 0 and "up to date" in capsys.readouterr().out
    finally:
        METHODS.pop("median_centre", None)
    side = read_sidecar(layout.harmonize_table7)
    assert side["settings"]["methods"] == ["none", "median_centre"]  # the baseline is always run
    assert side["settings"]["harmonize"]["batch"] == "scanner"
    sec = harmonize_section(layout)
    caption, table = sec.tables[0]
    assert list(table.columns) == [TABLE7_COLUMNS[0], "Method", *TABLE7_COLUMNS[1:], "chance"]
    assert table["Method"].tolist() == ["none", "median_centre"] and not sec.warnings
    assert "median_centre = median of each batch removed" in " ".join(sec.notes)
    assert "user method" in side["schemes"]
    assert "3 scanners, not the paper's 13" in caption
