"""PyRadiomics features of patches (``patch`` mode) or whole ROIs (``roi`` mode), all in memory.

* ``patch`` mode: each 64x64x32 patch becomes a SimpleITK image (spacing = patch spacing) and its mask is
  the whole box (label 1), one row per (ROI, patch). A whole-box mask is a valid PyRadiomics ROI (it
  spans 3 dimensions, more than ``minimumROIDimensions``); shape features would describe the box only,
  so the study's params leave the ``shape`` class out.
* ``roi`` mode: the series' own ROI masks (its DICOM SEG, on the CT grid) over the full CT volume, one
  row per ROI with ``patch = -1`` (:data:`ctdose.extractors.driver.WHOLE_ROI_PATCH`).

Images and masks are handed to PyRadiomics as SimpleITK images: no temporary files. Feature columns
are PyRadiomics' names prefixed ``radiomics_`` (``radiomics_original_glcm_Contrast``); its
``diagnostics_*`` entries are dropped.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from ctdose.extractors import driver
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.patches import sample_patches
from ctdose.volume import Volume

MODES: tuple[str, ...] = ("patch", "roi")
PREFIX = "radiomics_"


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read a PyRadiomics params YAML and validate it with PyRadiomics' own schema.

    Raises FileNotFoundError if missing, ValueError naming the file and the offending key otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"PyRadiomics params file {path} not found")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    make_extractor(params, source=str(path))  # validates
    return params


def make_extractor(params: dict[str, Any], source: str = "params"):
    """A configured ``RadiomicsFeatureExtractor`` (ValueError listing schema errors, e.g. unknown keys)."""
    import pykwalify.core
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)  # no INFO/DEBUG records built per feature
    use_bin_edges_from_extremes()
    logging.getLogger(pykwalify.core.__name__).setLevel(logging.CRITICAL)
    try:
        return RadiomicsFeatureExtractor(params)
    except Exception as err:  # pykwalify SchemaError / radiomics ValueError
        lines = [ln.strip(" -") for ln in str(err).splitlines() if "Key" in ln or "Value" in ln]
        detail = "; ".join(dict.fromkeys(lines)) or str(err).splitlines()[0]
        raise ValueError(f"{source}: invalid PyRadiomics settings: {detail}") from None


@functools.cache
def use_bin_edges_from_extremes() -> None:
    """Make PyRadiomics' ``imageoperations.getBinEdges`` take the voxels' extremes with NumPy (once per process).

    With a fixed ``binWidth`` the bin edges depend on the minimum and maximum of the ROI's grey levels
    alone, and PyRadiomics takes them with Python's builtin ``min`` / ``max``: one Python step per voxel,
    for each of the five texture classes of every patch (19 % of a demo patch's time, 0.44 of 2.35 CPU
    seconds per series). The wrapper hands PyRadiomics' own function the two extremes found by
    ``numpy.min`` / ``numpy.max``, so it computes the same edges from the same values; ``binCount`` (a
    histogram of every value) and empty inputs go through unchanged. The original stays reachable as
    ``getBinEdges.__wrapped__``; ``tests/test_extractors_units.py`` compares every feature with it.
    """
    from radiomics import imageoperations

    original = imageoperations.getBinEdges

    @functools.wraps(original)
    def getBinEdges(parameterValues, **kwargs):  # noqa: N802, N803 (PyRadiomics' names)
        values = np.asarray(parameterValues)
        if kwargs.get("binCount") is None and values.size:
            parameterValues = np.array([values.min(), values.max()], dtype=values.dtype)
        return original(parameterValues, **kwargs)

    imageoperations.getBinEdges = getBinEdges


def patch_image(patch: np.ndarray, spacing_xyz: tuple[float, float, float]) -> sitk.Image:
    """A (Z, Y, X) HU patch as a SimpleITK image with the patch spacing (origin 0, identity direction)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(patch, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    return image


def box_mask(image: sitk.Image, label: int) -> sitk.Image:
    """A mask covering the whole image with ``label``."""
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask + label


def feature_values(extractor, image: sitk.Image, mask: sitk.Image, label: int) -> dict[str, float]:
    """PyRadiomics features of one image/mask pair, diagnostics dropped, names prefixed."""
    result = extractor.execute(image, mask, label=label)
    return {PREFIX + k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def _frame(identity: dict[str, Any], rows: pd.DataFrame, dicts: list[dict[str, float]],
           outside_fraction: np.ndarray | None = None) -> pd.DataFrame:
    names = list(dicts[0])
    for d, (_, row) in zip(dicts, rows.iterrows()):
        if list(d) != names:
            raise ValueError(f"roi {row['roi']} patch {row['patch']}: PyRadiomics returned other features")
    return driver.feature_frame(identity, rows, np.array([[d[n] for n in names] for d in dicts]), names,
                                outside_fraction)


def patch_frame(volume: Volume, transform: sitk.Transform | None, centers: pd.DataFrame,
                identity: dict[str, Any], params: dict[str, Any], patch: driver.PatchSettings,
                threads: int | None = None) -> pd.DataFrame:
    """``patch`` mode rows of one series: all patches sampled at once (on ``threads`` threads, default
    all cores), then one PyRadiomics call each; ``outside_fraction`` from the sampler's count."""
    extractor = make_extractor(params)
    label = int(extractor.settings.get("label", 1))
    batch = sample_patches(volume, centers[["x_mm", "y_mm", "z_mm"]].to_numpy(float), transform,
                           patch.size_xyz, patch.spacing_xyz, threads=threads)
    dicts = []
    for values in batch.patches:
        image = patch_image(values, patch.spacing_xyz)
        dicts.append(feature_values(extractor, image, box_mask(image, label), label))
    return _frame(identity, centers, dicts, batch.n_outside / batch.patches[0].size)


def roi_frame(volume: Volume, masks: dict[str, np.ndarray], identity: dict[str, Any],
              params: dict[str, Any]) -> pd.DataFrame:
    """``roi`` mode rows of one series: ``masks`` maps ROI name -> bool (Z, Y, X) on the CT grid."""
    extractor = make_extractor(params)
    label = int(extractor.settings.get("label", 1))
    image = volume.to_sitk()
    names = [r for r in ROI_NAMES if r in masks]
    if not names:
        raise ValueError("no ROI masks for this series")
    dicts = []
    for roi in names:
        mask_array = np.asarray(masks[roi], dtype=bool)
        if mask_array.shape != volume.array.shape:
            raise ValueError(f"roi {roi}: mask shape {mask_array.shape} != CT shape {volume.array.shape}")
        if not mask_array.any():
            raise ValueError(f"roi {roi}: the mask is empty")
        mask = sitk.GetImageFromArray(mask_array.astype(np.uint8) * label)
        mask.CopyInformation(image)
        dicts.append(feature_values(extractor, image, mask, label))
    rows = pd.DataFrame({"roi": names, "roi_class": [ROI_CLASSES[n] for n in names],
                         "patch": [driver.WHOLE_ROI_PATCH] * len(names)})
    return _frame(identity, rows, dicts)


@dataclass(frozen=True)
class RadiomicsTask:
    """Picklable per-series task for Dask workers: computes one series' partial table."""

    params: dict[str, Any]
    mode: str
    patch: driver.PatchSettings
    threads: int | None = None  # SimpleITK threads per process (1 in worker processes: no oversubscription)

    def __call__(self, job: driver.SeriesJob) -> str:
        if self.threads:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.threads)
        return driver.run_job(job, self.compute)

    def compute(self, job: driver.SeriesJob) -> pd.DataFrame:
        if self.mode == "patch":
            volume, transform = driver.load_series(job)
            return patch_frame(volume, transform, job.centers, job.identity, self.params, self.patch, self.threads)
        from ctdose.seg import read_seg_masks

        if job.seg_path is None or not Path(job.seg_path).exists():
            raise FileNotFoundError(f"series {job.series_uid}: SEG file {job.seg_path} is missing (roi mode)")
        volume = driver.load_volume(job)
        masks = read_seg_masks(job.seg_path, job.ct_path, job.series_uid)
        return roi_frame(volume, masks, job.identity, self.params)
