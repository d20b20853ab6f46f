"""Extract CT-FM encoder features (512 per patch) -> results/features/ctfm.csv (+ .json sidecar).

CT-FM's SegResEncoder (MONAI, init_filters 32, blocks_down 1,2,2,4,4); the last stage (512 channels) is
average-pooled. Weights: a local Hugging Face snapshot folder of project-lighter/ct_fm_feature_extractor,
its model.safetensors, or the hub id itself when online (fails fast offline). Without weights the run
stops unless --allow-untrained (seeded random init, marked "untrained"). Input HU clipped to
[-1024, 2048] -> [0, 1]; patches are [z, y, x] on an LPS grid, i.e. the SPL orientation CT-FM expects.
Batched (bf16 autocast on CUDA, deterministic fp32 on CPU); a re-run resumes from per-series partials.

Other datasets: --dataset ctorg|organmnist3d --dataset-path PATH --results FOLDER (ctdose.datasets);
OrganMNIST3D grey levels (not HU) are scaled /255 to [0, 1] instead of the HU window.

Example: .venv/bin/python ct-fm/extract_ctfm.py --weights ct-fm/weights/ct_fm_feature_extractor --results results
"""

from __future__ import annotations

import argparse
import sys

from ctdose.cli import run_main
from ctdose.extractors import deep, driver
from ctdose.layout import repo_path

# --- settings ---
RESULTS = "results"          # reads catalog, centers, transforms; writes features/ (repo-relative)
WEIGHTS = "ct-fm/weights/ct_fm_feature_extractor"  # HF snapshot folder (repo-relative); hub id: --weights
ALLOW_UNTRAINED = False      # no weights: seeded random init, marked "untrained" (else: stop)
DEVICE = "auto"              # auto (CUDA when available), cpu, cuda or cuda:N
SEED = 0                     # torch seed, and the random init when untrained
PATCHES_PER_ROI = None       # first K centers of each ROI (None: all of patch_centers.csv)
BATCH_SIZE = 8               # patches per forward pass
NAME = "ctfm"                # extractor name: features/ctfm.csv, feature columns ctfm_0000 ...
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
