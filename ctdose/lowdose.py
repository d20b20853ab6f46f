"""Low-dose simulation of an existing reconstructed CT series (projection-domain noise insertion).

From a series acquired at dose D with (about) ``photons_per_ray`` photons per detector ray, make the
series at dose f * D (0 < f < 1):

1. reproject the image (HU -> attenuation at the scanner's effective energy) with the twin's
   parallel-beam projector, giving line integrals p and expected counts lam = I0 exp(-p);
2. at dose f * D the log-domain variance is 1 / (f lam) instead of 1 / lam, so add zero-mean
   Gaussian noise of variance (1 - f) / (f lam) to p (Gaussian approximation of the Poisson log
   noise, accurate while counts are >> 1; cf. Zabic et al. 2013 and Yu et al. 2012);
3. reconstruct only that noise with FBP and the scanner's kernel, and add it to the original image.

The image's own noise is kept, so the result has the total noise of an acquisition at f * D.
``photons_per_ray`` must be known for the original acquisition (for twin series it is in the
twin's ground_truth.json; for others it is an assumption of the user, e.g. from a calibration).
Slices are processed in chunks to bound memory. The written series is DERIVED, SECONDARY
(:class:`~ctdose.dicom_io.Derivation`): its DerivationDescription says what was done, and each
slice names the source slice (or frame) it was computed from.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from tqdm.auto import tqdm

from ctdose.dicom_io import (CTDI_BODY_PHANTOM, CTSeriesMeta, Derivation, SourceImage, read_series_datasets,
                             slice_geometry, volume_from_datasets, write_ct_series)
from ctdose.naming import format_series_name, parse_series_name
from ctdose.twin.acquisition import hu_to_mu
from ctdose.twin.projector import ParallelBeam, default_n_angles, fbp, project
from ctdose.twin.scanners import MU_WATER_PER_MM, SCANNERS, ScannerProfile, scanner_for_kernel
from ctdose.volume import Volume

#: Filter used when a series' scanner is not one of the twin's profiles.
DEFAULT_WINDOW, DEFAULT_CUTOFF = "hann", 1.0


def kernel_filter(model: str = "", kernel: str = "") -> tuple[str, float]:
    """Ramp-filter window and cut-off standing for a scanner model / kernel (twin profiles first)."""
    for profile in SCANNERS.values():
        if profile.model.lower() == model.strip().lower() and model.strip():
            return profile.window, profile.cutoff
    profile: ScannerProfile | None = scanner_for_kernel(kernel) if kernel.strip() else None
    return (profile.window, profile.cutoff) if profile else (DEFAULT_WINDOW, DEFAULT_CUTOFF)


def low_dose_noise(volume: Volume, fraction: float, photons_per_ray: float, rng: np.random.Generator,
                   *, mu_water: float = 0.02, window: str = DEFAULT_WINDOW, cutoff: float = DEFAULT_CUTOFF,
                   n_angles: int | None = None, chunk: int = 16,
                   progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Extra noise (HU, float32, shape of ``volume.array``) bringing ``volume`` to ``fraction`` of its dose.

    ``volume`` must have square axial slices ([z, y, x], equal x/y spacing). ``photons_per_ray`` is
    per view of a ``n_angles``-view acquisition (default: the twin's for this matrix), since image
    noise depends on photons per ray times views. ``progress`` is an optional callable called with
    the number of slices done after each chunk.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"dose fraction must be in (0, 1), got {fraction}")
    if photons_per_ray <= 0:
        raise ValueError(f"photons per ray must be positive, got {photons_per_ray}")
    nz, ny, nx = volume.array.shape
    if ny != nx or not np.isclose(volume.spacing[0], volume.spacing[1]):
        raise ValueError(f"low-dose simulation needs square slices with square pixels, got {nx}x{ny} "
                         f"pixels of {volume.spacing[0]:g} x {volume.spacing[1]:g} mm")
    pixel_mm = float(volume.spacing[0])
    geom = ParallelBeam.for_matrix(nx, n_angles)
    noise = np.empty_like(volume.array)
    for start in range(0, nz, chunk):
        stop = min(nz, start + chunk)
        line = project(hu_to_mu(volume.array[start:stop], mu_water), geom, pixel_mm)
        expected = photons_per_ray * np.exp(-line.astype(np.float64))
        std = np.sqrt((1.0 - fraction) / (fraction * np.maximum(expected, 1.0)))
        extra = (rng.standard_normal(line.shape) * std).astype(np.float32)
        noise[start:stop] = fbp(extra, geom, pixel_mm, window, cutoff) * np.float32(1000.0 / mu_water)
        if progress is not None:
            progress(stop - start)
    return noise


def simulate_low_dose(volume: Volume, fraction: float, photons_per_ray: float, seed: int = 0,
                      **kwargs: object) -> Volume:
    """``volume`` as if acquired at ``fraction`` of its dose (same geometry); see module docstring."""
    noise = low_dose_noise(volume, fraction, photons_per_ray, np.random.default_rng(seed), **kwargs)
    return Volume(volume.array + noise, volume.origin, volume.spacing, volume.direction)


def _meta_from_header(ds: Dataset, fraction: float, series_uid: str, description: str,
                      derivation: Derivation) -> CTSeriesMeta:
    """CTSeriesMeta of the low-dose series: the original's tags with dose tags scaled by ``fraction``
    (and its CTDI phantom, the body phantom when it names none), marked as derived by ``derivation``."""
    def number(keyword: str) -> float | None:
        value = ds.get(keyword, None)
        return None if value in (None, "") else float(value)

    stamp = _dt.datetime(2024, 1, 1, 12, 0, 0)
    date, time = str(ds.get("SeriesDate", "") or ""), str(ds.get("SeriesTime", "") or "")
    if len(date) == 8:
        clock = (time.split(".")[0] + "000000")[:6]
        stamp = _dt.datetime.strptime(date + clock, "%Y%m%d%H%M%S")
    scaled = {k: (v * fraction if v is not None else None) for k, v in
              (("ctdivol", number("CTDIvol")), ("exposure_mas", number("Exposure")),
               ("tube_current_ma", number("XRayTubeCurrent")))}
    return CTSeriesMeta(
        manufacturer=str(ds.get("Manufacturer", "UNKNOWN")),
        model=str(ds.get("ManufacturerModelName", "UNKNOWN")),
        kvp=number("KVP") or 120.0, kernel=str(ds.get("ConvolutionKernel", "") or ""),
        slice_thickness=number("SliceThickness"), series_description=description, series_uid=series_uid,
        study_uid=str(ds.StudyInstanceUID),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")) or None,
        patient_id=str(ds.get("PatientID", "PHANTOM")), patient_name=str(ds.get("PatientName", "")),
        series_datetime=stamp, series_number=int(ds.get("SeriesNumber", 1) or 1) + 5000,
        station=str(ds.get("StationName", "") or ""), ctdi_phantom=_ctdi_phantom(ds), derivation=derivation,
        **scaled,
    )


def _ctdi_phantom(ds: Dataset) -> Code:
    """The CTDI phantom a header's CTDIvol refers to; the body phantom when it names none."""
    items = ds.get("CTDIPhantomTypeCodeSequence", None)
    if not items or not all(k in items[0] for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")):
        return CTDI_BODY_PHANTOM
    return Code(str(items[0].CodeValue), str(items[0].CodingSchemeDesignator), str(items[0].CodeMeaning))


def _frame_number(ds: Dataset) -> int | None:
    """1-based number of a frame of a multi-frame image (its reader sets ``frame_index``), else None."""
    index = getattr(ds, "frame_index", None)
    return None if index is None else int(index) + 1


def _derivation(datasets: list[Dataset], name: str, *, fraction: float, ctdivol: float | None,
                photons_per_ray: float, n_views: int, window: str, cutoff: float, seed: int) -> Derivation:
    """The low-dose series' derivation record: what was done, and the source slice of each slice.

    ``datasets`` are the source slices in any order (frames of a multi-frame image carry their 0-based
    ``frame_index``); sources are listed in slice order along the normal (the order of
    :func:`volume_from_datasets`, hence of the written slices).
    """
    order = slice_geometry(datasets, name).order
    dose = f" of CTDIvol {ctdivol:g} mGy (to {ctdivol * fraction:.4g} mGy)" if ctdivol is not None else ""
    description = (f"Simulated lower-dose acquisition: dose fraction {fraction:.4g}{dose}. Zero-mean "
                   f"Gaussian noise of the extra variance inserted in the reprojected source image "
                   f"({photons_per_ray:.6g} photons per ray at the source dose, {n_views} views), "
                   f"reconstructed by FBP ({window} window, cut-off {cutoff:g}) and added to the source "
                   f"image; noise seed {seed}.")
    return Derivation(
        description=description,
        sources=tuple(SourceImage(str(datasets[n].SOPClassUID), str(datasets[n].SOPInstanceUID),
                                  _frame_number(datasets[n])) for n in order),
        code=codes.DCM.PixelByPixelAddition,  # CID 7203: a noise image added to each source slice
    )


def _low_dose_name(name: str, dose_mgy: float | None, fraction: float) -> str:
    """The series name / description at the new dose (TCIA scheme kept when ``name`` follows it)."""
    parsed = parse_series_name(name)
    if parsed is not None and dose_mgy is not None:
        return format_series_name(parsed.scanner, parsed.middle, parsed.scan_id, round(dose_mgy, 2),
                                  parsed.recon, parsed.n_files)
    return f"{name} simulated x{fraction:.3g} dose"


def write_low_dose_series(series_dir: str | Path, *, out_dir: str | Path | None = None,
                          fraction: float | None = None, target_mgy: float | None = None,
                          photons_per_ray: float | None = None,
                          photons_per_mgy: float | dict[str, float] | None = None, seed: int = 0,
                          n_angles: int | None = None, chunk: int = 16,
                          series_uid: str | None = None) -> Path:
    """Read a CT series, simulate it at a lower dose, write it as a new DICOM series; returns its folder.

    Give ``fraction`` or ``target_mgy`` (needs the CTDIvol tag), and the original's photons per ray
    either directly or as ``photons_per_mgy`` (a number, or a dict by scanner code = StationName, as
    in a twin's ground truth) times its CTDIvol; ``n_angles`` is the view count those photons refer
    to (the twin's ``physics.n_angles``; default: the twin's for this matrix). The output folder
    (default: beside the input, named for the new dose) is written through a temporary folder and
    renamed when complete.
    """
    series_dir = Path(series_dir)
    datasets = read_series_datasets(series_dir, series_uid)
    ds = datasets[0]
    label = f"series {ds.SeriesInstanceUID} in {series_dir}"
    ctdivol = float(ds.CTDIvol) if ds.get("CTDIvol", None) not in (None, "") else None
    if fraction is None:
        if target_mgy is None or ctdivol is None:
            raise ValueError(f"{label}: give a dose fraction, or a target dose for a series with CTDIvol")
        fraction = target_mgy / ctdivol
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{label}: dose fraction must be in (0, 1), got {fraction:g}")
    if photons_per_ray is None:
        if isinstance(photons_per_mgy, dict):
            code = str(ds.get("StationName", "") or "")
            if code not in photons_per_mgy:
                raise ValueError(f"{label}: scanner {code!r} is not in the ground truth "
                                 f"({', '.join(photons_per_mgy)})")
            photons_per_mgy = photons_per_mgy[code]
        if photons_per_mgy is None or ctdivol is None:
            raise ValueError(f"{label}: photons per ray unknown (give them, or photons per mGy and CTDIvol)")
        photons_per_ray = photons_per_mgy * ctdivol
    new_dose = ctdivol * fraction if ctdivol is not None else None
    name = _low_dose_name(str(ds.get("SeriesDescription", "") or series_dir.name), new_dose, fraction)
    folder_name = _low_dose_name(series_dir.name, new_dose, fraction)
    out_dir = Path(out_dir) if out_dir is not None else series_dir.parent / f"{folder_name}_simulated"
    window, cutoff = kernel_filter(str(ds.get("ManufacturerModelName", "")),
                                   str(ds.get("ConvolutionKernel", "")))
    kvp = float(ds.get("KVP", 120) or 120)
    mu_water = MU_WATER_PER_MM.get(kvp, MU_WATER_PER_MM[120.0])
    volume = volume_from_datasets(datasets)
    with tqdm(total=volume.array.shape[0], desc="low-dose", unit="slice") as bar:
        low = simulate_low_dose(volume, fraction, photons_per_ray, seed, mu_water=mu_water, window=window,
                                cutoff=cutoff, n_angles=n_angles, chunk=chunk, progress=bar.update)
    uid = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), f"{fraction:.6g}", str(seed), "low-dose"])
    derivation = _derivation(datasets, label, fraction=fraction, ctdivol=ctdivol,
                             photons_per_ray=photons_per_ray,
                             n_views=n_angles or default_n_angles(volume.array.shape[2]), window=window,
                             cutoff=cutoff, seed=seed)
    meta = _meta_from_header(ds, fraction, uid, name[:64], derivation)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    write_ct_series(low, tmp, meta)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
