"""Image similarity between registered CT volumes: RMSE, PSNR and 3-D SSIM inside the phantom.

All metrics take two arrays on the same grid, shape (z, y, x) in HU, and a boolean mask of the same
shape (the body: reference HU > -500, so air is excluded).

* RMSE = sqrt(mean((a - b)^2)) over the mask, in HU.
* PSNR = 20 log10(peak / RMSE) dB with a fixed peak of 3000 HU (the SSIM data range L), so values
  are comparable across scanners (not the image's own maximum).
* SSIM: local means, variances and covariance over a cubic uniform window (7 voxels by default),
  sample (N - 1) normalisation, C1 = (0.01 L)^2 = 900 HU^2 and C2 = (0.03 L)^2 = 8100 HU^2 with
  L = 3000 HU; the SSIM map is averaged over the mask voxels at least half a window from the border.
  This matches ``skimage.metrics.structural_similarity(win_size=7, data_range=3000,
  gaussian_weights=False, use_sample_covariance=True)`` voxel for voxel.

Registration: :func:`resample_into` brings a series into another series' grid using the two
rigid transforms reference -> series of the registration step.

The analysis step: :func:`metric_pairs` chooses which series is compared with which,
:func:`pair_jobs` checks both transforms of every pair against their sidecars, :func:`measure_pairs`
measures each pair once (:func:`measure_pair`) and caches it as a one-row CSV whose sidecar records
the checksums of both transforms, so a pair measured before a re-registration is measured again, and
:func:`metric_tables` / :func:`figure_plan` give the Table 6 and Tables 3-5 layouts and their figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ctdose.atomic import write_csv
from ctdose.csv_io import read_csv
from ctdose.layout import ResultsLayout
from ctdose.parallel import parallel_map
from ctdose.patches import affine_from_transform
from ctdose.provenance import is_current, verify, write_sidecar
from ctdose.volume import BODY_THRESHOLD_HU, Volume, body_mask

#: Data range L of the SSIM constants and PSNR peak, in HU.
DATA_RANGE_HU = 3000.0
#: Side of the cubic SSIM window, in voxels.
SSIM_WINDOW = 7
#: How every pair is measured (part of each cached pair's settings: a change re-measures every pair).
METRIC_SETTINGS: dict[str, Any] = {
    "mask": f"reference HU > {BODY_THRESHOLD_HU:g}", "ssim_window": SSIM_WINDOW,
    "data_range_hu": DATA_RANGE_HU, "c1": (0.01 * DATA_RANGE_HU) ** 2, "c2": (0.03 * DATA_RANGE_HU) ** 2,
    "psnr_peak_hu": DATA_RANGE_HU,
    "resampling": "linear, series onto reference grid",
}
#: Metric columns of a measured pair.
METRICS: tuple[str, ...] = ("rmse_hu", "psnr_db", "ssim")


def _check(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mask = np.ones(a.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != a.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {a.shape}")
    if not mask.any():
        raise ValueError("mask is empty: no voxel to compare")
    return a, b, mask


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square difference over the mask, in HU."""
    a, b, mask = _check(a, b, mask)
    return float(np.sqrt(np.mean((a[mask] - b[mask]) ** 2)))


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, peak: float = DATA_RANGE_HU) -> float:
    """Peak signal-to-noise ratio in dB with a fixed peak (3000 HU); ``inf`` for identical images."""
    err = rmse(a, b, mask)
    return float("inf") if err == 0 else float(20.0 * np.log10(peak / err))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE_HU,
             win_size: int = SSIM_WINDOW, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Local SSIM for every voxel (same shape as the inputs), uniform ``win_size``^ndim window."""
    a, b, _ = _check(a, b, None)
    if win_size % 2 != 1 or min(a.shape) < win_size:
        raise ValueError(f"SSIM window {win_size} must be odd and fit in the image of shape {a.shape}")
    n = win_size ** a.ndim
    cov_norm = n / (n - 1.0)  # sample covariance, as scikit-image's default

    def mean(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, size=win_size)

    ux, uy = mean(a), mean(b)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = DATA_RANGE_HU,
         win_size: int = SSIM_WINDOW, chunk: int = 16) -> float:
    """Mean SSIM over mask voxels at least ``win_size // 2`` voxels from every border.

    Computed in slabs of ``chunk`` slices (plus half a window either side, so every counted voxel
    sees its full window): memory stays at a few slabs even for 512 x 512 x 300 volumes, and the
    result equals the whole-volume computation.
    """
    a, b, mask = _check(a, b, mask)
    pad = win_size // 2
    if min(a.shape) < win_size:
        raise ValueError(f"SSIM window {win_size} must fit in the image of shape {a.shape}")
    inner = np.zeros_like(mask)
    inner[tuple(slice(pad, s - pad) for s in mask.shape)] = True
    keep = mask & inner
    if not keep.any():
        raise ValueError("no mask voxel lies a half window away from the border")
    total, count = 0.0, 0
    nz = a.shape[0]
    for z0 in range(pad, nz - pad, chunk):
        z1 = min(z0 + chunk, nz - pad)
        sel = keep[z0:z1]
        if not sel.any():
            continue
        lo, hi = z0 - pad, z1 + pad
        smap = ssim_map(a[lo:hi], b[lo:hi], data_range, win_size)[pad:pad + (z1 - z0)]
        total += float(smap[sel].sum())
        count += int(sel.sum())
    return total / count


def compare(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """RMSE (HU), PSNR (dB) and SSIM of ``a`` against ``b`` inside ``mask``."""
    return {"rmse_hu": rmse(a, b, mask), "psnr_db": psnr(a, b, mask), "ssim": ssim(a, b, mask)}


def resample_into(moving: Volume, moving_transform: sitk.Transform | None, target: Volume,
                  target_transform: sitk.Transform | None, fill_hu: float = -1024.0) -> np.ndarray:
    """``moving`` resampled (linear) on ``target``'s grid, array (z, y, x) HU.

    Both transforms map reference points to their own series' points (the registration step's
    convention), so a target point p goes to the reference by the inverse of ``target_transform``
    and on to ``moving`` by ``moving_transform``. Points outside ``moving`` get ``fill_hu``.
    """
    a_m, b_m = affine_from_transform(moving_transform)
    a_t, b_t = affine_from_transform(target_transform)
    a_t_inv = np.linalg.inv(a_t)
    matrix = a_m @ a_t_inv
    offset = b_m - matrix @ b_t
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(matrix.ravel()))
    tx.SetTranslation(tuple(offset))
    out = sitk.Resample(moving.to_sitk(), target.to_sitk(), tx, sitk.sitkLinear, fill_hu, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _match_repetition(candidates: pd.DataFrame, repetition: int) -> pd.Series | None:
    """The candidate row with the same repetition, else the lowest repetition; None if no candidate."""
    if candidates.empty:
        return None
    same = candidates[candidates["repetition"] == repetition]
    return (same if not same.empty else candidates.sort_values("repetition")).iloc[0]


def metric_pairs(catalog: pd.DataFrame, reference_dose: float = 14.0, scanner_dose: float = 10.0,
                 reference_scanner: str | None = None) -> pd.DataFrame:
    """Which series is compared with which (one row per pair).

    ``vs_dose``: every series against its scanner's ``reference_dose`` series of the same recon and
    the same repetition (lowest repetition when that one is absent); the reference itself is skipped.
    ``vs_scanner``: every ``scanner_dose`` series of another scanner against ``reference_scanner``'s
    series at that dose, same recon, same repetition if present. ``reference_scanner`` defaults to
    the first scanner in sorted order. Columns: comparison, series_uid, reference_uid, scanner,
    reference_scanner, dose_mgy, recon, repetition.
    """
    cat = catalog.copy()
    cat["dose_mgy"] = cat["dose_mgy"].astype(float)
    rows = []
    for _, s in cat.iterrows():
        pool = cat[(cat["scanner"] == s["scanner"]) & (cat["recon"] == s["recon"])
                   & (cat["dose_mgy"] == reference_dose)]
        ref = _match_repetition(pool, s["repetition"])
        if ref is not None and ref["series_uid"] != s["series_uid"]:
            rows.append(("vs_dose", s, ref))
    scanners = sorted(cat["scanner"].unique())
    ref_scanner = reference_scanner or (scanners[0] if scanners else None)
    if ref_scanner is not None and ref_scanner not in scanners:
        raise ValueError(f"reference scanner {ref_scanner} not in the catalog ({', '.join(scanners)})")
    for _, s in cat[(cat["dose_mgy"] == scanner_dose) & (cat["scanner"] != ref_scanner)].iterrows():
        pool = cat[(cat["scanner"] == ref_scanner) & (cat["recon"] == s["recon"]) & (cat["dose_mgy"] == scanner_dose)]
        ref = _match_repetition(pool, s["repetition"])
        if ref is not None:
            rows.append(("vs_scanner", s, ref))
    columns = ["comparison", "series_uid", "reference_uid", "scanner", "reference_scanner", "dose_mgy",
               "recon", "repetition"]
    return pd.DataFrame([(kind, s["series_uid"], r["series_uid"], s["scanner"], r["scanner"], s["dose_mgy"],
                          s["recon"], s["repetition"]) for kind, s, r in rows], columns=columns)


def summarize_metrics(per_pair: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sd (over repetitions) and count of rmse_hu, psnr_db, ssim per group ``by``."""
    agg = per_pair.groupby(by, sort=True)[list(METRICS)].agg(["mean", "std", "count"])
    out = agg.reset_index()
    out.columns = [f"{m}_{'sd' if s == 'std' else s}" if s else m for m, s in out.columns]
    out = out.rename(columns={"rmse_hu_count": "n"}).drop(columns=["psnr_db_count", "ssim_count"])
    return out


