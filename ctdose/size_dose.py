"""Patient size and size-specific dose: water-equivalent diameter (AAPM TG-220) and SSDE (AAPM TG-204).

CTDIvol is the dose to a 32 cm (body) or 16 cm (head) PMMA cylinder, not to the scanned object. This
module measures the object on each axial slice and turns CTDIvol into the size-specific dose estimate:

* **Object mask** per slice (:func:`object_mask`): voxels above a threshold, a morphological opening
  that cuts thin structures (the patient table, cables) off the body, the largest connected component,
  grown back within the opening radius and with its holes (lungs, air pockets) filled. TG-220 asks for
  every voxel inside the patient contour and none of the table.
* **Water-equivalent diameter** (:func:`water_equivalent_diameter`, TG-220 eq. 3-4):
  ``A_w = sum over the mask of (HU / 1000 + 1) * pixel area`` (= (mean HU / 1000 + 1) * A_roi) and
  ``D_w = 2 sqrt(A_w / pi)``.
* **Truncation** (:func:`truncation_share`): TG-220 notes that a body cut by the field of view makes
  ``D_w`` too small. A slice is flagged when its object touches the image border or the padding outside
  the reconstruction circle; the share of the object's perimeter lying there is reported.
* **Conversion factor** (:func:`conversion_factor`): TG-204's exponential fits
  ``f = a exp(-b D)`` (D in cm), a = 3.704369, b = 0.03671937 for the 32 cm phantom and
  a = 1.874799, b = 0.03871313 for the 16 cm phantom; TG-220 (its Appendix) applies them to ``D_w``.
  The report's tables (``ctdose/data/aapm204_conversion_factors.csv``, :func:`published_factors`)
  are the fits rounded to two decimals, over 8-45 cm (body) and 6-55 cm (head).
* **SSDE** (:func:`series_size_dose`): ``SSDE(z) = f(D_w(z)) CTDIvol(z)`` per slice; per series the
  mean of SSDE(z) (DICOM CID 10023 "Arithmetic Average of SSDE(z)") and the value from ``D_w`` at the
  centre of the scan range (TG-220's single-slice approximation, CID 10023 "Estimated from Water
  Equivalent Diameter").
* **Phantom** (:func:`choose_phantom`): the header's CTDIPhantomTypeCodeSequence (IEC head / body
  dosimetry phantom) when present, else BodyPartExamined (head, brain, skull -> 16 cm), else 32 cm.

References: AAPM Report 204 (Boone et al. 2011); AAPM Report 220 (McCollough et al. 2014).
All functions are pure (arrays in, arrays / frames out); data/size_dose.py runs them per series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

#: TG-204 exponential fits ``f = a exp(-b D)``, D in cm: phantom -> (a, b).
FIT_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "body32": (3.704369, 0.03671937),
    "head16": (1.874799, 0.03871313),
}
#: Range of effective diameters (cm) the report tabulates per phantom (outside: extrapolated fit).
TABULATED_RANGE_CM: dict[str, tuple[float, float]] = {"body32": (8.0, 45.0), "head16": (6.0, 55.0)}
#: The published tables (package data).
TABLE_FILE = "aapm204_conversion_factors.csv"
#: Default object threshold (HU): between air (-1000) and the least dense tissue at the body surface.
#: Air voxels inside the contour add ~0 to A_w, so a low threshold costs nothing; -600 keeps fat
#: (~-100 HU) and lung-adjacent skin inside and a 50 %-density object (-500 HU) too.
THRESHOLD_HU = -600.0
#: Default opening radius (mm) that separates the body from thin attached structures (table, cables).
OPENING_MM = 5.0
#: Voxels below this (HU) are padding outside the reconstruction circle, not air.
PADDING_HU = -1500.0
#: Per-series columns of the size table, after ``series_uid`` (per-ROI slab columns follow).
SERIES_COLUMNS: tuple[str, ...] = (
    "series_uid", "phantom", "phantom_source", "ctdivol_mgy", "ctdivol_source", "n_slices", "n_measured",
    "wed_cm", "wed_center_cm", "ssde_mgy", "ssde_center_mgy", "conversion_factor", "conversion_factor_center",
    "truncated", "truncated_slices", "outside_fit_range", "noise_hu", "noise_source",
)
#: Per-slice columns.
SLICE_COLUMNS: tuple[str, ...] = (
    "series_uid", "slice_index", "z_mm", "measured", "area_cm2", "mean_hu", "wed_cm", "truncated_share",
    "truncated", "tube_current_ma", "ctdivol_mgy", "conversion_factor", "ssde_mgy",
)
#: IEC dosimetry phantom code meanings (DICOM CID 4052) -> phantom.
PHANTOM_CODES: dict[str, str] = {"iec head dosimetry phantom": "head16", "iec body dosimetry phantom": "body32",
                                 "113690": "head16", "113691": "body32"}
#: BodyPartExamined values that mean a head scan (16 cm phantom).
HEAD_BODY_PARTS = ("HEAD", "BRAIN", "SKULL")


# --------------------------------------------------------------------------- conversion factors


def _phantom(phantom: str) -> str:
    if phantom not in FIT_COEFFICIENTS:
        raise ValueError(f"unknown CTDI phantom {phantom!r}; expected one of {', '.join(FIT_COEFFICIENTS)}")
    return phantom


def conversion_factor(wed_cm: float | np.ndarray, phantom: str = "body32") -> np.ndarray:
    """TG-204 conversion factor ``f = a exp(-b D)`` for diameter(s) ``wed_cm`` (cm); NaN stays NaN."""
    a, b = FIT_COEFFICIENTS[_phantom(phantom)]
    return a * np.exp(-b * np.asarray(wed_cm, dtype=float))


def published_factors(phantom: str | None = None) -> pd.DataFrame:
    """The report's tables: phantom, effective_diameter_cm, conversion_factor (one phantom if given)."""
    from ctdose.csv_io import read_csv

    with resources.as_file(resources.files("ctdose") / "data" / TABLE_FILE) as path:
        table = read_csv(path, comment="#")
    if phantom is not None:
        table = table[table["phantom"] == _phantom(phantom)].reset_index(drop=True)
    return table


