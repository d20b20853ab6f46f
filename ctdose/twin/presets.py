"""Presets of the twin: matrix, field of view, slice range and what to simulate.

``tiny`` is for tests (2 scanners x 2 doses x FBP+IR, 128 matrix at twice the pixel size: seconds).
``demo`` is the default data of ``make demo``: all 13 scanners, the 5 doses, FBP + IR (+ DL for the
two GE scanners with DL), 1 repetition, a 256 matrix at the collection's 0.6836 mm pixels (175 mm
field of view holding the whole 156 mm-wide phantom). ``full`` is the collection's 512 matrix
(350 mm field of view) and 10 repetitions (1 378 series); it costs about 40x the demo (4x the
pixels and 2x the views per slice, 10x the scans): roughly 1-2 hours on 2 cores and ~4 GB of memory
per worker for the projector.

The slice range (112 mm, centered on the ROIs' z) holds every 64x64x32 patch (0.6836 x 0.6836 x 2 mm)
whose center lies inside an ROI, after a repositioning of up to 2 mm along z.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ctdose.naming import DOSE_LEVELS_MGY
from ctdose.twin.scanners import SCANNERS


@dataclass(frozen=True)
class Preset:
    """What to simulate and on which grid (pixel mm in-plane; z range in mm)."""

    name: str
    n_pix: int
    pixel_mm: float
    z_extent_mm: float
    scanners: tuple[str, ...]
    doses: tuple[float, ...]
    recons: tuple[str, ...]
    reps: int
    z_subsamples: int = 2

    def with_overrides(self, **changes) -> "Preset":
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 128, 175.0 / 128, 112.0, ("A1", "C1"), (3.0, 14.0), ("FBP", "IR"), 1, 1),
    "demo": Preset("demo", 256, 350.0 / 512, 112.0, tuple(SCANNERS), tuple(map(float, DOSE_LEVELS_MGY)),
                   ("FBP", "IR", "DL"), 1),
    "full": Preset("full", 512, 350.0 / 512, 112.0, tuple(SCANNERS), tuple(map(float, DOSE_LEVELS_MGY)),
                   ("FBP", "IR", "DL"), 10),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError naming it if unknown)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None
