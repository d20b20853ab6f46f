"""The loop shared by all extractors: select series and centers, one partial table per series, merge.

Flow of every extractor script:

1. :func:`read_inputs` reads ``results/catalog.csv`` and ``results/patch_centers.csv``;
   :func:`select_series` / :func:`select_centers` apply the command-line filters
   (scanners, doses, recons, repetitions, at most N series; the first K centers of each ROI).
2. :func:`make_jobs` turns each selected catalog row into a picklable :class:`SeriesJob`.
3. :func:`run_job` computes one series' rows unless its partial CSV
   (``results/features/partial/<name>/<series_uid>.csv``) is current: made with the same
   value-changing settings (weights checksum, patch geometry, params), the same centers and series
   identity, from the same transform (:func:`ctdose.provenance.is_current`). It checks every value
   is finite and no patch reaches out of the field of view more than allowed, and writes the
   partial and its sidecar atomically, so a killed run loses at most the series in progress and a
   partial made with other settings is recomputed, never mixed in.
4. :func:`finish` merges the partials of the selected series (catalog order, then ROI in
   the centers file's ROI order, then patch), each checked against its sidecar, into
   ``results/features/<name>.csv`` and writes the table's sidecar (settings, versions, weights
   provenance, feature count, the checksum of every partial it merged).

Other datasets (``--dataset ctorg|organmnist3d --dataset-path PATH``, :mod:`ctdose.datasets`): step 1
reads ``<results>/dataset_centers.csv`` instead (made from the dataset when missing or stale: one row
per case, ROI and patch with identity, files and centre), one job per case whose volume is its own
reference (no transform); steps 3 and 4 are the same, so the tables and sidecars are too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ctdose.atomic import write_csv
from ctdose.centers import roi_short_of
from ctdose.csv_io import read_csv
from ctdose.layout import (IDENTITY_COLUMNS, PATCH_CENTER_COLUMNS, QC_COLUMNS, TEXT_DTYPES, ResultsLayout,
                           feature_columns)
from ctdose.patches import PATCH_SIZE_XYZ, PATCH_SPACING_XYZ
from ctdose.protocols import add_patch_protocol_flag
from ctdose.provenance import is_current, verify, write_sidecar
from ctdose.volume import Volume

#: Identity fields copied from the catalog row of a series.
SERIES_FIELDS: tuple[str, ...] = ("series_uid", "scanner", "manufacturer", "model", "dose_mgy", "recon",
                                  "repetition")
#: ``patch`` value of rows that describe a whole ROI (radiomics ``roi`` mode) rather than one patch.
WHOLE_ROI_PATCH = -1
#: Quality column after the identity columns: share (0..1) of a patch's voxels outside the field of view.
OUTSIDE_COLUMN = QC_COLUMNS[0]
#: Default largest allowed ``outside_fraction`` of any patch (0: refuse any patch reaching outside).
MAX_OUTSIDE_SHARE = 0.0


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
    value_settings: dict[str, Any] = field(default_factory=dict)  # what changes feature values
    max_outside_share: float = MAX_OUTSIDE_SHARE
    dataset: str = "ctdose"  # ctdose (DICOM + transform) or a dataset of ctdose.datasets (ct_path: its file)
    item: str = ""  # the case's entry in a multi-case file (OrganMNIST3D: "train:17")

    @property
    def series_uid(self) -> str:
        return str(self.identity["series_uid"])


# --------------------------------------------------------------------------- selection


def read_inputs(layout: ResultsLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalog and the patch centers under ``layout``, each checked against its sidecar.

    One-line errors name a missing, truncated or edited file and the command that remakes it.
    """
    from ctdose.catalog import read_catalog
    from ctdose.centers import read_patch_centers

    verify(layout.catalog, layout.command("prepare"))
    return read_catalog(layout.catalog), read_patch_centers(layout.patch_centers, layout.command("centers"))


def select_series(catalog: pd.DataFrame, scanners: Sequence[str] | None = None,
                  doses: Sequence[float] | None = None, recons: Sequence[str] | None = None,
                  max_series: int | None = None, repetitions: Sequence[int] | None = None) -> pd.DataFrame:
    """Catalog rows passing the filters, in catalog order; at most ``max_series`` (ValueError if none).

    ``repetitions``: 1-based repetition numbers of the catalog (its order of acquisition per scanner,
    dose and reconstruction) to keep."""
    keep = np.ones(len(catalog), dtype=bool)
    if scanners:
        keep &= catalog["scanner"].astype(str).str.upper().isin([s.upper() for s in scanners]).to_numpy()
    if doses:
        keep &= np.isin(catalog["dose_mgy"].astype(float).to_numpy(), [float(d) for d in doses])
    if recons:
        keep &= catalog["recon"].astype(str).str.upper().isin([r.upper() for r in recons]).to_numpy()
    if repetitions:
        keep &= np.isin(catalog["repetition"].astype(int).to_numpy(), [int(r) for r in repetitions])
    selected = catalog.loc[keep]
    if max_series is not None:
        selected = selected.head(max_series)
    if selected.empty:
        raise ValueError(f"no catalog series match scanners={scanners} doses={doses} recons={recons} "
                         f"repetitions={repetitions}")
    return selected.reset_index(drop=True)


