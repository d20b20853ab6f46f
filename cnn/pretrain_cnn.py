"""Pretrain the shallow 3-D CNN on tissue classification and save the weights extract_cnn.py loads.

The study's CNN weights are private, so this trains the same layers (plus a linear 4-class head that
is discarded) to classify patches of the four ROI classes (cyst, hemangioma, metastasis, normal
liver) from a digital twin generated with OTHER seeds than the evaluation twin: another phantom
texture (--texture-seed), other placements and photon noise (--seed). The evaluation data are never
seen. Series of --val-scanners are held out and only report accuracy (no early stopping). Seeded;
about 1-3 minutes on 2 CPU cores with the defaults.

Writes --out (the encoder's state_dict) and its JSON sidecar (training data, settings, per-epoch loss
and accuracy). A re-run with an existing --out does nothing unless --overwrite; the training twin in
--twin is reused when present (its generation resumes).

Example: .venv/bin/python cnn/pretrain_cnn.py
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

# --- settings ---
OUT = str(Path(__file__).with_name("weights") / "shallow_cnn.pt")
TWIN = str(Path(__file__).resolve().parents[1] / "data" / "twin_pretrain")  # training twin (git-ignored data/)
SEED = 1001  # placements + noise of the training twin; the evaluation twin uses 0
TEXTURE_SEED = 1001  # phantom texture of the training twin; the evaluation twin uses 0
SCANNERS = ["B1", "E1", "F1"]
VAL_SCANNERS = ["F1"]
DOSES = [1.0, 6.0, 14.0]
RECONS = ["FBP", "IR"]
PER_ROI = 2  # patches per ROI and series
EPOCHS = 6
BATCH_SIZE = 8
LR = 2e-3
WORKERS = 2
# --- end settings ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=OUT, help="weights file to write (default: %(default)s)")
    parser.add_argument("--twin", default=TWIN, help="folder of the training twin (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="training twin's noise/placement seed, also the "
                        "training seed (default: %(default)s)")
    parser.add_argument("--texture-seed", type=int, default=TEXTURE_SEED,
                        help="training twin's phantom texture seed (default: %(default)s)")
    parser.add_argument("--scanners", nargs="+", default=SCANNERS, help="scanners of the training twin (default: %(default)s)")
    parser.add_argument("--val-scanners", nargs="*", default=VAL_SCANNERS,
                        help="scanners held out for validation accuracy (default: %(default)s)")
    parser.add_argument("--doses", nargs="+", type=float, default=DOSES, help="doses in mGy (default: %(default)s)")
    parser.add_argument("--recons", nargs="+", default=RECONS, help="reconstructions (default: %(default)s)")
    parser.add_argument("--per-roi", type=int, default=PER_ROI, help="patches per ROI and series (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="batch size (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=LR, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="processes generating the twin (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if --out exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"{out} exists; nothing to do (--overwrite retrains)")
        return 0
    import torch

    from ctdose.catalog import build_catalog
    from ctdose.extractors import pretrain
    from ctdose.extractors.weights import sha256
    from ctdose.provenance import write_sidecar
    from ctdose.twin.generate import generate_twin
    from ctdose.twin.presets import get_preset

    if args.seed == 0 or args.texture_seed == 0:
        raise ValueError("--seed and --texture-seed must differ from the evaluation twin's (0)")
    unknown = sorted(set(args.val_scanners) - set(args.scanners))
    if unknown:
        raise ValueError(f"--val-scanners {', '.join(unknown)} are not among --scanners")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    preset = get_preset("demo").with_overrides(scanners=tuple(args.scanners), doses=tuple(args.doses),
                                               recons=tuple(args.recons), reps=1)
    generate_twin(args.twin, preset, seed=args.seed, texture_seed=args.texture_seed, workers=args.workers)
    with warnings.catch_warnings():  # the twin folder also holds JSON records: not DICOM, skipped
        warnings.simplefilter("ignore")
        catalog = build_catalog(args.twin)
    data = pretrain.collect_patches(catalog, args.per_roi, args.seed)
    model, info = pretrain.train(data, tuple(args.val_scanners), args.epochs, args.batch_size, args.lr, args.seed)
    pretrain.save_encoder(model, out)
    settings = {k: v for k, v in vars(args).items() if k != "overwrite"}
    write_sidecar(out, settings, weights=str(out), weights_sha256=sha256(out), training=info,
                  what=("shallow CNN pretrained by ctdose on 4-class tissue classification of a separately "
                        "seeded digital twin; not the study's (private) weights"),
                  n_series=len(catalog))
    print(f"wrote {out} (final: {info['history'][-1]})")
    return 0


if __name__ == "__main__":
    from ctdose.cli import run_main

    sys.exit(run_main(main))
