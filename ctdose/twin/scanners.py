"""The 13 scanner profiles of the twin: the collection's facts plus the twin's own choices.

Facts come from the dataset paper's Tables 1 and 2 (``ctdose/data/ct4h/ct4h_scanners.csv``, a copy of
the published table; a test checks it equals ``../shared/reference``): scanner code, center,
manufacturer, model, tube voltage, mAs at 10 mGy, pitch, rotation time, collimation, slice thickness
and increment, reconstructions, the doses with a DL reconstruction and the series counts per dose.

What the paper does not give is chosen by the twin (``ctdose/data/twin_scanner_choices.csv``, written by
``data/calibrate_twin.py``): the kernel tags written in DICOM, the ramp-filter window and cut-off standing
for each kernel's MTF, the FBP noise in normal liver at 10 mGy (sets the photon count), the electronic
noise (makes noise grow faster than dose^-0.5 at the lowest doses), the CT-number calibration (offset
and contrast scale of the HU scale), a smooth shading of the CT numbers (``imaging.shading_field``)
the IR / DL denoising strength, the IR / DL gain of high-contrast edges (their contrast-dependent
resolution, ``imaging.edge_detail``) and the rms displacement of high-contrast edges that every
acquisition draws anew (``imaging.edge_jitter``). Those choices are calibrated so
that the dataset paper's Table 6 and Tables 3-5, computed on the twin as the paper's code did, come out
close to the published ones (see the README's "What the twin matches and what it invents").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

#: DICOM Manufacturer (0008,0070) as each vendor writes it.
DICOM_MANUFACTURER = {"Siemens": "SIEMENS", "Philips": "Philips", "GE": "GE MEDICAL SYSTEMS",
                      "Toshiba": "TOSHIBA"}


@dataclass(frozen=True)
class ScannerProfile:
    """One scanner: the collection's facts (doses in mGy, lengths in mm, times in s) and the twin's choices."""

    code: str
    center: str
    manufacturer: str  # as the paper names it: Siemens, Philips, GE, Toshiba
    model: str
    kvp: float
    mas_at_10mgy: float
    pitch: float
    rotation_s: float
    collimation_mm: float
    slice_mm: float  # reconstructed slice thickness
    increment_mm: float  # reconstruction increment (slice spacing)
    recons: tuple[str, ...]
    dl_doses: tuple[float, ...]
    series_per_dose: tuple[tuple[float, int], ...]
    # --- the twin's choices (not in the paper) ---
    kernel: str
    ir_kernel: str
    window: str  # ramp-filter apodisation, see projector.WINDOWS
    cutoff: float  # window cut-off, fraction of Nyquist
    noise_10mgy_hu: float  # FBP noise std in normal liver at 10 mGy
    electronic_noise_counts: float  # Gaussian detector noise std per ray and view
    hu_offset: float  # CT-number offset (HU added to every voxel)
    hu_scale: float  # contrast scale of the HU axis (1 = exact)
    shading_hu: float  # rms of the scanner's smooth CT-number non-uniformity inside the object (HU)
    ir_strength: float  # weight of the IR smoothing (DL uses DL_STRENGTH_FACTOR times it)
    ir_edge_gain: float  # IR / DL gain of high-contrast edge detail (imaging.edge_detail; 0 = FBP's edges)
    edge_jitter_mm: float  # rms displacement of high-contrast edges per acquisition (imaging.edge_jitter)

    @property
    def dicom_manufacturer(self) -> str:
        return DICOM_MANUFACTURER[self.manufacturer]

    def recons_at(self, dose_mgy: float) -> tuple[str, ...]:
        """Reconstructions the collection has at a dose (DL only at ``dl_doses``)."""
        return tuple(r for r in self.recons if r != "DL" or any(abs(dose_mgy - d) < 1e-6 for d in self.dl_doses))

    def kernel_for(self, recon: str) -> str:
        """The ConvolutionKernel tag of a reconstruction (FBP, IR or DL)."""
        return self.kernel if recon == "FBP" or not self.ir_kernel else self.ir_kernel

    def repetitions_at(self, dose_mgy: float) -> int:
        """Independent acquisitions in the collection at a dose (series count / reconstructions)."""
        return dict(self.series_per_dose)[float(dose_mgy)] // len(self.recons_at(dose_mgy))


#: Effective linear attenuation of water (1/mm) at the effective energy of each tube voltage
#: (about 50, 57, 65, 70 keV for 80, 100, 120, 140 kVp; NIST XCOM water values).
MU_WATER_PER_MM: dict[float, float] = {80.0: 0.0227, 100.0: 0.0212, 120.0: 0.0200, 140.0: 0.0193}

FACTS_CSV = "ct4h/ct4h_scanners.csv"
CHOICES_CSV = "twin_scanner_choices.csv"


def choices_path() -> Path:
    """The twin's choices file in the package (written by ``data/calibrate_twin.py``)."""
    return Path(__file__).resolve().parents[1] / "data" / CHOICES_CSV