# --------------------------------------------------------------------------- the analysis step


@dataclass(frozen=True)
class PairJob:
    """One pair to measure (plain, picklable fields): a row of :func:`metric_pairs`, the two series'
    folders, their transforms (reference -> series) and the pair's cache (a one-row CSV + sidecar)."""

    pair: dict[str, Any]
    series_path: str
    reference_path: str
    transform: str
    reference_transform: str
    cache: str

    @property
    def inputs(self) -> list[str]:
        """Files the pair's result depends on, checksummed in its cache sidecar: both transforms."""
        return [self.transform, self.reference_transform]

    @property
    def settings(self) -> dict[str, Any]:
        return {**METRIC_SETTINGS, **self.pair}


def pair_jobs(catalog: pd.DataFrame, pairs: pd.DataFrame, layout: ResultsLayout) -> list[PairJob]:
    """One job per row of ``pairs``; each transform is checked against its sidecar first
    (:class:`ctdose.provenance.StaleInputError` naming a damaged or half-written one)."""
    paths = catalog.set_index("series_uid")["path"].astype(str).to_dict()
    remedy = layout.command("prepare")
    checked: set[str] = set()
    jobs = []
    for pair in pairs.to_dict("records"):
        uid, ref = str(pair["series_uid"]), str(pair["reference_uid"])
        for u in {uid, ref} - checked:
            verify(layout.transform(u), remedy)
            checked.add(u)
        jobs.append(PairJob(pair, paths[uid], paths[ref], str(layout.transform(uid)),
                            str(layout.transform(ref)),
                            str(layout.image_metrics_partial(pair["comparison"], uid, ref))))
    return jobs


