"""Segmentation dose robustness (issue 11), the SEGA half: dose ladder noise law, denoisers, Dice / HD95
against an independent computation (scipy distance transforms) incl. empty labels, r_eff, and the
Table 2 layout from a tiny run with a threshold segmenter (runner, resume, script end to end)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from ctdose.segmentation import denoise as dn
from ctdose.segmentation import robustness as rb
from ctdose.segmentation.ladder import dose_ladder, thin_counts
from ctdose.segmentation.metrics import dice_hd95, effective_radius_mm, label_metrics
from ctdose.twin.acquisition import counts_to_line_integrals
from ctdose.volume import Volume

from conftest import phantom_volume, run_script, write_test_series


# ------------------------------------------------------------------------------------------ ladder

def test_thinned_counts_follow_the_poisson_noise_law():
    """Binomial thinning of Poisson counts is Poisson(f lam): mean and variance f lam, and the
    line-integral noise std scales as 1 / sqrt(f) (the twin-counts ladder's noise law)."""
    rng = np.random.default_rng(3)
    lam = 400.0
    counts = rng.poisson(lam, size=400_000)
    std_full = counts_to_line_integrals(counts, lam).std()
    for f in (0.2, 0.4, 0.6, 0.8):
        thinned = thin_counts(counts, f, np.random.default_rng(int(f * 10)))
        assert abs(thinned.mean() / (f * lam) - 1) < 0.01
        assert abs(thinned.var() / (f * lam) - 1) < 0.02  # Poisson: variance = mean (not f^2 lam)
        std = counts_to_line_integrals(thinned, f * lam).std()
        assert abs(std / std_full * math.sqrt(f) - 1) < 0.02
    with pytest.raises(ValueError, match="fraction"):
        thin_counts(counts, 1.5, rng)


@pytest.fixture(scope="module")
def flat_series(tmp_path_factory):
    """A noise-free water cylinder (8 slices of 64 x 64, 2 mm pixels) written as DICOM (10 mGy FBP)."""
    z, y, x = np.mgrid[:8, :64, :64]
    hu = np.where((y - 31.5) ** 2 + (x - 31.5) ** 2 < 26 ** 2, 0.0, -1000.0).astype(np.float32)
    vol = Volume(hu, origin=(-63.0, -63.0, 0.0), spacing=(2.0, 2.0, 2.0))
    out = tmp_path_factory.mktemp("flat") / "series"
    write_test_series(out, dose=10, recon="FBP", volume=vol, with_seg=False)
    return out


def test_reprojection_ladder_noise_law(flat_series):
    """On a noise-free image the inserted noise std is sqrt((1 - f) / f / photons) up to a constant:
    ratios between levels follow sqrt((1 - f) / f) within 8 %; fraction 1 is the series itself."""
    ladder = dose_ladder(flat_series, (0.2, 0.5, 0.8, 1.0), method="reprojection", photons_per_ray=2e4, seed=1)
    assert ladder.method == "reprojection" and sorted(ladder.levels) == [0.2, 0.5, 0.8, 1.0]
    inner = np.zeros((64, 64), bool)
    inner[20:44, 20:44] = True
    std = {f: ladder.levels[f][:, inner].std() for f in ladder.levels}
    assert std[1.0] < 1.0  # the noise-free input (HU rounding only)
    for f in (0.5, 0.8):
        expected = math.sqrt((1 - f) / f) / math.sqrt((1 - 0.2) / 0.2)
        assert abs(std[f] / std[0.2] / expected - 1) < 0.08
    with pytest.raises(ValueError, match="photons per ray unknown"):
        dose_ladder(flat_series, (0.5, 1.0), method="reprojection")


# ---------------------------------------------------------------------------------------- denoisers

@pytest.fixture(scope="module")
def noisy_block():
    """A uniform 40 HU block with spatially correlated noise of std ~25 HU (6 x 96 x 96)."""
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal((6, 96, 96)), (0, 0.8, 0.8))
    return (40.0 + 25.0 * noise / noise.std()).astype(np.float32)


