#!/usr/bin/env python
"""Make labelled series for series QC and the series classifier from the digital twin (twin-trained).

Reads an existing twin (data/twin_demo by default; never changes it) and writes under --out:
  axis/<source>_COR, axis/<source>_SAG   exact coronal / sagittal reformats of --axis-sources axial
                                          twin series (DICOM, new UIDs, correct IOP/IPP, 'COR MPR' / 'SAG MPR')
  contrast/<source>_CE                    contrast variants of --contrast-sources twin series (+60 HU liver,
                                          +180 HU vessel-like tubes painted into the liver; the twin has none)
  body_part/renderNNN_<region>            crops of the twin's thoracic / liver / test-pattern segments from
                                          --body-renders renders of the twin's phantom model (coarse grid,
                                          white noise, no scan simulation: the demo twin spans the liver only)
  qc_axis.csv, qc_contrast.csv, qc_body_part.csv   labelled lists (path, label, group, task, origin,
                                          source) + JSON sidecars; the originals are listed by their twin path
Groups: the twin acquisition (scanner x repetition) for axis and contrast, the render for body part,
so that a series and its derivatives never straddle train and test. Every row says origin
'ctdose twin (twin-trained)'. Sources are one per acquisition, spread over scanners, picked with --seed.
Re-running keeps finished series. See ctdose/twin_qc.py for the exact definitions.

Example:
  .venv/bin/python data/make_qc_twin.py --twin data/twin_demo --out data/twin_qc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.layout import repo_path
from ctdose.parallel import parallel_map
from ctdose.provenance import write_sidecar

# --- settings ---
TWIN = "data/twin_demo"        # an existing twin (its ground_truth.json lists the series), read only
OUT = "data/twin_qc"           # where the new series and the lists go (git-ignored: data/twin*/)
AXIS_SOURCES = 13              # axial twin series reformatted to coronal and sagittal
CONTRAST_SOURCES = 13          # twin series given a contrast variant
BODY_RENDERS = 10              # phantom renders, 3 body-region crops each
CROP_MM = 100.0                # length (z) of a body-region crop
SEED = 0                       # picks the sources and seeds the renders
WORKERS = 1                    # processes
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twin", default=str(repo_path(TWIN)), help="twin folder (default: %(default)s)")
    p.add_argument("--out", default=str(repo_path(OUT)), help="output folder (default: %(default)s)")
    p.add_argument("--axis-sources", type=int, default=AXIS_SOURCES, help="series to reformat (default: %(default)s)")
    p.add_argument("--contrast-sources", type=int, default=CONTRAST_SOURCES,
                   help="series given a contrast variant (default: %(default)s)")
    p.add_argument("--body-renders", type=int, default=BODY_RENDERS, help="phantom renders (default: %(default)s)")
    p.add_argument("--crop-mm", type=float, default=CROP_MM, help="body-region crop length, mm (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="processes (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ctdose import twin_qc

    args = parse_args(argv)
    twin, out = Path(args.twin), Path(args.out)
    truth_path = twin / "ground_truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"no ground_truth.json in {twin}; make the twin with data/make_twin.py first")
    truth = json.loads(truth_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("axis_sources", "contrast_sources", "body_renders", "crop_mm", "seed")}
    settings.update(liver_enhancement_hu=twin_qc.LIVER_ENHANCEMENT_HU, vessel_enhancement_hu=twin_qc.VESSEL_ENHANCEMENT_HU,
                    body_regions_mm=twin_qc.BODY_REGIONS_MM, twin=str(twin))

    def group(entry: dict) -> str:
        return f"{entry['scanner']}-rep{int(entry['rep'])}"

    def label(entry: dict) -> str:
        return f"{entry['scanner']} {entry['dose_mgy']:g}mGy {entry['recon']} rep{int(entry['rep'])}"

    jobs = {
        "axis": (twin_qc.axis_job, [(str(twin / e["name"]), str(out), group(e), label(e))
                                    for e in twin_qc.choose_sources(truth, args.axis_sources, args.seed)]),
        "contrast": (twin_qc.contrast_job, [(str(twin / e["name"]), str(out), group(e), str(truth_path), label(e))
                                            for e in twin_qc.choose_sources(truth, args.contrast_sources, args.seed + 1)]),
        "body_part": (twin_qc.body_part_job, [(args.seed * 1000 + n, str(out), args.crop_mm)
                                              for n in range(args.body_renders)]),
    }
    for task, (job, items) in jobs.items():
        if not items:
            continue
        rows = [row for rows in parallel_map(job, items, workers=args.workers, desc=f"qc twin: {task}") for row in rows]
        table = pd.DataFrame(rows, columns=list(twin_qc.LIST_COLUMNS))
        path = out / f"qc_{task}.csv"
        write_csv(table, path)
        write_sidecar(path, settings, inputs=[truth_path], task=task, origin=twin_qc.ORIGIN,
                      labels=table["label"].value_counts().to_dict(), groups=int(table["group"].nunique()))
        print(f"{task}: {len(table)} series in {table['group'].nunique()} groups "
              f"({', '.join(f'{n} {k}' for k, n in table['label'].value_counts().items())}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
