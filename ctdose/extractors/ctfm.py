"""CT-FM's encoder (MONAI ``SegResEncoder``, init_filters 32, blocks_down 1,2,2,4,4): 512 features.

Input: HU clipped to [-1024, 2048] and scaled to [0, 1], as CT-FM's preprocessing
(ScaleIntensityRange(-1024, 2048, 0, 1, clip=True)). CT-FM's preprocessing reorients images to "SPL"
(array axes running superior, posterior, left). Our patches are ``[z, y, x]`` on an LPS-aligned grid:
z grows towards superior, y towards posterior, x towards left, i.e. exactly SPL, so they are fed
unchanged as (B, 1, Z, Y, X). Features: the last stage (512 channels) average-pooled, as CT-FM's
feature-extraction recipe does.

Weights: ``model.safetensors`` of the Hugging Face repo ``project-lighter/ct_fm_feature_extractor``
(pass the file, its snapshot folder or, when online, the hub id). Key mapping: the file's keys are the
encoder's own (``conv_init.weight``, ``layers.0.blocks.0...``); leading ``module.``, ``model.``,
``encoder.`` or ``backbone.`` prefixes (from wrappers/checkpoints of other trainers) are dropped.
"""

from __future__ import annotations

import torch

from ctdose.extractors.deep import Network
from ctdose.extractors.weights import LoadReport, load_into

#: HU window mapped to [0, 1].
HU_RANGE: tuple[float, float] = (-1024.0, 2048.0)
INIT_FILTERS = 32
BLOCKS_DOWN = (1, 2, 2, 4, 4)
N_FEATURES = INIT_FILTERS * 2 ** (len(BLOCKS_DOWN) - 1)  # 512
_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


def build(size_zyx: tuple[int, int, int] = (32, 64, 64)) -> Network:
    """The encoder freshly initialised (seed torch first); patch sides must be multiples of 16."""
    from monai.networks.nets.segresnet_ds import SegResEncoder

    bad = [s for s in size_zyx if s % 16]
    if bad:
        raise ValueError(f"CT-FM needs patch sides that are multiples of 16 voxels, got {size_zyx} (z, y, x)")
    encoder = SegResEncoder(spatial_dims=3, in_channels=1, init_filters=INIT_FILTERS, blocks_down=BLOCKS_DOWN)
    return Network("ctfm", encoder, HU_RANGE, N_FEATURES, _embed)


def _embed(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return encoder(x)[-1].mean(dim=(2, 3, 4))


def rename_key(key: str) -> str:
    """Drop wrapper prefixes (see module docstring)."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_weights(net: Network, state: dict[str, torch.Tensor], path) -> LoadReport:
    """Load a CT-FM checkpoint into the encoder (ValueError on a wrong file; report of key mismatches)."""
    return load_into(net.module, state, path, rename=rename_key)
