#!/usr/bin/env python
"""Draw the patch centres: N seeded points per ROI inside the reference series' ROI masks.

Reads the reference series chosen by data/prepare.py (recorded in catalog.json) and its label map
(masks/<uid>.nii.gz); writes patch_centers.csv (+ patch_centers.json) under --results with columns
roi, roi_class, patch, x_mm, y_mm, z_mm: reference-space LPS millimetres, the same for every series.
Centres lie inside their ROI, at least --min-edge-mm from its edge where the ROI allows. A re-run
with the same settings keeps the existing file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ctdose.atomic import write_csv
from ctdose.centers import MIN_EDGE_DISTANCE_MM, draw_patch_centers
from ctdose.layout import ResultsLayout
from ctdose.provenance import write_sidecar
from ctdose.seg import read_label_map

# --- settings ---------------------------------------------------------------------------------
RESULTS = "results"              # results folder written by data/prepare.py
PER_ROI = 10                     # centres per ROI
SEED = 0                         # random seed of the draw
MIN_EDGE_MM = MIN_EDGE_DISTANCE_MM  # preferred minimum distance of a centre from its ROI edge, mm
REFERENCE = "auto"               # series UID whose masks are used; auto = the one prepare.py chose
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--per-roi", type=int, default=PER_ROI, help=f"centres per ROI (default: {PER_ROI})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default: {SEED})")
    parser.add_argument("--min-edge-mm", type=float, default=MIN_EDGE_MM,
                        help=f"preferred distance of centres from the ROI edge in mm "
                             f"(default: {MIN_EDGE_MM:g})")
    parser.add_argument("--reference", default=REFERENCE,
                        help="series UID whose masks give the centres (default: the reference recorded "
                             "by data/prepare.py in catalog.json)")
    return parser.parse_args(argv)


def _read_json(path: Path) -> dict:
    """A JSON file's object; {} when the file is absent or unreadable (then the work is redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def reference_uid(layout: ResultsLayout, reference: str) -> str:
    """The reference series UID: given, or read from the catalog sidecar written by prepare.py."""
    if reference != "auto":
        return reference
    sidecar = layout.catalog.with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"no {sidecar}; run data/prepare.py first")
    try:
        return str(json.loads(sidecar.read_text())["reference"]["series_uid"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{sidecar} names no reference series ({error})") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = ResultsLayout(args.results)
    settings = dict(vars(args))
    try:
        uid = reference_uid(layout, args.reference)
        settings["reference"] = uid
        out, sidecar = layout.patch_centers, layout.patch_centers.with_suffix(".json")
        previous = _read_json(sidecar).get("settings")
        if out.is_file() and previous == settings:
            print(f"{out} exists with the same settings; kept")
            return
        centers = draw_patch_centers(read_label_map(layout.mask(uid)), n_per_roi=args.per_roi,
                                     seed=args.seed, min_edge_distance_mm=args.min_edge_mm)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    write_csv(centers, out)
    write_sidecar(out, settings, reference_mask=str(layout.mask(uid)))
    print(f"{len(centers)} centres ({args.per_roi} per ROI) from series {uid} -> {out}")


if __name__ == "__main__":
    main()
