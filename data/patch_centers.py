#!/usr/bin/env python
"""Draw the patch centers: N seeded points per ROI inside the reference series' ROI masks.

Reads the reference series chosen by data/prepare.py (reference.json) and its label map
(masks/<uid>.nii.gz), each checked against its sidecar; writes patch_centers.csv (+ patch_centers.json)
under --results with columns roi, roi_class, patch, x_mm, y_mm, z_mm: reference-space LPS millimetres, the same for every series.
Centers lie inside their ROI, at least --min-edge-mm from its edge where the ROI allows. A re-run
with the same settings and the same reference mask keeps the existing file.
"""

from __future__ import annotations

import argparse
import sys

from ctdose.atomic import write_csv
from ctdose.centers import MIN_EDGE_DISTANCE_MM, draw_patch_centers
from ctdose.cli import run_main
from ctdose.label_map_io import read_label_map
from ctdose.layout import ResultsLayout, repo_path
from ctdose.naming import ROI_NAMES
from ctdose.provenance import is_current, verify, write_sidecar

# --- settings ---------------------------------------------------------------------------------
RESULTS = repo_path("results")   # results folder written by data/prepare.py
PER_ROI = 10                     # centers per ROI
SEED = 0                         # random seed of the draw
MIN_EDGE_MM = MIN_EDGE_DISTANCE_MM  # preferred minimum distance of a center from its ROI edge, mm
REFERENCE = "auto"               # series UID whose masks are used; auto = the one prepare.py chose
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS), help="results folder (default: %(default)s)")
    parser.add_argument("--per-roi", type=int, default=PER_ROI, help="centers per ROI (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    parser.add_argument("--min-edge-mm", type=float, default=MIN_EDGE_MM,
                        help="preferred distance of centers from the ROI edge in mm (default: %(default)g)")
    parser.add_argument("--reference", default=REFERENCE,
                        help="series UID whose masks give the centers (default: the reference recorded "
                             "by data/prepare.py in reference.json)")
    return parser.parse_args(argv)


def reference_uid(layout: ResultsLayout, reference: str) -> str:
    """The reference series UID: given, or the one data/prepare.py recorded (checked against its sidecar)."""
    if reference != "auto":
        return reference
    record = verify(layout.reference, layout.command("prepare"))
    return str(record["settings"]["series_uid"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    uid = reference_uid(layout, args.reference)
    settings = {"per_roi": args.per_roi, "seed": args.seed, "min_edge_mm": args.min_edge_mm, "reference": uid}
    out, mask = layout.patch_centers, layout.mask(uid)
    mask_record = verify(mask, layout.command("prepare"))
    if is_current(out, settings, inputs=[mask]):
        print(f"{out} is current (same settings and reference mask); kept")
        return 0
    names = tuple(mask_record.get("labels") or ROI_NAMES)  # the ROI set prepare.py read the SEG with
    centers = draw_patch_centers(read_label_map(mask), n_per_roi=args.per_roi, seed=args.seed,
                                 min_edge_distance_mm=args.min_edge_mm, roi_names=names,
                                 roi_classes=mask_record.get("classes") or None)
    write_csv(centers, out)
    write_sidecar(out, settings, inputs=[mask], n_rows=len(centers))
    print(f"{len(centers)} centers ({args.per_roi} per ROI) from series {uid} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