def test_noise_estimate_and_denoisers(noisy_block):
    sigma = dn.estimate_noise_hu(noisy_block)
    assert 20.0 < sigma < 28.0  # local estimate near the true 25 HU
    inner = (slice(None), slice(10, -10), slice(10, -10))
    for name in ("tv", "nlm"):
        out = dn.get_denoiser(name)(noisy_block, (2.0, 1.0, 1.0))
        assert out.shape == noisy_block.shape and out.dtype == np.float32
        assert out[inner].std() < 0.6 * noisy_block[inner].std(), name
        assert abs(out[inner].mean() - noisy_block[inner].mean()) < 1.0, name
    same = dn.get_denoiser("none")(noisy_block, (2.0, 1.0, 1.0))
    assert np.array_equal(same, noisy_block) and same is not noisy_block
    with pytest.raises(ValueError, match="unknown denoiser 'bogus'"):
        dn.get_denoiser("bogus")


# ------------------------------------------------------------------------------------------ metrics

def _reference_dice_hd95(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """Independent: scipy surface voxels and Euclidean distance transforms, numpy percentiles."""
    ea, eb = a ^ ndimage.binary_erosion(a), b ^ ndimage.binary_erosion(b)
    d_ab = ndimage.distance_transform_edt(~eb, sampling=spacing)[ea]
    d_ba = ndimage.distance_transform_edt(~ea, sampling=spacing)[eb]
    return 2 * (a & b).sum() / (a.sum() + b.sum()), max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def _ellipsoid(shape, centre, radii):
    z, y, x = np.indices(shape)
    return sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centre, radii)) < 1


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, -2, 3), (3, 4, -5)])
def test_dice_hd95_equal_independent_computation(shift):
    spacing = (2.5, 0.7, 0.9)
    a = _ellipsoid((30, 50, 60), (15, 25, 30), (6, 12, 15))
    b = _ellipsoid((30, 50, 60), (15 + shift[0], 25 + shift[1], 30 + shift[2]), (5, 13, 14))
    b[14:16, 10:14, 10:14] = True  # a detached blob: a long tail of distances
    dice, hd = dice_hd95(a, b, spacing)
    ref_dice, ref_hd = _reference_dice_hd95(a, b, spacing)
    assert dice == pytest.approx(ref_dice, abs=1e-6)
    assert hd == pytest.approx(ref_hd, abs=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI about an argument it passes itself
def test_label_metrics_equal_monai():
    """Every label's Dice and HD95 as MONAI's compute_dice / compute_hausdorff_distance give them."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    spacing, shape = (2.0, 0.7, 0.8), (24, 60, 70)
    ref, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    ref[_ellipsoid(shape, (12, 30, 35), (13, 31, 36))] = 1          # touches the volume's border
    ref[_ellipsoid(shape, (12, 25, 30), (5, 10, 12))] = 2
    ref[_ellipsoid(shape, (8, 40, 50), (3, 5, 6))] = 3
    noise = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=shape), 1.5)
    pred[:] = np.where(np.abs(noise) > 0.12, 0, ref)               # a noisy copy: most surface shared
    pred[_ellipsoid(shape, (12, 25, 31), (5, 11, 11))] = 2
    pred[2:4, 5:8, 5:8] = 3                                          # a detached false positive
    rows = label_metrics(pred, ref, spacing, {1: "body", 2: "liver", 3: "lesion", 4: "absent"})
    for row in rows[:3]:
        a = torch.from_numpy(pred == row["label"])[None, None].float()
        b = torch.from_numpy(ref == row["label"])[None, None].float()
        assert row["dice"] == pytest.approx(float(compute_dice(a, b, include_background=True)), abs=1e-6)
        hd = float(compute_hausdorff_distance(a, b, include_background=True, percentile=95, spacing=list(spacing)))
        assert hd > 0 and row["hd95_mm"] == pytest.approx(hd, rel=1e-5)
    assert rows[3]["dice"] == 1.0 and rows[3]["hd95_mm"] == 0.0


def test_empty_cases_and_r_eff():
    spacing = (2.0, 1.0, 1.0)
    empty, ball = np.zeros((20, 40, 40), bool), _ellipsoid((20, 40, 40), (10, 20, 20), (5, 10, 10))
    assert dice_hd95(empty, empty, spacing) == (1.0, 0.0)
    for a, b in ((ball, empty), (empty, ball)):
        dice, hd = dice_hd95(a, b, spacing)
        assert dice == 0.0 and math.isnan(hd)
    assert dice_hd95(ball, ball, spacing) == (1.0, 0.0)
    # a sphere of radius 10 mm: r_eff within half a voxel
    assert effective_radius_mm(int(ball.sum()), spacing) == pytest.approx(10.0, abs=0.5)
    assert effective_radius_mm(1000, (1.0, 1.0, 1.0)) == pytest.approx((3000 / (4 * math.pi)) ** (1 / 3))
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[ball] = 2
    rows = label_metrics(labels, labels, spacing, {1: "absent", 2: "ball", 0: "background"})
    assert [r["label_name"] for r in rows] == ["absent", "ball"]
    assert rows[0]["dice"] == 1.0 and rows[0]["r_eff_mm"] == 0.0 and rows[0]["ref_voxels"] == 0
    assert rows[1]["ref_volume_ml"] == pytest.approx(ball.sum() * 2.0 / 1000)


# ------------------------------------------------------------------------------- tiny run, Table 2

class ThresholdSegmenter:
    """body = HU > -500, dense = HU > 90 (the phantom's hemangioma and rods): moves with noise."""

    name = "threshold (test)"
    labels = {1: "body", 2: "dense"}

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, volume_hu, spacing_zyx_mm):
        self.calls += 1
        out = np.zeros(volume_hu.shape, np.uint8)
        out[volume_hu > -500] = 1
        out[volume_hu > 90] = 2
        return out


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("segtree")
    for k, scanner in enumerate(("A1", "B1")):
        vol = phantom_volume(shape_zyx=(8, 64, 64), noise_sd=0.0, seed=k)
        write_test_series(root / f"{scanner}_FBP10", scanner=scanner, dose=10, recon="FBP", scan_id=20 + k,
                          volume=vol, seed=k)
    from ctdose.catalog import build_catalog

    return root, build_catalog(root)


def test_tiny_run_table2_layout_and_resume(tiny_tree, tmp_path):
    root, catalog = tiny_tree
    series = rb.select_series(root, catalog)
    assert sorted(series["scanner"]) == ["A1", "B1"]
    settings = rb.RobustnessSettings(fractions=(0.3, 1.0), denoisers=("none", "tv"), segmenter="threshold",
                                     ladder="reprojection", photons_per_mgy=300.0)
    seg = ThresholdSegmenter()
    tasks = [rb.SeriesTask(r.path, r.series_uid, r.scanner, int(r.repetition), float(r.dose_mgy), r.recon,
                           str(tmp_path / f"{r.series_uid}.csv")) for r in series.itertuples()]
    rows = rb.run_all(tasks, settings, segmenter_factory=lambda s: seg)
    assert seg.calls == 2 * 2 * 2  # series x denoisers x fractions (the none / full reference is shared)
    assert set(rows["reference"]) == {"full_dose"}  # not a twin: no ground truth
    self_ref = rows[(rows["denoiser"] == "none") & (rows["dose_fraction"] == 1.0)]
    assert (self_ref["dice"] == 1.0).all() and (self_ref["hd95_mm"] == 0.0).all()
    low = rows[rows["dose_fraction"] == 0.3]
    assert (low.loc[low["label_name"] == "dense", "dice"] < 1.0).all()  # noise moves the dense label

    t2 = rb.table2(rows)
    assert list(t2["denoiser"]) == ["none", "tv"] and (t2["dose_fraction"] == 0.3).all()
    assert (t2["n_scans"] == 2).all()
    for den, expect in t2.set_index("denoiser").iterrows():  # independent: numpy over the raw rows
        part = low[low["denoiser"] == den]
        per_scan = [g["dice"].to_numpy().mean() for _, g in part.groupby("series_uid")]
        assert expect["dice_median"] == pytest.approx(float(np.median(per_scan)))
        assert expect["dice_mad"] == pytest.approx(float(np.median(np.abs(per_scan - np.median(per_scan)))))
    wide = rb.table2_wide(t2)
    assert list(wide.columns) == ["segmenter", "none", "tv"] and list(wide["segmenter"]) == ["threshold (test)"]
    fails = rb.failure_share(rows, 0.999)
    body = fails[(fails["label_name"] == "dense") & (fails["dose_fraction"] == 0.3) & (fails["denoiser"] == "none")]
    assert body["share_failed"].item() == 1.0
    assert not rb.radius_bins(rows).empty and not rb.dose_curves(rows).empty

    again = ThresholdSegmenter()  # resume: every partial is current, nothing is segmented again
    rows2 = rb.run_all(tasks, settings, segmenter_factory=lambda s: again)
    assert again.calls == 0 and len(rows2) == len(rows)


def test_script_end_to_end(tiny_tree, tmp_path, monkeypatch):
    from ctdose.atomic import write_csv
    from ctdose.csv_io import read_csv
    from ctdose.layout import ResultsLayout

    root, catalog = tiny_tree
    layout = ResultsLayout(tmp_path / "results")
    write_csv(catalog, layout.catalog)
    monkeypatch.setattr(rb, "_cached_segmenter", lambda kind, options: ThresholdSegmenter())
    argv = ["--data", str(root), "--results", str(layout.root), "--scanners", "A1", "B1", "--denoisers", "none",
            "tv", "--fractions", "0.4", "1.0", "--ladder", "reprojection", "--photons-per-mgy", "300", "--workers", "1"]
    run_script("segmentation/dose_robustness.py", argv)
    wide = read_csv(layout.segmentation_table2_wide)
    assert list(wide.columns) == ["segmenter", "none", "tv"]
    side = json.loads(layout.segmentation_rows.with_suffix(".json").read_text())
    assert side["twin"] is False and len(side["series"]) == 2
    for stem in ("fig7_dice_vs_dose", "fig5_dice_vs_radius", "overlay"):
        assert layout.segmentation_figure(stem).with_suffix(".png").is_file(), stem
    from ctdose.report_sections.segmentation import segmentation_section

    sec = segmentation_section(layout)
    assert not sec.warnings, sec.warnings
    assert any("Table 2" in caption for caption, _ in sec.tables)
    assert len(sec.figures) >= 3
    empty = segmentation_section(ResultsLayout(tmp_path / "none"))
    assert any(n.startswith("Missing") for n in empty.notes)


def test_bad_inputs_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="ground_truth.json not found"):
        rb.select_series(tmp_path)
    with pytest.raises(ValueError, match="unknown ladder method"):
        dose_ladder(tmp_path, method="bogus")
    table = pd.DataFrame({"path": ["p"], "series_uid": ["u"], "scanner": ["A1"], "repetition": [1],
                          "dose_mgy": [10.0], "recon": ["FBP"]})
    with pytest.raises(ValueError, match="scanner.*Z9"):
        rb.select_series(tmp_path, table, scanners=["Z9"])


