"""IBSI chapter 1 compliance of the toolkit's radiomics engine (PyRadiomics), feature by feature.

PyRadiomics runs on the IBSI digital phantom (no discretisation: bin width 1, 3-D) and on the IBSI CT
phantom under the IBSI configurations it can be set up for; each PyRadiomics feature that has an IBSI
counterpart (:data:`FEATURES`, 102 of them) is compared with the IBSI reference value of the matching
family, feature, configuration and aggregation, and classed:

* ``agrees``: ``|value - reference| <= tolerance + half a unit of the reference's last printed digit``
  (IBSI prints references to 3 significant digits; the digital phantom's tolerance is 0, so rounding
  is the only slack there);
* ``known deviation``: outside that, for a documented or verified PyRadiomics difference from IBSI
  (:data:`KNOWN_DEVIATIONS`, each with its reason);
* ``differs``: outside it for any other reason.

The reference values are IBSI's own, parsed into ``ibsi1_reference_values.json`` (a list of
``{family, feature, data, aggr, value, tol, raw}``); the phantoms are NIfTI images and masks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ctdose.extractors.radiomics_features import make_extractor

#: PyRadiomics feature classes compared (``shape2D`` is PyRadiomics-only).
FEATURE_CLASSES: tuple[str, ...] = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")

#: PyRadiomics ``class_Feature`` -> (IBSI family, IBSI feature name). PyRadiomics features without an
#: IBSI counterpart (firstorder TotalEnergy, glcm MCC, the shape 2-D diameters) are left out.
FEATURES: dict[str, tuple[str, str]] = {
    "shape_MeshVolume": ("morph", "Volume (mesh)"),
    "shape_VoxelVolume": ("morph", "Volume (voxel counting)"),
    "shape_SurfaceArea": ("morph", "Surface area (mesh)"),
    "shape_SurfaceVolumeRatio": ("morph", "Surface to volume ratio"),
    "shape_Sphericity": ("morph", "Sphericity"),
    "shape_Maximum3DDiameter": ("morph", "Maximum 3D diameter"),
    "shape_MajorAxisLength": ("morph", "Major axis length"),
    "shape_MinorAxisLength": ("morph", "Minor axis length"),
    "shape_LeastAxisLength": ("morph", "Least axis length"),
    "shape_Elongation": ("morph", "Elongation"),
    "shape_Flatness": ("morph", "Flatness"),
    "firstorder_Mean": ("stat", "Mean intensity"),
    "firstorder_Variance": ("stat", "Intensity variance"),
    "firstorder_Skewness": ("stat", "Intensity skewness"),
    "firstorder_Kurtosis": ("stat", "(Excess) intensity kurtosis"),
    "firstorder_Median": ("stat", "Median intensity"),
    "firstorder_Minimum": ("stat", "Minimum intensity"),
    "firstorder_10Percentile": ("stat", "10\\ :sup:`th` intensity percentile"),
    "firstorder_90Percentile": ("stat", "90\\ :sup:`th` intensity percentile"),
    "firstorder_Maximum": ("stat", "Maximum intensity"),
    "firstorder_InterquartileRange": ("stat", "Intensity interquartile range"),
    "firstorder_Range": ("stat", "Intensity range"),
    "firstorder_MeanAbsoluteDeviation": ("stat", "Intensity-based mean absolute deviation"),
    "firstorder_RobustMeanAbsoluteDeviation": ("stat", "Intensity-based robust mean absolute deviation"),
    "firstorder_Energy": ("stat", "Intensity-based energy"),
    "firstorder_RootMeanSquared": ("stat", "Root mean square intensity"),
    "firstorder_Entropy": ("ih", "Discretised intensity entropy"),
    "firstorder_Uniformity": ("ih", "Discretised intensity uniformity"),
    "glcm_MaximumProbability": ("cm", "Joint maximum"),
    "glcm_JointAverage": ("cm", "Joint average"),
    "glcm_SumSquares": ("cm", "Joint variance"),
    "glcm_JointEntropy": ("cm", "Joint entropy"),
    "glcm_DifferenceAverage": ("cm", "Difference average"),
    "glcm_DifferenceVariance": ("cm", "Difference variance"),
    "glcm_DifferenceEntropy": ("cm", "Difference entropy"),
    "glcm_SumAverage": ("cm", "Sum average"),
    "glcm_SumEntropy": ("cm", "Sum entropy"),
    "glcm_JointEnergy": ("cm", "Angular second moment"),
    "glcm_Contrast": ("cm", "Contrast"),
    "glcm_Id": ("cm", "Inverse difference"),
    "glcm_Idn": ("cm", "Normalised inverse difference"),
    "glcm_Idm": ("cm", "Inverse difference moment"),
    "glcm_Idmn": ("cm", "Normalised inverse difference moment"),
    "glcm_InverseVariance": ("cm", "Inverse variance"),
    "glcm_Correlation": ("cm", "Correlation"),
    "glcm_Autocorrelation": ("cm", "Autocorrelation"),
    "glcm_ClusterTendency": ("cm", "Cluster tendency"),
    "glcm_ClusterShade": ("cm", "Cluster shade"),
    "glcm_ClusterProminence": ("cm", "Cluster prominence"),
    "glcm_Imc1": ("cm", "Information correlation 1"),
    "glcm_Imc2": ("cm", "Information correlation 2"),
    "glrlm_ShortRunEmphasis": ("rlm", "Short runs emphasis"),
    "glrlm_LongRunEmphasis": ("rlm", "Long runs emphasis"),
    "glrlm_LowGrayLevelRunEmphasis": ("rlm", "Low grey level run emphasis"),
    "glrlm_HighGrayLevelRunEmphasis": ("rlm", "High grey level run emphasis"),
    "glrlm_ShortRunLowGrayLevelEmphasis": ("rlm", "Short run low grey level emphasis"),
    "glrlm_ShortRunHighGrayLevelEmphasis": ("rlm", "Short run high grey level emphasis"),
    "glrlm_LongRunLowGrayLevelEmphasis": ("rlm", "Long run low grey level emphasis"),
    "glrlm_LongRunHighGrayLevelEmphasis": ("rlm", "Long run high grey level emphasis"),
    "glrlm_GrayLevelNonUniformity": ("rlm", "Grey level non-uniformity"),
    "glrlm_GrayLevelNonUniformityNormalized": ("rlm", "Normalised grey level non-uniformity"),
    "glrlm_RunLengthNonUniformity": ("rlm", "Run length non-uniformity"),
    "glrlm_RunLengthNonUniformityNormalized": ("rlm", "Normalised run length non-uniformity"),
    "glrlm_RunPercentage": ("rlm", "Run percentage"),
    "glrlm_GrayLevelVariance": ("rlm", "Grey level variance"),
    "glrlm_RunVariance": ("rlm", "Run length variance"),
    "glrlm_RunEntropy": ("rlm", "Run entropy"),
    "glszm_SmallAreaEmphasis": ("szm", "Small zone emphasis"),
    "glszm_LargeAreaEmphasis": ("szm", "Large zone emphasis"),
    "glszm_LowGrayLevelZoneEmphasis": ("szm", "Low grey level zone emphasis"),
    "glszm_HighGrayLevelZoneEmphasis": ("szm", "High grey level zone emphasis"),
    "glszm_SmallAreaLowGrayLevelEmphasis": ("szm", "Small zone low grey level emphasis"),
    "glszm_SmallAreaHighGrayLevelEmphasis": ("szm", "Small zone high grey level emphasis"),
    "glszm_LargeAreaLowGrayLevelEmphasis": ("szm", "Large zone low grey level emphasis"),
    "glszm_LargeAreaHighGrayLevelEmphasis": ("szm", "Large zone high grey level emphasis"),
    "glszm_GrayLevelNonUniformity": ("szm", "Grey level non-uniformity"),
    "glszm_GrayLevelNonUniformityNormalized": ("szm", "Normalised grey level non-uniformity"),
    "glszm_SizeZoneNonUniformity": ("szm", "Zone size non-uniformity"),
    "glszm_SizeZoneNonUniformityNormalized": ("szm", "Normalised zone size non-uniformity"),
    "glszm_ZonePercentage": ("szm", "Zone percentage"),
    "glszm_GrayLevelVariance": ("szm", "Grey level variance"),
    "glszm_ZoneVariance": ("szm", "Zone size variance"),
    "glszm_ZoneEntropy": ("szm", "Zone size entropy"),
    "gldm_SmallDependenceEmphasis": ("ngl", "Low dependence emphasis"),
    "gldm_LargeDependenceEmphasis": ("ngl", "High dependence emphasis"),
    "gldm_LowGrayLevelEmphasis": ("ngl", "Low grey level count emphasis"),
    "gldm_HighGrayLevelEmphasis": ("ngl", "High grey level count emphasis"),
    "gldm_SmallDependenceLowGrayLevelEmphasis": ("ngl", "Low dependence low grey level emphasis"),
    "gldm_SmallDependenceHighGrayLevelEmphasis": ("ngl", "Low dependence high grey level emphasis"),
    "gldm_LargeDependenceLowGrayLevelEmphasis": ("ngl", "High dependence low grey level emphasis"),
    "gldm_LargeDependenceHighGrayLevelEmphasis": ("ngl", "High dependence high grey level emphasis"),
    "gldm_GrayLevelNonUniformity": ("ngl", "Grey level non-uniformity"),
    "gldm_DependenceNonUniformity": ("ngl", "Dependence count non-uniformity"),
    "gldm_DependenceNonUniformityNormalized": ("ngl", "Normalised dependence count non-uniformity"),
    "gldm_GrayLevelVariance": ("ngl", "Grey level variance"),
    "gldm_DependenceVariance": ("ngl", "Dependence count variance"),
    "gldm_DependenceEntropy": ("ngl", "Dependence count entropy"),
    "ngtdm_Coarseness": ("ngt", "Coarseness"),
    "ngtdm_Contrast": ("ngt", "Contrast"),
    "ngtdm_Busyness": ("ngt", "Busyness"),
    "ngtdm_Complexity": ("ngt", "Complexity"),
    "ngtdm_Strength": ("ngt", "Strength"),
}

#: IBSI aggregation of each texture family as PyRadiomics computes it: one matrix per direction over
#: the whole ROI, features averaged over directions (GLCM, GLRLM), one matrix for the ROI otherwise;
#: with ``force2D`` the directions are in-plane and the matrices merge the slices ("2.5D").
AGGREGATION = {
    False: {"cm": "3D, averaged", "rlm": "3D, averaged", "szm": "3D", "ngl": "3D", "ngt": "3D"},
    True: {"cm": "2.5D, direction-merged", "rlm": "2.5D, direction-merged", "szm": "2.5D", "ngl": "2.5D",
           "ngt": "2.5D"},
}


@dataclass(frozen=True)
class Configuration:
    """An IBSI configuration as PyRadiomics settings: ``data`` is the reference values' ``data`` label,
    ``phantom`` ``digital`` or ``ct``; ``not_as_ibsi`` lists the IBSI steps PyRadiomics does differently."""

    data: str
    phantom: str
    settings: dict[str, Any]
    description: str
    not_as_ibsi: str = ""

    @property
    def two_d(self) -> bool:
        return bool(self.settings.get("force2D", False))


_INTERPOLATION = ("PyRadiomics resamples the mask by nearest neighbour (IBSI: linear, partial-volume "
                  "threshold 0.5) on a grid whose corner is the image's corner (IBSI aligns the grids' "
                  "centers), and does not round interpolated intensities to whole HU")
#: The configurations PyRadiomics can be set up for, in IBSI order.
CONFIGURATIONS: dict[str, Configuration] = {
    "dig. phantom": Configuration(
        "dig. phantom", "digital", {"binWidth": 1},
        "digital phantom, 3-D, no interpolation, no re-segmentation, no discretisation (bin width 1)"),
    "config. A": Configuration(
        "config. A", "ct", {"force2D": True, "force2Ddimension": 0, "resegmentRange": [-500, 400],
                            "binWidth": 25},
        "CT phantom, 2-D, no interpolation, re-segmentation [-500, 400] HU, fixed bin size 25 HU"),
    "config. B": Configuration(
        "config. B", "ct", {"force2D": True, "force2Ddimension": 0, "resampledPixelSpacing": [2, 2, 0],
                            "interpolator": "sitkLinear", "resegmentRange": [-500, 400], "binCount": 32},
        "CT phantom, 2-D, in-plane linear interpolation to 2 x 2 mm, re-segmentation [-500, 400] HU, "
        "32 fixed bins", _INTERPOLATION),
    "config. C": Configuration(
        "config. C", "ct", {"resampledPixelSpacing": [2, 2, 2], "interpolator": "sitkLinear",
                            "resegmentRange": [-1000, 400], "binWidth": 25},
        "CT phantom, 3-D, linear interpolation to 2 mm, re-segmentation [-1000, 400] HU, fixed bin size "
        "25 HU", _INTERPOLATION + "; its fixed bins are numbered from the ROI minimum, IBSI's from -1000 HU"),
    "config. D": Configuration(
        "config. D", "ct", {"resampledPixelSpacing": [2, 2, 2], "interpolator": "sitkLinear",
                            "resegmentMode": "sigma", "resegmentRange": [-3, 3], "binCount": 32},
        "CT phantom, 3-D, linear interpolation to 2 mm, outlier re-segmentation (mean +- 3 SD), "
        "32 fixed bins",
        _INTERPOLATION),
}
#: IBSI configurations PyRadiomics cannot be set up for, and why.
UNSUPPORTED: dict[str, str] = {
    "config. E": "re-segments by range [-1000, 400] HU and then by outliers (mean +- 3 SD); PyRadiomics "
                 "applies one re-segmentation mode at a time (resegmentMode absolute or sigma)",
}


@dataclass(frozen=True)
class Deviation:
    """A PyRadiomics difference from IBSI: which configurations (all when empty) and why."""

    reason: str
    configurations: tuple[str, ...] = field(default_factory=tuple)

    def applies(self, data: str) -> bool:
        return not self.configurations or data in self.configurations


#: PyRadiomics' own differences from IBSI definitions, each documented by PyRadiomics or verified in
#: tests/test_ibsi.py (the stated correction brings the value within IBSI's tolerance).
KNOWN_DEVIATIONS: dict[str, Deviation] = {
    "firstorder_Kurtosis": Deviation(
        "PyRadiomics reports kurtosis, IBSI excess kurtosis (kurtosis - 3), as PyRadiomics' docs state"),
    "shape_MinorAxisLength": Deviation(
        "PCA of voxel centers with the population covariance (divides by N); the IBSI reference used the "
        "sample covariance (N - 1): lengths shorter by sqrt((N-1)/N), 0.7 % for the phantom's 74 voxels",
        ("dig. phantom",)),
    "shape_LeastAxisLength": Deviation(
        "PCA of voxel centers with the population covariance (divides by N); the IBSI reference used the "
        "sample covariance (N - 1): lengths shorter by sqrt((N-1)/N), 0.7 % for the phantom's 74 voxels",
        ("dig. phantom",)),
    "shape_MajorAxisLength": Deviation(
        "PCA of voxel centers with the population covariance (divides by N); the IBSI reference used the "
        "sample covariance (N - 1): lengths shorter by sqrt((N-1)/N), 0.7 % for the phantom's 74 voxels",
        ("dig. phantom",)),
}

STATUSES: tuple[str, ...] = ("agrees", "known deviation", "differs")


@dataclass(frozen=True)
class Reference:
    """One IBSI reference value."""

    family: str
    feature: str
    data: str
    aggr: str
    value: float
    tol: float
    raw: str

    @property
    def slack(self) -> float:
        """The agreement margin: tolerance plus half a unit of the last digit IBSI printed."""
        return self.tol + 0.5 * rounding_unit(self.raw)


def rounding_unit(raw: str) -> float:
    """One unit of the last printed digit of an IBSI value as written (``'0.0411'`` -> 1e-4,
    ``':math:`3.58 \\times 10^{5}`'`` -> 1e3, ``'556'`` -> 1)."""
    text = raw.replace(":math:`-`\\ ", "-").replace(":math:`", "").replace("`", "").strip()
    m = re.fullmatch(r"-?\d+(?:\.(\d+))?(?:\s*\\times\s*10\^\{(-?\d+)\})?", text)
    if m is None:
        raise ValueError(f"cannot read the IBSI value {raw!r}")
    return 10.0 ** (-len(m.group(1) or "") + int(m.group(2) or 0))


def load_references(path: str | Path) -> list[Reference]:
    """The IBSI reference values with a value (``FileNotFoundError`` / ``ValueError`` naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no IBSI reference values {path}")
    try:
        rows = json.loads(path.read_text())
        references = [Reference(r["family"], r["feature"], r["data"], r["aggr"],
                                float(r["value"]) if r["value"] is not None else math.nan, float(r["tol"]),
                                str(r["raw"])) for r in rows]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        why = f"{type(err).__name__}: {err}"
        raise ValueError(f"{path}: not a list of IBSI reference values ({why})") from None
    return [r for r in references if not math.isnan(r.value)]  # IBSI gives no value for some (printed —)


def read_phantom(folder: str | Path) -> tuple[sitk.Image, sitk.Image]:
    """The image and mask of an IBSI phantom folder (``nifti/image/*.nii.gz``, ``nifti/mask/*.nii.gz``)."""
    folder = Path(folder)
    images = []
    for part in ("image", "mask"):
        found = sorted((folder / "nifti" / part).glob("*.nii*"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one NIfTI file in {folder / 'nifti' / part}, "
                                    f"found {len(found)}")
        try:
            images.append(sitk.ReadImage(str(found[0])))
        except RuntimeError as err:
            raise ValueError(f"cannot read {found[0]}: {str(err).strip().splitlines()[-1]}") from None
    return images[0], images[1]


def extract(configuration: Configuration, image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """PyRadiomics features (``class_Feature`` -> value) of one phantom under one configuration."""
    extractor = make_extractor({"setting": {**configuration.settings, "label": 1},
                                "imageType": {"Original": {}}}, source=configuration.data)
    extractor.disableAllFeatures()
    for name in FEATURE_CLASSES:
        extractor.enableFeatureClassByName(name)
    result = extractor.execute(image, mask, label=1)
    return {key.removeprefix("original_"): float(value) for key, value in result.items()
            if key.startswith("original_")}


def compare(configuration: Configuration, values: dict[str, float],
            references: list[Reference]) -> pd.DataFrame:
    """One row per mapped feature: IBSI family/feature/aggregation, value, reference, slack, status, note."""
    aggregation = AGGREGATION[configuration.two_d]
    lookup = {(r.family, r.feature, r.aggr): r for r in references if r.data == configuration.data}
    rows = []
    for name, (family, feature) in FEATURES.items():
        aggr = aggregation.get(family, "")
        reference = lookup.get((family, feature, aggr))
        if reference is None:
            raise ValueError(f"no IBSI reference for {family} {feature!r} ({aggr or 'no aggregation'}) in "
                             f"{configuration.data}")
        value = values[name]
        agrees = abs(value - reference.value) <= reference.slack
        deviation = KNOWN_DEVIATIONS.get(name)
        if agrees:
            status, note = "agrees", ""
        elif deviation is not None and deviation.applies(configuration.data):
            status, note = "known deviation", deviation.reason
        else:
            status, note = "differs", configuration.not_as_ibsi
        rows.append({"configuration": configuration.data, "pyradiomics": name, "family": family,
                     "ibsi_feature": feature, "aggregation": aggr, "value": value,
                     "reference": reference.value, "slack": reference.slack, "status": status, "note": note})
    return pd.DataFrame(rows)


def compliance_table(digital_phantom: str | Path, ct_phantom: str | Path | None, reference_json: str | Path,
                     configurations: tuple[str, ...] | None = None) -> pd.DataFrame:
    """:func:`compare` for every configuration (default: all of :data:`CONFIGURATIONS`; the CT phantom's
    are skipped when ``ct_phantom`` is None)."""
    references = load_references(reference_json)
    phantoms = {"digital": read_phantom(digital_phantom)}
    if ct_phantom is not None:
        phantoms["ct"] = read_phantom(ct_phantom)
    chosen = configurations or tuple(c for c, conf in CONFIGURATIONS.items() if conf.phantom in phantoms)
    frames = []
    for name in chosen:
        if name not in CONFIGURATIONS:
            unsupported = "; ".join(f"{k}: {v}" for k, v in UNSUPPORTED.items())
            raise ValueError(f"unknown IBSI configuration {name!r}; PyRadiomics runs "
                             f"{', '.join(CONFIGURATIONS)} ({unsupported})")
        configuration = CONFIGURATIONS[name]
        if configuration.phantom not in phantoms:
            raise ValueError(f"IBSI {name} needs the CT phantom folder")
        frames.append(compare(configuration, extract(configuration, *phantoms[configuration.phantom]),
                              references))
    return pd.concat(frames, ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Counts per configuration and status.

    Columns: configuration, agrees, known deviation, differs, total.
    """
    counts = (table.groupby(["configuration", "status"], sort=False).size().unstack(fill_value=0)
              .reindex(columns=list(STATUSES), fill_value=0))
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if np.isfinite(value) else str(value)


def markdown(table: pd.DataFrame) -> str:
    """The compliance document: summary, configurations, then one table per configuration."""
    lines = ["# IBSI compliance of PyRadiomics", "",
             "Written by `radiomics/ibsi_compliance.py`; checked by `tests/test_ibsi.py`. Each PyRadiomics "
             "feature with an IBSI chapter 1 counterpart is compared with the IBSI reference value: "
             "**agrees** when within IBSI's tolerance plus half a unit of the reference's last printed "
             "digit; **known deviation** for a documented or verified PyRadiomics difference (reason "
             "given); **differs** otherwise.", "",
             "| configuration | agrees | known deviation | differs | total |", "|---|---|---|---|---|"]
    for _, row in summary(table).iterrows():
        lines.append(f"| {row['configuration']} | {row['agrees']} | {row['known deviation']} | "
                     f"{row['differs']} | {row['total']} |")
    lines += ["", "## Configurations", ""]
    for name in table["configuration"].unique():
        conf = CONFIGURATIONS[name]
        settings = ", ".join(f"`{k}: {v}`" for k, v in conf.settings.items())
        lines.append(f"- **{name}**: {conf.description}. PyRadiomics settings: {settings}."
                     + (f" Not as IBSI: {conf.not_as_ibsi}." if conf.not_as_ibsi else ""))
    for name, why in UNSUPPORTED.items():
        lines.append(f"- **{name}**: not run: IBSI {why}.")
    for name, frame in table.groupby("configuration", sort=False):
        lines += ["", f"## {name}", "", "| IBSI family | IBSI feature | aggregation | PyRadiomics | value | "
                  "reference | margin | status |", "|---|---|---|---|---|---|---|---|"]
        for _, row in frame.iterrows():
            feature = row["ibsi_feature"].replace("\\ :sup:`th`", "th")
            status = row["status"]
            if status == "known deviation":
                status += f": {row['note']}"
            lines.append(f"| {row['family']} | {feature} | {row['aggregation']} | {row['pyradiomics']} | "
                         f"{_fmt(row['value'])} | {_fmt(row['reference'])} | {_fmt(row['slack'])} | "
                         f"{status} |")
    return "\n".join(lines) + "\n"
