"""Segmentation dose robustness runner and its aggregations (Tsanda et al. 2024, JMI 11:044005).

Per input series (one acquisition at its full dose): the dose ladder (:mod:`ladder`), each level
through each denoiser (:mod:`denoise`), each result segmented (a :class:`Segmenter`), and every
prediction scored per label (:mod:`metrics`) against

* ``full_dose``: the full-dose prediction of the same segmenter on the undenoised series (the
  study's robustness: no ground truth needed; ``reference_denoiser`` = "same" compares with the
  full-dose prediction after the same denoiser instead), and
* ``ground_truth`` (twin series only): the twin's analytic label map of that placement
  (``ctdose.segmentation.builtin.twin_label_map``), labels matched by name.

Contrast (the study compares contrast-enhanced with non-contrast scans): every row says ``contrast``,
the series' phase: from a ``contrast`` column of the catalog when it has one (any labels, e.g.
"native" / "contrast"), "native" for twin series (the twin has no contrast agent), else "unknown".
``contrast_variant=True`` also runs a simulated contrast-enhanced copy of each non-contrast series
(``ctdose.twin_qc``: +60 HU liver, +180 HU vessel-like tubes, from the twin's phantom model at the
series' placement, or a liver threshold band on other data) through the same ladder, denoisers and
segmenter: the enhancement is added to every dose level, so both phases carry the very same noise
(a paired comparison; FBP is linear, only the small change of the photon counts by the agent is
neglected). Its rows say ``contrast`` = "contrast (simulated)" and are scored against the full-dose
prediction of the enhanced copy (and the same ground truth: the agent does not move organs).

Per-series rows are written atomically to a partial table with its sidecar (settings, series, ladder
method and note); a re-run with the same settings skips finished series. Rows: the series' identity
(with ``contrast``), segmenter, denoiser, dose_fraction, dose_mgy (fraction x the series' CTDIvol),
reference, then ``metrics.METRIC_COLUMNS``.

Aggregations (all from the row table):

* :func:`table2`: the study's Table 2 layout, at the lowest dose against ``full_dose``: per scan the
  mean over labels present in either map (a label absent from both is not averaged in), then over
  scans median +- MAD (median absolute deviation, unscaled) of Dice and HD95 per segmenter x denoiser;
  HD95 skips scans whose mean is NaN and says how many (``hd95_n``). A scan is one series in one
  contrast phase; :func:`aggregate` leaves the simulated contrast copies out of Table 2, Fig. 7, Fig. 5
  and the failure shares (they repeat the same acquisitions) and shows them in the contrast split only.
* :func:`table2_by_contrast`: the same, split by ``contrast``, when the rows hold two phases or more.
* :func:`dose_curves` (Fig. 7): median +- MAD per segmenter x denoiser x reference x label x dose.
* :func:`radius_bins` (Fig. 5): Dice of every (scan, label, dose < 1) against ``full_dose`` in
  logarithmic bins of the reference label's r_eff.
* :func:`failure_share`: per segmenter x denoiser x reference x label x dose, the share of scans whose
  Dice is below ``fail_dice`` (default 0.9).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from ctdose.atomic import atomic_path, write_csv
from ctdose.csv_io import read_csv
from ctdose.segmentation.denoise import get_denoiser
from ctdose.segmentation.interface import NATIVE, SIMULATED_CONTRAST, UNKNOWN_PHASE, Segmenter
from ctdose.segmentation.ladder import DOSE_FRACTIONS, dose_ladder, find_twin
from ctdose.segmentation.metrics import METRIC_COLUMNS, label_metrics

#: Identity columns of a row (before segmenter, denoiser ... and the metric columns).
SERIES_COLUMNS: tuple[str, ...] = ("series_uid", "series", "scanner", "repetition", "dose_full_mgy", "recon",
                                   "contrast")
ROW_COLUMNS: tuple[str, ...] = (*SERIES_COLUMNS, "segmenter", "denoiser", "dose_fraction", "dose_mgy",
                                "reference", "ladder_method", *METRIC_COLUMNS)
REFERENCES = ("full_dose", "ground_truth")
#: Logarithmic r_eff bin edges (mm) of Fig. 5.
RADIUS_EDGES_MM: tuple[float, ...] = (2.0, 4.0, 8.0, 12.0, 19.0, 30.0, 50.0, 80.0, 130.0, 210.0)


@dataclass(frozen=True)
class RobustnessSettings:
    """What the runner does per series (recorded in every sidecar)."""

    fractions: tuple[float, ...] = DOSE_FRACTIONS
    denoisers: tuple[str, ...] = ("none", "tv", "nlm")
    segmenter: str = "builtin"
    segmenter_options: tuple[tuple[str, Any], ...] = ()
    denoiser_options: tuple[tuple[str, Any], ...] = ()
    ladder: str = "auto"
    seed: int = 0
    reference_denoiser: str = "none"       # none | same
    ground_truth: bool = True
    photons_per_mgy: float | None = None
    contrast_variant: bool = False         # also run a simulated contrast-enhanced copy of each native series

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segmenter_options"] = dict(self.segmenter_options)
        d["denoiser_options"] = dict(self.denoiser_options)
        return d


@dataclass(frozen=True)
class SeriesTask:
    """One input series (picklable)."""

    series_dir: str
    series_uid: str
    scanner: str
    repetition: int
    dose_mgy: float
    recon: str
    partial: str                  # its partial table (CSV; sidecar and overlay .npz beside it)
    contrast: str = NATIVE        # the series' phase (see the module docstring)

    @property
    def overlay(self) -> Path:
        return Path(self.partial).with_suffix(".npz")


def select_series(data_root: str | Path, catalog: pd.DataFrame | None = None, *, scanners: Iterable[str] | None = None,
                  repetitions: int | None = 1, recon: str = "FBP") -> pd.DataFrame:
    """The input series: per (scanner, repetition) the ``recon`` series at the highest dose.

    From ``catalog`` (columns path, series_uid, scanner, repetition, dose_mgy, recon, optional contrast)
    when given, else from the twin's ``ground_truth.json`` in ``data_root``. With a ``contrast`` column
    the highest dose is taken per (scanner, repetition, contrast). ``repetitions``: the first n
    repetitions of each scanner (None: all). Columns: path, series_uid, scanner, repetition, dose_mgy,
    recon, contrast (``NATIVE`` on a twin, ``UNKNOWN_PHASE`` for a catalog without the column).
    """
    data_root = Path(data_root)
    if catalog is None:
        truth_path = data_root / "ground_truth.json"
        if not truth_path.is_file():
            raise FileNotFoundError(f"{truth_path} not found and no catalog given: run data/prepare.py on "
                                    f"{data_root} first, or point --data at a twin")
        truth = json.loads(truth_path.read_text())
        table = pd.DataFrame(truth["series"]).rename(columns={"rep": "repetition"})
        table["path"] = [str(data_root / n) for n in table["name"]]
        table["contrast"] = NATIVE
    else:
        table = catalog.copy()
        table["contrast"] = (table["contrast"].fillna(UNKNOWN_PHASE).astype(str) if "contrast" in table.columns
                             else UNKNOWN_PHASE)
    table = table[table["recon"].astype(str) == recon]
    if scanners:
        wanted = set(scanners)
        missing = wanted - set(table["scanner"].astype(str))
        if missing:
            raise ValueError(f"scanner(s) {', '.join(sorted(missing))} have no {recon} series under {data_root}")
        table = table[table["scanner"].astype(str).isin(wanted)]
    if table.empty:
        raise ValueError(f"no {recon} series to run under {data_root}")
    table = table.sort_values(["scanner", "contrast", "repetition", "dose_mgy"])
    top = table.groupby(["scanner", "repetition", "contrast"], as_index=False).tail(1)
    if repetitions is not None:
        top = top[top.groupby(["scanner", "contrast"])["repetition"].rank(method="dense") <= repetitions]
    return top[["path", "series_uid", "scanner", "repetition", "dose_mgy", "recon", "contrast"]].reset_index(drop=True)


@functools.lru_cache(maxsize=4)
def _cached_segmenter(kind: str, options_json: str) -> Segmenter:
    from ctdose.segmentation.adapters import make_segmenter

    return make_segmenter(kind, **json.loads(options_json))


def default_segmenter_factory(settings: RobustnessSettings) -> Segmenter:
    """``adapters.make_segmenter(settings.segmenter, **options)``, made once per worker process."""
    return _cached_segmenter(settings.segmenter, json.dumps(dict(settings.segmenter_options), sort_keys=True))


def _ground_truth(task: SeriesTask, ladder_volume) -> tuple[np.ndarray, dict[int, str]] | None:
    """The twin's analytic label map of the series' placement and its names, or None (not a twin)."""
    twin = find_twin(task.series_dir)
    if twin is None:
        return None
    from ctdose.segmentation.builtin import LABELS, series_pose, twin_label_map

    if np.abs(ladder_volume.direction - np.eye(3)).max() > 1e-6:
        return None
    pose = series_pose(twin[1], task.series_uid)
    labels = twin_label_map(ladder_volume.array.shape, ladder_volume.origin, ladder_volume.spacing, pose)
    return labels, dict(LABELS)


def _matched(pred_names: dict[int, str], truth: np.ndarray, truth_names: dict[int, str]
             ) -> tuple[np.ndarray, dict[int, str]]:
    """``truth`` relabelled to the segmenter's values for the names both know; those labels."""
    by_name = {name: value for value, name in truth_names.items()}
    out = np.zeros(truth.shape, dtype=np.int16)
    shared = {}
    for value, name in pred_names.items():
        if name in by_name:
            out[truth == by_name[name]] = value
            shared[value] = name
    return out, shared


