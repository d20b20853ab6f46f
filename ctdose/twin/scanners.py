"""The 13 scanner profiles of the twin, named as in CT4Harmonization-Multicentric.

The scanner codes are the collection's; which model stands behind each code is *illustrative*
(plausible models of the four manufacturers, with the two GE scanners that have a DL reconstruction
in the real collection taken as C1 and D1). Kernel names are each vendor's usual soft-tissue
"standard" kernel; the filter window and cut-off that stand for them are choices of the twin, not
vendor data. ``noise_10mgy_hu`` is the FBP noise (std, HU) in normal liver at 10 mGy to which each
profile's photon count is calibrated (``generate.calibrate``); noise scales as dose^-0.5, so
11.5-13.5 HU at 10 mGy gives 36-43 HU at 1 mGy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScannerProfile:
    """Acquisition and reconstruction settings of one scanner (doses in mGy, lengths in mm)."""

    code: str
    manufacturer: str
    model: str
    kernel: str
    window: str  # ramp-filter apodisation, see projector.WINDOWS
    cutoff: float  # window cut-off, fraction of Nyquist
    slice_mm: float
    mas_at_10mgy: float
    noise_10mgy_hu: float
    kvp: float = 120.0
    rotation_s: float = 0.5
    has_dl: bool = False
    ir_kernel: str = ""  # kernel name written for IR / DL series ("" = the FBP kernel)
    electronic_noise_counts: float = 0.0  # Gaussian detector noise std per ray (0: pure Poisson)

    def kernel_for(self, recon: str) -> str:
        """The ConvolutionKernel tag of a reconstruction (FBP, IR or DL)."""
        return self.kernel if recon == "FBP" or not self.ir_kernel else self.ir_kernel


SCANNERS: dict[str, ScannerProfile] = {p.code: p for p in (
    ScannerProfile("A1", "SIEMENS", "SOMATOM Definition Edge", "B30f", "hann", 1.00, 2.0, 150, 12.0,
                   ir_kernel="I30f"),
    ScannerProfile("A2", "SIEMENS", "SOMATOM Definition AS+", "B31f", "hann", 0.95, 2.0, 160, 12.5,
                   ir_kernel="I31f"),
    ScannerProfile("B1", "Philips", "IQon - Spectral CT", "B", "shepp-logan", 0.85, 2.0, 140, 11.5),
    ScannerProfile("B2", "Philips", "Ingenuity CT", "B", "shepp-logan", 0.80, 2.5, 150, 12.0),
    ScannerProfile("C1", "GE MEDICAL SYSTEMS", "Revolution CT", "STANDARD", "hamming", 0.90, 2.5, 170,
                   13.0, has_dl=True),
    ScannerProfile("D1", "GE MEDICAL SYSTEMS", "Discovery CT750 HD", "STANDARD", "hamming", 0.85, 2.5,
                   175, 13.5, has_dl=True),
    ScannerProfile("E1", "TOSHIBA", "Aquilion ONE", "FC08", "cosine", 0.90, 2.0, 145, 12.0),
    ScannerProfile("E2", "TOSHIBA", "Aquilion PRIME", "FC08", "cosine", 0.85, 2.0, 150, 12.5),
    ScannerProfile("F1", "SIEMENS", "SOMATOM Force", "Br40", "shepp-logan", 0.90, 2.0, 130, 11.5),
    ScannerProfile("G1", "GE MEDICAL SYSTEMS", "Revolution EVO", "STANDARD", "hamming", 0.90, 2.5, 165,
                   13.0),
    ScannerProfile("G2", "GE MEDICAL SYSTEMS", "Optima CT660", "STANDARD", "hann", 0.90, 2.5, 180, 13.5),
    ScannerProfile("H1", "Philips", "Brilliance iCT", "B", "cosine", 0.95, 2.0, 150, 12.0),
    ScannerProfile("H2", "Philips", "Brilliance CT 64", "B", "hann", 0.85, 2.0, 160, 12.5),
)}

#: Effective linear attenuation of water (1/mm) at the effective energy of each tube voltage
#: (about 50, 57, 65, 70 keV for 80, 100, 120, 140 kVp; NIST XCOM water values).
MU_WATER_PER_MM: dict[float, float] = {80.0: 0.0227, 100.0: 0.0212, 120.0: 0.0200, 140.0: 0.0193}


def get_scanner(code: str) -> ScannerProfile:
    """The profile of a scanner code (ValueError naming the code if unknown)."""
    try:
        return SCANNERS[code.upper()]
    except KeyError:
        raise ValueError(f"unknown scanner code {code!r}; expected one of {', '.join(SCANNERS)}") from None


def scanner_for_kernel(kernel: str) -> ScannerProfile | None:
    """The first profile using a kernel name (to pick a filter window for foreign series), or None."""
    for profile in SCANNERS.values():
        if profile.kernel.lower() == kernel.strip().lower():
            return profile
    return None
