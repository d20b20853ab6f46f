"""Other datasets for the same four extractors: CT-ORG (TCIA) and OrganMNIST3D (MedMNIST v2).

The extractor scripts take ``--dataset ctorg|organmnist3d --dataset-path PATH --results FOLDER``
(a results folder of its own). Instead of the phantom's catalog and reference-space centres, the run
reads one table, ``<results>/dataset_centers.csv`` (:func:`write_centers`; it is remade only when the
dataset's files or the centre settings change): one row per (case, ROI, patch) with the identity
columns of the feature tables, the case's files and its patch centre in the case's own LPS mm.
Identity: ``series_uid`` = case id, ``scanner`` = ``manufacturer`` = dataset name, ``model`` = the
dataset's name and crop size, ``dose_mgy`` empty (NaN), ``recon`` = ``original`` (CT-ORG) or the
MedMNIST split, ``repetition`` 1, ``roi`` = organ (``lung_left``), ``roi_class`` = organ class (``lung``).

Modules: :mod:`.ctorg` (NIfTI pairs, organ centroids, left / right split), :mod:`.medmnist3d` (npz keys,
grey-level scaling instead of HU windows, one patch per crop).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ctdose.volume import Volume

#: ``--dataset`` choices: the phantom (catalog + centres) and the other datasets.
DATASETS: tuple[str, ...] = ("ctdose", "ctorg", "organmnist3d")
#: How organ centres are placed in CT-ORG.
CENTER_MODES: tuple[str, ...] = ("centroid", "seeded")
#: Centres per ROI in ``seeded`` mode when ``--patches-per-roi`` is not given.
SEEDED_DEFAULT = 10
#: Columns of ``dataset_centers.csv``.
CENTER_TABLE_COLUMNS: tuple[str, ...] = (
    "series_uid", "scanner", "manufacturer", "model", "dose_mgy", "recon", "repetition",
    "source", "labels", "item", "roi", "roi_class", "patch", "x_mm", "y_mm", "z_mm",
)
#: Text columns of ``dataset_centers.csv`` (read back as str).
CENTER_TEXT_COLUMNS: tuple[str, ...] = ("series_uid", "scanner", "manufacturer", "model", "recon", "source",
                                        "labels", "item", "roi", "roi_class")


@dataclass(frozen=True)
class DatasetSettings:
    """What the centre table depends on: the dataset, its path, the centre rule and case limit."""

    name: str
    path: str
    centers: str = "centroid"  # CT-ORG: centroid | seeded (OrganMNIST3D: always the crop centre)
    patches_per_roi: int = 1  # seeded: centres per ROI
    seed: int = 0
    max_cases: int | None = None
    min_voxels: int = 100  # CT-ORG: smallest organ / side that gets centres

    def __post_init__(self) -> None:
        if self.name not in DATASETS[1:]:
            raise ValueError(f"unknown dataset {self.name!r}; expected one of {', '.join(DATASETS[1:])}")
        if not self.path:
            raise ValueError(f"--dataset {self.name} needs --dataset-path (see README for where to put it)")
        if self.centers not in CENTER_MODES:
            raise ValueError(f"unknown organ centre mode {self.centers!r}; expected {' or '.join(CENTER_MODES)}")
        if self.patches_per_roi < 1:
            raise ValueError(f"--patches-per-roi must be >= 1, got {self.patches_per_roi}")
        if self.patches_per_roi != 1 and (self.name == "organmnist3d" or self.centers == "centroid"):
            why = "has one patch per crop" if self.name == "organmnist3d" else "centroid mode has one centre per organ"
            raise ValueError(f"--patches-per-roi {self.patches_per_roi}: {self.name} {why}; use --organ-centers "
                             "seeded for several centres per CT-ORG organ")
        if self.max_cases is not None and self.max_cases < 1:
            raise ValueError(f"--max-series must be >= 1, got {self.max_cases}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_files(settings: DatasetSettings) -> list[Path]:
    """The dataset files the centre table is made from (checksummed in its sidecar)."""
    if settings.name == "organmnist3d":
        from ctdose.datasets.medmnist3d import find_npz

        return [find_npz(settings.path)]
    from ctdose.datasets.ctorg import find_cases

    cases = find_cases(settings.path)[:settings.max_cases]
    return [p for case in cases for p in (case.volume, case.labels)]


def centers_table(settings: DatasetSettings) -> pd.DataFrame:
    """The centre table (:data:`CENTER_TABLE_COLUMNS`) of the dataset, cases in order."""
    if settings.name == "organmnist3d":
        from ctdose.datasets import medmnist3d

        path = medmnist3d.find_npz(settings.path)
        rows = medmnist3d.case_rows(path, settings.max_cases)
        side = medmnist3d.check_keys(path)
        rows = rows.assign(scanner="organmnist3d", manufacturer="organmnist3d", model=f"OrganMNIST3D-{side}",
                           dose_mgy=np.nan, repetition=1, source=str(path.resolve()), labels="")
    else:
        from ctdose.datasets import ctorg

        frames = []
        cases = ctorg.find_cases(settings.path)[:settings.max_cases]
        for case in tqdm(cases, desc="CT-ORG centres", unit="case"):
            centers = ctorg.case_centers(case, settings.centers, settings.patches_per_roi, settings.seed,
                                         settings.min_voxels)
            frames.append(centers.assign(series_uid=case.case_id, recon="original", item="",
                                         source=str(case.volume.resolve()), labels=str(case.labels.resolve())))
        rows = pd.concat(frames, ignore_index=True).assign(scanner="ctorg", manufacturer="ctorg", model="CT-ORG",
                                                           dose_mgy=np.nan, repetition=1)
    return rows[list(CENTER_TABLE_COLUMNS)].reset_index(drop=True)


def read_centers(path: str | os.PathLike) -> pd.DataFrame:
    """A ``dataset_centers.csv`` as written (text columns as str, empty text as "")."""
    from ctdose.csv_io import read_csv

    table = read_csv(path, dtype={c: str for c in CENTER_TEXT_COLUMNS}, keep_default_na=False,
                     na_values={"dose_mgy": [""]})
    missing = [c for c in CENTER_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def write_centers(path: str | os.PathLike, settings: DatasetSettings) -> pd.DataFrame:
    """The centre table at ``path``: reused when current (same settings, same dataset files), else made
    and written with its sidecar."""
    from ctdose.atomic import write_csv
    from ctdose.provenance import is_current, write_sidecar

    inputs = source_files(settings)
    record = settings.as_dict()
    if is_current(path, record, inputs):
        return read_centers(path)
    table = centers_table(settings)
    write_csv(table, path)
    write_sidecar(path, record, inputs=inputs, n_cases=int(table["series_uid"].nunique()),
                  rois=table["roi"].value_counts().to_dict())
    return read_centers(path)


def load_case(dataset: str, source: str, item: str = "") -> Volume:
    """The volume a job samples its patches from: a CT-ORG NIfTI (HU) or one OrganMNIST3D crop (0..255)."""
    if dataset == "ctorg":
        from ctdose.datasets.ctorg import read_volume

        return read_volume(source)
    if dataset == "organmnist3d":
        from ctdose.datasets.medmnist3d import load_sample

        return load_sample(source, item)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS[1:])}")


def input_range(dataset: str) -> tuple[float, float] | None:
    """The intensity range mapped to the networks' [0, 1] input instead of their HU window (None: keep
    the network's HU window, the data is in HU)."""
    if dataset == "organmnist3d":
        from ctdose.datasets.medmnist3d import INPUT_RANGE

        return INPUT_RANGE
    return None


def patch_geometry(dataset: str, path: str, extractor: str) -> tuple[list[int], list[float]] | None:
    """(size_xyz, spacing_xyz) a dataset fixes for ``extractor`` (OrganMNIST3D: the whole crop), or None
    where the ``--patch-size`` / ``--patch-spacing`` flags apply (CT-ORG, in mm like the phantom)."""
    if dataset != "organmnist3d":
        return None
    from ctdose.datasets import medmnist3d

    return medmnist3d.patch_geometry(medmnist3d.check_keys(medmnist3d.find_npz(path)), extractor)
