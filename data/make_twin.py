#!/usr/bin/env python
"""Make the digital twin of the liver phantom: simulated multi-scanner, multi-dose CT as DICOM + SEG.

The twin is a physics simulation of a phantom like the one of CT4Harmonization-Multicentric, not
the real phantom: a human-scale torso with a textured liver and six ROIs, scanned by the collection's
13 scanners (profiles from the dataset paper's Tables 1-2; kernels, noise and CT-number calibration
are the twin's choices), every dose and repetition an independent acquisition (Poisson counts through
the whole body, FBP of the noise onto the reconstructed region, kernel MTF on the phantom, IR and DL
approximations). Output follows the collection's conventions (TCIA series
names, CT Image Storage, DICOM SEG with the six ROIs) plus ground_truth.json. Re-running skips
finished series; the same settings give byte-identical files.

Examples:
  .venv/bin/python data/make_twin.py --preset demo --out data/twin_demo
  .venv/bin/python data/make_twin.py --preset tiny --out data/twin_tiny --scanners A1 --doses 3 14
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# --- settings ---------------------------------------------------------------------------------
PRESET = "demo"  # tiny | demo | full (see ctdose/twin/presets.py)
OUT = Path(__file__).resolve().parent / "twin_demo"
SEED = 0  # placements and photon noise
TEXTURE_SEED = 0  # the phantom's fixed texture (another value = another printed phantom)
WORKERS = 2  # worker processes (scans run in parallel)
# -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=PRESET, help=f"tiny, demo or full (default {PRESET})")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default %(default)s)")
    parser.add_argument("--scanners", nargs="+", help="scanner codes, e.g. A1 C1 (default: the preset's)")
    parser.add_argument("--doses", nargs="+", type=float,
                        help="CTDIvol levels in mGy (default: the preset's)")
    parser.add_argument("--recons", nargs="+", help="FBP IR DL (DL only on scanners that have it)")
    parser.add_argument("--reps", type=int, help="repeated scans per scanner (default: the preset's)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help="seed of placements and noise (default %(default)s)")
    parser.add_argument("--texture-seed", type=int, default=TEXTURE_SEED,
                        help="seed of the phantom's texture (default %(default)s)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="worker processes (default %(default)s)")
    args = parser.parse_args(argv)

    from ctdose.twin.generate import generate_twin
    from ctdose.twin.presets import get_preset

    preset = get_preset(args.preset).with_overrides(
        scanners=tuple(s.upper() for s in args.scanners) if args.scanners else None,
        doses=tuple(args.doses) if args.doses else None,
        recons=tuple(r.upper() for r in args.recons) if args.recons else None, reps=args.reps)
    start = time.perf_counter()
    truth = generate_twin(args.out, preset, seed=args.seed, texture_seed=args.texture_seed, workers=args.workers)
    print(f"{len(truth['series'])} series in {args.out} ({time.perf_counter() - start:.0f} s); "
          f"ground truth: {args.out / 'ground_truth.json'}")
    return 0


if __name__ == "__main__":
    from ctdose.cli import run_main

    sys.exit(run_main(main))
