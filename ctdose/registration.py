"""Rigid registration of a series to the reference series (SimpleITK): the algorithm only.

The transform maps reference (fixed) points to series (moving) points, the SimpleITK convention, so
that a patch grid placed in reference space can be sampled straight from the series' own volume
(:func:`ctdose.patches.sample_patches`). Normalised correlation (CT to CT: the HU scales of two
scanners differ at most by an offset and a gain, which correlation ignores; Mattes mutual information
is a setting), Euler 3D, a 3-level pyramid
(both images block-averaged by 4, 2, 1 in-plane: the averaging is the smoothing), random sampling
with a fixed seed, a fixed-image mask of the phantom (HU > -500) away from the image's edges,
initialised by aligning the image centers (geometry); regular-step gradient descent with rotations
scaled by the field-of-view radius. Quality = Pearson correlation of the two images inside the
phantom mask; when registration makes it worse the identity is kept and the reason recorded. The
per-series step that calls it lives in :mod:`ctdose.prepare`, transform files in
:mod:`ctdose.transform_io`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ctdose.volume import Volume, body_mask

#: Fewest metric samples per iteration at any pyramid level (small images get a larger percentage).
MIN_SAMPLES = 10_000


@dataclass
class RegistrationResult:
    """Outcome of :func:`register_rigid`.

    ``transform`` maps fixed (reference) points to moving (series) points; ``quality_*`` are
    Pearson correlations inside the phantom mask (1 = identical up to contrast).
    """

    transform: sitk.Euler3DTransform
    quality_before: float
    quality_after: float
    kept_identity: bool
    reason: str
    metric: float
    iterations: int
    seconds: float

    def parameters(self) -> dict[str, float]:
        """Rotation (degrees about x, y, z, around the transform's center = the fixed image's center)
        and translation (mm) of the Euler transform, for tables."""
        params = self.transform.GetParameters()
        return {"rot_x_deg": float(np.degrees(params[0])), "rot_y_deg": float(np.degrees(params[1])),
                "rot_z_deg": float(np.degrees(params[2])), "tx_mm": float(params[3]),
                "ty_mm": float(params[4]), "tz_mm": float(params[5])}


#: Registration metrics. Mutual information drifts on low-contrast, noisy CT (a region inside the
#: phantom at low dose): linear interpolation smooths the moving image's noise off the voxel grid,
#: which raises MI away from the true pose (measured on the twin's targeted regions: 1.5-4.5 mm off
#: with Mattes MI, at most 0.35 mm with correlation).
METRICS = ("correlation", "mattes")


@dataclass(frozen=True)
class RegistrationSettings:
    """Settings of :func:`register_rigid` (recorded in every transform's sidecar).

    ``threads`` is fixed (not "all cores"): ITK's multi-threaded metric sums its random samples in
    per-thread partial sums, so another thread count gives another transform in the last digits.
    With one thread the result is the same with any number of workers and on any machine size.

    ``border_mm``: the fixed mask leaves out a band this wide along the image's in-plane edges. Samples
    that a transform moves out of the moving image are dropped, so near a cut edge the sample set
    changes with the pose, and correlation favours poses that keep high-contrast structure cut by the
    edge in view (measured on the twin's targeted 175 mm regions: up to 1.6 mm off at the ROIs without
    the band, 0.45-0.75 mm with 20-30 mm). On a full 350 mm field of view the band is air.
    """

    seed: int = 0
    metric: str = "correlation"  # "correlation" or "mattes" (Mattes mutual information, ``bins`` bins)
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    sampling_percentages: tuple[float, ...] = (0.2, 0.05, 0.01)
    iterations: tuple[int, ...] = (100, 60, 30)
    bins: int = 32
    threads: int = 1
    border_mm: float = 20.0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown registration metric {self.metric!r}; expected one of {', '.join(METRICS)}")


def body_mask_image(image: sitk.Image, border_mm: float = 0.0) -> sitk.Image:
    """uint8 SimpleITK mask of the phantom (:func:`ctdose.volume.body_mask`) on ``image``'s grid,
    less the voxels within ``border_mm`` of the image's in-plane edges (unless that leaves none)."""
    inside = body_mask(sitk.GetArrayViewFromImage(image))
    if border_mm > 0:
        nx, ny = (int(np.ceil(border_mm / s)) for s in image.GetSpacing()[:2])
        interior = (slice(None), slice(ny, inside.shape[1] - ny), slice(nx, inside.shape[2] - nx))
        banded = np.zeros_like(inside)
        banded[interior] = inside[interior]
        inside = banded if banded.any() else inside
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def correlation_quality(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                        mask: sitk.Image) -> float:
    """Pearson correlation of ``fixed`` and ``moving`` (resampled through ``transform``) inside ``mask``.

    Only mask voxels that map inside the moving image's field of view count.
    """
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, np.nan, sitk.sitkFloat32)
    inside = sitk.GetArrayViewFromImage(mask).astype(bool) & ~np.isnan(sitk.GetArrayViewFromImage(resampled))
    a = sitk.GetArrayViewFromImage(fixed)[inside].astype(np.float64)
    b = sitk.GetArrayViewFromImage(resampled)[inside].astype(np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _shrink(image: sitk.Image, factor: int) -> sitk.Image:
    """Block-average ``image`` by ``factor`` in-plane and by as much along z as keeps voxels no
    thicker than the new in-plane size (thick slices are not shrunk further)."""
    sx, _, sz = image.GetSpacing()
    fz = max(1, int(factor * sx / sz + 1e-6))
    return sitk.BinShrink(image, [factor, factor, fz]) if (factor, fz) != (1, 1) else image


def register_rigid(fixed: Volume, moving: Volume,
                   settings: RegistrationSettings = RegistrationSettings()) -> RegistrationResult:
    """Rigidly register ``moving`` to ``fixed`` (both HU Volumes); see the module docstring.

    One registration per pyramid level, coarse to fine, each starting from the previous result.
    Level ``n`` block-averages both images by ``settings.shrink_factors[n]`` (the averaging is the
    smoothing) and samples ``settings.sampling_percentages[n]`` of the fixed mask's voxels (at least
    ``MIN_SAMPLES``) per iteration (random, seeded by ``settings.seed``), for at most
    ``settings.iterations[n]`` optimizer steps, on ``settings.threads`` threads.
    """
    default_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.threads)  # the metric's threads follow it
    try:
        return _register(fixed, moving, settings)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(default_threads)


