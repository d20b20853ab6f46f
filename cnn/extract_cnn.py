"""Extract shallow 3-D CNN features (2048 per patch) -> results/features/cnn.csv (+ .json sidecar).

The network is the study's shallow CNN (Conv3d 1->32 k5, ReLU, MaxPool 4, Conv3d 32->64 k5, ReLU,
MaxPool 4, flatten). The study's weights are private: by default this loads the weights made by
cnn/pretrain_cnn.py (tissue classification on a separately seeded digital twin, see that script).
Input HU clipped to the soft-tissue window [-160, 240] -> [0, 1]. Patches are sampled once per series and embedded in
batches; per-series partial tables make a re-run resume where it stopped.

Example: .venv/bin/python cnn/extract_cnn.py --results results --patches-per-roi 2
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctdose.extractors import deep

# --- settings ---
RESULTS = "results"
WEIGHTS = str(Path(__file__).with_name("weights") / "shallow_cnn.pt")  # made by cnn/pretrain_cnn.py
BATCH_SIZE = 16
NAME = "cnn"
# --- end settings ---


if __name__ == "__main__":
    deep.main(sys.argv[1:], NAME, __doc__, RESULTS, WEIGHTS, BATCH_SIZE)
