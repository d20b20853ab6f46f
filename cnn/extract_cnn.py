"""Extract shallow 3-D CNN features (2048 per patch) -> results/features/cnn.csv (+ .json sidecar).

The network is the study's shallow CNN (Conv3d 1->32 k5, ReLU, MaxPool 4, Conv3d 32->64 k5, ReLU,
MaxPool 4, flatten). The study's weights are private: by default this loads the weights made by
cnn/pretrain_cnn.py (tissue classification on a separately seeded digital twin, see that script).
Input HU clipped to the soft-tissue window [-160, 240] -> [0, 1]. Patches are sampled once per series and embedded in
batches; per-series partial tables make a re-run resume where it stopped.

Other datasets: --dataset ctorg|organmnist3d --dataset-path PATH --results FOLDER (ctdose.datasets);
OrganMNIST3D grey levels (not HU) are scaled /255 to [0, 1] instead of the HU window.

Example: .venv/bin/python cnn/extract_cnn.py --results results --patches-per-roi 2
"""

from __future__ import annotations

import argparse
import sys

from ctdose.cli import run_main
from ctdose.extractors import deep, driver
from ctdose.layout import repo_path

# --- settings ---
RESULTS = "results"          # reads catalog, centers, transforms; writes features/ (repo-relative)
WEIGHTS = "cnn/weights/shallow_cnn.pt"  # made by cnn/pretrain_cnn.py (repo-relative)
ALLOW_UNTRAINED = False      # no weights: seeded random init, marked "untrained" (else: stop)
DEVICE = "auto"              # auto (CUDA when available), cpu, cuda or cuda:N
SEED = 0                     # torch seed, and the random init when untrained
PATCHES_PER_ROI = None       # first K centers of each ROI (None: all of patch_centers.csv)
BATCH_SIZE = 16              # patches per forward pass
NAME = "cnn"                 # extractor name: features/cnn.csv, feature columns cnn_0000 ...
DATASET = "ctdose"           # ctdose (phantom catalog + centres), ctorg or organmnist3d
DATASET_PATH = ""            # CT-ORG folder or organmnist3d[_64].npz (with --dataset)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    driver.add_common_args(parser, str(repo_path(RESULTS)), dataset=DATASET, dataset_path=DATASET_PATH)
    parser.set_defaults(patches_per_roi=PATCHES_PER_ROI)
    deep.add_deep_args(parser, str(repo_path(WEIGHTS)), BATCH_SIZE, DEVICE, SEED, ALLOW_UNTRAINED)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.weights = deep.chosen_weights(args.weights, str(repo_path(WEIGHTS)), args.allow_untrained)
    print(f"table: {deep.run(args, NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
