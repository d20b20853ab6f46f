"""ICC(3,1)/ICC(3,k): agreement with pingouin (values and 95 % confidence intervals), constructed cases,
views, excluded features (constant whatever the value, rater-only) and the boxplots' reconstructions.

Tolerances: an ICC is O(1) and both sides compute it in float64 from the same numbers (other formulas,
other summation order: ~1e-13 apart), so 1e-9 absolute holds on any CPU with four orders to spare.
The interval bounds are the same O(1) maps of F through scipy's F quantiles (both sides call
scipy.stats.f.ppf with the same arguments), so the same 1e-9 holds for them.
"""

import numpy as np
import pandas as pd
import pingouin as pg
import pytest

from ctdose.features import FeatureTable
from ctdose.layout import IDENTITY_COLUMNS
from ctdose.plots import icc_boxplot_figure
from ctdose.stats.icc import (EXCLUDED_CONSTANT, EXCLUDED_RATERS_ONLY, ICCSettings, icc3, icc3_components,
                              icc_views, summarize_icc)


def _pingouin_table(matrix: np.ndarray) -> pd.DataFrame:
    """pingouin's ICC table of one (targets, raters) matrix, indexed by Type, CI95 unrounded."""
    n, k = matrix.shape
    long = pd.DataFrame({"target": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n),
                         "score": matrix.ravel()})
    with np.errstate(divide="ignore", invalid="ignore"), pytest.MonkeyPatch.context() as mp:
        mp.setitem(pg.options, "round.column.CI95", None)  # pingouin rounds CI95 to 2 decimals by default
        res = pg.intraclass_corr(long, targets="target", raters="rater", ratings="score")
    return res.set_index("Type")


def _pingouin_icc3(matrix: np.ndarray) -> tuple[float, float]:
    res = _pingouin_table(matrix)
    return float(res.loc["ICC(C,1)", "ICC"]), float(res.loc["ICC(C,k)", "ICC"])


@pytest.mark.parametrize("shape", [(3, 5, 2), (4, 12, 5), (2, 30, 13), (5, 7, 3)])
def test_icc_matches_pingouin(shape):
    rng = np.random.default_rng(sum(shape))
    f, n, k = shape
    # mix of signal and noise so ICCs spread over (-1, 1)
    data = rng.normal(size=(f, n, 1)) * rng.uniform(0, 2, size=(f, 1, 1)) + rng.normal(size=shape)
    data += rng.normal(size=(f, 1, k)) * 3  # rater offsets: consistency ICC must ignore them
    icc1, icck = icc3(data)
    for i in range(f):
        ref1, refk = _pingouin_icc3(data[i])
        assert abs(icc1[i] - ref1) < 1e-9
        assert abs(icck[i] - refk) < 1e-9


def test_constructed_stable_and_noise():
    rng = np.random.default_rng(0)
    n, k = 200, 5
    truth = rng.normal(size=(n, 1))
    stable = truth + np.linspace(-2, 2, k)[None, :]  # rater shifts only: consistency ICC = 1
    noise = rng.normal(size=(n, k))
    icc1, icck = icc3(np.stack([stable, noise]))
    # exactly 1 in exact arithmetic; the residual mean square is ~(eps64 x |values|)^2: 1 - ~1e-15
    assert icc1[0] == pytest.approx(1.0, abs=1e-12)
    assert icck[0] == pytest.approx(1.0, abs=1e-12)
    assert abs(icc1[1]) < 0.08


def test_degenerate_feature_is_an_error_naming_it():
    data = np.random.default_rng(1).normal(size=(2, 6, 3))
    data[1] = 7.0
    with pytest.raises(ValueError, match=r"flat_feature \(constant"):
        icc3(data, feature_names=["good", "flat_feature"])


