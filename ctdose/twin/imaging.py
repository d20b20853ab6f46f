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
* **Shading.** A scanner-specific error of the CT numbers next to bone and the object's edges (a
  stand-in for beam-hardening and scatter residuals, and for every other difference between scanners
  that repeated scans on one scanner share): ``shading_hu`` times a unit-variance field of
  long-wavelength plane waves fixed in scanner coordinates, seeded by the scanner code, so it is the
  same for every dose and repetition of a scanner and differs between scanners (``shading_field``),
  times a weight that decays over SHADING_DECAY_MM away from bone and air (``shading_weight``), so
  the liver's interior and its ROIs keep their CT numbers.
* **IR / DL edges.** Iterative and DL reconstructions resolve high-contrast edges differently from
  FBP while low-contrast detail follows the noise (contrast-dependent resolution). The twin adds
  ``ir_edge_gain`` times ``edge_detail`` (an in-plane unsharp mask of the image's part outside the
  soft-tissue window: air, lung and bone edges) to IR and DL images; ROIs inside the liver are left
  untouched. It makes FBP and IR of one acquisition differ at the edges at every dose, the
  dose-independent part of the paper's Table 6 (which pairs any reconstructions).
* **Edge jitter.** Every acquisition misplaces high-contrast edges a little, differently each time: the
  real scanners' helical interpolation (windmill) errors follow each acquisition's start angle, and
  the paper's rigid registration and resampling leave local residuals at the phantom's edges. Neither
  is shared by two acquisitions, so they set a floor under every pair of the paper's Table 6, of any
  reconstructions. The twin moves the high-contrast part of the image (``edge_gradient``: outside the
  soft-tissue window) by a smooth random displacement field of rms ``edge_jitter_mm`` per in-plane
  axis, drawn per acquisition (``jitter_field``), to first order: ``-(d_x dh/dx + d_y dh/dy)``
  (``edge_jitter``). FBP, IR and DL of one acquisition share it; soft tissue and the ROIs do not move.
