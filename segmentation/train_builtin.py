#!/usr/bin/env python
"""Train the built-in segmenter: a compact 3-D U-Net (MONAI), twin-trained, for the dose-robustness step.

What it learns: body, lungs, bone, liver and the six liver ROIs of the twin phantom (labels from the
analytic phantom at every voxel, ``ctdose.segmentation.builtin``), from the FULL-dose FBP series of a
digital twin generated with OTHER seeds than the evaluation twin: other placements and photon noise
(--seed) and another phantom texture (--texture-seed), as the CNN pretraining does. Series of
--val-scanners are held out and only report Dice per label (no early stopping). Seeded. The model is
labelled "builtin-unet (twin-trained)" wherever it appears: it has never seen a real scan.

The same training twin (also holding the lower doses) serves segmentation/train_denoiser.py. With the
defaults: a few minutes on 2 CPU cores once the twin exists (generating it takes a few more).

Writes --out (state_dict + architecture + label names) and its JSON sidecar: training data (twin
folder, seeds, series used), settings, loss curve, validation Dice per label and series, timings.
A re-run with the same settings and the same twin does nothing (--overwrite retrains).

Example: .venv/bin/python segmentation/train_builtin.py --iterations 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# --- settings ---
OUT = str(Path(__file__).with_name("weights") / "builtin_unet.pt")
TWIN = str(Path(__file__).resolve().parents[1] / "data" / "twin_segtrain")  # training twin (git-ignored)
SEED = 2001  # placements + noise of the training twin, also the training seed; the evaluation twin uses 0
TEXTURE_SEED = 2001  # phantom texture of the training twin; the evaluation twin uses 0
SCANNERS = ["B1", "E1", "F1"]
VAL_SCANNERS = ["F1"]
DOSES = [3.0, 6.0, 14.0]  # generated (the denoiser's pairs); the segmenter trains on the highest
RECONS = ["FBP"]
REPS = 2
ITERATIONS = 300
BATCH_SIZE = 2
LR = 3e-3
WORK_SPACING_ZYX = [2.0, 1.4, 1.4]  # mm: the network's working grid
PATCH_ZYX = [32, 96, 96]  # training crop and sliding-window size on the working grid
CHANNELS = [8, 16, 32, 64]
WORKERS = 2
# --- end settings ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=OUT, help="weights file to write (default: %(default)s)")
    p.add_argument("--twin", default=TWIN, help="folder of the training twin (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="training twin's noise/placement seed and the training "
                   "seed (default: %(default)s)")
    p.add_argument("--texture-seed", type=int, default=TEXTURE_SEED,
                   help="training twin's phantom texture seed (default: %(default)s)")
    p.add_argument("--scanners", nargs="+", default=SCANNERS, help="scanners of the training twin (default: %(default)s)")
    p.add_argument("--val-scanners", nargs="*", default=VAL_SCANNERS,
                   help="scanners held out for validation Dice (default: %(default)s)")
    p.add_argument("--doses", nargs="+", type=float, default=DOSES,
                   help="doses generated in mGy; the segmenter uses the highest (default: %(default)s)")
    p.add_argument("--recons", nargs="+", default=RECONS, help="reconstructions trained on (default: %(default)s)")
    p.add_argument("--reps", type=int, default=REPS, help="repetitions (placements) per scanner (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=ITERATIONS, help="training iterations (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="crops per iteration (default: %(default)s)")
    p.add_argument("--lr", type=float, default=LR, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--work-spacing", nargs=3, type=float, default=WORK_SPACING_ZYX, metavar=("Z", "Y", "X"),
                   help="working grid spacing in mm (default: %(default)s)")
    p.add_argument("--patch", nargs=3, type=int, default=PATCH_ZYX, metavar=("Z", "Y", "X"),
                   help="crop size on the working grid, multiples of 8 (default: %(default)s)")
    p.add_argument("--channels", nargs="+", type=int, default=CHANNELS, help="U-Net channels per level "
                   "(default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="processes generating the twin (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="retrain even if --out is current")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ctdose.extractors.weights import sha256
    from ctdose.provenance import is_current, write_sidecar
    from ctdose.segmentation import builtin

    unknown = sorted(set(args.val_scanners) - set(args.scanners))
    if unknown:
        raise ValueError(f"--val-scanners {', '.join(unknown)} are not among --scanners")
    step = 2 ** (len(args.channels) - 1)
    if any(p % step for p in args.patch):
        raise ValueError(f"--patch {args.patch}: each size must be a multiple of {step} for {len(args.channels)} levels")
    out, twin = Path(args.out), Path(args.twin)
    settings = {k: v for k, v in vars(args).items() if k not in ("overwrite", "out", "workers")}
    truth = twin / "ground_truth.json"
    if not args.overwrite and is_current(out, settings, inputs=[truth] if truth.is_file() else []):
        print(f"{out} is current; nothing to do (--overwrite retrains)")
        return 0
    builtin.generate_training_twin(twin, tuple(args.scanners), tuple(args.doses), tuple(args.recons), args.reps,
                                   args.seed, args.texture_seed, args.workers)
    config = builtin.BuiltinConfig(channels=tuple(args.channels), strides=(2,) * (len(args.channels) - 1),
                                   work_spacing_zyx_mm=tuple(args.work_spacing), patch_zyx=tuple(args.patch))
    cases = builtin.twin_cases(twin, config.work_spacing_zyx_mm, None, tuple(args.recons))
    network, record = builtin.train(cases, tuple(args.val_scanners), config, args.iterations, args.batch_size,
                                    args.lr, args.seed)
    builtin.save_model(network, config, out)
    write_sidecar(out, settings, inputs=[truth], weights=str(out), weights_sha256=sha256(out),
                  what=f"{builtin.NAME}: a compact 3-D U-Net trained by ctdose on full-dose series of a separately "
                       f"seeded digital twin (seed {args.seed}, texture seed {args.texture_seed}); never saw a real scan",
                  model=config.as_dict(), training=record)
    mean = record["validation_dice_mean"]
    print(f"wrote {out} ({record['train_seconds']:.0f} s training); validation Dice: "
          + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    return 0


if __name__ == "__main__":
    from ctdose.cli import run_main

    sys.exit(run_main(main))
