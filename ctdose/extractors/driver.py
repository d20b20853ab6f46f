"""The loop shared by all extractors: select series and centres, one partial table per series, merge.

Flow of every extractor script:

1. :func:`read_inputs` reads ``results/catalog.csv`` and ``results/patch_centers.csv``;
   :func:`select_series` / :func:`select_centers` apply the command-line filters
   (scanners, doses, recons, at most N series; the first K centres of each ROI).
2. :func:`make_jobs` turns each selected catalog row into a picklable :class:`SeriesJob`.
3. :func:`run_job` computes one series' rows unless its partial CSV
   (``results/features/partial/<name>/<series_uid>.csv``) exists, checks every value is finite and
   writes the partial atomically, so a killed run loses at most the series in progress.
4. :func:`finish` merges the partials of the selected series (catalog order, then ROI in
   :data:`ctdose.naming.ROI_NAMES` order, then patch) into ``results/features/<name>.csv`` and writes
   the JSON sidecar (settings, versions, weights provenance, feature count).

:func:`check_partial_settings` guards step 3: partials made with other value-changing settings
(weights, patch size, params) are never mixed into one table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ctdose.atomic import json_default, write_csv, write_json
from ctdose.layout import IDENTITY_COLUMNS, PATCH_CENTER_COLUMNS, ResultsLayout
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.patches import PATCH_SIZE_XYZ, PATCH_SPACING_XYZ
from ctdose.provenance import write_sidecar
from ctdose.volume import Volume

#: Identity fields copied from the catalog row of a series.
SERIES_FIELDS: tuple[str, ...] = ("series_uid", "scanner", "manufacturer", "model", "dose_mgy", "recon",
                                  "repetition")
#: ``patch`` value of rows that describe a whole ROI (radiomics ``roi`` mode) rather than one patch.
WHOLE_ROI_PATCH = -1


@dataclass(frozen=True)
class PatchSettings:
    """Patch geometry: ``size_xyz`` voxels along x, y, z and ``spacing_xyz`` mm (array is z, y, x)."""

    size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ
    spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ


@dataclass(frozen=True)
class SeriesJob:
    """What one worker needs to process one series (plain, picklable fields)."""

    identity: dict[str, Any]  # SERIES_FIELDS of the catalog row
    ct_path: str
    seg_path: str | None
    transform_path: str
    partial_path: str
    centers: pd.DataFrame = field(repr=False)  # selected rows of patch_centers.csv

    @property
    def series_uid(self) -> str:
        return str(self.identity["series_uid"])


# --------------------------------------------------------------------------- selection


def read_inputs(layout: ResultsLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalog and the patch centres under ``layout`` (FileNotFoundError naming a missing file)."""
    from ctdose.catalog import read_catalog

    for path, step in ((layout.catalog, "data/prepare (catalog)"), (layout.patch_centers, "data/ (patch centres)")):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run the {step} step first")
    catalog = read_catalog(layout.catalog)
    centers = pd.read_csv(layout.patch_centers, dtype={"roi": str, "roi_class": str})
    missing = [c for c in PATCH_CENTER_COLUMNS if c not in centers.columns]
    if missing:
        raise ValueError(f"{layout.patch_centers}: missing column(s) {', '.join(missing)}")
    return catalog, centers


def select_series(catalog: pd.DataFrame, scanners: Sequence[str] | None = None,
                  doses: Sequence[float] | None = None, recons: Sequence[str] | None = None,
                  max_series: int | None = None) -> pd.DataFrame:
    """Catalog rows passing the filters, in catalog order; at most ``max_series`` (ValueError if none)."""
    keep = np.ones(len(catalog), dtype=bool)
    if scanners:
        keep &= catalog["scanner"].astype(str).str.upper().isin([s.upper() for s in scanners]).to_numpy()
    if doses:
        keep &= np.isin(catalog["dose_mgy"].astype(float).to_numpy(), [float(d) for d in doses])
    if recons:
        keep &= catalog["recon"].astype(str).str.upper().isin([r.upper() for r in recons]).to_numpy()
    selected = catalog.loc[keep]
    if max_series is not None:
        selected = selected.head(max_series)
    if selected.empty:
        raise ValueError(f"no catalog series match scanners={scanners} doses={doses} recons={recons}")
    return selected.reset_index(drop=True)


def select_centers(centers: pd.DataFrame, patches_per_roi: int | None = None) -> pd.DataFrame:
    """The first ``patches_per_roi`` centres (lowest patch numbers) of each ROI, ROI_NAMES order."""
    unknown = sorted(set(centers["roi"]) - set(ROI_NAMES))
    if unknown:
        raise ValueError(f"patch centres name unknown ROI(s) {', '.join(unknown)}")
    if patches_per_roi is not None and patches_per_roi < 1:
        raise ValueError(f"--patches-per-roi must be >= 1, got {patches_per_roi}")
    ordered = centers.assign(_roi=centers["roi"].map(ROI_NAMES.index)).sort_values(["_roi", "patch"])
    if patches_per_roi is not None:
        ordered = ordered.groupby("_roi", sort=False).head(patches_per_roi)
    return ordered.drop(columns="_roi").reset_index(drop=True)


