"""Shared interface of the segmentation dose-robustness step (issue 11).

A ``Segmenter`` maps a CT volume in HU to a label map on the same grid; a ``Denoiser`` maps a
HU volume to a denoised HU volume of the same shape. Both helpers' modules follow this exactly.

Wiring (how the runner finds the two halves): segmenters come from
``ctdose.segmentation.adapters.make_segmenter(kind: str, **options) -> Segmenter``; denoisers from
``ctdose.segmentation.denoise.get_denoiser(name, **options)``, where a name not yet registered is
imported from ``ctdose.segmentation.denoise.PLUGINS`` (``"cnn"`` -> ``ctdose.segmentation.cnn_denoiser``,
which calls ``ctdose.segmentation.denoise.register_denoiser("cnn", factory)`` at import;
``factory(**options) -> Denoiser``, ignoring options it does not know).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

#: ``contrast`` of a row (the series' phase): a twin series, a series without a catalog label, and a
#: simulated contrast-enhanced copy (``ctdose.segmentation.robustness``; the report tells them apart).
NATIVE, UNKNOWN_PHASE, SIMULATED_CONTRAST = "native", "unknown", "contrast (simulated)"


@runtime_checkable
class Segmenter(Protocol):
    name: str                      # e.g. "builtin-unet (twin-trained)", "totalsegmentator"
    labels: dict[int, str]         # label value -> name (0 = background, not listed)

    def predict(self, volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
        """volume (z, y, x) float32 HU -> label map (z, y, x) uint8/int16 on the same grid."""
        ...


Denoiser = Callable[[np.ndarray, tuple[float, float, float]], np.ndarray]   # HU volume (z,y,x) -> same shape

__all__ = ["Segmenter", "Denoiser"]
