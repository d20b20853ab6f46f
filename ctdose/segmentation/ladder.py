"""Dose ladder of one CT series: the series at 20, 40, 60, 80, 100 % of its acquired dose.

Two ways, chosen per series (``method="auto"``):

* ``twin-counts`` (a series of the digital twin, FBP): the twin's own photon counts of that
  acquisition are regenerated (same seeded stream as ``ctdose.twin.generate.run_scan``, so they are
  *the* counts behind the written image) and thinned binomially, ``n_f ~ Binomial(n, f)``, which is
  exactly Poisson(f lam) (Zabic et al. 2013, Med Phys 40:031102); the scanner's electronic noise is
  drawn afresh at its own std (it does not scale with dose). Line integrals of both count sets
  are log-transformed as the twin does, and the image at fraction f is the written image plus the
  FBP of their difference (FBP is linear), so it keeps the scan's own noise realisation and adds
  exactly the extra noise of the lower dose. A cheap check on two slices confirms that the counts
  were reproduced (else a one-line error names the series and the other method).
* ``reprojection`` (any reconstructed series, real DICOM included): ``ctdose.lowdose`` reprojects the
  image and inserts the extra log-domain noise of the lower dose (Gaussian approximation of the
  Poisson log noise), needing the acquisition's photons per ray (given, or photons per mGy times
  CTDIvol). The twin's targeted-reconstruction region does not hold the whole body, so on the twin's
  demo series this method underestimates the attenuation; it is meant for full-field reconstructions.

Fraction 1.0 is the series itself. Volumes are (z, y, x) float32 HU on the series' grid.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ctdose.dicom_io import read_ct_series
from ctdose.volume import Volume

#: The study's dose levels (fractions of the acquired dose), Tsanda et al. 2024.
DOSE_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
METHODS = ("auto", "twin-counts", "reprojection")
#: Soft-tissue window (HU) of the reproduction check.
_CHECK_HU = (-200.0, 300.0)


def thin_counts(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning (int64, same shape): each detected photon kept with probability ``fraction``.

    For Poisson(lam) counts the result is Poisson(fraction * lam): a true lower-dose acquisition.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"dose fraction must be in (0, 1], got {fraction}")
    counts = np.asarray(counts)
    if np.any(counts < 0):
        raise ValueError("photon counts must be non-negative to be thinned")
    return rng.binomial(counts.astype(np.int64), fraction)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def find_twin(series_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """(twin root, ground truth, the series' record) when ``series_dir`` is a twin series, else None.

    The twin's ``ground_truth.json`` is looked for in the series' parent folder and up to two more
    levels; the record is the one whose ``name`` is the folder's name.
    """
    series_dir = Path(series_dir)
    for root in list(series_dir.parents)[:3]:
        truth_path = root / "ground_truth.json"
        if truth_path.is_file():
            try:
                truth = json.loads(truth_path.read_text())
            except (json.JSONDecodeError, OSError) as err:
                raise ValueError(f"{truth_path}: unreadable twin ground truth ({err})") from None
            for record in truth.get("series", []):
                if record.get("name") == series_dir.name:
                    return root, truth, record
            return None
    return None


def _seed(seed: int, key: str, fraction: float) -> list[int]:
    return [int(seed), zlib.crc32(key.encode()), int(round(fraction * 10000)), 7]


@dataclass
class TwinCounts:
    """The photon counts behind one FBP series of the twin, and lower-dose images made by thinning them.

    Built from the twin's ground truth (seed, preset, the series' scanner, repetition, dose and photons
    per ray); the counts are regenerated once (about a second and a few hundred MB for the demo grid).
    """

    series_dir: Path
    truth: dict[str, Any]
    record: dict[str, Any]
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from ctdose.twin import generate as gen, imaging
        from ctdose.twin.acquisition import acquire_counts, add_electronic_noise, counts_to_line_integrals
        from ctdose.twin.presets import Preset
        from ctdose.twin.scanners import MU_WATER_PER_MM, SCANNERS, get_scanner

        rec = self.record
        if rec.get("recon") != "FBP":
            raise ValueError(f"{self.series_dir}: twin-counts ladder needs an FBP series, got {rec.get('recon')!r}; "
                             f"use its FBP sibling or --ladder reprojection")
        preset = Preset(**{k: _as_tuple(v) for k, v in self.truth["preset"].items()})
        profile = get_scanner(rec["scanner"])
        grid = gen.scan_grid(preset, profile)
        pose = gen.scan_pose(int(self.truth["seed"]), rec["scanner"], int(rec["rep"]))
        mu_w = MU_WATER_PER_MM[profile.kvp]
        n_angles = imaging.n_angles_for(grid)
        slabs, m = imaging.slab_positions(grid)
        body = imaging.body_line_integrals(grid, pose, slabs, mu_w, n_angles)
        rng = np.random.default_rng([int(self.truth["seed"]), list(SCANNERS).index(rec["scanner"]), int(rec["rep"]),
                                     int(round(float(rec["dose_mgy"]) * 1000)), 2])
        photons = float(rec["photons_per_ray"]) / m  # per slab, as imaging.acquisition_noise
        counts = acquire_counts(body, photons, rng)
        measured = add_electronic_noise(counts, profile.electronic_noise_counts, rng)
        self._state = dict(gen=gen, imaging=imaging, log=counts_to_line_integrals, profile=profile, grid=grid,
                           mu_w=mu_w, n_angles=n_angles, m=m, body=body, photons=photons, counts=counts,
                           p_full=counts_to_line_integrals(measured, photons))

    def _image(self, sinogram_noise: np.ndarray) -> np.ndarray:
        s = self._state
        image = s["imaging"].noise_image(sinogram_noise, s["grid"], s["profile"], s["mu_w"], s["n_angles"])
        return s["imaging"].slabs_to_slices(image, s["m"])

    def check(self, written: np.ndarray) -> float:
        """Slope of the written image on the regenerated noise over soft tissue of two middle slices.

        cov(written, noise) / var(noise): about 1 when the counts are the twin's (the written image is
        signal + this noise), about 0 when they are not (independent noise). Raises ValueError outside
        0.8 .. 1.2. The signal's own variation (tissue contrast) adds scatter, not bias.
        """
        s = self._state
        k = written.shape[0] // 2
        slab = slice(k, k + s["m"] + 1)  # slices k and k + 1
        noise = self._image(s["p_full"][slab] - s["body"][slab])
        part = written[k:k + 2].astype(np.float64)
        soft = (part > _CHECK_HU[0]) & (part < _CHECK_HU[1])
        x, y = noise[soft].astype(np.float64), part[soft]
        slope = float(np.mean((x - x.mean()) * (y - y.mean())) / np.var(x))
        if not 0.8 < slope < 1.2:
            raise ValueError(f"{self.series_dir}: the twin's counts could not be reproduced (image-on-noise slope "
                             f"{slope:.2f}, expected 1; twin made by another simulation version?); "
                             f"use --ladder reprojection")
        return slope

    def extra_noise(self, fraction: float, seed: int = 0) -> np.ndarray:
        """HU (z, y, x) to add to the written image to make it an acquisition at ``fraction`` of its dose."""
        if fraction >= 1.0:
            grid = self._state["grid"]
            return np.zeros((grid.n_slices, *grid.box[2:]), np.float32)
        s = self._state
        rng = np.random.default_rng(_seed(seed, str(self.record["series_uid"]), fraction))
        thinned = thin_counts(s["counts"], fraction, rng)
        if s["profile"].electronic_noise_counts > 0:
            thinned = thinned + rng.normal(0.0, s["profile"].electronic_noise_counts, size=thinned.shape)
        p_low = s["log"](thinned, s["photons"] * fraction)
        return self._image(p_low - s["p_full"])


@dataclass
class Ladder:
    """One series at several dose fractions: ``levels[f]`` (z, y, x) float32 HU on ``volume``'s grid."""

    series_dir: Path
    volume: Volume
    levels: dict[float, np.ndarray]
    method: str
    dose_mgy: float | None
    note: str = ""

    @property
    def spacing_zyx_mm(self) -> tuple[float, float, float]:
        sx, sy, sz = (float(v) for v in self.volume.spacing)
        return sz, sy, sx