def _register(fixed: Volume, moving: Volume, settings: RegistrationSettings) -> RegistrationResult:
    start = time.perf_counter()
    fixed_image = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    moving_image = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    mask = body_mask_image(fixed_image)
    identity = sitk.Euler3DTransform()
    before = correlation_quality(fixed_image, moving_image, identity, mask)

    transform = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))
    size_mm = np.array(fixed_image.GetSize()) * np.array(fixed_image.GetSpacing())
    radius = 0.5 * float(np.linalg.norm(size_mm[:2]))  # rotation by 1 rad moves points ~radius mm
    metric, n_iter = float("nan"), 0
    try:
        for factor, percentage, max_iter in zip(settings.shrink_factors, settings.sampling_percentages,
                                                settings.iterations):
            fixed_level = _shrink(fixed_image, factor)
            mask_level = body_mask_image(fixed_level, settings.border_mm)
            n_mask = max(1, int(sitk.GetArrayViewFromImage(mask_level).sum()))
            percentage = min(1.0, max(percentage, MIN_SAMPLES / n_mask))
            method = sitk.ImageRegistrationMethod()
            if settings.metric == "mattes":
                method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
            else:
                method.SetMetricAsCorrelation()
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(percentage, settings.seed + 1)  # ITK's seed 0 = wall clock
            method.SetMetricFixedMask(mask_level)
            method.SetInterpolator(sitk.sitkLinear)
            step = 0.5 * factor * fixed_image.GetSpacing()[0]  # first step: half a coarse voxel, mm
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=step, minStep=step * 1e-2, numberOfIterations=max_iter, relaxationFactor=0.8)
            method.SetOptimizerScales([radius ** 2] * 3 + [1.0] * 3)
            method.SetInitialTransform(transform, inPlace=True)  # optimised in place, level after level
            method.Execute(fixed_level, _shrink(moving_image, factor))
            metric = float(method.GetMetricValue())
            n_iter += int(method.GetOptimizerIteration())
    except RuntimeError as error:
        return RegistrationResult(identity, before, before, True,
                                  f"registration failed ({error}); identity kept",
                                  metric, n_iter, time.perf_counter() - start)
    after = correlation_quality(fixed_image, moving_image, transform, mask)
    if after < before:
        return RegistrationResult(identity, before, before, True,
                                  f"registration lowered the correlation ({before:.4f} -> {after:.4f}); "
                                  f"identity kept", metric, n_iter, time.perf_counter() - start)
    return RegistrationResult(transform, before, after, False, "", metric, n_iter,
                              time.perf_counter() - start)
