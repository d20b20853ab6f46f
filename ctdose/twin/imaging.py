"""One acquisition of the twin: the signal through the kernel's MTF, the noise through Poisson counts and FBP.

FBP is linear, so an image is the reconstruction of the noise-free projections plus the reconstruction
of the noise. The twin computes the two parts the cheapest exact way each:

* **Signal.** FBP of the noise-free projections of the phantom is the phantom convolved with the
  system's point-spread function: the apodisation window of the ramp filter times the response of the
  projector's and back-projector's linear interpolation (sinc^2 each), radially,
  ``M(f) = W(f / cutoff) sinc(f)^4`` (f in cycles per pixel). The twin applies ``M`` to the voxelised
  phantom (with a margin around the region) after the scanner's CT-number calibration
  (``hu_scale * HU + hu_offset``). ``tests/test_twin_physics.py`` checks it against project + FBP.
* **Noise.** Expected counts per ray follow the whole body's attenuation (tissue means on a 4x coarser
  grid over the whole field of view, projected onto the full detector); counts are drawn from
  Poisson (plus Gaussian electronic noise), log-transformed with the bias correction of
  ``acquisition``, the expected line integrals subtracted, and the noise sinogram reconstructed by
  FBP onto the reconstructed region only (targeted reconstruction: the region's pixels have exactly
  their weights in the full matrix).
* **Slice sensitivity.** A slice of thickness ``m * increment`` averages ``m`` independent noise slabs
  one increment thick (each with 1/m of the slice's photons), so neighbouring slices share noise as
  overlapping reconstructions do; the signal averages phantom planes over the thickness
  (``phantom.build_phantom``).

Every (scanner, dose, repetition) draws its own counts: doses and repetitions are independent
acquisitions. FBP, IR and DL of one acquisition share its counts (``generate``).
"""

from __future__ import annotations

import numpy as np

from ctdose.twin import phantom as ph
from ctdose.twin.acquisition import acquire_counts, add_electronic_noise, counts_to_line_integrals, hu_to_mu
from ctdose.twin.projector import ParallelBeam, default_n_angles, fbp, project, window_response
from ctdose.twin.scanners import ScannerProfile

#: The coarse grid of the whole-body projection (for the expected counts) is this many times coarser.
COARSE_FACTOR = 4
#: Pixels voxelised around the region for the signal's blur (the PSF falls below 1e-3 of its peak
#: within about 8 pixels for the twin's windows).
SIGNAL_MARGIN = 24


def n_angles_for(grid: ph.ScanGrid) -> int:
    """Views over 180 degrees: pi/2 x the region's width in pixels, even (402 for the demo's 256 region).

    Only the noise is back-projected, so too few views cannot alias the phantom's edges; they make the
    noise texture slightly coarser at the region's corners.
    """
    return default_n_angles(max(grid.box[2:]))


def system_mtf(shape: tuple[int, int], window: str, cutoff: float) -> np.ndarray:
    """Radial MTF of FBP on an image of ``shape`` (rows, cols): rfft2 layout, (rows, cols // 2 + 1)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    return (window_response(f, window, cutoff) * np.sinc(f) ** 4).astype(np.float32)


def signal_image(phantom: ph.PhantomImage, profile: ScannerProfile) -> np.ndarray:
    """The noise-free FBP image of a phantom on its grid's region (slices, rows, cols), HU float32."""
    hu = profile.hu_scale * phantom.hu + np.float32(profile.hu_offset)
    mtf = system_mtf(hu.shape[1:], profile.window, profile.cutoff)
    blurred = np.fft.irfft2(np.fft.rfft2(hu) * mtf, s=hu.shape[1:]).astype(np.float32)
    m = phantom.margin
    return np.ascontiguousarray(blurred[:, m:blurred.shape[1] - m, m:blurred.shape[2] - m])