def dose_ladder(series_dir: str | Path, fractions: Iterable[float] = DOSE_FRACTIONS, *, method: str = "auto",
                seed: int = 0, photons_per_ray: float | None = None, photons_per_mgy: float | None = None,
                n_angles: int | None = None, check: bool = True) -> Ladder:
    """The dose ladder of the series in ``series_dir`` (see the module docstring for the methods).

    ``photons_per_ray`` / ``photons_per_mgy`` (x CTDIvol) are needed by ``reprojection`` only (for
    a twin series they default to its ground truth). ``check`` runs the twin-counts reproduction check.
    """
    if method not in METHODS:
        raise ValueError(f"unknown ladder method {method!r}; expected one of {', '.join(METHODS)}")
    series_dir = Path(series_dir)
    fractions = sorted({float(f) for f in fractions})
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"dose fractions must be in (0, 1], got {fractions}")
    volume = read_ct_series(series_dir)
    twin = find_twin(series_dir)
    if method == "auto":
        method = "twin-counts" if twin is not None and twin[2].get("recon") == "FBP" else "reprojection"
    levels: dict[float, np.ndarray] = {}
    if method == "twin-counts":
        if twin is None:
            raise ValueError(f"{series_dir}: not a twin series (no ground_truth.json naming it); "
                             f"use --ladder reprojection")
        counts = TwinCounts(series_dir, twin[1], twin[2])
        if counts._state["grid"].n_slices != volume.array.shape[0]:
            raise ValueError(f"{series_dir}: {volume.array.shape[0]} slices on disk, the twin's grid has "
                             f"{counts._state['grid'].n_slices}; use --ladder reprojection")
        ratio = counts.check(volume.array) if check else float("nan")
        for f in fractions:
            levels[f] = volume.array.copy() if f >= 1.0 else volume.array + counts.extra_noise(f, seed)
        return Ladder(series_dir, volume, levels, method, float(twin[2]["dose_mgy"]),
                      f"twin counts thinned (reproduction check: image-on-noise slope {ratio:.3f}, expected 1)")
    from ctdose.lowdose import kernel_filter, simulate_low_dose
    from ctdose.dicom_io import read_series_datasets
    from ctdose.twin.scanners import MU_WATER_PER_MM

    ds = read_series_datasets(series_dir)[0]
    ctdivol = None if ds.get("CTDIvol", None) in (None, "") else float(ds.CTDIvol)
    if photons_per_ray is None and photons_per_mgy is None and twin is not None:
        photons_per_ray = float(twin[2]["photons_per_ray"])
        n_angles = n_angles or int(next((s["n_angles"] for s in twin[1].get("scans", [])
                                         if s.get("scanner") == twin[2]["scanner"]), 0)) or None
    if photons_per_ray is None:
        if photons_per_mgy is None or ctdivol is None:
            raise ValueError(f"{series_dir}: photons per ray unknown for the reprojection ladder "
                             f"(give --photons-per-ray, or --photons-per-mgy for a series with CTDIvol)")
        photons_per_ray = photons_per_mgy * ctdivol
    window, cutoff = kernel_filter(str(ds.get("ManufacturerModelName", "")), str(ds.get("ConvolutionKernel", "")))
    mu_water = MU_WATER_PER_MM.get(float(ds.get("KVP", 120) or 120), MU_WATER_PER_MM[120.0])
    for f in fractions:
        if f >= 1.0:
            levels[f] = volume.array.copy()
            continue
        rng_seed = int(np.random.SeedSequence(_seed(seed, str(ds.SeriesInstanceUID), f)).generate_state(1)[0])
        levels[f] = simulate_low_dose(volume, f, photons_per_ray, rng_seed, mu_water=mu_water, window=window,
                                      cutoff=cutoff, n_angles=n_angles).array
    return Ladder(series_dir, volume, levels, "reprojection", ctdivol,
                  f"reprojection noise insertion at {photons_per_ray:.6g} photons per ray")


