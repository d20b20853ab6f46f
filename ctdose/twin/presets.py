"""Presets of the twin: field of view, reconstructed region, slices and what to simulate.

Every preset images the collection's 350 mm field of view (``n_pix`` x ``pixel_mm``) and, by default,
reconstructs only the region the pipeline needs (targeted reconstruction, as a scanner reconstructs a
smaller display field): a square of ``region_px`` pixels centered at ``region_center_mm`` (x, y in
scanner LPS mm) that holds every 64 x 64 x 32 patch (0.6836 x 0.6836 x 2 mm) whose center lies inside
an ROI, after the largest repositioning. ``region_px=None`` reconstructs the whole 350 mm field.
Slices cover ``z_extent_mm`` around ``z_center_mm`` at each scanner's own thickness and increment (or
``slice_mm`` / ``increment_mm`` where a preset overrides them).

* ``tiny`` (tests): 2 scanners x 2 doses x FBP + IR, 1 repetition, the demo's region at twice the
  collection's pixel size and 2 mm contiguous slices: seconds.
* ``demo`` (``make demo``): all 13 scanners, the 5 doses, FBP + IR + DL where the collection has DL,
  2 repetitions (each an independent acquisition at every dose), the collection's 0.6836 mm pixels and
  each scanner's slice thickness / increment; 276 series.
* ``full``: as ``demo`` with the collection's repetitions (10; 9 on E1 at 10 mGy): 1 378 series.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ctdose.naming import DOSE_LEVELS_MGY
from ctdose.twin.scanners import SCANNERS

#: The collection's reconstruction: 512 x 512 pixels of 0.6836 mm (350 mm field of view).
COLLECTION_PIXEL_MM = 350.0 / 512


@dataclass(frozen=True)
class Preset:
    """What to simulate and on which grid (mm throughout; ``None`` = the scanner's own / the whole field)."""

    name: str
    n_pix: int
    pixel_mm: float
    region_px: int | None
    region_center_mm: tuple[float, float]
    z_extent_mm: float
    scanners: tuple[str, ...]
    doses: tuple[float, ...]
    recons: tuple[str, ...]
    reps: int
    z_subsamples: int = 4
    slice_mm: float | None = None
    increment_mm: float | None = None
    z_center_mm: float = 0.0

    def with_overrides(self, **changes) -> "Preset":
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_ALL = dict(scanners=tuple(SCANNERS), doses=tuple(map(float, DOSE_LEVELS_MGY)), recons=("FBP", "IR", "DL"))
PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 256, 2 * COLLECTION_PIXEL_MM, 128, (-56.0, 0.0), 100.0, ("A1", "C1"), (3.0, 14.0),
                   ("FBP", "IR"), 1, 2, slice_mm=2.0, increment_mm=2.0),
    "demo": Preset("demo", 512, COLLECTION_PIXEL_MM, 256, (-56.0, 0.0), 100.0, reps=2, **_ALL),
    "full": Preset("full", 512, COLLECTION_PIXEL_MM, 256, (-56.0, 0.0), 100.0, reps=10, **_ALL),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError naming it if unknown)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None