def contrast_enhancement(task: SeriesTask, volume) -> np.ndarray:
    """The simulated contrast enhancement (HU, float32, the volume's (z, y, x) shape) of ``task``'s series.

    ``ctdose.twin_qc.contrast_variant`` on a zero image: liver and vessel-tube masks from the twin's
    phantom model at the series' placement (twin series), else the liver threshold band of the image.
    """
    from ctdose import twin_qc
    from ctdose.volume import Volume

    twin = find_twin(task.series_dir)
    placement = None if twin is None else twin_qc.twin_placement(twin[1], task.series_uid)
    if placement is not None:
        liver, vessels = twin_qc.twin_enhancement_masks(volume, placement)
    else:
        liver, vessels = twin_qc.band_enhancement_masks(volume)
    zero = Volume(np.zeros(volume.array.shape, np.float32), volume.origin, volume.spacing, volume.direction)
    return twin_qc.contrast_variant(zero, liver, vessels).array.astype(np.float32)


def _overlay_slice(labels: np.ndarray) -> int:
    """The axial slice with the most labelled voxels of the rarest present label (the ROIs on the twin)."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    if not len(values):
        return labels.shape[0] // 2
    rare = values[np.argmin(counts)]
    return int(np.argmax((labels == rare).sum(axis=(1, 2))))


def run_series(task: SeriesTask, settings: RobustnessSettings,
               segmenter_factory: Callable[[RobustnessSettings], Segmenter] | None = None) -> str:
    """Rows of one series (see the module docstring), written to ``task.partial``; returns its path.

    Skips the work when the partial table is current for these settings.
    """
    from ctdose.provenance import is_current, write_sidecar

    started = time.perf_counter()
    partial = Path(task.partial)
    record = {**settings.as_dict(), "series_dir": task.series_dir, "series_uid": task.series_uid}
    if is_current(partial, record, outputs=[task.overlay]):
        return str(partial)
    segmenter = (segmenter_factory or default_segmenter_factory)(settings)
    ladder = dose_ladder(task.series_dir, {*settings.fractions, 1.0}, method=settings.ladder, seed=settings.seed,
                         photons_per_mgy=settings.photons_per_mgy)
    spacing = ladder.spacing_zyx_mm
    fractions = sorted(ladder.levels)
    full = fractions[-1]
    denoisers = {name: get_denoiser(name, **dict(settings.denoiser_options)) for name in settings.denoisers}
    phases: dict[str, np.ndarray | None] = {task.contrast: None}  # phase -> enhancement added to every level
    if settings.contrast_variant and task.contrast in (NATIVE, UNKNOWN_PHASE):
        phases[SIMULATED_CONTRAST] = contrast_enhancement(task, ladder.volume)
    truth = _ground_truth(task, ladder.volume) if settings.ground_truth else None
    if truth is not None:
        truth_map, truth_labels = _matched(dict(segmenter.labels), *truth)
    base = {"series_uid": task.series_uid, "series": Path(task.series_dir).name, "scanner": task.scanner,
            "repetition": task.repetition, "dose_full_mgy": task.dose_mgy, "recon": task.recon,
            "segmenter": segmenter.name, "ladder_method": ladder.method}
    rows = []
    for phase, enhancement in phases.items():
        def level(f: float) -> np.ndarray:
            return ladder.levels[f] if enhancement is None else ladder.levels[f] + enhancement

        predictions: dict[tuple[str, float], np.ndarray] = {}
        for name, denoise in denoisers.items():
            for f in fractions:
                predictions[name, f] = np.asarray(segmenter.predict(denoise(level(f), spacing), spacing))
        if ("none", full) not in predictions:
            predictions["none", full] = np.asarray(segmenter.predict(level(full), spacing))
        for (name, f), pred in predictions.items():
            if name not in denoisers:
                continue
            ref = predictions[("none" if settings.reference_denoiser == "none" else name), full]
            common = {**base, "contrast": phase, "denoiser": name, "dose_fraction": f, "dose_mgy": f * task.dose_mgy}
            rows += [{**common, "reference": "full_dose", **r}
                     for r in label_metrics(pred, ref, spacing, segmenter.labels)]
            if truth is not None and truth_labels:
                rows += [{**common, "reference": "ground_truth", **r}
                         for r in label_metrics(pred, truth_map, spacing, truth_labels)]
        if enhancement is None:
            overlay = predictions  # the figure shows the series as acquired
    table = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    low = fractions[0]
    k = _overlay_slice(overlay["none", full])
    with atomic_path(task.overlay) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, image_full=ladder.levels[full][k], image_low=ladder.levels[low][k],
                                pred_full=overlay["none", full][k], pred_low=overlay["none", low][k],
                                slice_index=k, fraction_low=low, spacing_zyx_mm=np.asarray(spacing),
                                labels=json.dumps({int(v): n for v, n in segmenter.labels.items()}))
    write_csv(table, partial)
    write_sidecar(partial, record, outputs=[task.overlay], ladder_method=ladder.method, ladder_note=ladder.note,
                  segmenter_name=segmenter.name, seconds=round(time.perf_counter() - started, 1))
    return str(partial)


def run_all(tasks: list[SeriesTask], settings: RobustnessSettings, *, workers: int = 1,
            scheduler: str | None = None,
            segmenter_factory: Callable[[RobustnessSettings], Segmenter] | None = None) -> pd.DataFrame:
    """Run every series through :func:`ctdose.parallel.parallel_map`; the concatenated rows."""
    from ctdose.parallel import parallel_map

    func = functools.partial(run_series, settings=settings, segmenter_factory=segmenter_factory)
    paths = parallel_map(func, tasks, workers=workers, scheduler=scheduler, desc="segmentation robustness")
    tables = [read_csv(p, dtype={"series_uid": str, "scanner": str, "contrast": str}) for p in paths]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(ROW_COLUMNS))


# ------------------------------------------------------------------------------------ aggregation

def _mad(values: pd.Series) -> float:
    v = values.dropna().to_numpy(dtype=float)
    return float(np.median(np.abs(v - np.median(v)))) if len(v) else float("nan")


def per_scan(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice and HD95 over labels per scan x segmenter x denoiser x reference x dose fraction.

    Labels absent from both maps (``ref_voxels == pred_voxels == 0``) are left out of the mean;
    ``hd95_mm`` is the mean over labels with a finite HD95 (NaN when none), ``n_labels`` the labels averaged.
    """
    present = rows[(rows["ref_voxels"] > 0) | (rows["pred_voxels"] > 0)]
    if "contrast" not in present.columns:  # rows of an older run: one phase
        present = present.assign(contrast=UNKNOWN_PHASE)
    keys = ["series_uid", "scanner", "repetition", "contrast", "segmenter", "denoiser", "reference", "dose_fraction"]
    out = present.groupby(keys, as_index=False).agg(dice=("dice", "mean"), hd95_mm=("hd95_mm", "mean"),
                                                    n_labels=("label", "size"))
    return out