def select_centers(centers: pd.DataFrame, patches_per_roi: int | None = None) -> pd.DataFrame:
    """The first ``patches_per_roi`` centers (lowest patch numbers) of each ROI, in the file's ROI order.

    ValueError when an ROI has fewer centers than ``patches_per_roi``.
    """
    if patches_per_roi is not None and patches_per_roi < 1:
        raise ValueError(f"--patches-per-roi must be >= 1, got {patches_per_roi}")
    short = roi_short_of(centers, patches_per_roi) if patches_per_roi is not None else None
    if short is not None:
        raise ValueError(f"--patches-per-roi {patches_per_roi}: ROI {short[0]} has only {short[1]} centers; "
                         "draw more with data/patch_centers.py --per-roi")
    roi_order = {roi: n for n, roi in enumerate(dict.fromkeys(centers["roi"]))}
    ordered = centers.assign(_roi=centers["roi"].map(roi_order)).sort_values(["_roi", "patch"], kind="stable")
    if patches_per_roi is not None:
        ordered = ordered.groupby("_roi", sort=False).head(patches_per_roi)
    return ordered.drop(columns="_roi").reset_index(drop=True)


def make_jobs(series: pd.DataFrame, centers: pd.DataFrame, layout: ResultsLayout, name: str,
              value_settings: dict[str, Any] | None = None,
              max_outside_share: float = MAX_OUTSIDE_SHARE) -> list[SeriesJob]:
    """One job per selected catalog row (paths resolved, identity fields copied).

    ``value_settings``: what changes feature values (weights checksum, patch geometry, params),
    recorded in every partial's sidecar; ``max_outside_share``: see :func:`check_outside`.
    """
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
            value_settings=dict(value_settings or {}),
            max_outside_share=max_outside_share,
        ))
    return jobs


# --------------------------------------------------------------------------- per-series helpers


def load_volume(job: SeriesJob) -> Volume:
    """The series' CT volume (a clear error if its folder is gone); another dataset's case volume."""
    from ctdose.dicom_io import read_ct_series

    if job.dataset != "ctdose":
        from ctdose.datasets import load_case

        return load_case(job.dataset, job.ct_path, job.item)
    if not Path(job.ct_path).exists():
        raise FileNotFoundError(f"series {job.series_uid}: CT folder {job.ct_path} (from the catalog) is missing")
    return read_ct_series(job.ct_path, job.series_uid)


def load_series(job: SeriesJob) -> tuple[Volume, sitk.Transform | None]:
    """The series' CT volume and its reference -> series transform (clear errors if files are gone);
    another dataset's case is its own reference (transform None)."""
    from ctdose.transform_io import load_transform

    if job.dataset != "ctdose":
        return load_volume(job), None
    verify(job.transform_path, "data/prepare.py")
    return load_volume(job), load_transform(job.transform_path)


