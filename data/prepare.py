#!/usr/bin/env python
"""Catalog a DICOM tree, write every series' ROI label map and register every series to the reference.

Writes under --results (each with a JSON sidecar: settings, checksums, versions):
  catalog.csv                       one row per CT series: metadata from DICOM tags, SEG/RTSTRUCT link,
                                    repetition, dose_mismatch (name and CTDIvol disagree)
  reference.json                    the registration reference series (UID, scanner, dose, recon, path)
  masks/<series_uid>.nii.gz         ROI label map on the series' CT grid (0 background, 1..n ROI order)
  transforms/<series_uid>.tfm       rigid transform mapping reference points -> series points
  registration.csv                  per series: correlation inside the phantom before/after, identity kept?,
                                    registered_with (the series whose registration it took)
Series sharing a FrameOfReferenceUID share one coordinate system: one registration (of the group's
highest-dose series; the reference's group takes the reference) serves them all, unless
--register-every-series.
The reference (default: first 10 mGy IR series of scanner A1, else of the first scanner present; never
a series whose name and tags disagree on dose) needs a SEG or RTSTRUCT. ROIs come from --rois (a YAML:
label or structure name -> ROI -> class), by default the phantom's six. A re-run on the same --data reuses
catalog.csv (unless --rescan) and redoes exactly the outputs that are missing, damaged or made with
another SEG, reference or seed. A series with bad input (missing slice, SEG off its grid ...) does not
stop the others: failures are listed at the end and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from ctdose.atomic import write_csv, write_json
from ctdose.catalog import build_catalog, choose_reference, read_catalog
from ctdose.cli import run_main
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.prepare import PrepareTask, prepare_series, registration_sources
from ctdose.provenance import is_current, write_sidecar
from ctdose.registration import RegistrationSettings
from ctdose.rois import load_rois

# --- settings ---------------------------------------------------------------------------------
DATA = repo_path("data/twin_demo")   # DICOM tree (CT series + SEGs, any folder layout)
RESULTS = repo_path("results")       # results folder
REFERENCE = "auto"                   # reference series UID, or "auto"
WORKERS = 2                          # local Dask worker processes (1 = in-process)
SCHEDULER = None                     # address of an existing Dask scheduler (overrides WORKERS)
SEED = 0                             # random sampling seed of the registration metric
ROIS = None                          # ROI YAML (SEG label / RTSTRUCT name -> ROI -> class); None = phantom
SHARE_FRAME = True                   # one registration per FrameOfReferenceUID (False: every series)
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="DICOM tree to catalog (default: %(default)s)")
    parser.add_argument("--results", default=str(RESULTS), help="results folder (default: %(default)s)")
    parser.add_argument("--reference", default=REFERENCE,
                        help="reference series UID, or 'auto' = first 10 mGy IR series of A1 (else of the "
                             "first scanner present), repetition 1 (default: auto)")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help="local worker processes; 1 runs in-process (default: %(default)s)")
    parser.add_argument("--scheduler", default=SCHEDULER,
                        help="address of a running Dask scheduler, e.g. tcp://host:8786 (default: local)")
    parser.add_argument("--seed", type=int, default=SEED, help="registration sampling seed (default: %(default)s)")
    parser.add_argument("--rois", default=ROIS, metavar="YAML",
                        help="ROI YAML mapping SEG segment labels / RTSTRUCT ROI names to ROIs and classes "
                             "(default: the phantom's six ROIs, ctdose/data/rois_phantom.yaml)")
    parser.add_argument("--register-every-series", dest="share_frame", action="store_false", default=SHARE_FRAME,
                        help="register every series, even those sharing a FrameOfReferenceUID with another")
    parser.add_argument("--rescan", action="store_true",
                        help="rebuild catalog.csv even if it is current (default: reuse it)")
    return parser.parse_args(argv)


def catalog_of(args: argparse.Namespace, layout: ResultsLayout) -> pd.DataFrame:
    """The catalog of ``--data``: reused when current and intact, else rebuilt and written."""
    settings = {"data": str(args.data)}
    if not args.rescan and is_current(layout.catalog, settings):  # intact and made from this --data
        catalog = read_catalog(layout.catalog)
        print(f"reusing {layout.catalog} ({len(catalog)} series; --rescan to rebuild)")
        return catalog
    started = time.perf_counter()
    catalog = build_catalog(args.data)
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, settings, n_rows=len(catalog))
    print(f"catalogued {len(catalog)} series in {time.perf_counter() - started:.1f} s -> {layout.catalog}")
    return catalog


def write_reference(catalog: pd.DataFrame, uid: str, layout: ResultsLayout) -> dict:
    """Record the reference series in ``reference.json`` (a first-class output with its sidecar)."""
    row = catalog.set_index("series_uid").loc[uid]
    info = {"series_uid": uid, "scanner": row["scanner"], "dose_mgy": float(row["dose_mgy"]),
            "recon": row["recon"], "repetition": int(row["repetition"]), "path": row["path"],
            "seg_path": row["seg_path"]}
    if not is_current(layout.reference, info, inputs=[layout.catalog]):
        write_json(info, layout.reference)
        write_sidecar(layout.reference, info, inputs=[layout.catalog])
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    started = time.perf_counter()
    load_rois(args.rois)  # a bad ROI YAML stops here, in one line, before any work
    catalog = catalog_of(args, layout)
    reference = write_reference(catalog, choose_reference(catalog, args.reference), layout)
    print(f"reference: {reference['series_uid']} ({reference['scanner']} {reference['dose_mgy']:g} mGy "
          f"{reference['recon']} repetition {reference['repetition']})")
    registration = RegistrationSettings(seed=args.seed)
    sources = registration_sources(catalog, reference["series_uid"], args.share_frame)
    tasks = [PrepareTask(series_uid=row.series_uid, path=row.path, seg_path=row.seg_path or "",
                         reference_uid=reference["series_uid"], reference_path=str(reference["path"]),
                         results=str(layout.root), registration=registration,
                         roi_format=getattr(row, "roi_format", "") or "SEG", rois_path=args.rois,
                         source_uid="" if sources[row.series_uid] == row.series_uid else sources[row.series_uid])
             for row in catalog.itertuples()]
    # the reference first: its mask is needed by the patch centers even if a later series fails
    tasks.sort(key=lambda task: task.series_uid != reference["series_uid"])
    # the registered series first, then those that take a registered series' transform
    registered = [t for t in tasks if not t.source_uid]
    rows = parallel_map(prepare_series, registered, workers=args.workers, scheduler=args.scheduler,
                        desc="prepare (registered)")
    failed_sources = {r["series_uid"]: r["error"] for r in rows if r["error"]}
    for task in (t for t in tasks if t.source_uid in failed_sources):
        rows.append({"series_uid": task.series_uid, "skipped": False,
                     "error": f"its frame-of-reference source {task.source_uid} failed"})
    rows += parallel_map(prepare_series, [t for t in tasks if t.source_uid and t.source_uid not in failed_sources],
                         workers=args.workers, scheduler=args.scheduler, desc="prepare (shared frame)")
    table = pd.DataFrame(rows)
    failed = table[table["error"] != ""]
    ok = table[table["error"] == ""].drop(columns="error")
    if not ok.empty:
        skipped = int(ok.pop("skipped").sum())
        write_csv(ok.sort_values("series_uid"), layout.registration)
        write_sidecar(layout.registration, {"reference_uid": reference["series_uid"], "seed": args.seed},
                      inputs=[layout.catalog, *[layout.transform(uid) for uid in ok["series_uid"]]])
        # the reference and the series of its frame of reference are at the identity by definition
        kept = ok[ok["kept_identity"].astype(bool) & (ok.get("registered_with", ok["series_uid"]) != reference["series_uid"])]
        for row in kept.itertuples():
            print(f"warning: series {row.series_uid}: {row.reason}")
        print(f"prepared {len(ok) - skipped} series, skipped {skipped} already done, {len(kept)} kept the "
              f"identity, {len(failed)} failed; {time.perf_counter() - started:.1f} s -> {layout.registration}")
    for row in failed.itertuples():
        print(f"error: series {row.series_uid}: {row.error}", file=sys.stderr)
    if len(failed):
        raise ValueError(f"{len(failed)} of {len(table)} series failed (listed above); fix or remove them "
                         "and re-run" + ("" if not ok.empty else "; registration.csv was not written"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
