#!/usr/bin/env python
"""Catalog a DICOM tree, write every series' ROI label map and register every series to the reference.

Writes under --results:
  catalog.csv (+ catalog.json)      one row per CT series: metadata from DICOM tags, SEG link, repetition
  masks/<series_uid>.nii.gz         ROI label map on the series' CT grid (0 background, 1..6 ROI order)
  transforms/<series_uid>.tfm       rigid transform mapping reference points -> series points (+ .json row)
  registration.csv (+ .json)        per series: correlation inside the phantom before/after, identity kept?
The reference series (default: first 10 mGy IR series of scanner A1, else of the first scanner present)
is recorded in both sidecars. A re-run on the same --data reuses catalog.csv (unless --rescan) and
skips series whose outputs exist (registration is redone for a series registered to another reference).
A series with bad input (missing slice, SEG off its grid ...) does not stop the others; failures are
listed at the end and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.catalog import build_catalog, choose_reference, read_catalog
from ctdose.layout import ResultsLayout
from ctdose.parallel import parallel_map
from ctdose.provenance import write_sidecar
from ctdose.registration import PrepareTask, prepare_series

# --- settings ---------------------------------------------------------------------------------
DATA = "data/twin_demo"   # DICOM tree (CT series + SEGs, any folder layout)
RESULTS = "results"       # results folder
REFERENCE = "auto"        # reference series UID, or "auto"
WORKERS = 2               # local Dask worker processes (1 = in-process)
SCHEDULER = None          # address of an existing Dask scheduler (overrides WORKERS)
SEED = 0                  # random sampling seed of the registration metric
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help=f"DICOM tree to catalog (default: {DATA})")
    parser.add_argument("--results", default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--reference", default=REFERENCE,
                        help="reference series UID, or 'auto' = first 10 mGy IR series of A1 (else of the "
                             "first scanner present), repetition 1 (default: auto)")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"local worker processes; 1 runs in-process (default: {WORKERS})")
    parser.add_argument("--scheduler", default=SCHEDULER,
                        help="address of a running Dask scheduler, e.g. tcp://host:8786 (default: local)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"registration sampling seed (default: {SEED})")
    parser.add_argument("--rescan", action="store_true",
                        help="rebuild catalog.csv even if it exists (default: reuse it)")
    return parser.parse_args(argv)


def _catalogued_data(layout: ResultsLayout) -> str | None:
    """The --data of the run that wrote catalog.csv (from its sidecar), None if unknown."""
    try:
        return json.loads(layout.catalog.with_suffix(".json").read_text())["settings"]["data"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = dict(vars(args))
    started = time.perf_counter()
    try:
        if layout.catalog.is_file() and not args.rescan and _catalogued_data(layout) == args.data:
            catalog = read_catalog(layout.catalog)
            print(f"reusing {layout.catalog} ({len(catalog)} series; --rescan to rebuild)")
        else:
            warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
            catalog = build_catalog(args.data)
            write_csv(catalog, layout.catalog)
            print(f"catalogued {len(catalog)} series in {time.perf_counter() - started:.1f} s "
                  f"-> {layout.catalog}")
        reference_uid = choose_reference(catalog, args.reference)
        reference = catalog.set_index("series_uid").loc[reference_uid]
        reference_info = {"series_uid": reference_uid, "scanner": reference["scanner"],
                          "dose_mgy": float(reference["dose_mgy"]), "recon": reference["recon"],
                          "repetition": int(reference["repetition"]), "path": reference["path"]}
        write_sidecar(layout.catalog, settings, reference=reference_info)
        print(f"reference: {reference_uid} ({reference['scanner']} {reference['dose_mgy']:g} mGy "
              f"{reference['recon']} repetition {reference['repetition']})")
        itk_threads = 1 if args.workers > 1 or args.scheduler else 0  # N workers use N cores
        tasks = [PrepareTask(series_uid=row.series_uid, path=row.path, seg_path=row.seg_path or "",
                             reference_uid=reference_uid, reference_path=str(reference["path"]),
                             results=str(layout.root), seed=args.seed, itk_threads=itk_threads)
                 for row in catalog.itertuples()]
        # the reference first: its mask is needed by the patch centres even if a later series fails
        tasks.sort(key=lambda task: task.series_uid != reference_uid)
        rows = parallel_map(prepare_series, tasks, workers=args.workers, scheduler=args.scheduler,
                            desc="prepare")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    table = pd.DataFrame(rows)
    skipped = int(table.pop("skipped").sum())
    failed = table[table["error"] != ""]
    write_csv(table.sort_values("series_uid"), layout.registration)
    write_sidecar(layout.registration, settings, reference=reference_info)
    ok = table[table["error"] == ""]
    kept = ok[ok["kept_identity"].astype(bool) & (ok["series_uid"] != reference_uid)]
    for row in kept.itertuples():
        print(f"warning: series {row.series_uid}: {row.reason}")
    print(f"prepared {len(table) - skipped - len(failed)} series, skipped {skipped} already done, "
          f"{len(kept)} kept the identity, {len(failed)} failed; {time.perf_counter() - started:.1f} s "
          f"-> {layout.registration}")
    if len(failed):
        for row in failed.itertuples():
            print(f"error: series {row.series_uid}: {row.error}", file=sys.stderr)
        sys.exit(f"error: {len(failed)} series failed (listed above); fix or remove them and re-run")


if __name__ == "__main__":
    main()