def in_fit_range(wed_cm: float | np.ndarray, phantom: str = "body32") -> np.ndarray:
    """True where ``wed_cm`` lies inside the report's tabulated range for ``phantom``."""
    low, high = TABULATED_RANGE_CM[_phantom(phantom)]
    wed = np.asarray(wed_cm, dtype=float)
    return (wed >= low) & (wed <= high)


def choose_phantom(ctdi_phantom: str | None = None, body_part: str | None = None) -> tuple[str, str]:
    """The CTDI phantom (``body32`` / ``head16``) and where the choice came from.

    ``ctdi_phantom``: the CodeMeaning or CodeValue of the header's CTDIPhantomTypeCodeSequence;
    ``body_part``: BodyPartExamined. Neither telling: the body phantom, as for body CT.
    """
    if ctdi_phantom:
        found = PHANTOM_CODES.get(str(ctdi_phantom).strip().lower())
        if found:
            return found, "CTDIPhantomTypeCodeSequence"
    if body_part:
        part = str(body_part).strip().upper()
        return ("head16" if any(h in part for h in HEAD_BODY_PARTS) else "body32"), "BodyPartExamined"
    return "body32", "default (no phantom code or body part in the header)"


def header_phantom(ds: Any) -> tuple[str, str]:
    """:func:`choose_phantom` from a pydicom dataset's CTDIPhantomTypeCodeSequence and BodyPartExamined."""
    code = None
    seq = ds.get("CTDIPhantomTypeCodeSequence") if ds is not None else None
    if seq:
        item = seq[0]
        code = str(item.get("CodeMeaning", "") or item.get("CodeValue", "") or "")
        if code.strip().lower() not in PHANTOM_CODES:
            code = str(item.get("CodeValue", "") or code)
    part = str(ds.get("BodyPartExamined", "") or "") if ds is not None else ""
    return choose_phantom(code, part)


# --------------------------------------------------------------------------- object mask, WED


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D boolean mask (the mask itself if it has one or none)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def object_mask(slice_hu: np.ndarray, pixel_mm: tuple[float, float] = (1.0, 1.0),
                threshold_hu: float = THRESHOLD_HU, opening_mm: float = OPENING_MM) -> np.ndarray:
    """Boolean mask (ny, nx) of the scanned object on one slice (HU, ny x nx), table removed.

    Steps: ``hu > threshold_hu``; opening with a disk of ``opening_mm`` (0: none) so that structures
    thinner than twice that (the table, cables) come apart from the body; the largest connected
    component (8-connected); grown back within the disk inside the thresholded voxels (restores the
    body's edge); holes filled. ``pixel_mm`` = (row, column) spacing. An empty slice gives an empty mask.
    """
    above = np.asarray(slice_hu) > threshold_hu
    if not above.any():
        return above
    sampling = (float(pixel_mm[0]), float(pixel_mm[1]))
    core = above
    if opening_mm > 0:  # opening by a disk through distance transforms (exact in mm, fast for any radius)
        eroded = ndimage.distance_transform_edt(above, sampling=sampling) > opening_mm
        if eroded.any():  # else everything is thinner than the disk: keep the thresholded voxels
            core = ndimage.distance_transform_edt(~eroded, sampling=sampling) <= opening_mm
    core = _largest_component(core)
    if opening_mm > 0:  # grow back within the disk, inside the thresholded voxels
        core = _largest_component((ndimage.distance_transform_edt(~core, sampling=sampling) <= opening_mm) & above)
    return ndimage.binary_fill_holes(core)