def slab_positions(grid: ph.ScanGrid) -> tuple[np.ndarray, int]:
    """z (mm) of the noise slabs (one increment thick) and slabs per slice ``m`` (thickness / increment)."""
    m = max(1, int(round(grid.thickness_mm / grid.increment_mm)))
    first = grid.slice_z[0] - (m - 1) / 2 * grid.increment_mm
    return first + np.arange(grid.n_slices + m - 1) * grid.increment_mm, m


def body_line_integrals(grid: ph.ScanGrid, pose: ph.Pose, z: np.ndarray, mu_water: float,
                        n_angles: int) -> np.ndarray:
    """Noise-free line integrals (mu*mm) through the whole body at planes ``z``: (planes, n_angles, n_pix).

    Tissue means (no texture) on a grid COARSE_FACTOR times coarser over the whole field of view,
    projected and linearly interpolated onto the full detector (bins one fine pixel wide).
    """
    n_coarse = grid.n_pix // COARSE_FACTOR
    coarse = ph.ScanGrid(n_coarse, grid.pixel_mm * COARSE_FACTOR, 1, grid.increment_mm, grid.increment_mm)
    mu = hu_to_mu(ph.TISSUE_MEAN_HU[ph.tissue_labels(coarse, pose, z)], mu_water)
    p = project(mu, ParallelBeam(n_coarse, n_angles, n_coarse), coarse.pixel_mm)
    t = (np.arange(grid.n_pix) - grid.n_pix // 2) / COARSE_FACTOR + n_coarse // 2  # fine bin -> coarse
    i0 = np.clip(np.floor(t).astype(int), 0, n_coarse - 2)
    w = np.clip(t - i0, 0.0, 1.0).astype(np.float32)
    return (p[..., i0] * (1 - w) + p[..., i0 + 1] * w).astype(np.float32)


def noise_sinograms(line_integrals: np.ndarray, photons_per_ray: float, electronic_noise_counts: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Noise of the measured line integrals (float32, same shape): log(I0 / (n + 1/2)) - p, n ~ Poisson."""
    counts = add_electronic_noise(acquire_counts(line_integrals, photons_per_ray, rng), electronic_noise_counts, rng)
    return counts_to_line_integrals(counts, photons_per_ray) - line_integrals


def noise_image(noise: np.ndarray, grid: ph.ScanGrid, profile: ScannerProfile, mu_water: float,
                n_angles: int) -> np.ndarray:
    """FBP of noise sinograms (slabs, n_angles, n_pix) onto the grid's region, in HU (slabs, rows, cols)."""
    geom = ParallelBeam(grid.n_pix, n_angles, grid.n_pix, grid.region)
    return fbp(noise, geom, grid.pixel_mm, profile.window, profile.cutoff) * np.float32(1000.0 / mu_water)


def slabs_to_slices(slabs: np.ndarray, m: int) -> np.ndarray:
    """Slices (n - m + 1, ...) averaging ``m`` consecutive slabs (n, ...)."""
    if m == 1:
        return slabs
    c = np.cumsum(slabs, axis=0, dtype=np.float64)
    c = np.concatenate([np.zeros((1, *slabs.shape[1:])), c])
    return ((c[m:] - c[:-m]) / m).astype(np.float32)


def acquisition_noise(body_p: np.ndarray, grid: ph.ScanGrid, profile: ScannerProfile, mu_water: float,
                      photons_per_ray: float, rng: np.random.Generator) -> np.ndarray:
    """The noise image (slices, rows, cols) HU of one acquisition at ``photons_per_ray`` per slice.

    ``body_p``: the body's line integrals at the slab planes (``body_line_integrals`` at
    ``slab_positions``); each slab gets 1/m of the photons.
    """
    _, m = slab_positions(grid)
    noise = noise_sinograms(body_p, photons_per_ray / m, profile.electronic_noise_counts, rng)
    return slabs_to_slices(noise_image(noise, grid, profile, mu_water, body_p.shape[1]), m)