def make_jobs(series: pd.DataFrame, centers: pd.DataFrame, layout: ResultsLayout, name: str) -> list[SeriesJob]:
    """One job per selected catalog row (paths resolved, identity fields copied)."""
    missing = [c for c in (*SERIES_FIELDS, "path") if c not in series.columns]
    if missing:
        raise ValueError(f"catalog lacks column(s) {', '.join(missing)}")
    jobs = []
    for row in series.itertuples(index=False):
        row = row._asdict()
        seg = row.get("seg_path")  # read_catalog gives "" for a series without SEG
        jobs.append(SeriesJob(
            identity={k: row[k] for k in SERIES_FIELDS},
            ct_path=str(row["path"]),
            seg_path=str(seg) if isinstance(seg, str) and seg else None,
            transform_path=str(layout.transform(str(row["series_uid"]))),
            partial_path=str(layout.feature_partial(name, str(row["series_uid"]))),
            centers=centers,
        ))
    return jobs


# --------------------------------------------------------------------------- per-series helpers


def load_volume(job: SeriesJob) -> Volume:
    """The series' CT volume (a clear error if its folder is gone)."""
    from ctdose.dicom_io import read_ct_series

    if not Path(job.ct_path).exists():
        raise FileNotFoundError(f"series {job.series_uid}: CT folder {job.ct_path} (from the catalog) is missing")
    return read_ct_series(job.ct_path, job.series_uid)


def load_series(job: SeriesJob) -> tuple[Volume, sitk.Transform]:
    """The series' CT volume and its reference -> series transform (clear errors if files are gone)."""
    from ctdose.registration import load_transform

    if not Path(job.transform_path).exists():
        raise FileNotFoundError(f"series {job.series_uid}: transform {job.transform_path} is missing; "
                                "run the data/prepare step first")
    return load_volume(job), load_transform(job.transform_path)


def feature_frame(identity: dict[str, Any], rows: pd.DataFrame, values: np.ndarray,
                  names: Sequence[str]) -> pd.DataFrame:
    """Identity columns (series fields + ``rows``' roi, roi_class, patch) then the feature columns.

    ``values`` is (len(rows), len(names)); ``names`` are already prefixed by the extractor name.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(rows), len(names)):
        raise ValueError(f"feature array of shape {values.shape} does not match {len(rows)} rows x "
                         f"{len(names)} names")
    ident = pd.DataFrame({k: [identity[k]] * len(rows) for k in SERIES_FIELDS})
    ident["roi"] = rows["roi"].to_numpy()
    ident["roi_class"] = rows["roi_class"].to_numpy() if "roi_class" in rows else rows["roi"].map(ROI_CLASSES)
    ident["patch"] = rows["patch"].to_numpy().astype(int)
    feats = pd.DataFrame(values, columns=list(names))
    return pd.concat([ident[list(IDENTITY_COLUMNS)], feats], axis=1)


def check_finite(df: pd.DataFrame) -> None:
    """ValueError naming series, ROI, patch and feature of the first NaN/inf value of a feature frame."""
    names = [c for c in df.columns if c not in IDENTITY_COLUMNS]
    values = df[names].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        row = df.iloc[r]
        raise ValueError(f"non-finite feature {names[c]} = {values[r, c]} in series {row['series_uid']}, "
                         f"roi {row['roi']}, patch {row['patch']} ({int(bad.sum())} non-finite value(s) "
                         "in this series); nothing was written for it")


def run_job(job: SeriesJob, compute: Callable[[SeriesJob], pd.DataFrame]) -> str:
    """Write ``job``'s partial table unless it exists; returns its path. Errors name the series."""
    path = Path(job.partial_path)
    if path.exists():
        return str(path)
    try:
        frame = compute(job)
    except (ValueError, RuntimeError) as err:
        message = str(err)
        raise ValueError(message if job.series_uid in message else f"series {job.series_uid}: {message}") from err
    check_finite(frame)
    write_csv(frame, path)
    return str(path)


# --------------------------------------------------------------------------- merge and provenance


def check_partial_settings(layout: ResultsLayout, name: str, value_settings: dict[str, Any],
                           jobs: Sequence[SeriesJob]) -> None:
    """Refuse to mix partials made with different value-changing settings; record them on first use.

    ``value_settings`` holds what changes feature values (weights checksum, patch geometry,
    PyRadiomics params, mode); the checksum of the selected patch centres (which rows a partial holds)
    is added here. The record is ``features/partial/<name>/settings.json``.
    """
    record = layout.features_dir / "partial" / name / "settings.json"
    centres = jobs[0].centers.to_csv(index=False).encode() if jobs else b""
    current = json.loads(json.dumps({**value_settings, "centers_sha256": hashlib.sha256(centres).hexdigest()},
                                    default=str))
    if record.exists():
        previous = json.loads(record.read_text())
        if previous != current:
            diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise ValueError(f"partial {name} tables in {record.parent} were made with other settings "
                             f"({', '.join(diff)} differ); delete that folder or use another --results")
        return
    write_json(current, record)


