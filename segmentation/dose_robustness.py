#!/usr/bin/env python
"""Segmentation dose robustness (Tsanda et al. 2024, JMI 11:044005): how far a segmentation moves when the dose drops.

Per input series (per scanner x repetition: the FBP series at its highest dose) the dose ladder 20, 40,
60, 80, 100 % of its dose is made (twin series: binomial thinning of the twin's own photon counts,
Zabic et al. 2013; other series: reprojection noise insertion, ctdose.lowdose), each level goes
through each denoiser (none; tv = total variation, nlm = non-local means, skimage, strength from the
estimated noise; cnn = the twin-trained CNN of segmentation/train_denoiser.py) and is segmented by each
--segmenters model (builtin = the twin-trained compact U-Net of segmentation/train_builtin.py;
totalsegmentator / nnunet / monai with their paths below; never downloaded). Each prediction is scored
per label (Dice, HD95 in mm, MONAI) against the full-dose prediction (the study's robustness) and, on
the twin, against the twin's analytic ground truth.

Contrast vs non-contrast (the study compares both): every row carries the series' phase (catalog column
``contrast`` when present; twin series are "native"); --contrast-variant also runs a simulated
contrast-enhanced copy of each native series (ctdose.twin_qc: +60 HU liver, +180 HU vessel tubes; same
noise, a paired comparison) and table2_by_contrast.csv splits Table 2 by phase.

Demo default: 2 scanners x 1 repetition x 5 doses x 3 denoisers, built-in model, native + simulated
contrast (on a twin; --no-contrast-variant halves the work). --study: every scanner and repetition of
the data, denoisers none tv nlm cnn.

Writes under <results>/segmentation/: segmentation_rows.csv (+ .json sidecar: settings, series,
every other output), table2_lowest_dose.csv and table2_wide.csv (the study's Table 2 layout: model x
denoising, median ± MAD of Dice and HD95 at the lowest dose), table2_by_contrast.csv (the same per
contrast phase, when there are two), dice_vs_dose.csv + fig7_dice_vs_dose
(and fig7_vs_ground_truth on a twin), dice_vs_radius.csv + fig5_dice_vs_radius (Dice by r_eff log
bins), label_failures.csv (share of scans with Dice below --fail-dice), overlay (full vs lowest dose,
difference), ladder_validation.csv (twin: simulated vs independently acquired ROI noise), and
partial/<segmenter>/<series_uid>.csv per series (resumable: a re-run skips finished series).
"""

from __future__ import annotations

import argparse
import sys
import time

from ctdose.atomic import write_csv
from ctdose.cli import run_main
from ctdose.layout import ResultsLayout, repo_path