@pytest.mark.parametrize("value", [0.1, 4.2, -3.3, 1e6 + 0.1, 7.0, 0.0])
def test_constant_feature_is_excluded_whatever_its_value(value):
    # Centring 0.1 (not exact in binary) on its floating mean leaves equal rounding residuals that read as
    # ICC = 1 with a naive ANOVA. The reference is the definition: a constant has MSR = MSE = 0, ICC = 0/0.
    # pingouin, fed an exact 7.0, returns NaN for it; fed 0.1 it returns its own rounding (-0.5), so
    # it cannot be the reference here, and the value must not decide the outcome.
    assert np.isnan(_pingouin_icc3(np.full((6, 3), 7.0))[0])
    rng = np.random.default_rng(4)
    data = np.stack([rng.normal(size=(6, 3)), np.full((6, 3), value)])
    with pytest.raises(ValueError, match=r"const \(constant"):
        icc3(data, feature_names=["good", "const"])
    res = icc3_components(data)
    assert res.status.tolist() == ["ok", EXCLUDED_CONSTANT]
    assert np.isnan(res.icc3_1[1]) and np.isnan(res.icc3_k_ci_high[1])
    # through a feature table: repetitions averaged, so the cell means are sums of 0.1s divided again
    table = _synthetic_table(n_scanners=2, n_rep=3, seed=6)
    table.X[:, 2] = value
    per = icc_views(table, ICCSettings())
    const = per[per["feature"] == "demo_const"]
    assert (const["status"] == EXCLUDED_CONSTANT).all() and const["icc3_1"].isna().all()
    std = icc_views(table, ICCSettings(standardize="per_rater"))  # rounding-level sd is not divided by
    assert (std.loc[std["feature"] == "demo_const", "status"] == EXCLUDED_CONSTANT).all()


@pytest.mark.parametrize("k", [3, 5])
def test_no_spread_between_targets_with_error_is_defined(k):
    # every target sees the same k values in another order (a Latin square): target means are equal,
    # the residual is not, so ICC(3,1) = -1/(k-1) and ICC(3,k) = 1 - 1/F = -inf (F = 0), as pingouin says
    base = 4.2 + 0.1 * np.arange(k)
    matrix = np.stack([np.roll(base, t) for t in range(2 * k)])
    ref1, refk = _pingouin_icc3(matrix)
    # pingouin's MSR is rounding-level (~1e-30), not 0, so its ICC(3,k) is a huge negative number
    assert ref1 == pytest.approx(-1 / (k - 1), abs=1e-9) and refk < -1e12
    res = icc3_components(matrix)
    assert res.status.tolist() == ["ok"]
    assert res.icc3_1[0] == pytest.approx(ref1, abs=1e-9) and res.icc3_k[0] == -np.inf
    ci = _pingouin_table(matrix).loc["ICC(C,1)", "CI95"]
    assert [res.icc3_1_ci_low[0], res.icc3_1_ci_high[0]] == pytest.approx(list(ci), abs=1e-9)
    per = icc_views(_table_from_matrix(matrix), ICCSettings(), views=("dose",))
    assert per["status"].item() == "ok" and per["icc3_1"].item() == pytest.approx(-1 / (k - 1), abs=1e-9)


def test_feature_varying_only_between_raters_is_excluded_with_its_reason():
    matrix = np.tile(0.1 * np.arange(1, 5), (8, 1))  # each rater (dose) its own value, every target alike
    res = icc3_components(matrix)
    assert res.status.tolist() == [EXCLUDED_RATERS_ONLY] and np.isnan(res.icc3_k[0])
    with pytest.raises(ValueError, match="varies only between raters"):
        icc3(matrix)


