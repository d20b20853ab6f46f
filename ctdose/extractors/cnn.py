"""The study's shallow 3-D CNN, used as a fixed feature extractor (2048 features per patch).

Architecture (exactly as in the study): Conv3d 1->32 k5 pad 2, ReLU, MaxPool3d 4, Conv3d 32->64 k5
pad 2, ReLU, MaxPool3d 4, flatten. A (1, 32, 64, 64) patch ([z, y, x]) becomes 64 x 2 x 4 x 4 = 2048
features. Input: HU clipped to the abdominal soft-tissue window [-160, 240] (level 40, width 400) and
scaled to [0, 1]: the liver lesions differ by tens of HU, which a [-1000, 1000] window squeezes into
a few hundredths of the input range, too little for this small network to learn from in minutes.

The study's own weights are not public. ``cnn/pretrain_cnn.py`` trains these layers (with a linear
head that is thrown away) on tissue classification of patches from a digital twin made with other
seeds than the evaluation twin, and saves the layers' state_dict that ``--weights`` loads. Those
features are therefore *not* the study's features; they come from a network of the same shape
trained on our own simulated data.
"""

from __future__ import annotations

import torch
from torch import nn

from ctdose.extractors.deep import Network
from ctdose.extractors.weights import LoadReport, load_into

#: HU window mapped to [0, 1].
HU_RANGE: tuple[float, float] = (-160.0, 240.0)


class ShallowCNN(nn.Module):
    """Two conv/ReLU/max-pool stages; ``forward`` returns the flattened feature map (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 32, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool3d(4),
            nn.Conv3d(32, 64, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool3d(4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def n_features(size_zyx: tuple[int, int, int] = (32, 64, 64)) -> int:
    """Feature count for a patch of ``size_zyx`` voxels (64 channels x each size // 16)."""
    z, y, x = (s // 16 for s in size_zyx)
    return 64 * z * y * x


def build(size_zyx: tuple[int, int, int] = (32, 64, 64)) -> Network:
    """A freshly initialised network (seed torch before calling for a reproducible init)."""
    return Network("cnn", ShallowCNN(), HU_RANGE, n_features(size_zyx), lambda m, x: m(x))


def load_weights(net: Network, state: dict[str, torch.Tensor], path) -> LoadReport:
    """Load a ShallowCNN state_dict (as saved by pretrain_cnn.py; a leading ``module.`` is dropped)."""
    return load_into(net.module, state, path, rename=lambda k: k.removeprefix("module."))
