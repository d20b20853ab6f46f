"""The dataset paper's published tables (ctdose.published): byte copies, and the cell-by-cell comparison."""

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctdose.published import (PUBLISHED_FILES, compare_scanner_pairs, compare_table6, published_path,
                              read_scanner_pairs, read_table6)

REFERENCE = Path(__file__).parents[2] / "shared" / "reference"
PREFIX = {"rmse": "rmse_hu", "psnr": "psnr_db", "ssim": "ssim"}


@pytest.mark.parametrize("name", PUBLISHED_FILES)
def test_package_copies_equal_the_reference(name):
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} absent (the shared reference folder is not beside this checkout)")
    assert filecmp.cmp(published_path(name), REFERENCE / name, shallow=False)


def _ours_table6(scanners=("A1", "B1"), offsets=None):
    """Our Table 6 layout built from the published values (recon 'any'), each metric's mean + offset."""
    paper = pd.read_csv(published_path("ct4h_table6_dose_vs_14mGy.csv"))
    paper = paper[paper["scanner"].isin(scanners)]
    ours = pd.DataFrame({"scanner": paper["scanner"], "recon": "any", "dose_mgy": paper["dose_mgy"], "n": 5})
    for m, p in PREFIX.items():
        ours[f"{p}_mean"] = paper[f"{m}_mean"].to_numpy()
        ours[f"{p}_sd"] = paper[f"{m}_sd"].to_numpy()
    for (scanner, dose, metric), offset in (offsets or {}).items():
        sel = (ours["scanner"] == scanner) & (ours["dose_mgy"] == dose)
        ours.loc[sel, f"{PREFIX[metric]}_mean"] += offset
    return ours.reset_index(drop=True)


def test_table6_flags_a_cell_outside_the_aim_and_passes_one_inside():
    # published A1 1 mGy rmse 39.140 +- 4.801 -> tolerance 9.602 (2 sd); A1 3 mGy ssim 0.932 +- 0.009 ->
    # tolerance 0.1398 (15 %, wider than 2 sd = 0.018); B1 1 mGy psnr: see the table below
    offsets = {("A1", 1, "rmse"): 9.5, ("A1", 3, "rmse"): 8.5 + 0.1, ("A1", 3, "ssim"): 0.13,
               ("A1", 6, "ssim"): -0.15, ("A1", 10, "rmse"): -2 * 2.821 - 0.01}
    cells = compare_table6(_ours_table6(offsets=offsets))
    cell = cells.set_index(["scanner", "dose_mgy", "metric"])
    assert bool(cell.loc[("A1", 1.0, "rmse"), "within"])            # 9.5 <= 9.602
    assert not bool(cell.loc[("A1", 3.0, "rmse"), "within"])        # 8.6 > 2 * 4.241 = 8.482
    assert bool(cell.loc[("A1", 3.0, "ssim"), "within"])            # 0.13 <= 0.15 * 0.932 = 0.1398
    assert not bool(cell.loc[("A1", 6.0, "ssim"), "within"])        # 0.15 > 0.15 * 0.951 = 0.14265
    assert not bool(cell.loc[("A1", 10.0, "rmse"), "within"])       # 5.652 > 2 * 2.821 = 5.642
    assert cell.loc[("A1", 1.0, "rmse"), "ratio"] == pytest.approx((39.140 + 9.5) / 39.140)
    assert cell.loc[("A1", 1.0, "rmse"), "twin_n"] == 5
    untouched = cells[(cells["scanner"] == "B1") & (cells["status"] == "compared")]
    assert len(untouched) == 12 and untouched["within"].all() and np.allclose(untouched["ratio"], 1.0)