def feature_frame(identity: dict[str, Any], rows: pd.DataFrame, values: np.ndarray,
                  names: Sequence[str], outside_fraction: np.ndarray | None = None) -> pd.DataFrame:
    """Identity columns (series fields + ``rows``' roi, roi_class, patch), ``outside_fraction``, features.

    ``values`` is (len(rows), len(names)); ``names`` are already prefixed by the extractor name;
    ``outside_fraction`` (len(rows),) is each patch's share of voxels outside the field of view
    (0 when not given, e.g. whole-ROI rows).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(rows), len(names)):
        raise ValueError(f"feature array of shape {values.shape} does not match {len(rows)} rows x "
                         f"{len(names)} names")
    ident = pd.DataFrame({k: [identity[k]] * len(rows) for k in SERIES_FIELDS})
    ident["roi"] = rows["roi"].to_numpy()
    ident["roi_class"] = rows["roi_class"].to_numpy()
    ident["patch"] = rows["patch"].to_numpy().astype(int)
    ident[OUTSIDE_COLUMN] = (np.zeros(len(rows)) if outside_fraction is None
                             else np.asarray(outside_fraction, dtype=float).reshape(len(rows)))
    feats = pd.DataFrame(values, columns=list(names))
    return pd.concat([ident[[*IDENTITY_COLUMNS, OUTSIDE_COLUMN]], feats], axis=1)


def check_finite(df: pd.DataFrame) -> None:
    """ValueError naming series, ROI, patch and feature of the first NaN/inf value of a feature frame."""
    names = feature_columns(list(df.columns))
    values = df[names].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        row = df.iloc[r]
        raise ValueError(f"non-finite feature {names[c]} = {values[r, c]} in series {row['series_uid']}, "
                         f"roi {row['roi']}, patch {row['patch']} ({int(bad.sum())} non-finite value(s) "
                         "in this series); nothing was written for it")


def check_outside(df: pd.DataFrame, max_share: float) -> None:
    """ValueError naming the first patch whose share of voxels outside the field of view exceeds ``max_share``."""
    if OUTSIDE_COLUMN not in df:
        return
    over = df[OUTSIDE_COLUMN].to_numpy(dtype=float) > max_share
    if over.any():
        row = df.loc[over].iloc[0]
        raise ValueError(f"series {row['series_uid']}, roi {row['roi']}, patch {row['patch']}: "
                         f"{row[OUTSIDE_COLUMN]:.1%} of the patch lies outside the field of view "
                         f"({int(over.sum())} patch(es) over the allowed {max_share:.1%}; "
                         "--max-outside-share raises the limit)")


def partial_settings(job: SeriesJob) -> dict[str, Any]:
    """What one series' partial table depends on besides its input files."""
    return {**job.value_settings, "identity": job.identity,
            "centers": job.centers.to_dict("records"), "max_outside_share": job.max_outside_share}


def partial_inputs(job: SeriesJob) -> list[Path]:
    """Files a series' partial is computed from and must be recomputed after: transform, SEG (another
    dataset: the case's image file; its centres are in the settings)."""
    paths = (job.transform_path, job.seg_path) if job.dataset == "ctdose" else (job.ct_path,)
    return [Path(p) for p in paths if p and Path(p).is_file()]


def partial_is_current(job: SeriesJob) -> bool:
    """True when ``job``'s partial table exists, is intact and was made with its settings and inputs."""
    return is_current(job.partial_path, partial_settings(job), partial_inputs(job))


def run_job(job: SeriesJob, compute: Callable[[SeriesJob], pd.DataFrame]) -> str:
    """Write ``job``'s partial table unless it is current; returns its path. Errors name the series."""
    path = Path(job.partial_path)
    settings, inputs = partial_settings(job), partial_inputs(job)
    if is_current(path, settings, inputs):
        return str(path)
    try:
        frame = compute(job)
        check_finite(frame)
        check_outside(frame, job.max_outside_share)
    except (ValueError, RuntimeError) as err:
        message = str(err)
        raise ValueError(message if job.series_uid in message else f"series {job.series_uid}: {message}") from err
    write_csv(frame, path)
    write_sidecar(path, settings, inputs=inputs, n_rows=len(frame))
    return str(path)


# --------------------------------------------------------------------------- merge and provenance