def table2(rows: pd.DataFrame, fraction: float | None = None, reference: str = "full_dose") -> pd.DataFrame:
    """Tsanda et al. Table 2 layout (long): per segmenter x denoiser at ``fraction`` (default: the lowest),
    median and MAD over scans of the per-scan label-mean Dice and HD95 (mm);
    ``cell`` = "Dice m ± mad / HD95 m ± mad"."""
    scans = per_scan(rows[rows["reference"] == reference])
    if scans.empty:
        return pd.DataFrame(columns=["segmenter", "denoiser", "dose_fraction", "n_scans", "dice_median", "dice_mad",
                                     "hd95_median_mm", "hd95_mad_mm", "hd95_n", "cell"])
    fraction = float(scans["dose_fraction"].min()) if fraction is None else fraction
    at = scans[np.isclose(scans["dose_fraction"], fraction)]
    order = {d: k for k, d in enumerate(rows["denoiser"].drop_duplicates())}  # the run's denoiser order
    at = at.sort_values("denoiser", key=lambda col: col.map(order), kind="stable")
    out = []
    for (seg, den), g in at.groupby(["segmenter", "denoiser"], sort=False):
        hd = g["hd95_mm"].dropna()
        d_med, d_mad = float(g["dice"].median()), _mad(g["dice"])
        h_med = float(hd.median()) if len(hd) else float("nan")
        h_mad = _mad(hd)
        out.append({"segmenter": seg, "denoiser": den, "dose_fraction": fraction, "n_scans": len(g),
                    "dice_median": d_med, "dice_mad": d_mad, "hd95_median_mm": h_med, "hd95_mad_mm": h_mad,
                    "hd95_n": len(hd), "cell": f"{d_med:.3f} ± {d_mad:.3f} / {h_med:.2f} ± {h_mad:.2f} mm"})
    return pd.DataFrame(out)


