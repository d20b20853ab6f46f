"""Extract CT-FM encoder features (512 per patch) -> results/features/ctfm.csv (+ .json sidecar).

CT-FM's SegResEncoder (MONAI, init_filters 32, blocks_down 1,2,2,4,4); the last stage (512 channels) is
average-pooled. Weights: a local Hugging Face snapshot folder of project-lighter/ct_fm_feature_extractor,
its model.safetensors, or the hub id itself when online (fails fast offline). Without weights the run
stops unless --allow-untrained (seeded random init, marked "untrained"). Input HU clipped to
[-1024, 2048] -> [0, 1]; patches are [z, y, x] on an LPS grid, i.e. the SPL orientation CT-FM expects.
Batched (bf16 autocast on CUDA, deterministic fp32 on CPU); a re-run resumes from per-series partials.

Example: .venv/bin/python ct-fm/extract_ctfm.py --weights ct-fm/weights/ct_fm_feature_extractor --results results
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctdose.extractors import deep

# --- settings ---
RESULTS = "results"
WEIGHTS = str(Path(__file__).with_name("weights") / "ct_fm_feature_extractor")  # snapshot folder, used when present
BATCH_SIZE = 8
NAME = "ctfm"
# --- end settings ---


if __name__ == "__main__":
    deep.main(sys.argv[1:], NAME, __doc__, RESULTS, WEIGHTS, BATCH_SIZE)
