"""One series of data/size_dose.py as a picklable task: read the CT (and its label map), measure size and
dose (:mod:`ctdose.size_dose`), build the organ input table (:mod:`ctdose.organ_dose_inputs`), and write
the three per-series partial tables atomically with a sidecar on the series one, so that a re-run skips
series whose partials are current (same settings, same label map).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctdose.atomic import write_csv
from ctdose.provenance import is_current, read_sidecar, write_sidecar
from ctdose.size_dose import SizeSettings


@dataclass(frozen=True)
class SizeTask:
    """One series (picklable): catalog fields, paths and settings."""

    series_uid: str
    ct_path: str
    ctdivol: float | None
    label_path: str | None
    partials: tuple[str, str, str]  # series, slices, organs
    settings: SizeSettings
    noise_rois: tuple[str, ...]
    force: bool = False

    def record(self) -> dict[str, Any]:
        return {**self.settings.as_dict(), "series_uid": self.series_uid, "catalog_ctdivol": self.ctdivol,
                "noise_rois": list(self.noise_rois), "label_map": bool(self.label_path)}

    def inputs(self) -> list[Path]:
        return [Path(self.label_path)] if self.label_path else []

    def is_current(self) -> bool:
        return not self.force and is_current(self.partials[0], self.record(), self.inputs(), self.partials[1:])

    def __call__(self) -> str:
        if self.is_current():
            return self.partials[0]
        try:
            row, slices, organs = measure_series(self)
        except (ValueError, RuntimeError) as err:
            message = str(err)
            raise ValueError(message if self.series_uid in message else f"series {self.series_uid}: {message}") from None
        write_csv(slices, self.partials[1])
        write_csv(organs, self.partials[2])
        write_csv(pd.DataFrame([row]), self.partials[0])
        write_sidecar(self.partials[0], self.record(), inputs=self.inputs(), outputs=self.partials[1:], n_rows=1)
        return self.partials[0]


def run_task(task: "SizeTask") -> str:
    """``task()``: a plain function for :func:`ctdose.parallel.parallel_map`."""
    return task()


def label_names(label_path: Path) -> dict[int, str]:
    """{label: name} from a label map's sidecar ``labels`` list (label n = n-th name); {} without one."""
    record = read_sidecar(label_path) or {}
    return {n: str(name) for n, name in enumerate(record.get("labels") or [], start=1)}


def measure_series(task: SizeTask) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Read the series (and its label map) and measure it: (series row, slice table, organ table)."""
    from ctdose.dicom_io import read_series_datasets, slice_geometry, volume_from_datasets
    from ctdose.label_map_io import read_label_map
    from ctdose.organ_dose_inputs import organ_slice_table
    from ctdose.size_dose import header_phantom, series_size_dose

    if not Path(task.ct_path).exists():
        raise FileNotFoundError(f"series {task.series_uid}: CT folder {task.ct_path} (from the catalog) is missing")
    datasets = read_series_datasets(task.ct_path, task.series_uid)
    volume = volume_from_datasets(datasets)
    ordered = [datasets[n] for n in slice_geometry(datasets, task.series_uid).order]
    normal = volume.direction[:, 2]
    if abs(normal[2]) < 0.95:
        raise ValueError(f"series {task.series_uid}: slices are not axial (slice normal {np.round(normal, 3)}); "
                         "WED is measured on axial slices")
    z_mm = volume.index_to_physical(np.column_stack([np.zeros((len(ordered), 2)), np.arange(len(ordered))]))[:, 2]
    ma = np.array([float(ds.get("XRayTubeCurrent")) if ds.get("XRayTubeCurrent") not in (None, "") else np.nan
                   for ds in ordered])
    per_slice_ctdi = [ds.get("CTDIvol") for ds in ordered]
    if all(v not in (None, "") for v in per_slice_ctdi):
        ctdi, ctdi_source = np.array([float(v) for v in per_slice_ctdi]), "per-slice CTDIvol tags"
    elif task.ctdivol is not None and np.isfinite(task.ctdivol):
        ctdi, ctdi_source = float(task.ctdivol), "catalog ctdivol"
    else:
        ctdi, ctdi_source = None, "none (no CTDIvol: SSDE not computed)"
    if task.settings.phantom == "auto":
        phantom, phantom_source = header_phantom(ordered[0])
    else:
        phantom, phantom_source = task.settings.phantom, "--phantom"
    label_map, names, noise_labels = None, {}, []
    if task.label_path:
        labels = read_label_map(task.label_path)
        label_map = np.rint(labels.array).astype(np.int32)
        names = label_names(Path(task.label_path))
        present = [int(v) for v in np.unique(label_map) if v != 0]
        names = {n: names.get(n, f"label_{n}") for n in sorted(set(names) | set(present))}
        noise_labels = [n for n, name in names.items() if name in task.noise_rois]
    pixel_mm = (float(volume.spacing[1]), float(volume.spacing[0]))
    row, slices, _ = series_size_dose(task.series_uid, volume.array, pixel_mm, z_mm, ctdi, phantom,
                                      phantom_source, ma if np.isfinite(ma).any() else None, label_map, names,
                                      noise_labels, task.settings, ctdi_source)
    if label_map is not None:
        wed = slices["wed_cm"].to_numpy()
        known = np.isfinite(wed)
        if not known.all():  # --slice-step > 1: WED between measured slices interpolated along z
            wed = np.interp(z_mm, z_mm[known], wed[known])
        organs = organ_slice_table(task.series_uid, volume.array, label_map, names, z_mm,
                                   slices["tube_current_ma"].to_numpy(), wed)
    else:
        from ctdose.organ_dose_inputs import INPUT_COLUMNS
        organs = pd.DataFrame(columns=list(INPUT_COLUMNS))
    return row, slices, organs
