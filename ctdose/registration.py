"""Rigid registration of a series to the reference series (SimpleITK), and transform files.

The transform maps reference (fixed) points to series (moving) points, the SimpleITK convention, so
that a patch grid placed in reference space can be sampled straight from the series' own volume
(:func:`ctdose.patches.sample_patches`). Mattes mutual information, Euler 3D, a 3-level pyramid
(both images block-averaged by 4, 2, 1 in-plane: the averaging is the smoothing), random sampling
with a fixed seed, a fixed-image mask of the phantom (HU > -500), initialised by aligning the image
centres (geometry); regular-step gradient descent with rotations scaled by the field-of-view
radius. Quality = Pearson correlation of the two images inside the phantom mask; when
registration makes it worse the identity is kept and the reason recorded.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctdose.atomic import atomic_path, write_json
from ctdose.dicom_io import read_ct_series, read_reference_series
from ctdose.layout import ResultsLayout
from ctdose.seg import read_seg_label_map, write_label_map
from ctdose.volume import Volume

#: Phantom mask threshold on the fixed image, HU.
BODY_THRESHOLD_HU = -500.0
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
        """Rotation (degrees about x, y, z, around the transform's centre = the fixed image's centre)
        and translation (mm) of the Euler transform, for tables."""
        params = self.transform.GetParameters()
        return {"rot_x_deg": float(np.degrees(params[0])), "rot_y_deg": float(np.degrees(params[1])),
                "rot_z_deg": float(np.degrees(params[2])), "tx_mm": float(params[3]),
                "ty_mm": float(params[4]), "tz_mm": float(params[5])}


def body_mask(image: sitk.Image, threshold_hu: float = BODY_THRESHOLD_HU) -> sitk.Image:
    """uint8 mask of the phantom: voxels above ``threshold_hu``."""
    return sitk.Cast(image > threshold_hu, sitk.sitkUInt8)


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


def register_rigid(fixed: Volume, moving: Volume, *, seed: int = 0,
                   shrink_factors: tuple[int, ...] = (4, 2, 1),
                   sampling_percentages: tuple[float, ...] = (0.2, 0.05, 0.01),
                   iterations: tuple[int, ...] = (100, 60, 30), bins: int = 32) -> RegistrationResult:
    """Rigidly register ``moving`` to ``fixed`` (both HU Volumes); see the module docstring.

    One registration per pyramid level, coarse to fine, each starting from the previous result.
    Level ``n`` block-averages both images by ``shrink_factors[n]`` (the averaging is the
    smoothing) and samples ``sampling_percentages[n]`` of the fixed mask's voxels (at least
    ``MIN_SAMPLES``) per iteration
    (random, seeded: the same ``seed`` gives the same result on one thread), for at most
    ``iterations[n]`` optimizer steps.
    """
    start = time.perf_counter()
    fixed_image = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    moving_image = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    mask = body_mask(fixed_image)
    identity = sitk.Euler3DTransform()
    before = correlation_quality(fixed_image, moving_image, identity, mask)

    transform = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))
    size_mm = np.array(fixed_image.GetSize()) * np.array(fixed_image.GetSpacing())
    radius = 0.5 * float(np.linalg.norm(size_mm[:2]))  # rotation by 1 rad moves points ~radius mm
    metric, n_iter = float("nan"), 0
    try:
        for factor, percentage, max_iter in zip(shrink_factors, sampling_percentages, iterations):
            fixed_level = _shrink(fixed_image, factor)
            mask_level = body_mask(fixed_level)
            n_mask = max(1, int(sitk.GetArrayViewFromImage(mask_level).sum()))
            percentage = min(1.0, max(percentage, MIN_SAMPLES / n_mask))
            method = sitk.ImageRegistrationMethod()
            method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(percentage, seed + 1)  # ITK's seed 0 = wall clock
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


def save_transform(transform: sitk.Transform, path: str | Path) -> Path:
    """Write a SimpleITK transform file (``.tfm``) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        staged = tmp.with_name(tmp.name + path.suffix)  # SimpleITK picks the format by extension
        try:
            sitk.WriteTransform(transform, str(staged))
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    return path


def load_transform(path: str | Path) -> sitk.Transform:
    """Read a transform written by :func:`save_transform` (maps reference -> series points)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no transform file {path}; run data/prepare.py first")
    transform = sitk.ReadTransform(str(path))
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    return transform


# --- per-series preparation (masks + registration), one Dask task per series -------------------

@dataclass(frozen=True)
class PrepareTask:
    """What :func:`prepare_series` needs for one series (small and picklable for Dask)."""

    series_uid: str
    path: str
    seg_path: str
    reference_uid: str
    reference_path: str
    results: str
    seed: int = 0
    itk_threads: int = 0  # ITK threads for this task; 0 = SimpleITK's default (all cores)


def prepare_series(task: PrepareTask) -> dict[str, object]:
    """Write one series' ROI label map and its transform to the reference; return its registration row.

    Skips work whose outputs exist (label map; transform + its ``.json`` row), so a re-run resumes.
    The row (also written beside the transform as ``<uid>.json``) holds the qualities, whether
    the identity was kept and why, the Euler parameters and the time taken. Bad input of this
    series (ValueError / FileNotFoundError: missing slice, SEG off the grid ...) does not stop the
    others: it comes back as a row with only ``series_uid`` and ``error`` filled.
    """
    try:
        return {**_prepare_series(task), "error": ""}
    except (ValueError, FileNotFoundError) as error:
        return {"series_uid": task.series_uid, "error": str(error), "skipped": False}


def _prepare_series(task: PrepareTask) -> dict[str, object]:
    if task.itk_threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(task.itk_threads)
    layout = ResultsLayout(task.results)
    mask_path, transform_path = layout.mask(task.series_uid), layout.transform(task.series_uid)
    row_path = transform_path.with_suffix(".json")
    need_mask = bool(task.seg_path) and not mask_path.is_file()
    previous = _read_row(row_path) if transform_path.is_file() else {}
    need_registration = previous.get("reference_uid") != task.reference_uid  # none yet, or another reference
    if not need_mask and not need_registration:
        return {**previous, "skipped": True}
    volume = read_ct_series(task.path, task.series_uid)
    if need_mask:
        label_map, _ = read_seg_label_map(task.seg_path, task.path, task.series_uid)
        write_label_map(label_map, volume, mask_path)
    if need_registration:
        if task.series_uid == task.reference_uid:
            result = RegistrationResult(sitk.Euler3DTransform(), 1.0, 1.0, True, "reference series",
                                        0.0, 0, 0.0)
        else:
            reference = read_reference_series(task.reference_path, task.reference_uid)
            result = register_rigid(reference, volume, seed=task.seed)
        row = {"series_uid": task.series_uid, "reference_uid": task.reference_uid,
               "quality_before": result.quality_before,
               "quality_after": result.quality_after, "kept_identity": result.kept_identity,
               "reason": result.reason, **result.parameters(), "metric": result.metric,
               "iterations": result.iterations, "seconds": round(result.seconds, 3)}
        save_transform(result.transform, transform_path)
        write_json(row, row_path)
    else:
        row = previous
    return {**row, "skipped": False}


def _read_row(path: Path) -> dict[str, object]:
    """A per-series registration row; {} when absent or unreadable (then the series is redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