def test_table6_reports_missing_cells_and_cells_only_ours_has():
    ours = _ours_table6(scanners=("A1",))
    ours = ours[ours["dose_mgy"] != 6]                              # a small twin: A1 without 6 mGy
    extra = ours.iloc[[0]].assign(scanner="Z9")                     # a scanner the paper lacks
    cells = compare_table6(pd.concat([ours, extra], ignore_index=True))
    published = pd.read_csv(published_path("ct4h_table6_dose_vs_14mGy.csv"))
    assert (cells["status"] != "paper missing").sum() == 3 * len(published)  # every published cell is there
    assert (cells["status"] == "compared").sum() == 3 * 3
    assert (cells["status"] == "paper missing").sum() == 3
    lacking = cells[cells["status"] == "twin missing"]
    assert len(lacking) == 3 * (len(published) - 3)
    assert {("A1", 6.0)} <= set(zip(lacking["scanner"], lacking["dose_mgy"]))
    assert lacking["within"].isna().all() and lacking["twin_mean"].isna().all()


def _ranks(x):
    """Ranks 1..n of distinct values, computed without scipy."""
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(1, len(x) + 1)
    return r


def test_scanner_pairs_spearman_equals_a_hand_computation():
    paper = read_scanner_pairs()
    keep = ["A1", "A2", "B1", "B2", "G1"]
    sub = paper[paper["scanner_a"].isin(keep) & paper["scanner_b"].isin(keep)].reset_index(drop=True)
    rng = np.random.default_rng(3)
    rows = []
    for (a, b), group in sub.groupby(["scanner_a", "scanner_b"], sort=False):
        row = {"scanner_a": b, "scanner_b": a, "recon": "any", "dose_mgy": 10.0, "n": 5}  # other orientation
        for m, p in PREFIX.items():
            row[f"{p}_mean"] = float(group.loc[group["metric"] == m, "mean"].iloc[0])
            row[f"{p}_sd"] = 0.1
        rows.append(row)
    ours = pd.DataFrame(rows)
    off = ours["scanner_a"] != ours["scanner_b"]
    ours.loc[off, "rmse_hu_mean"] = rng.permutation(ours.loc[off, "rmse_hu_mean"].to_numpy())  # scrambled ranks
    cells, summary = compare_scanner_pairs(ours)
    rmse = cells[(cells["metric"] == "rmse") & (cells["status"] == "compared") & ~cells["diagonal"]]
    assert len(rmse) == 10
    rt, rp = _ranks(rmse["twin_mean"].to_numpy()), _ranks(rmse["paper_mean"].to_numpy())
    expected = 1 - 6 * np.sum((rt - rp) ** 2) / (len(rt) * (len(rt) ** 2 - 1))
    assert summary["any"]["rmse"]["rho"] == pytest.approx(expected)
    assert summary["any"]["rmse"]["n_off_diagonal"] == 10 and summary["any"]["rmse"]["n_diagonal"] == 5
    assert summary["any"]["psnr"]["rho"] == pytest.approx(1.0)    # untouched: the paper's own order
    diag = sub[(sub["metric"] == "rmse") & (sub["scanner_a"] == sub["scanner_b"])]["mean"].mean()
    offd = sub[(sub["metric"] == "rmse") & (sub["scanner_a"] != sub["scanner_b"])]["mean"].mean()
    assert summary["any"]["rmse"]["paper_off_over_diagonal"] == pytest.approx(offd / diag)
    assert summary["any"]["rmse"]["twin_off_over_diagonal"] == pytest.approx(offd / diag)  # a permutation
    # every published pair appears; the ones ours lacks are reported as missing
    assert summary["any"]["rmse"]["n_twin_missing"] == 91 - 15
    assert set(zip(rmse["scanner_a"], rmse["scanner_b"])) <= set(zip(sub["scanner_a"], sub["scanner_b"]))


def test_an_empty_scanner_table_leaves_every_pair_missing():
    cells, summary = compare_scanner_pairs(pd.DataFrame())
    assert len(cells) == len(read_scanner_pairs()) and (cells["status"] == "twin missing").all()
    assert np.isnan(summary["any"]["rmse"]["rho"]) and not summary["any"]["rmse"]["rho_aim_met"]


def test_readers_name_the_tables_shapes():
    assert read_table6().shape[0] == 52 and read_scanner_pairs().shape[0] == 3 * 91
    with pytest.raises(ValueError, match="no published table"):
        published_path("table7.csv")