def roi_std(volume_hu: np.ndarray, labels: np.ndarray, names: Iterable[str]) -> dict[str, float]:
    """Standard deviation (HU) of ``volume_hu`` inside each label 1..n of ``labels`` (``names`` in label order)."""
    return {name: float(volume_hu[labels == k].std()) for k, name in enumerate(names, start=1)
            if (labels == k).any()}


def validate_twin_ladder(twin_root: str | Path, scanners: Iterable[str] | None = None, rep: int = 0,
                         rois: Iterable[str] = ("normal1", "normal2"), seed: int = 0) -> pd.DataFrame:
    """Simulated vs independently acquired ROI noise on a twin, per scanner x lower dose x ROI.

    For each scanner, the FBP series at the twin's highest dose (repetition ``rep``) is thinned to
    each lower dose the twin acquired (fraction = dose / highest) and the ROI standard deviation of
    the result compared with that of the twin's own independent acquisition at that dose (same
    placement, so the same ROI voxels; the ROIs come from the highest dose's SEG). Columns:
    scanner, rep, roi, reference_mgy, dose_mgy, fraction, std_simulated_hu, std_acquired_hu,
    rel_error (simulated / acquired - 1), roi_voxels.
    """
    from ctdose.seg import read_seg_label_map

    twin_root = Path(twin_root)
    truth_path = twin_root / "ground_truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path} not found: {twin_root} is not a twin folder")
    truth = json.loads(truth_path.read_text())
    series = pd.DataFrame(truth["series"])
    series = series[(series["recon"] == "FBP") & (series["rep"] == rep)]
    chosen = sorted(series["scanner"].unique()) if scanners is None else list(scanners)
    rows = []
    for scanner in chosen:
        mine = series[series["scanner"] == scanner].sort_values("dose_mgy")
        if mine.empty:
            raise ValueError(f"{truth_path}: no FBP series of scanner {scanner!r}, repetition {rep}")
        top = mine.iloc[-1]
        top_dir = twin_root / top["name"]
        volume = read_ct_series(top_dir)
        labels, names = read_seg_label_map(top_dir / "SEG.dcm", top_dir)
        keep = [n for n in rois if n in names]
        counts = TwinCounts(top_dir, truth, top.to_dict())
        counts.check(volume.array)
        for _, low in mine.iloc[:-1].iterrows():
            fraction = float(low["dose_mgy"]) / float(top["dose_mgy"])
            simulated = volume.array + counts.extra_noise(fraction, seed)
            acquired = read_ct_series(twin_root / low["name"]).array
            std_sim, std_acq = roi_std(simulated, labels, names), roi_std(acquired, labels, names)
            for roi in keep:
                rows.append({"scanner": scanner, "rep": rep, "roi": roi, "reference_mgy": float(top["dose_mgy"]),
                             "dose_mgy": float(low["dose_mgy"]), "fraction": fraction,
                             "std_simulated_hu": std_sim[roi], "std_acquired_hu": std_acq[roi],
                             "rel_error": std_sim[roi] / std_acq[roi] - 1.0,
                             "roi_voxels": int((labels == names.index(roi) + 1).sum())})
    return pd.DataFrame(rows)