def table2_by_contrast(rows: pd.DataFrame, reference: str = "full_dose") -> pd.DataFrame:
    """:func:`table2` per ``contrast`` phase at the run's lowest dose (column ``contrast`` first), in the
    rows' order of phases; empty when the rows hold fewer than two phases."""
    if "contrast" not in rows.columns or rows["contrast"].nunique() < 2:
        return pd.DataFrame()
    fraction = float(rows["dose_fraction"].min())
    parts = [table2(g, fraction, reference).assign(contrast=phase)
             for phase, g in rows.groupby("contrast", sort=False)]
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    return out[["contrast", *[c for c in out.columns if c != "contrast"]]]


def table2_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Rows = segmenters, columns = denoisers, cells = :func:`table2`'s ``cell``."""
    if long.empty:
        return pd.DataFrame()
    wide = long.pivot(index="segmenter", columns="denoiser", values="cell")
    order = [d for d in long["denoiser"].drop_duplicates()]
    return wide[order].reset_index()


def dose_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Fig. 7 data: median / MAD / n of Dice and HD95 per segmenter x denoiser x reference x label x dose."""
    present = rows[(rows["ref_voxels"] > 0) | (rows["pred_voxels"] > 0)]
    keys = ["segmenter", "denoiser", "reference", "label_name", "dose_fraction"]
    out = present.groupby(keys).agg(dice_median=("dice", "median"), dice_mad=("dice", _mad),
                                    hd95_median_mm=("hd95_mm", "median"), hd95_mad_mm=("hd95_mm", _mad),
                                    n=("dice", "size")).reset_index()
    return out


def radius_bins(rows: pd.DataFrame, edges: Iterable[float] = RADIUS_EDGES_MM,
                reference: str = "full_dose") -> pd.DataFrame:
    """Fig. 5 data: Dice of every (scan, label, dose < full) in log bins of r_eff (mm) of the reference label,
    per segmenter x denoiser x bin: median, MAD, n (labels with an empty reference are left out)."""
    edges = np.asarray(list(edges), dtype=float)
    sel = rows[(rows["reference"] == reference) & (rows["ref_voxels"] > 0)
               & (rows["dose_fraction"] < rows["dose_fraction"].max())].copy()
    sel["bin"] = pd.cut(sel["r_eff_mm"], edges, right=False)
    out = []
    for (seg, den, b), g in sel.groupby(["segmenter", "denoiser", "bin"], observed=True):
        out.append({"segmenter": seg, "denoiser": den, "r_eff_lo_mm": b.left, "r_eff_hi_mm": b.right,
                    "r_eff_center_mm": float(np.sqrt(b.left * b.right)), "dice_median": float(g["dice"].median()),
                    "dice_mad": _mad(g["dice"]), "n": len(g)})
    return pd.DataFrame(out, columns=["segmenter", "denoiser", "r_eff_lo_mm", "r_eff_hi_mm", "r_eff_center_mm",
                                      "dice_median", "dice_mad", "n"])


def failure_share(rows: pd.DataFrame, fail_dice: float = 0.9) -> pd.DataFrame:
    """Share of scans whose Dice of a label is below ``fail_dice``, per segmenter x denoiser x reference x
    label x dose (labels absent from both maps are not counted)."""
    present = rows[(rows["ref_voxels"] > 0) | (rows["pred_voxels"] > 0)]
    keys = ["segmenter", "denoiser", "reference", "label_name", "dose_fraction"]
    out = present.groupby(keys).agg(n_scans=("dice", "size"),
                                    n_failed=("dice", lambda d: int((d < fail_dice).sum()))).reset_index()
    out["share_failed"] = out["n_failed"] / out["n_scans"]
    out["fail_dice"] = fail_dice
    return out


# ------------------------------------------------------------------------------------------ figures

def fig7_dose_curves(curves: pd.DataFrame, stem: str | Path, reference: str = "full_dose",
                     denoisers: Iterable[str] | None = None) -> list[Path]:
    """Dice and HD95 vs dose per label (one panel pair per denoiser, in ``denoisers`` order), median +- MAD."""
    import matplotlib.pyplot as plt

    from ctdose.plots import save_figure

    sel = curves[curves["reference"] == reference]
    present = list(sel["denoiser"].drop_duplicates())
    denoisers = [d for d in (denoisers or present) if d in present] or ["none"]
    fig, axes = plt.subplots(2, len(denoisers), figsize=(4.2 * len(denoisers), 6.4), squeeze=False, sharey="row")
    for j, den in enumerate(denoisers):
        part = sel[sel["denoiser"] == den]
        for label, g in part.groupby("label_name"):
            g = g.sort_values("dose_fraction")
            x = 100 * g["dose_fraction"]
            axes[0, j].errorbar(x, g["dice_median"], yerr=g["dice_mad"], marker="o", ms=3, capsize=2, label=label)
            axes[1, j].errorbar(x, g["hd95_median_mm"], yerr=g["hd95_mad_mm"], marker="o", ms=3, capsize=2)
        axes[0, j].set_title(f"denoising: {den}")
        axes[1, j].set_xlabel("dose (% of acquired)")
    axes[0, 0].set_ylabel("Dice (median ± MAD)")
    axes[1, 0].set_ylabel("HD95 mm (median ± MAD)")
    if len(sel):
        axes[0, -1].legend(fontsize=7, loc="lower right")
    seg = ", ".join(sel["segmenter"].drop_duplicates()) if len(sel) else "?"
    fig.suptitle(f"Segmentation vs dose per label against the {reference.replace('_', '-')} prediction ({seg})")
    return save_figure(fig, stem)


def fig5_radius(bins: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Dice (median +- MAD) vs r_eff (log axis) per denoiser."""
    import matplotlib.pyplot as plt

    from ctdose.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for den, g in bins.groupby("denoiser", sort=False):
        ax.errorbar(g["r_eff_center_mm"], g["dice_median"], yerr=g["dice_mad"], marker="o", capsize=2, label=den)
    ax.set_xscale("log")
    ax.axvline(19.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("effective radius r_eff = (3V/4π)^(1/3) of the full-dose label (mm, log bins)")
    ax.set_ylabel("Dice vs full dose (median ± MAD)")
    ax.set_title("Dice by label size, all reduced doses")
    ax.legend(fontsize=8)
    return save_figure(fig, stem)


def overlay_figure(npz_path: str | Path, stem: str | Path, title: str = "") -> list[Path]:
    """Full-dose vs lowest-dose image and prediction, and where the two predictions differ."""
    import matplotlib.pyplot as plt

    from ctdose.plots import save_figure, window_to_grey

    data = np.load(npz_path)
    pf, pl = data["pred_full"], data["pred_low"]
    low = float(data["fraction_low"])
    sz, sy, sx = (float(v) for v in data["spacing_zyx_mm"])
    extent = (0, pf.shape[1] * sx, pf.shape[0] * sy, 0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    cmap = plt.get_cmap("tab10")
    for ax, image, pred, what in ((axes[0], data["image_full"], pf, "100 % dose"),
                                  (axes[1], data["image_low"], pl, f"{100 * low:.0f} % dose")):
        ax.imshow(window_to_grey(image), cmap="gray", extent=extent)
        ax.imshow(np.ma.masked_equal(pred, 0), cmap=cmap, vmin=0, vmax=10, alpha=0.35, extent=extent,
                  interpolation="nearest")
        ax.set_title(f"{what}: image and prediction")
    diff = (pf != pl)
    axes[2].imshow(window_to_grey(data["image_full"]), cmap="gray", extent=extent)
    axes[2].imshow(np.ma.masked_equal(diff.astype(np.uint8), 0), cmap="autumn", alpha=0.9, extent=extent,
                   interpolation="nearest")
    axes[2].set_title(f"labels differ: {int(diff.sum())} pixels")
    for ax in axes:
        ax.set_xlabel("x (mm)")
    axes[0].set_ylabel("y (mm)")
    fig.suptitle(title or f"slice {int(data['slice_index'])}: full vs low dose, no denoising")
    return save_figure(fig, stem)


@dataclass
class Aggregates:
    """Every aggregated table of one run."""

    table2: pd.DataFrame
    table2_wide: pd.DataFrame
    curves: pd.DataFrame
    radius: pd.DataFrame
    failures: pd.DataFrame
    table2_contrast: pd.DataFrame = field(default_factory=pd.DataFrame)
    extra: dict[str, Any] = field(default_factory=dict)


def aggregate(rows: pd.DataFrame, fail_dice: float = 0.9) -> Aggregates:
    """All aggregations of :mod:`robustness` from the row table: Table 2, Fig. 7, Fig. 5 and the failure
    shares over the series as acquired (simulated contrast copies left out: they are the same
    acquisitions), the contrast split over every phase."""
    acquired = rows[rows["contrast"] != SIMULATED_CONTRAST] if "contrast" in rows.columns else rows
    long = table2(acquired)
    return Aggregates(long, table2_wide(long), dose_curves(acquired), radius_bins(acquired),
                      failure_share(acquired, fail_dice), table2_by_contrast(rows))
