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

import numpy as np
import torch

from ctdose.twin.acquisition import mu_to_hu
from ctdose.twin.projector import ParallelBeam, fbp

#: (weight factor, delta in noise stds, iterations) of the two denoising settings; the weight is the
#: scanner's ``ir_strength`` times the factor.
DENOISE_SETTINGS: dict[str, tuple[float, float, int]] = {"IR": (1.0, 1.5, 8), "DL": (3.3, 1.5, 16)}


def fbp_hu(line_integrals: np.ndarray, geom: ParallelBeam, pixel_mm: float, mu_water: float,
           window: str, cutoff: float) -> np.ndarray:
    """HU images (slices, n, n) from line integrals (slices, n_angles, n_det) in mu*mm."""
    return mu_to_hu(fbp(line_integrals, geom, pixel_mm, window, cutoff), mu_water)


#: Slices smoothed together (the smoothing is in-plane, so slices are independent): every iteration
#: of a block of 4 slices of the demo's region (1 MB per array) runs in cache. Bit-identical to the
#: whole volume at once; measured 6.5x faster (DL settings, 101 slices of 256 x 256, CPU time).
DENOISE_BLOCK_SLICES = 4


def huber_smooth(hu: np.ndarray, noise_hu: float, lam: float, delta: float, iterations: int) -> np.ndarray:
    """Edge-preserving in-plane smoothing of (slices, n, n) HU images (float32, same shape; (n, n) too).

    Gradient descent on 1/2 |u - f|^2 + lam * sum_pixels Huber_delta(|grad u|), with u and f in units
    of ``noise_hu``; step 1 / (1 + 8 lam / delta) (stable for this energy's Lipschitz constant).
    Runs DENOISE_BLOCK_SLICES slices at a time.
    """
    if noise_hu <= 0:
        raise ValueError(f"expected noise std must be positive, got {noise_hu}")
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    f_all = torch.from_numpy(hu.reshape(-1, *hu.shape[-2:])) / noise_hu  # any leading axes: slices
    out = torch.empty_like(f_all)
    tau = 1.0 / (1.0 + 8.0 * lam / delta)
    for start in range(0, f_all.shape[0], DENOISE_BLOCK_SLICES):
        f = f_all[start:start + DENOISE_BLOCK_SLICES]
        u = f.clone()
        for _ in range(iterations):
            gx = torch.zeros_like(u)
            gy = torch.zeros_like(u)
            gx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
            gy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
            weight = 1.0 / torch.clamp(torch.sqrt(gx * gx + gy * gy), min=delta)
            px, py = gx * weight, gy * weight
            div = px.clone()
            div[..., :, 1:] -= px[..., :, :-1]
            div += py
            div[..., 1:, :] -= py[..., :-1, :]
            u -= tau * ((u - f) - lam * div)
        out[start:start + DENOISE_BLOCK_SLICES] = u * noise_hu
    return out.numpy().reshape(hu.shape)


def denoise(hu: np.ndarray, recon: str, noise_hu: float, strength: float = 0.6) -> np.ndarray:
    """The IR or DL image from an FBP image (expected FBP noise std ``noise_hu`` at this dose).

    ``strength``: the scanner's IR weight (``ScannerProfile.ir_strength``; DL multiplies it).
    """
    if recon not in DENOISE_SETTINGS:
        raise ValueError(f"no denoiser for reconstruction {recon!r}; expected IR or DL")
    factor, delta, iterations = DENOISE_SETTINGS[recon]
    return huber_smooth(hu, noise_hu, strength * factor, delta, iterations)
