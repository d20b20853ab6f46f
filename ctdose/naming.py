"""Names and conventions of the CT4Harmonization-Multicentric collection (TCIA).

Series names look like
``A1_174008_691000_SOMATOM_Definition_Edge_ID38_Harmonized_10mGy_FBP_NrFiles_343``:
the scanner code comes first and the rest is parsed from the right, because model names
contain underscores. IDs are not unique across scanners.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ctdose.rois import default_rois

#: Nominal CTDIvol levels of the collection, in mGy.
DOSE_LEVELS_MGY: tuple[int, ...] = (1, 3, 6, 10, 14)
#: Reconstruction families.
RECONS: tuple[str, ...] = ("FBP", "IR", "DL")
#: The 13 scanner codes of the collection.
SCANNER_CODES: tuple[str, ...] = (
    "A1", "A2", "B1", "B2", "C1", "D1", "E1", "E2", "F1", "G1", "G2", "H1", "H2",
)
#: The six liver ROIs and their four classes: the default ROI set (ctdose/data/rois_phantom.yaml).
ROI_CLASSES: dict[str, str] = dict(default_rois().classes)
ROI_NAMES: tuple[str, ...] = default_rois().names

_NAME_RE = re.compile(
    r"^(?P<scanner>[A-Za-z]\d+)_(?P<middle>.*)_ID(?P<scan_id>\d+)_Harmonized_"
    r"(?P<dose>\d+(?:\.\d+)?)mGy_(?P<recon>FBP|IR|DL)(?:_NrFiles_(?P<nfiles>\d+))?$"
)


@dataclass(frozen=True)
class SeriesName:
    """The fields encoded in a TCIA series name."""

    scanner: str
    scan_id: int
    dose_mgy: float
    recon: str
    n_files: int | None
    middle: str  # acquisition numbers and model, as written


def parse_series_name(name: str) -> SeriesName | None:
    """Parse a TCIA series name (or a path ending in one); ``None`` if it does not match."""
    stem = name.strip().rstrip("/").split("/")[-1]
    m = _NAME_RE.match(stem)
    if m is None:
        return None
    return SeriesName(
        scanner=m["scanner"].upper(),
        scan_id=int(m["scan_id"]),
        dose_mgy=float(m["dose"]),
        recon=m["recon"],
        n_files=int(m["nfiles"]) if m["nfiles"] else None,
        middle=m["middle"],
    )


def format_series_name(scanner: str, middle: str, scan_id: int, dose_mgy: float, recon: str,
                       n_files: int | None = None) -> str:
    """Build a series name in the TCIA scheme (inverse of :func:`parse_series_name`)."""
    dose = f"{dose_mgy:g}"
    name = f"{scanner}_{middle}_ID{scan_id}_Harmonized_{dose}mGy_{recon}"
    return name if n_files is None else f"{name}_NrFiles_{n_files}"


def normalise_roi_label(label: str) -> str:
    """Canonical ROI name of the default set for a SEG segment label (case, spaces, known misspellings)."""
    return default_rois().canonical(label)


def nominal_dose(ctdivol_mgy: float, levels: tuple[float, ...] = DOSE_LEVELS_MGY) -> float:
    """The nominal dose level closest to a measured CTDIvol (mGy)."""
    return float(min(levels, key=lambda level: abs(level - ctdivol_mgy)))