def water_equivalent_area(slice_hu: np.ndarray, mask: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """TG-220 water-equivalent area (mm^2): sum over ``mask`` of (HU / 1000 + 1) times the pixel area."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return float("nan")
    hu = np.asarray(slice_hu, dtype=np.float64)[mask]
    return float(np.sum(hu / 1000.0 + 1.0) * pixel_mm[0] * pixel_mm[1])


def water_equivalent_diameter(slice_hu: np.ndarray, mask: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """TG-220 ``D_w = 2 sqrt(A_w / pi)`` in cm (NaN for an empty mask or a non-positive A_w)."""
    area = water_equivalent_area(slice_hu, mask, pixel_mm)
    return 2.0 * math.sqrt(area / math.pi) / 10.0 if area > 0 else float("nan")


def truncation_share(slice_hu: np.ndarray, mask: np.ndarray, padding_hu: float = PADDING_HU) -> float:
    """Share (0..1) of the object's perimeter pixels on the image border or next to padding outside
    the reconstruction circle: > 0 means the field of view cuts the object (TG-220's truncation)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    perimeter = mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)
    cut = np.zeros_like(mask)
    cut[0, :] = cut[-1, :] = cut[:, 0] = cut[:, -1] = True
    padding = np.asarray(slice_hu) < padding_hu
    if padding.any():
        cut |= ndimage.binary_dilation(padding, structure=np.ones((3, 3), dtype=bool))
    n_perimeter = int(perimeter.sum())
    return float((perimeter & cut).sum() / n_perimeter) if n_perimeter else 0.0


@dataclass(frozen=True)
class SizeSettings:
    """What changes the size measurement: threshold (HU), opening radius (mm), padding (HU), phantom
    (``auto`` = from the header, or ``body32`` / ``head16``), and ``slice_step``: measure every n-th slice
    (and the slice at the centre of the scan range); 1 = every slice. SSDE(z) at several z positions is
    TG-220's average (DICOM CID 10023 "Arithmetic Average of SSDE(z)": the positions need not be every slice)."""

    threshold_hu: float = THRESHOLD_HU
    opening_mm: float = OPENING_MM
    padding_hu: float = PADDING_HU
    phantom: str = "auto"
    slice_step: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"threshold_hu": self.threshold_hu, "opening_mm": self.opening_mm,
                "padding_hu": self.padding_hu, "phantom": self.phantom, "slice_step": self.slice_step}


def slice_sizes(volume_hu: np.ndarray, pixel_mm: tuple[float, float],
                settings: SizeSettings = SizeSettings()) -> tuple[pd.DataFrame, np.ndarray]:
    """Per slice of ``volume_hu`` (nz, ny, nx; HU): object area (cm^2), mean HU in the object, D_w (cm),
    truncation share and flag, ``measured``; and the object masks (nz, ny, nx) bool. With
    ``settings.slice_step`` > 1 only every n-th slice and the middle one are measured (others: NaN, False)."""
    volume_hu = np.asarray(volume_hu)
    nz = volume_hu.shape[0]
    if settings.slice_step < 1:
        raise ValueError(f"slice step must be >= 1, got {settings.slice_step}")
    chosen = set(range(0, nz, settings.slice_step)) | {nz // 2}
    masks = np.zeros(volume_hu.shape, dtype=bool)
    rows = []
    pixel_area = pixel_mm[0] * pixel_mm[1]
    for k, hu in enumerate(volume_hu):
        if k not in chosen:
            rows.append({"slice_index": k, "area_cm2": float("nan"), "mean_hu": float("nan"),
                         "wed_cm": float("nan"), "truncated_share": float("nan"), "truncated": False,
                         "measured": False})
            continue
        mask = object_mask(hu, pixel_mm, settings.threshold_hu, settings.opening_mm)
        masks[k] = mask
        n = int(mask.sum())
        share = truncation_share(hu, mask, settings.padding_hu)
        rows.append({"slice_index": k, "area_cm2": n * pixel_area / 100.0,
                     "mean_hu": float(hu[mask].mean()) if n else float("nan"),
                     "wed_cm": water_equivalent_diameter(hu, mask, pixel_mm),
                     "truncated_share": share, "truncated": bool(share > 0), "measured": True})
    return pd.DataFrame(rows), masks


# --------------------------------------------------------------------------- noise


def roi_noise(volume_hu: np.ndarray, label_map: np.ndarray, labels: Iterable[int], min_voxels: int = 20) -> float:
    """Noise (HU): the median over slices of the standard deviation inside ``labels`` of ``label_map``
    (slices with at least ``min_voxels`` such voxels); NaN when there are none."""
    inside = np.isin(np.asarray(label_map), list(labels))
    sds = [float(np.std(hu[m], ddof=1)) for hu, m in zip(volume_hu, inside) if m.sum() >= min_voxels]
    return float(np.median(sds)) if sds else float("nan")


def global_noise_level(volume_hu: np.ndarray, masks: np.ndarray, pixel_mm: tuple[float, float],
                       window_mm: float = 6.0, soft_tissue_hu: tuple[float, float] = (0.0, 150.0),
                       bin_hu: float = 0.2, max_slices: int = 16) -> float:
    """Noise (HU) without an ROI: the global noise level (Christianson et al., Med Phys 2015): the mode
    of the local standard deviation in ``window_mm`` square windows centred on soft-tissue voxels
    (``soft_tissue_hu``) inside the eroded object masks, on up to ``max_slices`` evenly spaced slices.
    NaN when there are no such voxels."""
    size = max(3, int(round(window_mm / min(pixel_mm))) | 1)
    sds = []
    picked = np.unique(np.linspace(0, len(volume_hu) - 1, min(max_slices, len(volume_hu))).round().astype(int))
    for k in picked:
        hu, mask = np.asarray(volume_hu[k], dtype=np.float64), masks[k]
        inner = ndimage.binary_erosion(mask, structure=np.ones((size, size), dtype=bool))
        keep = inner & (hu >= soft_tissue_hu[0]) & (hu <= soft_tissue_hu[1])
        if not keep.any():
            continue
        mean = ndimage.uniform_filter(hu, size)
        mean_sq = ndimage.uniform_filter(hu * hu, size)
        local = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0) * size * size / (size * size - 1))
        sds.append(local[keep])
    if not sds:
        return float("nan")
    values = np.concatenate(sds)
    counts, edges = np.histogram(values, bins=np.arange(0.0, values.max() + 2 * bin_hu, bin_hu))
    return float(edges[int(np.argmax(counts))] + bin_hu / 2)