def test_confidence_intervals_match_pingouin():
    rng = np.random.default_rng(11)
    f, n, k = 4, 18, 5
    data = rng.normal(size=(f, n, 1)) * np.array([0.3, 1.0, 2.0, 5.0])[:, None, None] + rng.normal(size=(f, n, k))
    res = icc3_components(data)
    for i in range(f):
        ref = _pingouin_table(data[i])
        for kind, prefix in (("ICC(C,1)", "icc3_1"), ("ICC(C,k)", "icc3_k")):
            low, high = ref.loc[kind, "CI95"]
            assert getattr(res, f"{prefix}_ci_low")[i] == pytest.approx(low, abs=1e-9)
            assert getattr(res, f"{prefix}_ci_high")[i] == pytest.approx(high, abs=1e-9)
            assert low < getattr(res, prefix)[i] < high
    per = icc_views(_synthetic_table(seed=8), ICCSettings(clip=True))
    ok = per[per["status"] == "ok"]
    assert (ok[["icc3_1_ci_low", "icc3_1_ci_high", "icc3_k_ci_low", "icc3_k_ci_high"]] >= 0).all().all()
    assert (ok["icc3_1_ci_low"] <= ok["icc3_1"]).all() and (ok["icc3_1"] <= ok["icc3_1_ci_high"]).all()


def _figure_texts(fig) -> str:
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in fig.findobj(Text))


def test_boxplots_name_the_reconstructions_they_pool():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(12)
    fbp, ir = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    table = _table_from_matrix(np.concatenate([fbp, ir]), recons=["FBP"] * 30 + ["IR"] * 30)
    fig, caption = icc_boxplot_figure(icc_views(table, ICCSettings(recon="each")))
    texts = _figure_texts(fig)
    plt.close(fig)
    assert "FBP, IR" in caption and "pool" in caption and caption in texts  # the figure's own title
    assert "doses\nFBP" in texts and "doses\nIR" in texts  # panel 3 shows each apart
    fig, caption = icc_boxplot_figure(icc_views(table, ICCSettings(recon="average")))
    texts = _figure_texts(fig)
    plt.close(fig)
    assert "averaged before the ICC: FBP+IR" in caption and caption in texts


def _synthetic_table(n_scanners=3, doses=(1.0, 3.0, 14.0), n_patch=3, n_rep=2, seed=0):
    rng = np.random.default_rng(seed)
    rois = ["cyst1", "cyst2", "hemangioma", "metastasis", "normal1", "normal2"]
    rows, feats = [], []
    truth = rng.normal(size=(len(rois), n_patch))
    for s in range(n_scanners):
        for d in doses:
            for rep in range(n_rep):
                uid = f"uid{s}_{d}_{rep}"
                for r, roi in enumerate(rois):
                    for p in range(n_patch):
                        rows.append((uid, f"S{s}", "M", "model", d, "FBP", rep, roi, roi[:4], p))
                        feats.append([truth[r, p] * 10 + s + d,  # stable up to rater shifts
                                      rng.normal(),  # noise
                                      5.0])  # constant: excluded
    ident = pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS))
    return FeatureTable("demo", ident, np.array(feats), ["demo_stable", "demo_noise", "demo_const"])


def test_views_and_summary():
    table = _synthetic_table()
    per = icc_views(table, ICCSettings())
    dose_view = per[per["view"] == "dose"]
    assert set(dose_view["scanner"]) == {"S0", "S1", "S2"}
    assert (dose_view["n_targets"] == 18).all() and (dose_view["n_raters"] == 3).all()
    scan_view = per[per["view"] == "scanner"]
    assert set(scan_view["dose_mgy"]) == {1.0, 3.0, 14.0}
    assert (scan_view["n_raters"] == 3).all()
    stable = per[per["feature"] == "demo_stable"]
    assert np.allclose(stable["icc3_1"], 1.0)  # exactly 1 but for float64 rounding (~1e-15)
    const = per[per["feature"] == "demo_const"]
    assert (const["status"] != "ok").all() and const["icc3_1"].isna().all()
    summary = summarize_icc(per)
    assert (summary["n_excluded"] == 1).all() and (summary["n_features"] == 2).all()
    # the summary is computed from the included features only
    first = per[(per["view"] == "dose") & (per["scanner"] == "S0") & (per["status"] == "ok")]
    row = summary[(summary["view"] == "dose") & (summary["scanner"] == "S0")].iloc[0]
    assert row["mean"] == pytest.approx(first["icc3_1"].mean())  # the same float64 values averaged
    assert row["share_gt_0.9"] == pytest.approx((first["icc3_1"] > 0.9).mean())