# --- settings ---
DATA = "data/twin_demo"          # DICOM tree; a twin folder (ground_truth.json) or a prepared tree
RESULTS = "results"              # reads catalog.csv for non-twin data; writes segmentation/
SEGMENTERS = ["builtin"]         # builtin | totalsegmentator | nnunet | monai (Table 2 rows)
DENOISERS = ["none", "tv", "cnn"]  # none | tv | nlm | cnn (Table 2 columns)
STUDY_DENOISERS = ["none", "tv", "nlm", "cnn"]
FRACTIONS = [0.2, 0.4, 0.6, 0.8, 1.0]  # of the acquired dose
SCANNERS = ["A1", "C1"]          # demo subset ([] = all)
REPETITIONS = 1                  # first n repetitions per scanner (demo)
RECON = "FBP"
LADDER = "auto"                  # auto | twin-counts | reprojection
REFERENCE_DENOISER = "none"      # full-dose reference: the undenoised prediction (none) or the same denoiser (same)
FAIL_DICE = 0.9
CONTRAST_VARIANT = None          # simulated contrast-enhanced copy of each native series (None: on a twin only)
SEED = 0
WORKERS = 2                      # series in parallel (Dask processes; 1 = in-process)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(repo_path(DATA)), help="DICOM tree (default: %(default)s)")
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--segmenters", nargs="+", default=SEGMENTERS,
                   choices=("builtin", "totalsegmentator", "nnunet", "monai"), help="models (default: %(default)s)")
    p.add_argument("--denoisers", nargs="+", default=None,
                   help=f"denoising options (default: {' '.join(DENOISERS)}; --study: {' '.join(STUDY_DENOISERS)})")
    p.add_argument("--fractions", nargs="+", type=float, default=FRACTIONS,
                   help="dose levels as fractions of the acquired dose (default: %(default)s)")
    p.add_argument("--scanners", nargs="*", default=None,
                   help=f"scanner codes (default: {' '.join(SCANNERS)}; --study: all)")
    p.add_argument("--repetitions", type=int, default=None,
                   help=f"first n repetitions per scanner (default: {REPETITIONS}; --study: all)")
    p.add_argument("--study", action="store_true", help="study-sized run: every scanner and repetition, 4 denoisers")
    p.add_argument("--recon", default=RECON, help="reconstruction of the input series (default: %(default)s)")
    p.add_argument("--ladder", default=LADDER, choices=("auto", "twin-counts", "reprojection"),
                   help="how lower doses are made (default: %(default)s)")
    p.add_argument("--photons-per-mgy", type=float, default=None,
                   help="reprojection ladder of non-twin data: photons per ray per mGy of CTDIvol")
    p.add_argument("--reference-denoiser", default=REFERENCE_DENOISER, choices=("none", "same"),
                   help="full-dose reference prediction (default: %(default)s)")
    p.add_argument("--fail-dice", type=float, default=FAIL_DICE, 
                   help="a label fails below this Dice (default: %(default)s)")
    p.add_argument("--contrast-variant", action=argparse.BooleanOptionalAction, default=CONTRAST_VARIANT,
                   help="also run a simulated contrast-enhanced copy of each native series and split Table 2 "
                        "by contrast phase (default: on for a twin, off for other data)")
    p.add_argument("--no-ground-truth", action="store_true", help="skip the twin ground-truth comparison")
    p.add_argument("--validate-ladder", action=argparse.BooleanOptionalAction, default=True,
                   help="on a twin: compare simulated ROI noise with the twin's independent acquisitions (default: on)")
    p.add_argument("--seed", type=int, default=SEED, help="noise seed of the ladder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="parallel series (default: %(default)s)")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    g = p.add_argument_group("segmenter paths (see ctdose/segmentation/adapters.py)")
    g.add_argument("--builtin-weights", default=None,
                   help="built-in U-Net weights (default: segmentation/weights/builtin_unet.pt)")
    g.add_argument("--cnn-weights", default=None,
                   help="CNN denoiser weights (default: segmentation/weights/cnn_denoiser.pt)")
    g.add_argument("--totalseg-task", default="total", help="TotalSegmentator task (default: %(default)s)")
    g.add_argument("--totalseg-fast", action="store_true", help="TotalSegmentator --fast model")
    g.add_argument("--nnunet-model-dir", default=None, help="nnU-Net v2 trained-model folder")
    g.add_argument("--monai-checkpoint", default=None, help="MONAI network checkpoint")
    g.add_argument("--monai-config", default=None, help="its YAML/JSON config")
    g.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="recompute every series and output")
    args = p.parse_args(argv)
    args.denoisers = args.denoisers or (STUDY_DENOISERS if args.study else DENOISERS)
    if args.scanners is None:
        args.scanners = [] if args.study else SCANNERS
    if args.repetitions is None:
        args.repetitions = None if args.study else REPETITIONS
    return args