def _data_csv(name: str) -> pd.DataFrame:
    with resources.files("ctdose.data").joinpath(name).open("r") as handle:
        return pd.read_csv(handle, dtype={"scanner": str, "dl_doses_mgy": str}, keep_default_na=False)


def _doses(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in str(text).split(";") if v.strip())


@functools.lru_cache(maxsize=1)
def load_scanners() -> dict[str, ScannerProfile]:
    """Every profile, in the paper's table order (facts from the paper joined with the twin's choices)."""
    facts = _data_csv(FACTS_CSV)
    choices = _data_csv(CHOICES_CSV).set_index("scanner")
    missing = sorted(set(facts["scanner"]) - set(choices.index))
    if missing:
        raise ValueError(f"{CHOICES_CSV} has no row for scanner(s) {', '.join(missing)}")
    profiles = {}
    for row in facts.to_dict("records"):
        c = choices.loc[row["scanner"]]
        profiles[row["scanner"]] = ScannerProfile(
            code=row["scanner"], center=row["center"], manufacturer=row["manufacturer"], model=row["model"],
            kvp=float(row["kvp"]), mas_at_10mgy=float(row["mas_at_10mgy"]), pitch=float(row["pitch"]),
            rotation_s=float(row["rotation_s"]), collimation_mm=float(row["collimation_mm"]),
            slice_mm=float(row["slice_thickness_mm"]), increment_mm=float(row["slice_increment_mm"]),
            recons=tuple(row["recons"].split(";")), dl_doses=_doses(row["dl_doses_mgy"]),
            series_per_dose=tuple((float(d), int(row[f"series_{d}mgy"])) for d in (1, 3, 6, 10, 14)),
            kernel=str(c["kernel"]), ir_kernel=str(c["ir_kernel"]), window=str(c["window"]),
            cutoff=float(c["cutoff"]), noise_10mgy_hu=float(c["noise_10mgy_hu"]),
            electronic_noise_counts=float(c["electronic_noise_counts"]), hu_offset=float(c["hu_offset"]),
            hu_scale=float(c["hu_scale"]), shading_hu=float(c["shading_hu"]),
            ir_strength=float(c["ir_strength"]), ir_edge_gain=float(c["ir_edge_gain"]),
            edge_jitter_mm=float(c["edge_jitter_mm"]))
    return profiles


SCANNERS: dict[str, ScannerProfile] = load_scanners()


def get_scanner(code: str) -> ScannerProfile:
    """The profile of a scanner code (ValueError naming the code if unknown)."""
    try:
        return SCANNERS[code.upper()]
    except KeyError:
        raise ValueError(f"unknown scanner code {code!r}; expected one of {', '.join(SCANNERS)}") from None


def scanner_for_kernel(kernel: str) -> ScannerProfile | None:
    """The first profile using a kernel name (to pick a filter window for foreign series), or None."""
    for profile in SCANNERS.values():
        if kernel.strip().lower() in (profile.kernel.lower(), profile.ir_kernel.lower()):
            return profile
    return None