# --------------------------------------------------------------------------- per series


def series_size_dose(series_uid: str, volume_hu: np.ndarray, pixel_mm: tuple[float, float],
                     z_mm: np.ndarray, ctdivol_mgy: float | np.ndarray | None, phantom: str,
                     phantom_source: str = "", tube_current_ma: np.ndarray | None = None,
                     label_map: np.ndarray | None = None, roi_names: Mapping[int, str] | None = None,
                     noise_labels: Iterable[int] = (), settings: SizeSettings = SizeSettings(),
                     ctdivol_source: str = "") -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """One series' size-dose row, its per-slice table and its object masks.

    ``volume_hu`` (nz, ny, nx) HU; ``pixel_mm`` (row, column) mm; ``z_mm`` (nz,) slice positions;
    ``ctdivol_mgy`` one value or one per slice (None: SSDE left NaN); ``tube_current_ma`` (nz,) or None;
    ``label_map`` (nz, ny, nx) with ``roi_names`` {label: name}: adds ``wed_cm_<roi>`` / ``ssde_mgy_<roi>``
    = the means over the ROI's slab (the slices holding the ROI). Noise: :func:`roi_noise` over
    ``noise_labels`` when given and present, else :func:`global_noise_level`.
    """
    volume_hu = np.asarray(volume_hu)
    nz = volume_hu.shape[0]
    z_mm = np.asarray(z_mm, dtype=float).reshape(-1)
    if z_mm.size != nz:
        raise ValueError(f"series {series_uid}: {z_mm.size} slice positions for {nz} slices")
    slices, masks = slice_sizes(volume_hu, pixel_mm, settings)
    if ctdivol_mgy is None:
        ctdi = np.full(nz, np.nan)
    else:
        ctdi = np.broadcast_to(np.asarray(ctdivol_mgy, dtype=float), (nz,)).astype(float)
    factor = conversion_factor(slices["wed_cm"].to_numpy(), phantom)
    slices.insert(0, "series_uid", series_uid)
    slices.insert(2, "z_mm", z_mm)
    slices["tube_current_ma"] = (np.full(nz, np.nan) if tube_current_ma is None
                                 else np.asarray(tube_current_ma, dtype=float).reshape(nz))
    slices["ctdivol_mgy"] = ctdi
    slices["conversion_factor"] = factor
    slices["ssde_mgy"] = factor * ctdi
    slices = slices[list(SLICE_COLUMNS)]

    wed = slices["wed_cm"].to_numpy()
    measured = np.isfinite(wed)
    if not measured.any():
        raise ValueError(f"series {series_uid}: no object above {settings.threshold_hu:g} HU on any slice")
    centre_z = 0.5 * (z_mm.min() + z_mm.max())
    candidates = np.flatnonzero(measured)
    centre = int(candidates[np.argmin(np.abs(z_mm[candidates] - centre_z))])
    ctdi_series = float(np.nanmean(ctdi)) if np.isfinite(ctdi).any() else float("nan")
    ssde = slices["ssde_mgy"].to_numpy()
    ssde_mean = float(np.nanmean(ssde)) if np.isfinite(ssde).any() else float("nan")
    f_centre = float(conversion_factor(wed[centre], phantom))
    row: dict[str, Any] = {
        "series_uid": series_uid, "phantom": phantom, "phantom_source": phantom_source,
        "ctdivol_mgy": ctdi_series, "ctdivol_source": ctdivol_source, "n_slices": nz,
        "n_measured": int(measured.sum()), "wed_cm": float(np.nanmean(wed)), "wed_center_cm": float(wed[centre]),
        "ssde_mgy": ssde_mean, "ssde_center_mgy": f_centre * ctdi_series,
        "conversion_factor": ssde_mean / ctdi_series if ctdi_series > 0 else float("nan"),
        "conversion_factor_center": f_centre,
        "truncated": bool(slices["truncated"].any()), "truncated_slices": int(slices["truncated"].sum()),
        "outside_fit_range": bool((~in_fit_range(wed[measured], phantom)).any()),
    }
    noise_labels = [int(n) for n in noise_labels]
    if label_map is not None and noise_labels and np.isin(label_map, noise_labels).any():
        row["noise_hu"] = roi_noise(volume_hu, label_map, noise_labels)
        names = ", ".join((roi_names or {}).get(n, str(n)) for n in noise_labels)
        row["noise_source"] = f"median per-slice SD in ROI(s) {names}"
    else:
        row["noise_hu"] = global_noise_level(volume_hu[measured], masks[measured], pixel_mm)
        row["noise_source"] = "global noise level (mode of local SD in soft tissue)"
    if label_map is not None:
        label_map = np.asarray(label_map)
        if label_map.shape != volume_hu.shape:
            raise ValueError(f"series {series_uid}: label map shape {label_map.shape} differs from the CT's "
                             f"{volume_hu.shape}")
        present = np.flatnonzero(label_map.reshape(nz, -1).any(axis=1))
        for label, name in (roi_names or {}).items():
            slab = np.flatnonzero((label_map == label).reshape(nz, -1).any(axis=1)) if present.size else []
            slab = [k for k in slab if measured[k]]
            row[f"wed_cm_{name}"] = float(np.mean(wed[slab])) if slab else float("nan")
            row[f"ssde_mgy_{name}"] = float(np.nanmean(ssde[slab])) if slab and np.isfinite(ssde[slab]).any() \
                else float("nan")
    return row, slices, masks


def join_size_columns(catalog: pd.DataFrame, size_table: pd.DataFrame) -> pd.DataFrame:
    """The catalog with the size table's columns (wed_cm, ssde_mgy, per-ROI slab values ...) joined on
    ``series_uid`` (left join: a series without a size row gets NaN). Columns the catalog already has
    are not duplicated."""
    if "series_uid" not in size_table.columns or "series_uid" not in catalog.columns:
        raise ValueError("both tables need a series_uid column")
    if size_table["series_uid"].duplicated().any():
        uid = size_table.loc[size_table["series_uid"].duplicated(), "series_uid"].iloc[0]
        raise ValueError(f"size table has more than one row for series {uid}")
    extra = [c for c in size_table.columns if c == "series_uid" or c not in catalog.columns]
    joined = catalog.merge(size_table[extra], on="series_uid", how="left", validate="one_to_one")
    return joined
