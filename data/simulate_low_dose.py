#!/usr/bin/env python
"""Simulate a lower-dose version of an existing reconstructed CT series (DICOM in, DICOM out).

The series is reprojected, Gaussian noise with the extra variance of the lower photon count is
inserted in projection space, reconstructed with FBP and added to the image (ctdose/lowdose.py).
The new series gets new UIDs, scaled CTDIvol / Exposure / XRayTubeCurrent tags and a
SeriesDescription with the new dose (TCIA naming kept when the description follows it). Its
ImageType is DERIVED, SECONDARY; its DerivationDescription records the dose fraction, photons per
ray, views and seed, and each slice's SourceImageSequence names the input slice it was made from.

The number of photons per ray of the original acquisition must be known: from a twin's
ground_truth.json (--ground-truth), or given directly (--photons-per-ray, or --photons-per-mgy times
the series' CTDIvol).

Example:
  .venv/bin/python data/simulate_low_dose.py data/twin_demo/A1_..._14mGy_FBP_NrFiles_56 \\
      --target-mgy 3 --ground-truth data/twin_demo/ground_truth.json --out /tmp/A1_3mGy_sim
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# --- settings ---------------------------------------------------------------------------------
SEED = 0  # noise seed
CHUNK = 16  # slices reprojected at once (memory)
# -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("series", type=Path,
                        help="folder holding the CT series (one series, or give --series-uid)")
    parser.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--fraction", type=float, help="dose fraction in (0, 1)")
    target.add_argument("--target-mgy", type=float, help="target CTDIvol in mGy (needs the CTDIvol tag)")
    photons = parser.add_mutually_exclusive_group(required=True)
    photons.add_argument("--ground-truth", type=Path, help="twin ground_truth.json holding the series")
    photons.add_argument("--photons-per-ray", type=float, help="photons per detector ray of the original")
    photons.add_argument("--photons-per-mgy", type=float, help="photons per ray per mGy of CTDIvol")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: beside the input, named for the new dose)")
    parser.add_argument("--n-angles", type=int,
                        help="views per rotation the photon counts refer to (default: from --ground-truth, "
                             "else the twin's for the matrix)")
    parser.add_argument("--seed", type=int, default=SEED, help="noise seed (default %(default)s)")
    parser.add_argument("--chunk", type=int, default=CHUNK,
                        help="slices per reprojection chunk (default %(default)s)")
    args = parser.parse_args(argv)

    from ctdose.lowdose import write_low_dose_series

    photons_per_ray = args.photons_per_ray
    photons_per_mgy = args.photons_per_mgy
    n_angles = args.n_angles
    if args.ground_truth is not None:
        if not args.ground_truth.is_file():
            raise FileNotFoundError(f"no such ground-truth file: {args.ground_truth}")
        try:
            truth = json.loads(args.ground_truth.read_text())
            photons_per_mgy = {code: s["photons_per_ray_per_mgy"] for code, s in truth["scanners"].items()}
            n_angles = n_angles or truth["physics"]["n_angles"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{args.ground_truth}: not a twin ground_truth.json ({type(err).__name__}: "
                             f"{err})") from None
    out = write_low_dose_series(args.series, out_dir=args.out, fraction=args.fraction,
                                target_mgy=args.target_mgy, photons_per_ray=photons_per_ray,
                                photons_per_mgy=photons_per_mgy, seed=args.seed, n_angles=n_angles,
                                chunk=args.chunk, series_uid=args.series_uid)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from ctdose.cli import run_main

    sys.exit(run_main(main))
