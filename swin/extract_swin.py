"""Extract SwinUNETR encoder features (768 per patch) -> results/features/swin.csv (+ .json sidecar).

MONAI SwinUNETR (feature_size 48) encoder; the last stage's 768 channels are mean-pooled.
Weights: the self-supervised ``model_swinvit.pt`` (MONAI research-contributions, SwinUNETR/Pretrain),
loaded with MONAI's key mapping; missing/unexpected keys are printed and recorded in the sidecar.
Without --weights the run stops unless --allow-untrained (seeded random init, marked "untrained").
Input HU clipped to [-1000, 1000] -> [0, 1]. Patches are sampled once per series and embedded in
batches (bf16 autocast on CUDA, deterministic fp32 on CPU); a re-run resumes from per-series partials.

Example: .venv/bin/python swin/extract_swin.py --weights swin/weights/model_swinvit.pt --results results
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctdose.extractors import deep

# --- settings ---
RESULTS = "results"
WEIGHTS = str(Path(__file__).with_name("weights") / "model_swinvit.pt")  # used when present
BATCH_SIZE = 8
NAME = "swin"
# --- end settings ---


if __name__ == "__main__":
    deep.main(sys.argv[1:], NAME, __doc__, RESULTS, WEIGHTS, BATCH_SIZE)
