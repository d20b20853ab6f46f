"""Reconstruction of the twin's scans: FBP with a scanner kernel, and the IR / DL approximations.

* FBP: parallel-beam filtered back-projection (``projector.fbp``) with the scanner's apodised ramp
  filter, converted from attenuation to HU.
* IR (an honest approximation, not a vendor algorithm): FBP followed by an edge-preserving,
  noise-adaptive smoothing: a few explicit gradient steps on 1/2 |u - f|^2 + lam * sum Huber_delta(grad u),
  in-plane, in units of the expected noise std at that dose (so its strength follows the noise level:
  the Huber threshold is ``delta`` noise stds). It lowers noise by roughly a third and keeps edges.
* DL (only where the real collection has it: D1 at 1, 3, 6 mGy, E2 at every dose): the same model with a stronger
  weight and more steps (noise roughly halved, smoother "plastic" texture), standing in for a
  deep-learning denoiser.
"""

from __future__ import annotations

import numba
import numpy as np

from ctdose.twin.acquisition import mu_to_hu
from ctdose.twin.projector import ParallelBeam, fbp

#: (weight factor, delta in noise stds, iterations) of the two denoising settings; the weight is the
#: scanner's ``ir_strength`` times the factor.
DENOISE_SETTINGS: dict[str, tuple[float, float, int]] = {"IR": (1.0, 1.5, 8), "DL": (3.3, 1.5, 16)}


def fbp_hu(line_integrals: np.ndarray, geom: ParallelBeam, pixel_mm: float, mu_water: float,
           window: str, cutoff: float) -> np.ndarray:
    """HU images (slices, n, n) from line integrals (slices, n_angles, n_det) in mu*mm."""
    return mu_to_hu(fbp(line_integrals, geom, pixel_mm, window, cutoff), mu_water)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _huber_steps(f: np.ndarray, u: np.ndarray, px: np.ndarray, py: np.ndarray, lam: np.float32,
                 delta: np.float32, tau: np.float32, iterations: int) -> None:
    """``iterations`` gradient steps on every slice of ``u`` (slices, n, m) float32, in place.

    ``f``: the data term (same shape); ``px``, ``py``: (n, m) scratch. Per step: the Huber flux
    ``p = grad u / max(|grad u|, delta)`` (forward differences, 0 past the last row / column), then
    ``u -= tau * ((u - f) - lam * div p)`` (backward differences). Plain IEEE float32 (no fast-math), so
    every CPU gives the same bits.
    """
    n, m = f.shape[1], f.shape[2]
    zero, one = np.float32(0.0), np.float32(1.0)
    for k in range(f.shape[0]):
        for _ in range(iterations):
            for i in range(n):
                for j in range(m):
                    gx = u[k, i, j + 1] - u[k, i, j] if j < m - 1 else zero
                    gy = u[k, i + 1, j] - u[k, i, j] if i < n - 1 else zero
                    w = one / max(np.sqrt(gx * gx + gy * gy), delta)
                    px[i, j] = gx * w
                    py[i, j] = gy * w
            for i in range(n):
                for j in range(m):
                    div = px[i, j] - px[i, j - 1] if j > 0 else px[i, j]
                    div = div + py[i, j]
                    if i > 0:
                        div = div - py[i - 1, j]
                    u[k, i, j] = u[k, i, j] - tau * ((u[k, i, j] - f[k, i, j]) - lam * div)


def huber_smooth(hu: np.ndarray, noise_hu: float, lam: float, delta: float, iterations: int) -> np.ndarray:
    """Edge-preserving in-plane smoothing of (slices, n, n) HU images (float32, same shape; (n, n) too).

    Gradient descent on 1/2 |u - f|^2 + lam * sum_pixels Huber_delta(|grad u|), with u and f in units
    of ``noise_hu``; step 1 / (1 + 8 lam / delta) (stable for this energy's Lipschitz constant).
    Compiled (``_huber_steps``), slice by slice: 3.3x faster than the same steps as whole-array
    operations (101 slices of 256 x 256, 8 and 16 steps, one core).
    """
    if noise_hu <= 0:
        raise ValueError(f"expected noise std must be positive, got {noise_hu}")
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    f = hu.reshape(-1, *hu.shape[-2:]) / np.float32(noise_hu)  # any leading axes: slices
    u = f.copy()
    px = np.empty(f.shape[1:], dtype=np.float32)
    py = np.empty_like(px)
    tau = 1.0 / (1.0 + 8.0 * lam / delta)
    _huber_steps(f, u, px, py, np.float32(lam), np.float32(delta), np.float32(tau), iterations)
    return (u * np.float32(noise_hu)).reshape(hu.shape)


def denoise(hu: np.ndarray, recon: str, noise_hu: float, strength: float = 0.6) -> np.ndarray:
    """The IR or DL image from an FBP image (expected FBP noise std ``noise_hu`` at this dose).

    ``strength``: the scanner's IR weight (``ScannerProfile.ir_strength``; DL multiplies it).
    """
    if recon not in DENOISE_SETTINGS:
        raise ValueError(f"no denoiser for reconstruction {recon!r}; expected IR or DL")
    factor, delta, iterations = DENOISE_SETTINGS[recon]
    return huber_smooth(hu, noise_hu, strength * factor, delta, iterations)