# ------------------------------------------------------------------------------------ contrast split

@pytest.fixture(scope="module")
def liver_tree(tmp_path_factory):
    """One series whose body is liver-like (80 HU: inside twin_qc's liver band, under the 90 HU "dense"
    threshold), its catalog, volume and body mask."""
    root = tmp_path_factory.mktemp("livertree")
    vol = phantom_volume(shape_zyx=(8, 64, 64), noise_sd=0.0, seed=0)
    body = vol.array > -500
    vol = Volume(np.where(body, vol.array + 20.0, vol.array).astype(np.float32), vol.origin, vol.spacing)
    series = write_test_series(root / "A1_FBP10", scanner="A1", dose=10, recon="FBP", scan_id=30, volume=vol, seed=0)
    from ctdose.catalog import build_catalog

    return root, build_catalog(root), series, body


def test_contrast_phase_selection_and_table2_split(liver_tree, tmp_path):
    root, catalog, series, body = liver_tree
    vol = series.volume
    assert rb.select_series(root, catalog)["contrast"].tolist() == [rb.UNKNOWN_PHASE]
    # a catalog contrast column: the highest dose per scanner x repetition x phase, phases kept apart
    two = pd.concat([catalog.assign(contrast="native"),
                     catalog.assign(contrast="contrast", series_uid="ce", dose_mgy=5.0),
                     catalog.assign(contrast="native", series_uid="low", dose_mgy=1.0)], ignore_index=True)
    picked = rb.select_series(root, two).set_index("contrast")["series_uid"].to_dict()
    assert picked == {"contrast": "ce", "native": catalog["series_uid"].item()}

    enhancement = rb.contrast_enhancement(rb.SeriesTask(str(series.files[0].parent), "x", "A1", 1, 10.0, "FBP", ""),
                                          vol)
    in_plane = np.ones((1, 3, 3), bool)
    inner = ndimage.binary_erosion(body, in_plane, iterations=4)  # away from the blurred edge
    assert np.median(enhancement[inner]) == pytest.approx(60.0, abs=1.0)  # liver +60 HU
    assert enhancement.max() == pytest.approx(180.0, abs=15.0)  # the vessel tube
    assert np.abs(enhancement[~ndimage.binary_dilation(body, in_plane, iterations=3)]).max() < 1.0  # nothing outside

    settings = rb.RobustnessSettings(fractions=(0.3, 1.0), denoisers=("none",), segmenter="threshold",
                                     ladder="reprojection", photons_per_mgy=300.0, contrast_variant=True)
    seg = ThresholdSegmenter()
    task = rb.SeriesTask(str(series.files[0].parent), catalog["series_uid"].item(), "A1", 1, 10.0, "FBP",
                         str(tmp_path / "partial.csv"), rb.NATIVE)
    rows = rb.run_all([task], settings, segmenter_factory=lambda s: seg)
    assert seg.calls == 2 * 2  # phases x fractions
    assert rows["contrast"].drop_duplicates().tolist() == [rb.NATIVE, rb.SIMULATED_CONTRAST]
    full = rows[(rows["dose_fraction"] == 1.0) & (rows["label_name"] == "dense")].set_index("contrast")
    assert (full["dice"] == 1.0).all()  # each phase is scored against its own full-dose prediction
    # +60 HU lifts the 80 HU body over the 90 HU "dense" threshold: the enhanced copy was segmented
    assert full.loc[rb.SIMULATED_CONTRAST, "pred_voxels"] > 3 * full.loc[rb.NATIVE, "pred_voxels"]

    split = rb.table2_by_contrast(rows)
    assert split["contrast"].tolist() == [rb.NATIVE, rb.SIMULATED_CONTRAST] and (split["n_scans"] == 1).all()
    low = rows[(rows["dose_fraction"] == 0.3) & ((rows["ref_voxels"] > 0) | (rows["pred_voxels"] > 0))]
    for phase, expect in split.set_index("contrast").iterrows():  # independent: numpy over the raw rows
        assert expect["dice_median"] == pytest.approx(low.loc[low["contrast"] == phase, "dice"].to_numpy().mean())
    assert rb.table2(rows)["n_scans"].item() == 2  # pooled: a phase of a series counts as a scan
    agg = rb.aggregate(rows)  # the study's tables over the series as acquired, the split over both phases
    assert agg.table2["n_scans"].item() == 1 and len(agg.table2_contrast) == 2
    assert set(agg.curves["n"]) == {1}
    assert rb.table2_by_contrast(rows[rows["contrast"] == rb.NATIVE]).empty  # one phase: no split


