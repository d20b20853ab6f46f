"""SwinUNETR's Swin-transformer encoder (MONAI, feature_size 48) as a feature extractor: 768 features.

Input: HU clipped to [-1000, 1000] and scaled to [0, 1] (the window of the self-supervised
pre-training); patches fed as (B, 1, Z, Y, X) = (B, 1, 32, 64, 64) (each side must be a multiple of 32).
Features: the last stage's output (768 channels, layer-normalised as in SwinUNETR's forward)
averaged over its spatial positions.

Weights: ``model_swinvit.pt`` of the self-supervised Swin UNETR pre-training (Tang et al. 2022; MONAI
research-contributions, SwinUNETR/Pretrain). Its tensors sit under ``state_dict`` with keys like
``module.layers1.0.blocks.0.mlp.fc1.weight``. They are mapped the way MONAI's
``SwinUNETR.load_from`` / ``SwinTransformerBlock.load_from`` copy them: drop ``module.``, rename the
MLP's ``fc1``/``fc2`` to ``linear1``/``linear2``; the rest (patch_embed, attn.qkv, attn.proj,
relative_position_bias_table, norm1/2, downsample.reduction/norm) keeps its name. A state_dict of a
MONAI ``SwinUNETR`` (``swinViT.`` prefix) or of this encoder itself loads too. Keys of the
pre-training heads (rotation, contrastive, reconstruction) are reported as unexpected and ignored.
"""

from __future__ import annotations

import torch

from ctdose.extractors.deep import Network
from ctdose.extractors.weights import LoadReport, load_into

#: HU window mapped to [0, 1].
HU_RANGE: tuple[float, float] = (-1000.0, 1000.0)
FEATURE_SIZE = 48
N_FEATURES = 16 * FEATURE_SIZE  # 768 channels in the last stage


def build(size_zyx: tuple[int, int, int] = (32, 64, 64)) -> Network:
    """The encoder (``SwinUNETR(...).swinViT``) freshly initialised; seed torch first for a fixed init."""
    from monai.networks.nets import SwinUNETR

    bad = [s for s in size_zyx if s % 32]
    if bad:
        raise ValueError(f"SwinUNETR needs patch sides that are multiples of 32 voxels, got {size_zyx} (z, y, x)")
    encoder = SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE_SIZE, spatial_dims=3).swinViT
    return Network("swin", encoder, HU_RANGE, N_FEATURES, _embed)


def _embed(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return encoder(x, True)[-1].mean(dim=(2, 3, 4))


def rename_key(key: str) -> str:
    """``model_swinvit.pt`` / SwinUNETR key -> key of the bare encoder (see module docstring)."""
    key = key.removeprefix("module.").removeprefix("swinViT.")
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


def load_weights(net: Network, state: dict[str, torch.Tensor], path) -> LoadReport:
    """Load a Swin checkpoint into the encoder (ValueError on a wrong file; report of key mismatches)."""
    return load_into(net.module, state, path, rename=rename_key)