def segmenter_options(kind: str, args: argparse.Namespace) -> dict:
    """The adapter options of ``kind`` from the flags (None values left out)."""
    options = {"builtin": {"weights": args.builtin_weights},
               "totalsegmentator": {"task": args.totalseg_task, "fast": args.totalseg_fast},
               "nnunet": {"model_dir": args.nnunet_model_dir},
               "monai": {"checkpoint": args.monai_checkpoint, "config": args.monai_config}}[kind]
    options["device"] = args.device
    return {k: v for k, v in options.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pathlib import Path

    from ctdose.catalog import read_catalog
    from ctdose.provenance import is_current, read_sidecar, write_sidecar
    from ctdose.segmentation import robustness as rb
    from ctdose.segmentation.ladder import validate_twin_ladder

    start = time.perf_counter()
    layout = ResultsLayout(args.results)
    data = Path(args.data)
    twin = (data / "ground_truth.json").is_file()
    catalog = None if twin else read_catalog(layout.catalog)
    series = rb.select_series(data, catalog, scanners=args.scanners or None, repetitions=args.repetitions,
                              recon=args.recon)
    denoiser_options = {"cnn_weights": args.cnn_weights} if args.cnn_weights else {}
    rows, partials, notes = [], [], {}
    for kind in args.segmenters:
        settings = rb.RobustnessSettings(
            fractions=tuple(sorted(set(args.fractions))), denoisers=tuple(args.denoisers), segmenter=kind,
            segmenter_options=tuple(sorted(segmenter_options(kind, args).items())),
            denoiser_options=tuple(sorted(denoiser_options.items())), ladder=args.ladder, seed=args.seed,
            reference_denoiser=args.reference_denoiser, ground_truth=not args.no_ground_truth,
            photons_per_mgy=args.photons_per_mgy,
            contrast_variant=twin if args.contrast_variant is None else args.contrast_variant)
        tasks = [rb.SeriesTask(str(r.path), str(r.series_uid), str(r.scanner), int(r.repetition), float(r.dose_mgy),
                               str(r.recon), str(layout.segmentation_partial(kind, str(r.series_uid))),
                               str(r.contrast))
                 for r in series.itertuples()]
        if args.force:
            for t in tasks:
                Path(t.partial).unlink(missing_ok=True)
        rows.append(rb.run_all(tasks, settings, workers=args.workers, scheduler=args.scheduler))
        partials += [Path(t.partial) for t in tasks]
        notes[kind] = settings.as_dict()
    import pandas as pd

    table = pd.concat(rows, ignore_index=True)
    agg = rb.aggregate(table, args.fail_dice)
    outputs = [layout.segmentation_table2, layout.segmentation_table2_wide, layout.segmentation_curves,
               layout.segmentation_radius, layout.segmentation_failures]
    for frame, path in zip((agg.table2, agg.table2_wide, agg.curves, agg.radius, agg.failures), outputs):
        write_csv(frame, path)
    if not agg.table2_contrast.empty:
        write_csv(agg.table2_contrast, layout.segmentation_table2_contrast)
        outputs.append(layout.segmentation_table2_contrast)
    else:
        layout.segmentation_table2_contrast.unlink(missing_ok=True)
    figures = []
    figures += rb.fig7_dose_curves(agg.curves, layout.segmentation_figure("fig7_dice_vs_dose"),
                                   denoisers=args.denoisers)
    if (agg.curves["reference"] == "ground_truth").any():
        figures += rb.fig7_dose_curves(agg.curves, layout.segmentation_figure("fig7_vs_ground_truth"),
                                       reference="ground_truth", denoisers=args.denoisers)
    if not agg.radius.empty:
        figures += rb.fig5_radius(agg.radius, layout.segmentation_figure("fig5_dice_vs_radius"))
    first = Path(partials[0]).with_suffix(".npz")
    figures += rb.overlay_figure(first, layout.segmentation_figure("overlay"),
                                 f"{series.iloc[0]['scanner']} rep {series.iloc[0]['repetition']}, "
                                 f"{args.segmenters[0]}: full vs lowest dose, no denoising")
    validation = None
    if twin and args.validate_ladder:
        record = {"scanners": sorted(series["scanner"].unique()), "seed": args.seed, "data": str(data)}
        path = layout.segmentation_ladder_validation
        if args.force or not is_current(path, record):
            validation = validate_twin_ladder(data, record["scanners"], rep=0, seed=args.seed)
            write_csv(validation, path)
            write_sidecar(path, record, mean_abs_rel_error=float(validation["rel_error"].abs().mean()),
                          mean_rel_error=float(validation["rel_error"].mean()),
                          max_abs_rel_error=float(validation["rel_error"].abs().max()))
        outputs.append(path)
    write_csv(table, layout.segmentation_rows)
    wall = time.perf_counter() - start
    series_s = sum(float((read_sidecar(p) or {}).get("seconds", 0.0)) for p in partials)
    write_sidecar(layout.segmentation_rows, {"segmenters": notes, "data": str(data), "fail_dice": args.fail_dice,
                                             "study": args.study},
                  inputs=partials, outputs=[*outputs, *figures], wall_s=round(wall, 1),
                  series_s=round(series_s, 1),
                  series=series.to_dict(orient="records"), segmenter_names=sorted(table["segmenter"].unique()),
                  twin=twin)
    print(f"segmentation robustness: {len(series)} series x {len(args.segmenters)} segmenter(s) x "
          f"{len(args.denoisers)} denoiser(s) x {len(args.fractions)} doses, {len(table)} rows in {wall:.0f} s "
          f"(series work {series_s:.0f} s, summed over series when they were computed) "
          f"-> {layout.segmentation_dir}")
    if not agg.table2.empty:
        print(agg.table2[["segmenter", "denoiser", "dose_fraction", "n_scans", "cell"]].to_string(index=False))
    if not agg.table2_contrast.empty:
        print(agg.table2_contrast[["contrast", "segmenter", "denoiser", "n_scans", "cell"]].to_string(index=False))
    if validation is not None:
        print(f"ladder vs independent acquisitions: mean |relative error| of ROI std "
              f"{100 * validation['rel_error'].abs().mean():.1f} % "
              f"(mean {100 * validation['rel_error'].mean():+.1f} %, "
              f"{len(validation)} ROI x dose x scanner)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