def merge_partials(jobs: Sequence[SeriesJob]) -> pd.DataFrame:
    """The partial tables of ``jobs``, each checked against its sidecar, concatenated: job order,
    then the centers' ROI order, then patch."""
    frames = []
    for job in jobs:
        path = Path(job.partial_path)
        verify(path, "the extractor again (it recomputes missing or damaged series)")
        frame = read_csv(path, dtype=TEXT_DTYPES)
        if not (frame["series_uid"] == job.series_uid).all():
            raise ValueError(f"partial table {path} holds rows of another series than {job.series_uid}")
        roi_order = {roi: n for n, roi in enumerate(dict.fromkeys(job.centers["roi"]))}
        order = np.lexsort((frame["patch"].to_numpy(), frame["roi"].map(roi_order).to_numpy()))
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

    When the table is current (same settings, merged from exactly these partials), it is left as it is.
    """
    table = layout.feature_table(name)
    sources = ([layout.dataset_centers] if jobs and jobs[0].dataset != "ctdose"
               else [layout.catalog, layout.patch_centers])
    inputs = [*sources, *[Path(job.partial_path) for job in jobs]]
    if is_current(table, settings, inputs):
        print(f"{name}: {table} is current")
        return table
    merged = merge_partials(jobs)
    outside = merged[OUTSIDE_COLUMN].to_numpy(dtype=float) > 0
    if outside.any():
        print(f"warning: {name}: {int(outside.sum())} of {len(merged)} patches reach outside the field of "
              f"view (largest share {merged[OUTSIDE_COLUMN].max():.1%}; column {OUTSIDE_COLUMN})")
    n_features = len(feature_columns(list(merged.columns)))
    write_csv(merged, table)
    write_sidecar(table, settings, inputs=inputs, extractor=name, n_features=n_features, n_rows=len(merged),
                  n_series=len(jobs), n_patches_outside=int(outside.sum()), **extra)
    return table


# --------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser, results: str, extractor: str | None = None,
                    dataset: str = "ctdose", dataset_path: str = "") -> None:
    """Flags every extractor script shares (results folder, dataset, selection, patch geometry);
    ``extractor`` names the script's extractor for a protocol's per-extractor patch size."""
    from ctdose.datasets import CENTER_MODES, DATASETS

    parser.add_argument("--results", default=results,
                        help="results folder holding catalog.csv, patch_centers.csv, transforms/ "
                             "(default: %(default)s); with --dataset ctorg|organmnist3d give a folder of "
                             "its own (it gets dataset_centers.csv and features/)")
    parser.add_argument("--dataset", choices=DATASETS, default=dataset,
                        help="ctdose: the phantom's catalog and centres; ctorg: CT-ORG NIfTI pairs, a patch "
                             "at each organ; organmnist3d: MedMNIST npz, one patch per crop, grey levels "
                             "scaled /255 (no HU window) (default: %(default)s)")
    parser.add_argument("--dataset-path", default=dataset_path, metavar="PATH",
                        help="CT-ORG folder (volume-N.nii.gz, labels-N.nii.gz) or organmnist3d[_64].npz")
    parser.add_argument("--organ-centers", choices=CENTER_MODES, default="centroid",
                        help="CT-ORG: one centre at each organ's centroid (inside the organ), or "
                             "--patches-per-roi seeded centres inside it (default: %(default)s)")
    parser.add_argument("--center-seed", type=int, default=0, help="seed of CT-ORG's seeded centres (default: 0)")
    parser.add_argument("--scanners", nargs="+", metavar="CODE", help="only these scanner codes (e.g. A1 G2)")
    parser.add_argument("--doses", nargs="+", type=float, metavar="MGY", help="only these nominal doses (mGy)")
    parser.add_argument("--recons", nargs="+", metavar="RECON", help="only these reconstructions (FBP IR DL)")
    parser.add_argument("--max-series", type=int, metavar="N", help="at most N series (first in catalog order)")
    parser.add_argument("--repetitions", nargs="+", type=int, metavar="R",
                        help="only these repetitions (1-based, the catalog's repetition column)")
    parser.add_argument("--patches-per-roi", type=int, metavar="K",
                        help="use the first K centers of each ROI (default: all)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=list(PATCH_SIZE_XYZ), metavar=("X", "Y", "Z"),
                        help="patch size in voxels along x y z (default: the --protocol preset's, %(default)s "
                             "for toolkit)")
    add_patch_protocol_flag(parser, extractor)
    parser.add_argument("--patch-spacing", type=float, nargs=3, default=list(PATCH_SPACING_XYZ),
                        metavar=("X", "Y", "Z"), help="patch voxel spacing in mm (default: %(default)s)")
    parser.add_argument("--max-outside-share", type=float, default=MAX_OUTSIDE_SHARE, metavar="F",
                        help="largest share (0..1) of a patch allowed outside the field of view, filled "
                             "with air and counted in the outside_fraction column (default: %(default)s "
                             "= refuse)")


def prepare(args: argparse.Namespace, name: str,
            value_settings: dict[str, Any]) -> tuple[ResultsLayout, list[SeriesJob], PatchSettings]:
    """Read inputs, apply the selection flags and build the jobs of one extractor run.

    ``value_settings`` (weights checksum, params ...) are recorded with the patch geometry in every
    partial's sidecar.
    """
    if getattr(args, "dataset", "ctdose") != "ctdose":
        return prepare_dataset(args, name, value_settings)
    layout = ResultsLayout(args.results)
    catalog, centers = read_inputs(layout)
    series = select_series(catalog, args.scanners, args.doses, args.recons, args.max_series, args.repetitions)
    chosen = select_centers(centers, args.patches_per_roi)
    patch = PatchSettings(tuple(args.patch_size), tuple(args.patch_spacing))
    if not 0.0 <= args.max_outside_share <= 1.0:
        raise ValueError(f"--max-outside-share must be within 0..1, got {args.max_outside_share}")
    value_settings = {**value_settings, "patch_size": list(patch.size_xyz), "patch_spacing": list(patch.spacing_xyz)}
    return layout, make_jobs(series, chosen, layout, name, value_settings, args.max_outside_share), patch


def selection_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The shared flags as a plain dict for the merged table's sidecar (the protocol is named there; a
    partial depends only on what changes its values, so switching protocols re-merges, never re-extracts)."""
    keys = ("scanners", "doses", "recons", "repetitions", "max_series", "patches_per_roi", "patch_size",
            "patch_spacing", "max_outside_share", "protocol")
    if getattr(args, "dataset", "ctdose") != "ctdose":  # the phantom's sidecars keep their form
        keys += ("dataset", "dataset_path", "organ_centers", "center_seed")
    return {k: getattr(args, k, None) for k in keys}


