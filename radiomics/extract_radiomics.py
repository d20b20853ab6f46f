"""Extract PyRadiomics features for every selected series -> results/features/radiomics.csv (+ .json).

Modes: ``patch`` (default, the study's: each 64x64x32 patch box is the mask, one row per ROI patch) and
``roi`` (the series' whole ROI masks from its DICOM SEG, one row per ROI with patch = -1).
Series run in parallel through Dask (local worker processes, or an existing cluster with --scheduler).
Each series' rows are written to results/features/partial/radiomics/<series_uid>.csv as soon as it is
done; a re-run skips those, so an interrupted run resumes. Settings come from a PyRadiomics params YAML
(radiomics/params.yaml: binWidth 25, Original image, firstorder/glcm/glrlm/glszm/gldm), validated
against PyRadiomics' schema.

Other datasets: --dataset ctorg|organmnist3d --dataset-path PATH --results FOLDER (ctdose.datasets): a
patch at each CT-ORG organ (HU), or one patch per OrganMNIST3D crop (grey levels 0..255 as they are).

Example: .venv/bin/python radiomics/extract_radiomics.py --results results --patches-per-roi 2 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctdose.cli import run_main
from ctdose.extractors import driver
from ctdose.extractors.radiomics_features import MODES, RadiomicsTask, load_params
from ctdose.layout import repo_path
from ctdose.parallel import parallel_map

# --- settings ---
RESULTS = str(repo_path("results"))
PARAMS = str(Path(__file__).with_name("params.yaml"))
MODE = "patch"
WORKERS = 2
NAME = "radiomics"
DATASET = "ctdose"     # ctdose (phantom catalog + centres), ctorg or organmnist3d
DATASET_PATH = ""      # CT-ORG folder or organmnist3d[_64].npz (with --dataset)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    driver.add_common_args(parser, RESULTS, dataset=DATASET, dataset_path=DATASET_PATH)
    parser.add_argument("--params", default=PARAMS, help="PyRadiomics params YAML (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default=MODE,
                        help="patch: patch box as mask; roi: whole SEG ROI masks (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help="local Dask worker processes; 1 = in-process (default: %(default)s)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask cluster (tcp://host:8786)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    if args.mode == "roi" and args.dataset != "ctdose":
        raise ValueError(f"--mode roi reads the phantom's DICOM SEG; with --dataset {args.dataset} use --mode patch")
    layout, jobs, patch = driver.prepare(args, NAME, {"params": params, "mode": args.mode})
    todo = [job for job in jobs if not driver.partial_is_current(job)]
    print(f"{NAME}: {len(jobs)} series selected, {len(jobs) - len(todo)} already done")
    threads = 1 if args.workers > 1 or args.scheduler else None  # one core per worker process
    parallel_map(RadiomicsTask(params, args.mode, patch, threads), todo, workers=args.workers,
                 scheduler=args.scheduler, desc=NAME)
    settings = {**driver.selection_settings(args), "params": params, "mode": args.mode}
    table = driver.finish(NAME, layout, jobs, settings, untrained=False)
    print(f"table: {table}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
