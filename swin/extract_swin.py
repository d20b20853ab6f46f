"""Extract SwinUNETR encoder features (768 per patch) -> results/features/swin.csv (+ .json sidecar).

MONAI SwinUNETR (feature_size 48) encoder; the last stage's 768 channels are mean-pooled.
Weights: the self-supervised ``model_swinvit.pt`` (MONAI research-contributions, SwinUNETR/Pretrain),
loaded with MONAI's key mapping; missing/unexpected keys are printed and recorded in the sidecar.
Without --weights the run stops unless --allow-untrained (seeded random init, marked "untrained").
Input HU clipped to [-1000, 1000] -> [0, 1]. Patches are sampled once per series and embedded in
batches (bf16 autocast on CUDA, deterministic fp32 on CPU); a re-run resumes from per-series partials.

Other datasets: --dataset ctorg|organmnist3d --dataset-path PATH --results FOLDER (ctdose.datasets);
OrganMNIST3D grey levels (not HU) are scaled /255 to [0, 1] instead of the HU window.

Example: .venv/bin/python swin/extract_swin.py --weights swin/weights/model_swinvit.pt --results results
"""

from __future__ import annotations

import argparse
import sys

from ctdose.cli import run_main
from ctdose.extractors import deep, driver
from ctdose.layout import repo_path

# --- settings ---
RESULTS = "results"          # reads catalog, centers, transforms; writes features/ (repo-relative)
WEIGHTS = "swin/weights/model_swinvit.pt"  # MONAI self-supervised release (repo-relative)
ALLOW_UNTRAINED = False      # no weights: seeded random init, marked "untrained" (else: stop)
DEVICE = "auto"              # auto (CUDA when available), cpu, cuda or cuda:N
SEED = 0                     # torch seed, and the random init when untrained
PATCHES_PER_ROI = None       # first K centers of each ROI (None: all of patch_centers.csv)
BATCH_SIZE = 2               # patches per forward pass; 2: a batch of 8 peaks above 2 GiB on the
                             # CPU, where glibc hands memory back, and ran 3x slower per patch
NAME = "swin"                # extractor name: features/swin.csv, feature columns swin_0000 ...
DATASET = "ctdose"           # ctdose (phantom catalog + centres), ctorg or organmnist3d
DATASET_PATH = ""            # CT-ORG folder or organmnist3d[_64].npz (with --dataset)
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    driver.add_common_args(parser, str(repo_path(RESULTS)), extractor="swin", dataset=DATASET,
                           dataset_path=DATASET_PATH)
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