def measure_pair(job: PairJob) -> dict[str, Any]:
    """Read both series, resample the series onto the reference grid, compare inside the reference's body.

    Returns the pair's fields plus rmse_hu, psnr_db, ssim and n_voxels (the mask's size).
    """
    from ctdose.dicom_io import read_ct_series, read_reference_series
    from ctdose.transform_io import load_transform

    series = read_ct_series(job.series_path, job.pair["series_uid"])
    reference = read_reference_series(job.reference_path, job.pair["reference_uid"])
    moved = resample_into(series, load_transform(job.transform), reference,
                          load_transform(job.reference_transform))
    mask = body_mask(reference.array)
    return {**job.pair, **compare(moved, reference.array, mask), "n_voxels": int(mask.sum())}


#: Column types of a cached pair (UIDs and codes stay text).
_PAIR_DTYPES = {"series_uid": str, "reference_uid": str, "scanner": str, "reference_scanner": str,
                "recon": str, "comparison": str}


def cached_pair(job: PairJob) -> dict[str, Any] | None:
    """The pair's cached result when it was measured with these settings from these transforms, else None."""
    if not is_current(job.cache, job.settings, job.inputs):
        return None
    return read_csv(job.cache, dtype=_PAIR_DTYPES).iloc[0].to_dict()