* **Slice sensitivity.** A slice of thickness ``m * increment`` averages ``m`` independent noise slabs
  one increment thick (each with 1/m of the slice's photons), so neighbouring slices share noise as
  overlapping reconstructions do; the signal averages phantom planes over the thickness
  (``phantom.build_phantom``).

Every (scanner, dose, repetition) draws its own counts: doses and repetitions are independent
acquisitions. FBP, IR and DL of one acquisition share its counts (``generate``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctdose.naming import ROI_NAMES
from ctdose.twin import phantom as ph
from ctdose.twin.acquisition import acquire_counts, add_electronic_noise, counts_to_line_integrals, hu_to_mu
from ctdose.twin.projector import ParallelBeam, default_n_angles, fbp, project, window_response
from ctdose.twin.scanners import ScannerProfile

#: The coarse grid of the whole-body projection (for the expected counts) is this many times coarser.
COARSE_FACTOR = 4
#: Pixels voxelised around the region for the signal's blur (the PSF falls below 1e-3 of its peak
#: within about 8 pixels for the twin's windows).
SIGNAL_MARGIN = 24
#: Noise-free HU below which a voxel is air (no shading there), and from which it is bone.
AIR_HU = -500.0
BONE_HU = 500.0
#: Decay length (mm) of the shading away from bone and the object's edges.
SHADING_DECAY_MM = 8.0
#: The shading pattern: plane waves, their in-plane wavelength range and shortest wavelength along z
#: (mm), and the seed mixed with the scanner code.
SHADING_WAVES = 24
SHADING_WAVELENGTH_MM = (80.0, 350.0)
SHADING_MIN_WAVELENGTH_Z_MM = 200.0
SHADING_SEED = 20241104
#: Soft-tissue window (HU) of the IR / DL edge detail: only what lies outside it (air, lung, bone) is sharpened.
EDGE_SOFT_TISSUE_HU = (-200.0, 300.0)
#: Width (mm, Gaussian sigma) of the unsharp mask of the IR / DL edge detail.
EDGE_SIGMA_MM = 1.5
#: The edge-jitter displacement field: white noise on nodes this far apart (mm, each axis), smoothed by
#: a Gaussian of JITTER_SMOOTH_NODES nodes and linearly interpolated onto the grid.
JITTER_NODE_MM = 3.0
JITTER_SMOOTH_NODES = 1.5


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


def shading_field(grid: ph.ScanGrid, code: str) -> np.ndarray:
    """Scanner ``code``'s unit-variance shading pattern on ``grid``'s region (slices, rows, cols) float32.

    ``sqrt(2 / K) sum_j cos(2 pi k_j . x + phase_j)`` over K = SHADING_WAVES plane waves in scanner
    coordinates x (mm, from the field of view's center and z = 0): in-plane wavelengths uniform in
    SHADING_WAVELENGTH_MM, along z at least SHADING_MIN_WAVELENGTH_Z_MM. Variance 1 in expectation
    (each wave's is 1/2); the same function of position on any grid.
    """
    rng = np.random.default_rng([SHADING_SEED, *(ord(ch) for ch in code.upper())])
    k_plane = 1.0 / rng.uniform(*SHADING_WAVELENGTH_MM, SHADING_WAVES)
    angle = rng.uniform(0.0, 2 * np.pi, SHADING_WAVES)
    kz = rng.uniform(-1.0, 1.0, SHADING_WAVES) / SHADING_MIN_WAVELENGTH_Z_MM
    phase = rng.uniform(0.0, 2 * np.pi, SHADING_WAVES)
    row0, col0, rows, cols = grid.box
    c = grid.n_pix // 2
    x = (np.arange(col0, col0 + cols) - c) * grid.pixel_mm
    y = (np.arange(row0, row0 + rows) - c) * grid.pixel_mm
    z = grid.slice_z
    ex = np.exp(2j * np.pi * np.outer(k_plane * np.cos(angle), x))          # (K, cols)
    ey = np.exp(2j * np.pi * np.outer(k_plane * np.sin(angle), y))          # (K, rows)
    ez = np.exp(1j * (2 * np.pi * np.outer(z, kz) + phase[None, :]))         # (slices, K)
    plane = (ey[:, :, None] * ex[:, None, :]).reshape(SHADING_WAVES, -1)     # (K, rows * cols)
    field = np.real(ez @ plane).reshape(len(z), rows, cols) * np.sqrt(2.0 / SHADING_WAVES)
    return field.astype(np.float32)


def shading_weight(phantom: ph.PhantomImage) -> np.ndarray:
    """Where the shading acts, (slices, rows, cols) of the region in [0, 1]: ``exp(-d / SHADING_DECAY_MM)``
    with ``d`` the in-plane distance (mm) to the nearest bone or air voxel of the noise-free phantom
    (HU >= BONE_HU or < AIR_HU, margin included), 0 in air itself.

    Beam-hardening and scatter errors concentrate next to dense bone and at the object's edges (streaks,
    dark bands); the liver's interior, where the ROIs are, is left nearly untouched.
    """
    dense_or_air = (phantom.hu >= BONE_HU) | (phantom.hu < AIR_HU)
    distance = np.stack([ndimage.distance_transform_edt(~plane, sampling=phantom.grid.pixel_mm)
                         for plane in dense_or_air])
    m = phantom.margin
    inner = (slice(None), slice(m, phantom.hu.shape[1] - m), slice(m, phantom.hu.shape[2] - m))
    weight = np.exp(-distance[inner] / SHADING_DECAY_MM).astype(np.float32)
    weight[phantom.hu[inner] < AIR_HU] = 0.0
    return weight


def shading_image(phantom: ph.PhantomImage, profile: ScannerProfile) -> np.ndarray:
    """The scanner's shading on the phantom's region (slices, rows, cols), HU float32:
    ``profile.shading_hu`` x ``shading_field`` x ``shading_weight`` (zeros when ``shading_hu`` is 0)."""
    if not profile.shading_hu:
        return np.zeros(phantom.rois.shape, dtype=np.float32)
    return np.float32(profile.shading_hu) * shading_field(phantom.grid, profile.code) * shading_weight(phantom)


def roi_shading_hu(shading: np.ndarray, rois: np.ndarray) -> dict[str, float]:
    """Mean of ``shading`` (HU, ``shading_image``) over each ROI's voxels of ``rois`` (labels 1..6, same
    shape): what the scanner adds to the ROI's calibrated CT number in this scan (absent ROIs left out)."""
    return {name: round(float(shading[rois == i].mean()), 3)
            for i, name in enumerate(ROI_NAMES, start=1) if (rois == i).any()}


def signal_image(phantom: ph.PhantomImage, profile: ScannerProfile, shading: np.ndarray | None = None) -> np.ndarray:
    """The noise-free FBP image of a phantom on its grid's region (slices, rows, cols), HU float32.

    CT-number calibration (``hu_scale * HU + hu_offset``), the kernel's MTF, then the scanner's shading
    (``shading_image``; pass it when already computed).
    """
    hu = profile.hu_scale * phantom.hu + np.float32(profile.hu_offset)
    mtf = system_mtf(hu.shape[1:], profile.window, profile.cutoff)
    blurred = np.fft.irfft2(np.fft.rfft2(hu) * mtf, s=hu.shape[1:]).astype(np.float32)
    m = phantom.margin
    image = np.ascontiguousarray(blurred[:, m:blurred.shape[1] - m, m:blurred.shape[2] - m])
    if profile.shading_hu:
        image += shading_image(phantom, profile) if shading is None else shading
    return image


def high_contrast_part(signal: np.ndarray) -> np.ndarray:
    """The part of an image (HU, any shape) outside the soft-tissue window: ``signal - clip(signal,
    EDGE_SOFT_TISSUE_HU)``; zero in soft tissue, negative in air and lung, positive in bone."""
    return signal - np.clip(signal, *EDGE_SOFT_TISSUE_HU)


def edge_detail(signal: np.ndarray, pixel_mm: float) -> np.ndarray:
    """High-contrast edge detail of a noise-free image (slices, rows, cols) HU: ``h - G * h`` per slice,
    with ``h = high_contrast_part(signal)`` (zero in soft tissue) and ``G`` an in-plane
    Gaussian of EDGE_SIGMA_MM. Same shape, float32; IR and DL images add ``ir_edge_gain`` times it.

    Zero-mean across each edge and zero wherever soft tissue extends beyond about 3 sigma from air and
    bone (the liver's ROIs), so CT numbers of tissue are kept and only the edges' sharpness changes.
    """
    h = high_contrast_part(signal)
    sigma_px = EDGE_SIGMA_MM / pixel_mm
    return (h - ndimage.gaussian_filter(h, sigma=(0.0, sigma_px, sigma_px), mode="reflect")).astype(np.float32)


def edge_gradient(signal: np.ndarray, pixel_mm: float) -> np.ndarray:
    """In-plane gradient (2, slices, rows, cols) HU/mm, float32, of the high-contrast part of a noise-free
    image: ``h = high_contrast_part(signal)`` (as ``edge_detail``), x (columns) first.

    Zero wherever the image lies inside the soft-tissue window, so the liver and its ROIs never move.
    """
    h = high_contrast_part(signal)
    d_rows, d_cols = np.gradient(h, pixel_mm, axis=(1, 2))
    return np.stack([d_cols, d_rows]).astype(np.float32)


def _gaussian_sum_of_squares(sigma: float) -> float:
    """Sum of the squared weights of ``ndimage.gaussian_filter1d``'s kernel of ``sigma`` samples."""
    delta = np.zeros(8 * int(np.ceil(sigma)) + 9)
    delta[len(delta) // 2] = 1.0
    return float(np.sum(ndimage.gaussian_filter1d(delta, sigma, mode="constant") ** 2))


def _linear_weights(positions: np.ndarray) -> np.ndarray:
    """(len(positions), nodes) weights of linear interpolation at fractional node ``positions``."""
    nodes = int(np.floor(positions.max())) + 2
    i0 = np.floor(positions).astype(int)
    w = positions - i0
    weights = np.zeros((len(positions), nodes))
    weights[np.arange(len(positions)), i0] = 1.0 - w
    weights[np.arange(len(positions)), i0 + 1] = w
    return weights


def jitter_field(grid: ph.ScanGrid, rng: np.random.Generator) -> np.ndarray:
    """A random smooth displacement field (2, slices, rows, cols) float32 on ``grid``'s region, x first:
    unit variance at the nodes (about 0.9 on average, linear interpolation lowers it between them),
    correlation length about JITTER_SMOOTH_NODES x JITTER_NODE_MM, independent x and y components.

    White noise on nodes JITTER_NODE_MM apart over the region (plus a margin for the smoothing),
    Gaussian-smoothed by JITTER_SMOOTH_NODES nodes, scaled to unit variance, then interpolated linearly
    (separable weight matrices: about 0.1 s for the demo's 256 x 256 x 101 region).
    """
    _, _, rows, cols = grid.box
    margin = int(np.ceil(4 * JITTER_SMOOTH_NODES))
    step = (grid.increment_mm, grid.pixel_mm, grid.pixel_mm)
    positions = [np.arange(n) * s / JITTER_NODE_MM + margin for n, s in zip((grid.n_slices, rows, cols), step)]
    weights = [_linear_weights(p) for p in positions]
    shape = tuple(w.shape[1] + margin for w in weights)
    scale = _gaussian_sum_of_squares(JITTER_SMOOTH_NODES) ** -1.5
    out = np.empty((2, grid.n_slices, rows, cols), dtype=np.float32)
    for axis in range(2):
        nodes = ndimage.gaussian_filter(rng.standard_normal(shape), JITTER_SMOOTH_NODES, mode="constant")
        nodes = nodes[:weights[0].shape[1], :weights[1].shape[1], :weights[2].shape[1]] * scale
        along_x = nodes @ weights[2].T  # (nz, ny, cols)
        along_y = np.matmul(weights[1], along_x)  # (nz, rows, cols)
        out[axis] = np.tensordot(weights[0], along_y, axes=(1, 0))
    return out


def edge_jitter(gradient: np.ndarray, field: np.ndarray, jitter_mm: float) -> np.ndarray:
    """The image change (slices, rows, cols) HU float32 of moving the high-contrast part by
    ``jitter_mm * field`` (mm): ``-(d_x dh/dx + d_y dh/dy)``, first order.

    ``gradient``: ``edge_gradient`` of the scan's signal; ``field``: ``jitter_field`` of the acquisition.
    """
    out = gradient[0] * field[0]
    out += gradient[1] * field[1]
    out *= np.float32(-jitter_mm)
    return out


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


#: Planes (slabs) of sinogram handled together by ``noise_sinograms`` (their float64 temporaries stay in
#: cache: one plane of the demo's 404 x 512 sinogram is 1.7 MB; 1.6x faster than whole arrays).
NOISE_BLOCK_PLANES = 2


def noise_sinograms(line_integrals: np.ndarray, photons_per_ray: float, electronic_noise_counts: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Noise of the measured line integrals (float32, same shape): log(I0 / (n + 1/2)) - p, n ~ Poisson.

    Bit for bit ``counts_to_line_integrals(add_electronic_noise(acquire_counts(p, I0, rng), s, rng), I0) - p``
    (the same draws in the same order: every Poisson count first, then every Gaussian), computed
    NOISE_BLOCK_PLANES planes at a time with in-place operations (about half the time).
    """
    p = np.asarray(line_integrals)
    if p.dtype != np.float32:  # the composition itself (its result is then float64)
        counts = add_electronic_noise(acquire_counts(p, photons_per_ray, rng), electronic_noise_counts, rng)
        return counts_to_line_integrals(counts, photons_per_ray) - p
    planes = p.reshape(-1, *p.shape[-2:]) if p.ndim >= 2 else p.reshape(1, -1)
    step = NOISE_BLOCK_PLANES
    counts = np.empty(planes.shape, dtype=np.int64)
    for start in range(0, len(planes), step):  # Generator.poisson draws in C order: blocks keep the stream
        expected = planes[start:start + step].astype(np.float64)
        np.negative(expected, out=expected)
        np.exp(expected, out=expected)
        expected *= photons_per_ray
        counts[start:start + step] = rng.poisson(expected)
    out = np.empty(planes.shape, dtype=np.float32)
    for start in range(0, len(planes), step):
        n = counts[start:start + step]
        if electronic_noise_counts > 0:
            measured = rng.normal(0.0, electronic_noise_counts, size=n.shape)
            measured += n
        else:
            measured = n.astype(np.float64)
        np.maximum(measured, 0.0, out=measured)
        measured += 0.5
        np.divide(photons_per_ray, measured, out=measured)
        np.log(measured, out=measured)
        np.subtract(measured.astype(np.float32), planes[start:start + step], out=out[start:start + step])
    return out.reshape(p.shape)


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