def merge_partials(jobs: Sequence[SeriesJob]) -> pd.DataFrame:
    """The partial tables of ``jobs`` concatenated: job order, then ROI_NAMES order, then patch."""
    frames = []
    for job in jobs:
        path = Path(job.partial_path)
        if not path.exists():
            raise FileNotFoundError(f"series {job.series_uid}: partial table {path} is missing")
        frame = pd.read_csv(path, dtype={"series_uid": str, "scanner": str, "recon": str, "roi": str})
        if not (frame["series_uid"] == job.series_uid).all():
            raise ValueError(f"partial table {path} holds rows of another series than {job.series_uid}")
        order = np.lexsort((frame["patch"].to_numpy(), frame["roi"].map(ROI_NAMES.index).to_numpy()))
        frames.append(frame.iloc[order])
    merged = pd.concat(frames, ignore_index=True)
    dup = merged.duplicated(["series_uid", "roi", "patch"])
    if dup.any():
        first = merged.loc[dup].iloc[0]
        raise ValueError(f"duplicated row series {first['series_uid']} roi {first['roi']} patch {first['patch']}")
    return merged


def finish(name: str, layout: ResultsLayout, jobs: Sequence[SeriesJob], settings: dict[str, Any],
           **extra: Any) -> Path:
    """Merge the partials into ``features/<name>.csv`` and write its sidecar; returns the table path.

    When the table is already the merge of these partials with these settings, it is left as it is.
    """
    if _merged_table_is_current(layout.feature_table(name), jobs, settings):
        print(f"{name}: {layout.feature_table(name)} is up to date")
        return layout.feature_table(name)
    merged = merge_partials(jobs)
    n_features = len(merged.columns) - len(IDENTITY_COLUMNS)
    table = write_csv(merged, layout.feature_table(name))
    write_sidecar(table, settings, extractor=name, n_features=n_features, n_rows=len(merged),
                  n_series=len(jobs), **extra)
    return table


def _merged_table_is_current(table: Path, jobs: Sequence[SeriesJob], settings: dict[str, Any]) -> bool:
    """True if ``table`` was merged with the same settings and series and after every partial was written."""
    sidecar = table.with_suffix(".json")
    if not (table.exists() and sidecar.exists()):
        return False
    recorded = json.loads(sidecar.read_text())
    stamp = table.stat().st_mtime_ns
    partials = [Path(job.partial_path) for job in jobs]
    return (recorded.get("settings") == json.loads(json.dumps(settings, default=json_default))
            and recorded.get("n_series") == len(jobs)
            and all(p.exists() and p.stat().st_mtime_ns <= stamp for p in partials))


# --------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser, results: str) -> None:
    """Flags every extractor script shares (results folder, selection, patch geometry)."""
    parser.add_argument("--results", default=results,
                        help="results folder holding catalog.csv, patch_centers.csv, transforms/ "
                             "(default: %(default)s)")
    parser.add_argument("--scanners", nargs="+", metavar="CODE", help="only these scanner codes (e.g. A1 G2)")
    parser.add_argument("--doses", nargs="+", type=float, metavar="MGY", help="only these nominal doses (mGy)")
    parser.add_argument("--recons", nargs="+", metavar="RECON", help="only these reconstructions (FBP IR DL)")
    parser.add_argument("--max-series", type=int, metavar="N", help="at most N series (first in catalog order)")
    parser.add_argument("--patches-per-roi", type=int, metavar="K",
                        help="use the first K centres of each ROI (default: all)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=list(PATCH_SIZE_XYZ), metavar=("X", "Y", "Z"),
                        help="patch size in voxels along x y z (default: %(default)s)")
    parser.add_argument("--patch-spacing", type=float, nargs=3, default=list(PATCH_SPACING_XYZ),
                        metavar=("X", "Y", "Z"), help="patch voxel spacing in mm (default: %(default)s)")


def prepare(args: argparse.Namespace, name: str) -> tuple[ResultsLayout, list[SeriesJob], PatchSettings]:
    """Read inputs, apply the selection flags and build the jobs of one extractor run."""
    layout = ResultsLayout(args.results)
    catalog, centers = read_inputs(layout)
    series = select_series(catalog, args.scanners, args.doses, args.recons, args.max_series)
    chosen = select_centers(centers, args.patches_per_roi)
    patch = PatchSettings(tuple(args.patch_size), tuple(args.patch_spacing))
    return layout, make_jobs(series, chosen, layout, name), patch


def selection_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The shared flags as a plain dict for the sidecar."""
    keys = ("results", "scanners", "doses", "recons", "max_series", "patches_per_roi", "patch_size",
            "patch_spacing")
    return {k: getattr(args, k) for k in keys}