def measure_and_cache(job: PairJob) -> dict[str, Any]:
    """:func:`measure_pair`, then its row written as the pair's one-row CSV and sidecar (atomically)."""
    row = measure_pair(job)
    write_csv(pd.DataFrame([row]), job.cache)
    write_sidecar(job.cache, job.settings, inputs=job.inputs, n_rows=1)
    return row


def measure_pairs(jobs: Sequence[PairJob], workers: int = 1,
                  scheduler: str | None = None) -> tuple[pd.DataFrame, int]:
    """Every pair's row (cached ones read back, the others measured, in parallel) and the number measured.

    Rows sorted by comparison, scanner, recon, dose, repetition.
    """
    rows, todo = [], []
    for job in jobs:
        cached = cached_pair(job)
        if cached is None:
            todo.append(job)
        else:
            rows.append(cached)
    rows += parallel_map(measure_and_cache, todo, workers=workers, scheduler=scheduler, desc="image metrics",
                         unit="pair")
    per_pair = pd.DataFrame(rows).sort_values(["comparison", "scanner", "recon", "dose_mgy", "repetition"])
    return per_pair.reset_index(drop=True), len(todo)


def metric_tables(per_pair: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(vs_dose by scanner x recon x dose: Table 6 layout; vs_scanner by scanner x reference scanner x recon
    x dose: Tables 3-5 layout, empty when there is no such pair), mean / sd over repetitions."""
    vs_dose = per_pair[per_pair["comparison"] == "vs_dose"]
    by_dose = summarize_metrics(vs_dose, ["scanner", "recon", "dose_mgy"])
    vs_scan = per_pair[per_pair["comparison"] == "vs_scanner"]
    by_scanner = (summarize_metrics(vs_scan, ["scanner", "reference_scanner", "recon", "dose_mgy"])
                  if not vs_scan.empty else pd.DataFrame())
    return by_dose, by_scanner


@dataclass(frozen=True)
class MetricFigure:
    """One bar chart: ``name`` (its stem under analysis/image_metrics), the comparison, metric and recon
    (None: all recons side by side)."""

    name: str
    comparison: str
    metric: str
    recon: str | None


def figure_plan(pairs: pd.DataFrame) -> list[MetricFigure]:
    """The figures of these pairs: per metric, one vs_dose chart per reconstruction, one vs_scanner chart."""
    plan = []
    vs_dose_recons = sorted(pairs.loc[pairs["comparison"] == "vs_dose", "recon"].astype(str).unique())
    has_scanner = bool((pairs["comparison"] == "vs_scanner").any())
    for metric in ("ssim", "rmse_hu", "psnr_db"):
        plan += [MetricFigure(f"vs_dose_{metric}_{recon}", "vs_dose", metric, recon)
                 for recon in vs_dose_recons]
        if has_scanner:
            plan.append(MetricFigure(f"vs_scanner_{metric}", "vs_scanner", metric, None))
    return plan
