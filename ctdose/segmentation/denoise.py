"""Named denoisers applied to a CT volume before segmentation (the study's "denoising options").

A denoiser is a :data:`~ctdose.segmentation.interface.Denoiser`: ``(volume_hu (z, y, x), spacing_zyx_mm)
-> volume (z, y, x) float32 HU``. Registry by name:

* ``none``: the volume unchanged (a copy).
* ``tv``: total-variation denoising (``skimage.restoration.denoise_tv_chambolle``), slice by slice,
  weight = ``tv_factor`` x the estimated noise std (HU).
* ``nlm``: non-local means (``skimage.restoration.denoise_nl_means``, fast mode, 5 x 5 patches, search
  distance 6), slice by slice, h = ``nlm_factor`` x the estimated noise std, sigma = the estimate.
* ``cnn``: registered by :mod:`ctdose.segmentation.cnn_denoiser` (the other half of this step) when
  imported; :func:`get_denoiser` imports it on first use.

Noise estimate (HU), ``sigma_method``:

* ``local`` (default): the median, over soft-tissue pixels (-200..300 HU) of the body, of the
  standard deviation in 9 x 9 in-plane windows, on up to 16 evenly spaced slices. FBP noise is
  spatially correlated, which this estimate sees.
* ``wavelet``: ``skimage.restoration.estimate_sigma`` (robust MAD of the finest wavelet band). On
  the twin's FBP images it reads about 7x lower than the ROI noise (8 HU at 1 mGy where the ROI std is
  58 HU): the kernel removes most of the finest band, so it is kept as an option, not the default.

Slice-wise processing keeps the in-plane noise model (slices are reconstructed one by one) and
bounds memory; it does not use ``spacing_zyx_mm`` beyond checking it.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Callable

import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, estimate_sigma

from ctdose.segmentation.interface import Denoiser

#: Default strengths: weights as multiples of the estimated noise std (HU).
TV_FACTOR = 1.0
NLM_FACTOR = 0.8
SIGMA_METHODS = ("local", "wavelet")
#: Soft-tissue window (HU) of the local noise estimate, window size (pixels), slices sampled.
SOFT_TISSUE_HU = (-200.0, 300.0)
LOCAL_WINDOW = 9
SIGMA_SLICES = 16
#: Modules imported on first use of a name not yet registered (they register themselves).
PLUGINS = {"cnn": "ctdose.segmentation.cnn_denoiser"}

_REGISTRY: dict[str, Callable[..., Denoiser]] = {}


def estimate_noise_hu(volume_hu: np.ndarray, method: str = "local") -> float:
    """The noise std (HU) of a volume (z, y, x) by ``method`` (see the module docstring)."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"noise estimate needs a (z, y, x) volume, got shape {volume.shape}")
    picks = np.unique(np.linspace(0, volume.shape[0] - 1, min(SIGMA_SLICES, volume.shape[0])).round().astype(int))
    if method == "wavelet":
        return float(np.mean([estimate_sigma(volume[k].astype(np.float64)) for k in picks]))
    if method != "local":
        raise ValueError(f"unknown noise estimate {method!r}; expected one of {', '.join(SIGMA_METHODS)}")
    stds = []
    for k in picks:
        plane = volume[k].astype(np.float64)
        mean = ndimage.uniform_filter(plane, LOCAL_WINDOW)
        square = ndimage.uniform_filter(plane * plane, LOCAL_WINDOW)
        local = np.sqrt(np.maximum(square - mean * mean, 0.0))
        soft = (plane > SOFT_TISSUE_HU[0]) & (plane < SOFT_TISSUE_HU[1])
        soft = ndimage.binary_erosion(soft, iterations=LOCAL_WINDOW // 2)  # windows wholly inside
        if soft.any():
            stds.append(local[soft])
    if not stds:
        return float(np.mean([estimate_sigma(volume[k].astype(np.float64)) for k in picks]))
    return float(np.median(np.concatenate(stds)))


def _check(volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    volume = np.asarray(volume_hu, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"denoiser needs a (z, y, x) volume, got shape {volume.shape}")
    if len(spacing_zyx_mm) != 3 or min(spacing_zyx_mm) <= 0:
        raise ValueError(f"spacing must be three positive mm values (z, y, x), got {spacing_zyx_mm}")
    return volume


def _none(volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    return _check(volume_hu, spacing_zyx_mm).copy()


def _tv(volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float], *, factor: float,
        sigma_method: str) -> np.ndarray:
    volume = _check(volume_hu, spacing_zyx_mm)
    weight = factor * estimate_noise_hu(volume, sigma_method)
    if weight <= 0:
        return volume.copy()
    return np.stack([denoise_tv_chambolle(plane, weight=weight) for plane in volume]).astype(np.float32)


def _nlm(volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float], *, factor: float,
         sigma_method: str) -> np.ndarray:
    volume = _check(volume_hu, spacing_zyx_mm)
    sigma = estimate_noise_hu(volume, sigma_method)
    if sigma <= 0:
        return volume.copy()
    return np.stack([denoise_nl_means(plane, h=factor * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                                      patch_distance=6) for plane in volume.astype(np.float64)]).astype(np.float32)


def register_denoiser(name: str, factory: Callable[..., Denoiser]) -> None:
    """Register ``factory(**options) -> Denoiser`` under ``name`` (a later registration replaces it)."""
    _REGISTRY[name] = factory


def make_none(**_: object) -> Denoiser:
    """The identity denoiser (options ignored)."""
    return _none


def make_tv(*, tv_factor: float = TV_FACTOR, sigma_method: str = "local", **_: object) -> Denoiser:
    """Slice-wise TV denoiser with weight ``tv_factor`` x the estimated noise."""
    return partial(_tv, factor=float(tv_factor), sigma_method=sigma_method)


def make_nlm(*, nlm_factor: float = NLM_FACTOR, sigma_method: str = "local", **_: object) -> Denoiser:
    """Slice-wise non-local means with h = ``nlm_factor`` x the estimated noise."""
    return partial(_nlm, factor=float(nlm_factor), sigma_method=sigma_method)


register_denoiser("none", make_none)
register_denoiser("tv", make_tv)
register_denoiser("nlm", make_nlm)


def denoiser_names() -> list[str]:
    """Names registered so far (plugins such as ``cnn`` appear once imported)."""
    return sorted(_REGISTRY)


def get_denoiser(name: str, **options: object) -> Denoiser:
    """The denoiser called ``name`` built with ``options`` (unknown options are ignored by the built-ins).

    A name not yet registered is looked up in :data:`PLUGINS` and its module imported (it registers
    itself); ValueError in one line when that fails or the name is unknown.
    """
    if name not in _REGISTRY and name in PLUGINS:
        try:
            importlib.import_module(PLUGINS[name])
        except ImportError as err:
            raise ValueError(f"denoiser {name!r} needs {PLUGINS[name]}, which cannot be imported: {err}") from None
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(PLUGINS))
        raise ValueError(f"unknown denoiser {name!r}; expected one of {', '.join(known)}")
    return _REGISTRY[name](**options)