def test_repetitions_averaged_matches_manual():
    table = _synthetic_table(n_scanners=1, n_rep=2, seed=3)
    per = icc_views(table, ICCSettings(), views=("dose",))
    ident = table.ident
    noise = pd.Series(table.X[:, 1], index=pd.MultiIndex.from_frame(ident[["roi", "patch", "dose_mgy"]]))
    mat = noise.groupby(level=[0, 1, 2]).mean().unstack("dose_mgy").to_numpy()
    ref1, _ = _pingouin_icc3(mat)
    got = per.loc[per["feature"] == "demo_noise", "icc3_1"].item()
    assert got == pytest.approx(ref1, abs=1e-9)


def test_clip_and_settings_validation():
    table = _synthetic_table(seed=5)
    clipped = icc_views(table, ICCSettings(clip=True))
    assert (clipped.loc[clipped["status"] == "ok", "icc3_1"] >= 0).all()
    with pytest.raises(ValueError, match="standardize"):
        ICCSettings(standardize="global")


def test_bad_feature_table_is_one_clear_error(tmp_path):
    from ctdose.features import read_feature_table, synthetic_feature_table

    df = synthetic_feature_table("radiomics", scanners=("A1", "B1"), doses=(1, 14), patches_per_roi=1, n_features=3)
    bad = tmp_path / "radiomics.csv"
    df.drop(columns=["roi"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"radiomics.csv: missing identity column\(s\) roi"):
        read_feature_table(bad)
    df.loc[4, "radiomics_0001"] = np.nan
    df.to_csv(bad, index=False)
    with pytest.raises(ValueError, match="non-finite value.*radiomics_0001 row 6"):
        read_feature_table(bad)
    pd.concat([df.iloc[:2], df.iloc[:1]]).fillna(0).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="duplicated row"):
        read_feature_table(bad)


def test_per_rater_standardisation_removes_rater_scale():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(40, 1))
    scaled = truth * np.array([[1.0, 3.0, 0.2]])  # each rater (dose) rescales the feature
    table = _table_from_matrix(scaled)
    plain = icc_views(table, ICCSettings(), views=("dose",))["icc3_1"].item()
    std = icc_views(table, ICCSettings(standardize="per_rater"), views=("dose",))["icc3_1"].item()
    assert plain < 0.9 and std == pytest.approx(1.0)  # exactly 1 once each rater is standardised


def test_recon_average_uses_mean_of_reconstructions():
    rng = np.random.default_rng(3)
    fbp, ir = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    table = _table_from_matrix(np.concatenate([fbp, ir]), recons=["FBP"] * 30 + ["IR"] * 30)
    per = icc_views(table, ICCSettings(recon="average"), views=("dose",))
    assert per["recon"].tolist() == ["FBP+IR"]
    expected, _ = _pingouin_icc3((fbp + ir) / 2)
    assert per["icc3_1"].item() == pytest.approx(expected, abs=1e-9)
    each = icc_views(table, ICCSettings(recon="each"), views=("dose",))
    assert each["recon"].tolist() == ["FBP", "IR"]
    assert each["icc3_1"].iloc[0] == pytest.approx(_pingouin_icc3(fbp)[0], abs=1e-9)


def _table_from_matrix(matrix, recons=None):
    """One scanner, one feature: rows of ``matrix`` = targets (patch numbers), columns = doses."""
    n, k = matrix.shape
    recons = recons or ["FBP"] * n
    rows, values = [], []
    for t in range(n):
        for d in range(k):
            rows.append((f"uid{d}{recons[t]}", "A1", "M", "m", float(d + 1), recons[t], 1, "cyst1", "cyst", t % 30))
            values.append([matrix[t, d]])
    return FeatureTable("x", pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS)), np.array(values), ["x_0"])