def test_script_contrast_split_reaches_the_report(liver_tree, tmp_path, monkeypatch):
    from ctdose.atomic import write_csv
    from ctdose.csv_io import read_csv
    from ctdose.layout import ResultsLayout
    from ctdose.report_sections.segmentation import segmentation_section

    root, catalog, _, _ = liver_tree
    layout = ResultsLayout(tmp_path / "results")
    write_csv(catalog, layout.catalog)
    monkeypatch.setattr(rb, "_cached_segmenter", lambda kind, options: ThresholdSegmenter())
    argv = ["--data", str(root), "--results", str(layout.root), "--scanners", "A1", "--denoisers", "none",
            "--fractions", "0.4", "1.0", "--ladder", "reprojection", "--photons-per-mgy", "300", "--workers", "1"]
    run_script("segmentation/dose_robustness.py", argv)  # not a twin: no contrast copy by default
    assert not layout.segmentation_table2_contrast.exists()
    run_script("segmentation/dose_robustness.py", [*argv, "--contrast-variant"])
    split = read_csv(layout.segmentation_table2_contrast)
    assert split["contrast"].tolist() == [rb.UNKNOWN_PHASE, rb.SIMULATED_CONTRAST]
    assert read_csv(layout.segmentation_table2)["n_scans"].tolist() == [1]  # Table 2: the acquired series
    sec = segmentation_section(layout)
    assert not sec.warnings, sec.warnings
    table = next(df for caption, df in sec.tables if caption.startswith("Table 2 by contrast phase"))
    assert table["contrast"].tolist() == split["contrast"].tolist() and table["none"].tolist() == split["cell"].tolist()