# --------------------------------------------------------------------------- other datasets


def dataset_patch(args: argparse.Namespace, name: str) -> None:
    """Set ``args.patch_size`` / ``args.patch_spacing`` where the dataset fixes them (OrganMNIST3D: one
    patch covering the whole crop, sides a multiple the network ``name`` needs); a no-op otherwise."""
    from ctdose.datasets import patch_geometry

    if getattr(args, "dataset", "ctdose") == "ctdose":
        return
    geometry = patch_geometry(args.dataset, args.dataset_path, name)
    if geometry is not None:
        args.patch_size, args.patch_spacing = geometry


def dataset_settings(args: argparse.Namespace):
    """The :class:`ctdose.datasets.DatasetSettings` of the flags (ValueError for phantom-only filters)."""
    from ctdose.datasets import SEEDED_DEFAULT, DatasetSettings

    given = [flag for flag, key in (("--scanners", "scanners"), ("--doses", "doses"), ("--recons", "recons"),
                                    ("--repetitions", "repetitions")) if getattr(args, key, None)]
    if given:
        raise ValueError(f"{', '.join(given)} select phantom catalog series; with --dataset {args.dataset} "
                         "use --max-series to limit the cases")
    k = args.patches_per_roi
    if k is None:
        k = SEEDED_DEFAULT if args.organ_centers == "seeded" and args.dataset == "ctorg" else 1
    path = str(Path(args.dataset_path).resolve()) if args.dataset_path else ""
    return DatasetSettings(args.dataset, path, args.organ_centers, int(k), args.center_seed, args.max_series)


def dataset_jobs(table: pd.DataFrame, layout: ResultsLayout, name: str, value_settings: dict[str, Any],
                 max_outside_share: float, dataset: str) -> list[SeriesJob]:
    """One job per case of a ``dataset_centers.csv`` table (cases in table order)."""
    jobs = []
    for uid, rows in table.groupby("series_uid", sort=False):
        first = rows.iloc[0]
        identity = {k: first[k] for k in SERIES_FIELDS}
        dose = float(identity["dose_mgy"])  # NaN (no dose) becomes None: JSON null compares equal in sidecars
        identity["dose_mgy"] = None if np.isnan(dose) else dose
        identity["repetition"] = int(identity["repetition"])
        jobs.append(SeriesJob(
            identity=identity, ct_path=str(first["source"]), seg_path=str(first["labels"]) or None,
            transform_path="", partial_path=str(layout.feature_partial(name, str(uid))),
            centers=rows[list(PATCH_CENTER_COLUMNS)].reset_index(drop=True),
            value_settings=dict(value_settings), max_outside_share=max_outside_share,
            dataset=dataset, item=str(first["item"])))
    return jobs


def prepare_dataset(args: argparse.Namespace, name: str,
                    value_settings: dict[str, Any]) -> tuple[ResultsLayout, list[SeriesJob], PatchSettings]:
    """:func:`prepare` for ``--dataset ctorg|organmnist3d``: centre table (made or reused), one job per case."""
    from ctdose.datasets import input_range, write_centers

    settings = dataset_settings(args)
    dataset_patch(args, name)
    if not 0.0 <= args.max_outside_share <= 1.0:
        raise ValueError(f"--max-outside-share must be within 0..1, got {args.max_outside_share}")
    layout = ResultsLayout(args.results)
    if layout.catalog.exists():
        raise ValueError(f"results folder {layout.root} holds the phantom's catalog.csv; give --dataset "
                         f"{settings.name} a --results folder of its own (e.g. {layout.root / settings.name})")
    table = write_centers(layout.dataset_centers, settings)
    patch = PatchSettings(tuple(args.patch_size), tuple(args.patch_spacing))
    value_settings = {**value_settings, "patch_size": list(patch.size_xyz), "patch_spacing": list(patch.spacing_xyz),
                      "dataset": settings.name, "input_range": input_range(settings.name)}
    return layout, dataset_jobs(table, layout, name, value_settings, args.max_outside_share,
                                       settings.name), patch
