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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ctdose.patches import affine_from_transform
from ctdose.volume import Volume

#: Data range L of the SSIM constants and PSNR peak, in HU.
DATA_RANGE_HU = 3000.0
#: Body mask threshold on the reference volume, in HU.
BODY_THRESHOLD_HU = -500.0
#: Side of the cubic SSIM window, in voxels.
SSIM_WINDOW = 7


def body_mask(reference: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Voxels inside the phantom: reference HU > threshold (bool, same shape)."""
    return np.asarray(reference) > threshold_hu


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
    metrics = ["rmse_hu", "psnr_db", "ssim"]
    agg = per_pair.groupby(by, sort=True)[metrics].agg(["mean", "std", "count"])
    out = agg.reset_index()
    out.columns = [f"{m}_{'sd' if s == 'std' else s}" if s else m for m, s in out.columns]
    out = out.rename(columns={"rmse_hu_count": "n"}).drop(columns=["psnr_db_count", "ssim_count"])
    return out
