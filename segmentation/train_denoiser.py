#!/usr/bin/env python
"""Train the "cnn" denoising option: a small residual 3-D CNN, low dose -> full dose, on a separate twin.

Pairs: the FBP series of each scan of the training twin at the lower doses (--low-doses) and at its
highest dose, same placement and grid (every dose an independent acquisition). The training twin is
the one segmentation/train_builtin.py uses (same defaults: seeds 2001, never the evaluation twin's 0);
it is generated or resumed here if needed. Series of --val-scanners are held out and report RMSE to
the full-dose image and the noise std in the normal-liver ROIs before / after. Seeded, fixed
iterations. Labelled "cnn-denoiser (twin-trained)".

Writes --out (state_dict + architecture) and its JSON sidecar (data, seeds, settings, loss curve,
validation figures, timings). A re-run with the same settings and twin does nothing (--overwrite).

Example: .venv/bin/python segmentation/train_denoiser.py --iterations 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# --- settings ---
OUT = str(Path(__file__).with_name("weights") / "cnn_denoiser.pt")
TWIN = str(Path(__file__).resolve().parents[1] / "data" / "twin_segtrain")  # shared with train_builtin.py
SEED = 2001  # placements + noise of the training twin, also the training seed; the evaluation twin uses 0
TEXTURE_SEED = 2001
SCANNERS = ["B1", "E1", "F1"]
VAL_SCANNERS = ["F1"]
DOSES = [3.0, 6.0, 14.0]  # generated; the highest is the target
LOW_DOSES = [3.0, 6.0]  # inputs
RECONS = ["FBP"]
REPS = 2
ITERATIONS = 150
BATCH_SIZE = 4
PATCH_ZYX = [16, 64, 64]  # crops at the native grid
FEATURES = 8  # 16 denoises a little more at ~3x the cost
LAYERS = 4
LR = 1e-3
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
                   help="scanners held out for validation (default: %(default)s)")
    p.add_argument("--doses", nargs="+", type=float, default=DOSES,
                   help="doses generated in mGy; the highest is the target (default: %(default)s)")
    p.add_argument("--low-doses", nargs="+", type=float, default=LOW_DOSES, help="input doses (default: %(default)s)")
    p.add_argument("--recons", nargs="+", default=RECONS, help="reconstructions generated; pairs use FBP "
                   "(default: %(default)s)")
    p.add_argument("--reps", type=int, default=REPS, help="repetitions per scanner (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=ITERATIONS, help="training iterations (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="crops per iteration (default: %(default)s)")
    p.add_argument("--patch", nargs=3, type=int, default=PATCH_ZYX, metavar=("Z", "Y", "X"),
                   help="crop size in voxels (default: %(default)s)")
    p.add_argument("--features", type=int, default=FEATURES, help="channels per layer (default: %(default)s)")
    p.add_argument("--layers", type=int, default=LAYERS, help="convolution layers (default: %(default)s)")
    p.add_argument("--lr", type=float, default=LR, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="processes generating the twin (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="retrain even if --out is current")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ctdose.extractors.weights import sha256
    from ctdose.provenance import is_current, write_sidecar
    from ctdose.segmentation import cnn_denoiser
    from ctdose.segmentation.builtin import generate_training_twin

    unknown = sorted(set(args.val_scanners) - set(args.scanners))
    if unknown:
        raise ValueError(f"--val-scanners {', '.join(unknown)} are not among --scanners")
    if "FBP" not in args.recons:
        raise ValueError("--recons must include FBP (the pairs are FBP low dose -> FBP full dose)")
    bad = sorted(d for d in args.low_doses if d not in args.doses or d >= max(args.doses))
    if bad:
        raise ValueError(f"--low-doses {bad} must be among --doses and below the highest ({max(args.doses):g} mGy)")
    out, twin = Path(args.out), Path(args.twin)
    settings = {k: v for k, v in vars(args).items() if k not in ("overwrite", "out", "workers")}
    truth = twin / "ground_truth.json"
    if not args.overwrite and is_current(out, settings, inputs=[truth] if truth.is_file() else []):
        print(f"{out} is current; nothing to do (--overwrite retrains)")
        return 0
    generate_training_twin(twin, tuple(args.scanners), tuple(args.doses), tuple(args.recons), args.reps,
                           args.seed, args.texture_seed, args.workers)
    pairs = cnn_denoiser.twin_pairs(twin, tuple(args.low_doses), "FBP")
    network, record = cnn_denoiser.train(pairs, tuple(args.val_scanners), args.features, args.layers, args.iterations,
                                         args.batch_size, tuple(args.patch), args.lr, args.seed)
    cnn_denoiser.save_denoiser(network, out)
    write_sidecar(out, settings, inputs=[truth], weights=str(out), weights_sha256=sha256(out),
                  what=f"{cnn_denoiser.NAME}: residual 3-D CNN trained by ctdose on low -> full dose FBP pairs of a "
                       f"separately seeded digital twin (seed {args.seed}, texture seed {args.texture_seed})",
                  training=record)
    for name, fig in record["validation"].items():
        print(f"{name}: RMSE to full dose {fig['rmse_low_vs_full']:.1f} -> {fig['rmse_denoised_vs_full']:.1f} HU"
              + (f"; normal-liver std {fig['roi_std_low']:.1f} -> {fig['roi_std_denoised']:.1f} HU "
                 f"(full dose {fig['roi_std_full']:.1f})" if "roi_std_low" in fig else ""))
    print(f"wrote {out} ({record['train_seconds']:.0f} s training)")
    return 0


if __name__ == "__main__":
    from ctdose.cli import run_main

    sys.exit(run_main(main))
