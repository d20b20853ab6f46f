"""Image similarity between registered CT series, as the dataset paper's code computed it.

The metrics (dataset paper, its public code; MONAI's ``PSNRMetric`` / ``SSIMMetric``):

* both volumes are clipped to [-1000, 2000] HU first (:data:`CLIP_HU`);
* RMSE = sqrt(mean((a - b)^2)) over the counted voxels, in HU;
* PSNR = 20 log10(2000 / RMSE) dB: MONAI ``PSNRMetric(max_val=2000)`` (peak = the clip's top);
* SSIM: 3-D, separable Gaussian window of 11 voxels, sigma 1.5 (normalised samples, as MONAI's
  ``_gaussian_kernel``), population (co)variances, data range L = 3000 HU, so C1 = (0.01 L)^2 = 900
  and C2 = (0.03 L)^2 = 8100 HU^2; the SSIM map exists where the whole window lies inside the volume
  ("valid" convolution, 5 voxels from every border) and is averaged there, as MONAI's
  ``SSIMMetric(spatial_dims=3, data_range=3000, win_size=11, kernel_sigma=1.5)``.

Which voxels count (:class:`MetricSettings`, written in every output's sidecar):

* ``region``: ``"crop"`` = the paper code's unmasked bounding box of the phantom (reference series'
  voxels above -500 HU), every voxel in it; ``"phantom"`` = only voxels inside the phantom (same
  threshold) within that box. SSIM is averaged over window centers in the region.
* ``shrink``: bin-shrink by this factor in each axis (mean of f^3 blocks, remainder dropped, as
  ``SimpleITK.BinShrink``) after cropping and clipping, before the metrics; the paper's Tables 3-5
  use 4, its Table 6 none.
* coverage: a voxel of the reference grid counts only when the other series covers it (no voxel is
  filled in and compared as air); SSIM centers need their whole window covered. The share of the
  region left out is reported per pair (``uncovered_fraction``).
* a same-scan pair (two reconstructions of one acquisition, or both series with the same transform,
  e.g. the identity) is compared voxel for voxel without resampling when the two grids are equal
  (physical identity otherwise): interpolation through two estimated transforms would smooth noise.

Pairs (:func:`dose_pairs`, :func:`scanner_pairs`), as the paper's code chose them:

* ``vs_dose`` (Table 6): per scanner and dose, the series at that dose and those at 14 mGy are each
  shuffled (fixed seed, one stream per cell) and the i-th is paired with the i-th, up to 5 pairs;
  ``recon_pairing="any"`` pools reconstructions in one cell (the paper), ``"same"`` makes a cell
  per reconstruction and pairs only equal reconstructions.
* ``vs_scanner`` (Tables 3-5): every unordered scanner pair at 10 mGy the same way (scanner_a after
  scanner_b in sorted order; scanner_b's series is the grid the other is resampled onto); the
  diagonal pairs repeated scans (different repetitions) of one scanner.

The analysis step: :func:`pair_jobs` checks both transforms of every pair against their sidecars,
:func:`measure_pairs` measures each pair once (:func:`measure_pair`) and caches it as a one-row CSV
whose sidecar records the settings and the checksums of both transforms, so a pair measured before a
re-registration or with other settings is measured again; :func:`metric_tables` gives the Table 6
and Tables 3-5 layouts, :func:`scanner_matrix` the 13 x 13 matrix of one metric, and
:func:`figure_plan` their figures.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
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

#: Both volumes are clipped to this range before any metric, HU (the paper's code).
CLIP_HU = (-1000.0, 2000.0)
#: PSNR peak, HU: MONAI ``PSNRMetric(max_val=2000)``.
PSNR_PEAK_HU = 2000.0
#: SSIM data range L, HU: C1 = (0.01 L)^2 = 900, C2 = (0.03 L)^2 = 8100 HU^2.
DATA_RANGE_HU = 3000.0
#: SSIM Gaussian window: side in voxels and sigma in voxels (MONAI's defaults, the paper's).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: How every pair is measured (part of each cached pair's settings: a change re-measures every pair).
METRIC_CONSTANTS: dict[str, Any] = {
    "clip_hu": list(CLIP_HU), "psnr_peak_hu": PSNR_PEAK_HU, "data_range_hu": DATA_RANGE_HU,
    "ssim_window": SSIM_WINDOW, "ssim_sigma": SSIM_SIGMA, "c1": (0.01 * DATA_RANGE_HU) ** 2,
    "c2": (0.03 * DATA_RANGE_HU) ** 2, "phantom_threshold_hu": BODY_THRESHOLD_HU,
    "coverage": "only voxels covered by both series; SSIM centers with their whole window covered",
    "resampling": "linear, series onto the reference series' grid; none for a same-scan pair on one grid",
}
#: Metric columns of a measured pair.
METRICS: tuple[str, ...] = ("rmse_hu", "psnr_db", "ssim")
#: ``region`` values: the paper code's unmasked bounding-box crop, or inside the phantom only.
REGIONS: tuple[str, ...] = ("crop", "phantom")
#: ``recon_pairing`` values: reconstructions pooled in one cell (the paper), or a cell per reconstruction.
RECON_PAIRINGS: tuple[str, ...] = ("any", "same")


@dataclass(frozen=True)
class MetricSettings:
    """What is compared with what, and over which voxels (all written in the outputs' sidecars).

    ``region``: one of :data:`REGIONS`; ``recon_pairing``: one of :data:`RECON_PAIRINGS`;
    ``max_pairs``: pairs per cell (5); ``seed``: of the per-cell shuffles; ``reference_dose`` /
    ``scanner_dose``: mGy of Table 6's reference and of Tables 3-5; ``dose_shrink`` /
    ``scanner_shrink``: bin-shrink factor of each comparison (1 = none; the paper: 1 and 4).
    """

    region: str = "crop"
    recon_pairing: str = "any"
    max_pairs: int = 5
    seed: int = 0
    reference_dose: float = 14.0
    scanner_dose: float = 10.0
    dose_shrink: int = 1
    scanner_shrink: int = 4

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"region {self.region!r} is not one of {', '.join(REGIONS)}")
        if self.recon_pairing not in RECON_PAIRINGS:
            raise ValueError(f"recon pairing {self.recon_pairing!r} is not one of {', '.join(RECON_PAIRINGS)}")
        for name in ("max_pairs", "dose_shrink", "scanner_shrink"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def shrink(self, comparison: str) -> int:
        """The bin-shrink factor of ``comparison`` (``vs_dose`` or ``vs_scanner``)."""
        return int(self.dose_shrink if comparison == "vs_dose" else self.scanner_shrink)

    def as_dict(self) -> dict[str, Any]:
        """These settings and the metric constants, as recorded in the sidecars."""
        return {**asdict(self), **METRIC_CONSTANTS}


# --------------------------------------------------------------------------- the metrics


def clip_hu(array: np.ndarray) -> np.ndarray:
    """``array`` clipped to :data:`CLIP_HU`, float64 (same shape)."""
    return np.clip(np.asarray(array, dtype=np.float64), *CLIP_HU)


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    """View (z', f, y', f, x', f) of ``array`` (z, y, x) cut to a multiple of ``factor`` per axis."""
    if any(s < factor for s in array.shape):
        raise ValueError(f"cannot bin-shrink a volume of shape {array.shape} by {factor}")
    cut = array[tuple(slice(0, s - s % factor) for s in array.shape)]
    z, y, x = (s // factor for s in cut.shape)
    return cut.reshape(z, factor, y, factor, x, factor)


def bin_shrink(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor``^3 block (the remainder along each axis dropped), as ``SimpleITK.BinShrink``."""
    return array if factor == 1 else _blocks(np.asarray(array, dtype=np.float64), factor).mean(axis=(1, 3, 5))


def bin_shrink_all(mask: np.ndarray, factor: int) -> np.ndarray:
    """True where every voxel of the ``factor``^3 block is True (e.g. covered)."""
    return mask if factor == 1 else _blocks(np.asarray(mask, dtype=bool), factor).all(axis=(1, 3, 5))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D Gaussian weights at offsets -(size-1)/2 .. (size-1)/2, normalised to sum 1 (MONAI's kernel)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (offsets / sigma) ** 2)
    return w / w.sum()


def _window_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable Gaussian mean of ``x`` on its valid part (shape - (len(w) - 1) per axis).

    Each axis is cropped to its valid part right after its pass, so the later passes filter less.
    """
    pad = len(w) // 2
    for axis in range(x.ndim):
        x = ndimage.correlate1d(x, w, axis=axis, mode="constant")
        x = x[(slice(None),) * axis + (slice(pad, x.shape[axis] - pad),)]
    return x


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE_HU, win_size: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA, k1: float = 0.01, k2: float = 0.03,
             b_means: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """SSIM at every window center whose whole window lies inside (shape - (win_size - 1) per axis).

    Population (co)variances under the Gaussian window, as MONAI's ``compute_ssim_and_cs``.
    ``b_means``: ``b``'s window means of b and b * b (:func:`window_means`) when already computed (a
    reference compared with several series): the same numbers, not computed again.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if min(a.shape) < win_size:
        raise ValueError(f"the SSIM window ({win_size} voxels) does not fit in a volume of shape {a.shape}; "
                         "use a smaller bin-shrink factor (--scanner-shrink / --dose-shrink)")
    w = gaussian_window(win_size, sigma)
    uy, byy = b_means if b_means is not None else window_means(b, win_size, sigma)
    ux = _window_mean(a, w)
    vx = _window_mean(a * a, w) - ux * ux
    vy = byy - uy * uy
    vxy = _window_mean(a * b, w) - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def window_means(b: np.ndarray, win_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian window means of ``b`` and of ``b * b`` on the valid part (shape - (win_size - 1) per axis),
    as :func:`ssim_map` computes them for its second image."""
    b = np.asarray(b, dtype=np.float64)
    w = gaussian_window(win_size, sigma)
    return _window_mean(b, w), _window_mean(b * b, w)


def ssim(a: np.ndarray, b: np.ndarray, centers: np.ndarray | None = None, chunk: int = 16,
         b_cache: dict | None = None) -> float:
    """Mean SSIM over the window centers (boolean, shape of ``a``) whose window lies inside the volume.

    Without ``centers``: every such center (MONAI's ``SSIMMetric``). Computed in slabs of ``chunk``
    slices plus half a window either side, so memory stays at a few slabs of a 512 x 512 volume.
    ``b_cache``: a dict kept with ``b`` (one reference compared with several series): each slab's
    window means of ``b`` are stored there and reused (the same numbers; 2 of the 5 window means).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if min(a.shape) < SSIM_WINDOW:
        ssim_map(a, b)  # raises the one-line error
    pad = SSIM_WINDOW // 2
    keep = np.zeros(a.shape, bool)
    keep[tuple(slice(pad, s - pad) for s in a.shape)] = True
    if centers is not None:
        keep &= np.asarray(centers, dtype=bool)
    if not keep.any():
        raise ValueError(f"no SSIM window center to average in the compared volume of shape {a.shape}")
    total, count = 0.0, 0
    for z0 in range(pad, a.shape[0] - pad, chunk):
        z1 = min(z0 + chunk, a.shape[0] - pad)
        sel = keep[z0:z1, pad:a.shape[1] - pad, pad:a.shape[2] - pad]
        if sel.any():
            b_means = None
            if b_cache is not None:
                key = (z0, z1, chunk)
                if key not in b_cache:
                    b_cache[key] = window_means(b[z0 - pad:z1 + pad])
                b_means = b_cache[key]
            smap = ssim_map(a[z0 - pad:z1 + pad], b[z0 - pad:z1 + pad], b_means=b_means)
            total += float(smap[sel].sum())
            count += int(sel.sum())
    return total / count


def rmse(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Root-mean-square difference over ``region`` (boolean, shape of ``a``; None = all), in HU."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if region is not None:
        diff = diff[np.asarray(region, dtype=bool)]
    if diff.size == 0:
        raise ValueError("no voxel to compare (empty region)")
    return float(np.sqrt(np.mean(diff ** 2)))


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None, peak: float = PSNR_PEAK_HU) -> float:
    """20 log10(peak / RMSE) dB (MONAI's ``PSNRMetric(max_val=peak)``); ``inf`` for identical images."""
    return psnr_from_rmse(rmse(a, b, region), peak)


def psnr_from_rmse(err: float, peak: float = PSNR_PEAK_HU) -> float:
    """20 log10(peak / err) dB for an RMSE ``err`` (HU); ``inf`` when it is 0."""
    return float("inf") if err == 0 else float(20.0 * np.log10(peak / err))


# --------------------------------------------------------------------------- one pair of volumes


def resample_into(moving: Volume, moving_transform: sitk.Transform | None, target: Volume,
                  target_transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` resampled (linear) on ``target``'s grid, and where it covers that grid.

    Both transforms map reference points to their own series' points (the registration step's
    convention), so a target point p goes to the reference by the inverse of ``target_transform``
    and on to ``moving`` by ``moving_transform``. Returns (array (z, y, x) float32 HU, boolean
    covered of the same shape); uncovered voxels hold -1000 HU and must not be compared.
    """
    a_m, b_m = affine_from_transform(moving_transform)
    a_t, b_t = affine_from_transform(target_transform)
    matrix = a_m @ np.linalg.inv(a_t)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(matrix.ravel()))
    tx.SetTranslation(tuple(b_m - matrix @ b_t))
    grid = target.to_sitk()
    out = sitk.Resample(moving.to_sitk(), grid, tx, sitk.sitkLinear, CLIP_HU[0], sitk.sitkFloat32)
    ones = sitk.Image(moving.to_sitk().GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving.to_sitk())
    covered = sitk.Resample(ones, grid, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(covered).astype(bool)


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-4) -> bool:
    """True when both volumes have the same shape, origin, spacing and direction (within ``tol_mm``)."""
    return (a.array.shape == b.array.shape and np.allclose(a.origin, b.origin, atol=tol_mm)
            and np.allclose(a.spacing, b.spacing, atol=tol_mm) and np.allclose(a.direction, b.direction, atol=1e-6))


def same_transform(t1: sitk.Transform | None, t2: sitk.Transform | None, tol: float = 1e-6) -> bool:
    """True when both transforms are the same affine map (matrix within ``tol``, offset within ``tol`` mm)."""
    (a1, b1), (a2, b2) = affine_from_transform(t1), affine_from_transform(t2)
    return bool(np.allclose(a1, a2, atol=tol) and np.allclose(b1, b2, atol=tol))


def _bounding_box(mask: np.ndarray, name: str) -> tuple[slice, ...]:
    if not mask.any():
        raise ValueError(f"{name}: no voxel above {BODY_THRESHOLD_HU:g} HU, no phantom to crop to")
    return ndimage.find_objects(mask.astype(np.uint8))[0]


def compare_volumes(series: Volume, series_transform: sitk.Transform | None, reference: Volume,
                    reference_transform: sitk.Transform | None, region: str = "crop", shrink: int = 1,
                    same_scan: bool = False, name: str = "pair", reference_cache: dict | None = None
                    ) -> dict[str, Any]:
    """RMSE (HU), PSNR (dB) and SSIM of ``series`` against ``reference`` on the reference's grid.

    ``same_scan``: both series are one acquisition (or have the same transform), so they share
    physical space: compared voxel for voxel when on one grid, else resampled by the physical
    identity. Otherwise ``series`` is resampled through both transforms. Then: clip to
    [-1000, 2000] HU, crop to the reference phantom's bounding box, bin-shrink by ``shrink``, and
    measure over the ``region`` voxels the series covers. Returns the metrics and n_voxels (counted),
    uncovered_fraction (share of the region the series does not cover), resampled (bool).
    ``reference_cache``: a dict kept with ``reference`` while it is compared with several series: its
    clipped, cropped and shrunk array and SSIM window means are computed once (the same numbers).
    """
    if same_scan and same_grid(series, reference):
        moved, covered, resampled = series.array, np.ones(reference.array.shape, bool), False
    else:
        transforms = (None, None) if same_scan else (series_transform, reference_transform)
        moved, covered = resample_into(series, transforms[0], reference, transforms[1])
        resampled = True
    cache = reference_cache if reference_cache is not None else {}
    if ("box", shrink) not in cache:
        ref = clip_hu(reference.array)
        box = _bounding_box(body_mask(ref), name)
        cache["box", shrink] = (box, bin_shrink(ref[box], shrink), {})
    box, ref, ssim_cache = cache["box", shrink]
    moved, covered = clip_hu(moved[box]), covered[box]
    moved, covered = bin_shrink(moved, shrink), bin_shrink_all(covered, shrink)
    inside = body_mask(ref) if region == "phantom" else np.ones(ref.shape, bool)
    counted = inside & covered
    if not counted.any():
        raise ValueError(f"{name}: the series covers none of the reference's {region} region")
    centers = counted
    if not covered.all():  # a center counts only when its whole window is covered
        centers = counted & ndimage.minimum_filter(covered, size=SSIM_WINDOW, mode="nearest")
    try:
        ssim_value = ssim(moved, ref, centers, b_cache=ssim_cache)
    except ValueError as err:
        raise ValueError(f"{name}: {err} (window centers need their whole window covered by both series; "
                         f"a smaller bin-shrink factor than {shrink} leaves more: --scanner-shrink / "
                         "--dose-shrink)") from None
    err = rmse(moved, ref, counted)  # once: psnr() would compute it again
    return {"rmse_hu": err, "psnr_db": psnr_from_rmse(err),
            "ssim": ssim_value, "n_voxels": int(counted.sum()),
            "uncovered_fraction": float(1.0 - counted.sum() / inside.sum()), "resampled": resampled}


# --------------------------------------------------------------------------- which pairs


#: Columns of a pair (one row of :func:`metric_pairs`).
PAIR_COLUMNS: tuple[str, ...] = (
    "comparison", "cell_recon", "pair", "series_uid", "reference_uid", "scanner", "reference_scanner",
    "dose_mgy", "reference_dose_mgy", "recon", "reference_recon", "repetition", "reference_repetition",
    "same_acquisition",
)


def _shuffled(rows: pd.DataFrame, seed: int, cell: str) -> list[dict[str, Any]]:
    """``rows`` in a seeded random order, the same for the same rows, seed and cell name."""
    ordered = rows.sort_values(["recon", "repetition", "series_uid"]).to_dict("records")
    rng = np.random.default_rng([seed, zlib.crc32(cell.encode())])
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _pair_row(comparison: str, cell_recon: str, i: int, s: dict, r: dict) -> tuple:
    same = (s["scanner"], s["dose_mgy"], s["repetition"]) == (r["scanner"], r["dose_mgy"], r["repetition"])
    return (comparison, cell_recon, i, s["series_uid"], r["series_uid"], s["scanner"], r["scanner"],
            s["dose_mgy"], r["dose_mgy"], s["recon"], r["recon"], s["repetition"], r["repetition"], same)


def _recon_cells(rows: pd.DataFrame, pairing: str) -> list[tuple[str, pd.DataFrame]]:
    if pairing == "any":
        return [("any", rows)]
    return [(str(recon), group) for recon, group in rows.groupby("recon", sort=True)]


def dose_pairs(catalog: pd.DataFrame, settings: MetricSettings) -> list[tuple]:
    """Table 6: per scanner (and reconstruction with ``recon_pairing="same"``) and dose, the i-th series
    at that dose with the i-th at the reference dose, both lists shuffled per cell, up to max_pairs."""
    rows = []
    for scanner, per_scanner in catalog.groupby("scanner", sort=True):
        for cell_recon, cell in _recon_cells(per_scanner, settings.recon_pairing):
            refs = cell[cell["dose_mgy"] == settings.reference_dose]
            for dose in sorted(set(cell["dose_mgy"]) - {settings.reference_dose}):
                key = f"vs_dose/{scanner}/{cell_recon}/{dose:g}"
                series = _shuffled(cell[cell["dose_mgy"] == dose], settings.seed, key + "/series")
                reference = _shuffled(refs, settings.seed, key + "/reference")
                for i, (s, r) in enumerate(list(zip(series, reference))[:settings.max_pairs]):
                    rows.append(_pair_row("vs_dose", cell_recon, i, s, r))
    return rows


def scanner_pairs(catalog: pd.DataFrame, settings: MetricSettings) -> list[tuple]:
    """Tables 3-5: every unordered scanner pair at the scanner dose (scanner after reference scanner in
    sorted order), i-th with i-th of two seeded shuffles, up to max_pairs; the diagonal pairs repeated
    scans of one scanner (different repetitions, each series used once)."""
    at_dose = catalog[catalog["dose_mgy"] == settings.scanner_dose]
    scanners = sorted(at_dose["scanner"].unique())
    rows = []
    for cell_recon, cell in _recon_cells(at_dose, settings.recon_pairing):
        for j, ref_scanner in enumerate(scanners):
            for scanner in scanners[j:]:
                key = f"vs_scanner/{scanner}/{ref_scanner}/{cell_recon}"
                series = _shuffled(cell[cell["scanner"] == scanner], settings.seed, key + "/series")
                if scanner != ref_scanner:
                    reference = _shuffled(cell[cell["scanner"] == ref_scanner], settings.seed, key + "/reference")
                    chosen = list(zip(series, reference))
                else:
                    chosen, used = [], set()
                    for a, s in enumerate(series):
                        partner = next((b for b in range(a + 1, len(series)) if b not in used and a not in used
                                        and series[b]["repetition"] != s["repetition"]), None)
                        if partner is not None:
                            used |= {a, partner}
                            chosen.append((s, series[partner]))
                for i, (s, r) in enumerate(chosen[:settings.max_pairs]):
                    rows.append(_pair_row("vs_scanner", cell_recon, i, s, r))
    return rows


def metric_pairs(catalog: pd.DataFrame, settings: MetricSettings = MetricSettings()) -> pd.DataFrame:
    """Every pair to measure, one row each (columns :data:`PAIR_COLUMNS`): :func:`dose_pairs` and
    :func:`scanner_pairs`."""
    cat = catalog.copy()
    cat["dose_mgy"] = cat["dose_mgy"].astype(float)
    cat["repetition"] = cat["repetition"].astype(int)
    cat["recon"] = cat["recon"].astype(str)
    pairs = pd.DataFrame(dose_pairs(cat, settings) + scanner_pairs(cat, settings), columns=list(PAIR_COLUMNS))
    return pairs


def summarize_metrics(per_pair: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and sd over pairs of rmse_hu, psnr_db, ssim per group ``by``; n = pairs, and the largest
    uncovered_fraction of the group."""
    agg = per_pair.groupby(by, sort=True)[list(METRICS)].agg(["mean", "std"])
    out = agg.reset_index()
    out.columns = [f"{m}_{'sd' if s == 'std' else s}" if s else m for m, s in out.columns]
    extra = per_pair.groupby(by, sort=True).agg(n=("rmse_hu", "size"),
                                                uncovered_fraction_max=("uncovered_fraction", "max"))
    return out.merge(extra.reset_index(), on=by)


def metric_tables(per_pair: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Table 6: scanner x recon cell x dose; Tables 3-5: scanner_a x scanner_b x recon cell, the
    diagonal included), mean / sd over the pairs of each cell; ``recon`` is the cell ("any" or one)."""
    cells = per_pair.rename(columns={"recon": "series_recon", "cell_recon": "recon"})
    by_dose = summarize_metrics(cells[cells["comparison"] == "vs_dose"], ["scanner", "recon", "dose_mgy"])
    vs_scan = cells[cells["comparison"] == "vs_scanner"].rename(
        columns={"scanner": "scanner_a", "reference_scanner": "scanner_b"})
    by_scanner = (summarize_metrics(vs_scan, ["scanner_a", "scanner_b", "recon", "dose_mgy"])
                  if not vs_scan.empty else pd.DataFrame())
    return by_dose, by_scanner


def scanner_matrix(by_scanner: pd.DataFrame, column: str, recon: str = "any") -> pd.DataFrame:
    """The square scanner x scanner matrix of ``column`` (e.g. ``rmse_hu_mean``) for one recon cell:
    every scanner a row and a column, the diagonal = repeated scans, symmetric (NaN where unmeasured)."""
    t = by_scanner[by_scanner["recon"].astype(str) == recon]
    scanners = sorted(set(t["scanner_a"]) | set(t["scanner_b"]))
    m = pd.DataFrame(np.nan, index=pd.Index(scanners, name="scanner"), columns=scanners)
    for a, b, v in zip(t["scanner_a"], t["scanner_b"], t[column]):
        m.loc[a, b] = m.loc[b, a] = v
    return m


# --------------------------------------------------------------------------- the analysis step


@dataclass(frozen=True)
class PairJob:
    """One pair to measure (plain, picklable fields): a row of :func:`metric_pairs`, the two series'
    folders, their transforms (reference -> series), the region and shrink, and the pair's cache."""

    pair: dict[str, Any]
    series_path: str
    reference_path: str
    transform: str
    reference_transform: str
    cache: str
    region: str
    shrink: int

    @property
    def inputs(self) -> list[str]:
        """Files the pair's result depends on, checksummed in its cache sidecar: both transforms."""
        return [self.transform, self.reference_transform]

    @property
    def settings(self) -> dict[str, Any]:
        return {**METRIC_CONSTANTS, "region": self.region, "shrink": self.shrink, **self.pair}


def pair_jobs(catalog: pd.DataFrame, pairs: pd.DataFrame, layout: ResultsLayout,
              settings: MetricSettings) -> list[PairJob]:
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
        jobs.append(PairJob(pair, paths[uid], paths[ref], str(layout.transform(uid)), str(layout.transform(ref)),
                            str(layout.image_metrics_partial(pair["comparison"], uid, ref)), settings.region,
                            settings.shrink(pair["comparison"])))
    return jobs


def measure_pair(job: PairJob, reference: Volume | None = None,
                 reference_cache: dict | None = None) -> dict[str, Any]:
    """Read both series (the reference only when not given) and their transforms and
    :func:`compare_volumes` them.

    Returns the pair's fields plus the metrics, n_voxels, uncovered_fraction, same_scan and resampled.
    """
    from ctdose.dicom_io import read_ct_series, read_reference_series
    from ctdose.transform_io import load_transform

    series = read_ct_series(job.series_path, job.pair["series_uid"])
    if reference is None:
        reference = read_reference_series(job.reference_path, job.pair["reference_uid"])
    tx, ref_tx = load_transform(job.transform), load_transform(job.reference_transform)
    same_scan = bool(job.pair["same_acquisition"]) or same_transform(tx, ref_tx)
    result = compare_volumes(series, tx, reference, ref_tx, job.region, job.shrink, same_scan,
                             name=f"{job.pair['series_uid']} vs {job.pair['reference_uid']}",
                             reference_cache=reference_cache)
    return {**job.pair, **result, "same_scan": same_scan}


#: Column types of a cached pair (UIDs and codes stay text).
_PAIR_DTYPES = {"series_uid": str, "reference_uid": str, "scanner": str, "reference_scanner": str,
                "recon": str, "reference_recon": str, "cell_recon": str, "comparison": str}


def cached_pair(job: PairJob) -> dict[str, Any] | None:
    """The pair's cached result when it was measured with these settings from these transforms, else None."""
    if not is_current(job.cache, job.settings, job.inputs):
        return None
    return read_csv(job.cache, dtype=_PAIR_DTYPES).iloc[0].to_dict()


def measure_and_cache(jobs: Sequence[PairJob]) -> list[dict[str, Any]]:
    """:func:`measure_pair` for pairs of one reference series (read once), each row written as its
    pair's one-row CSV and sidecar (atomically) as soon as it is measured."""
    from ctdose.dicom_io import read_reference_series

    reference = read_reference_series(jobs[0].reference_path, jobs[0].pair["reference_uid"])
    reference_cache: dict = {}  # the reference's crop and SSIM window means, computed once for all its pairs
    rows = []
    for job in jobs:
        row = measure_pair(job, reference, reference_cache)
        write_csv(pd.DataFrame([row]), job.cache)
        write_sidecar(job.cache, job.settings, inputs=job.inputs, n_rows=1)
        rows.append(row)
    return rows


def measure_pairs(jobs: Sequence[PairJob], workers: int = 1,
                  scheduler: str | None = None) -> tuple[pd.DataFrame, int]:
    """Every pair's row (cached ones read back, the others measured, in parallel) and the number measured.

    Rows sorted by comparison, scanner, reference scanner, cell, dose, pair.
    """
    rows, todo = [], []
    for job in jobs:
        cached = cached_pair(job)
        if cached is None:
            todo.append(job)
        else:
            rows.append(cached)
    by_reference: dict[str, list[PairJob]] = {}  # each reference series is read once per task
    for job in todo:
        by_reference.setdefault(str(job.pair["reference_uid"]), []).append(job)
    for group in parallel_map(measure_and_cache, list(by_reference.values()), workers=workers,
                              scheduler=scheduler, desc="image metrics", unit="reference series"):
        rows += group
    per_pair = pd.DataFrame(rows).sort_values(["comparison", "scanner", "reference_scanner", "cell_recon",
                                               "dose_mgy", "pair"])
    return per_pair.reset_index(drop=True), len(todo)


@dataclass(frozen=True)
class MetricFigure:
    """One figure: ``name`` (its stem under analysis/image_metrics), the comparison, metric and recon cell."""

    name: str
    comparison: str
    metric: str
    recon: str


def figure_plan(pairs: pd.DataFrame) -> list[MetricFigure]:
    """Per metric and recon cell: the vs_dose bars (Table 6) and the vs_scanner matrix (Tables 3-5)."""
    plan = []
    for metric in ("ssim", "rmse_hu", "psnr_db"):
        for comparison in ("vs_dose", "vs_scanner"):
            cells = sorted(pairs.loc[pairs["comparison"] == comparison, "cell_recon"].astype(str).unique())
            plan += [MetricFigure(f"{comparison}_{metric}_{recon}", comparison, metric, recon) for recon in cells]
    return plan
