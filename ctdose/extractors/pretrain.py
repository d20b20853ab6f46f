"""Pretraining of the shallow CNN on tissue classification, on a twin kept apart from the evaluation.

Why: the study's CNN weights are private. We train the same layers, with a linear head (2048 -> 4)
that is thrown away afterwards, to tell the four ROI classes (cyst, hemangioma, metastasis, normal
liver) apart on patches of a digital twin generated with *other* seeds (phantom texture, placements
and photon noise) than the evaluation twin. The saved layers then serve as a fixed feature extractor.
This is our own pretraining on simulated data, not the study's network.

Data: every series of the training twin (its DICOM CT + SEG), ``per_roi`` patch centers drawn
uniformly among the voxels of each ROI (seeded), patches sampled with ``sample_patches`` on the usual
64x64x32 grid. Series of ``val_scanners`` are held out and only report accuracy. Augmentation: random
flips along x and y. Optimiser Adam, cross-entropy, fixed epochs (no early stopping), seeded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ctdose.extractors import cnn
from ctdose.extractors.deep import normalise
from ctdose.naming import ROI_CLASSES
from ctdose.patches import PATCH_SIZE_XYZ, PATCH_SPACING_XYZ, sample_patches

#: The four classes, in label order.
CLASSES: tuple[str, ...] = tuple(dict.fromkeys(ROI_CLASSES.values()))


@dataclass
class PatchSet:
    """Training patches: ``x`` (n, Z, Y, X) float32 HU, ``y`` (n,) int class labels, ``group`` scanner."""

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray


def collect_patches(catalog, per_roi: int, seed: int,
                    size_xyz: tuple[int, int, int] = PATCH_SIZE_XYZ,
                    spacing_xyz: tuple[float, float, float] = PATCH_SPACING_XYZ) -> PatchSet:
    """``per_roi`` patches per ROI of every catalog series, centered on random voxels of the ROI."""
    from ctdose.dicom_io import read_ct_series
    from ctdose.seg import read_seg_label_map

    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    for row in tqdm(list(catalog.itertuples(index=False)), desc="training patches", unit="series"):
        if not row.seg_path:
            raise ValueError(f"training series {row.series_uid} has no SEG")
        volume = read_ct_series(row.path, row.series_uid)
        labels, names = read_seg_label_map(row.seg_path, row.path, row.series_uid)
        centers, classes = [], []
        for value, roi in enumerate(names, start=1):
            idx = np.argwhere(labels == value)  # (k, j, i)
            if len(idx) == 0:
                raise ValueError(f"training series {row.series_uid}: ROI {roi} is empty")
            pick = idx[rng.choice(len(idx), size=per_roi, replace=len(idx) < per_roi)][:, ::-1]
            centers.append(volume.index_to_physical(pick.astype(float)))
            classes += [CLASSES.index(ROI_CLASSES[roi])] * per_roi
        batch = sample_patches(volume, np.concatenate(centers), None, size_xyz, spacing_xyz)
        xs.append(batch.patches)
        ys += classes
        groups += [row.scanner] * len(classes)
    return PatchSet(np.concatenate(xs), np.array(ys), np.array(groups))


class Classifier(nn.Module):
    """ShallowCNN features + linear head (the head is discarded after training)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.encoder = cnn.ShallowCNN()
        self.head = nn.Linear(n_features, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _accuracy(model: Classifier, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            inp = normalise(torch.from_numpy(x[s:s + batch_size]).unsqueeze(1).clone(), cnn.HU_RANGE)
            correct += int((model(inp).argmax(1).numpy() == y[s:s + batch_size]).sum())
    return correct / max(len(x), 1)


def train(data: PatchSet, val_scanners: tuple[str, ...], epochs: int, batch_size: int, lr: float,
          seed: int) -> tuple[Classifier, dict]:
    """Train on series outside ``val_scanners``; returns the model and a history for the provenance."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    val = np.isin(data.group, val_scanners)
    x_tr, y_tr = data.x[~val], data.y[~val]
    if len(x_tr) == 0:
        raise ValueError(f"no training patches left after holding out scanners {val_scanners}")
    size_zyx = data.x.shape[1:]
    model = Classifier(cnn.n_features(size_zyx))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_tr))
        total = 0.0
        for s in tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False):
            sel = order[s:s + batch_size]
            xb = torch.from_numpy(x_tr[sel]).unsqueeze(1).clone()
            if rng.random() < 0.5:
                xb = xb.flip(-1)
            if rng.random() < 0.5:
                xb = xb.flip(-2)
            loss = loss_fn(model(normalise(xb, cnn.HU_RANGE)), torch.from_numpy(y_tr[sel]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(sel)
        record = {"epoch": epoch + 1, "train_loss": total / len(x_tr),
                  "train_accuracy": _accuracy(model, x_tr, y_tr, batch_size)}
        if val.any():
            record["val_accuracy"] = _accuracy(model, data.x[val], data.y[val], batch_size)
        history.append(record)
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    info = {"history": history, "train_seconds": time.perf_counter() - start, "n_train": int(len(x_tr)),
            "n_val": int(val.sum()), "classes": list(CLASSES), "val_scanners": list(val_scanners),
            "chance_accuracy": 1.0 / len(CLASSES)}
    return model, info


def save_encoder(model: Classifier, path: str | Path) -> Path:
    """Save the encoder's state_dict (keys ``features.*``, what ``extract_cnn --weights`` loads) atomically."""
    from ctdose.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model.encoder.state_dict(), tmp)
    return Path(path)
