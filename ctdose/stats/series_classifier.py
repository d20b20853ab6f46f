"""Series classification (imaging axis, contrast, body part) with a MONAI 3-D ResNet on any labelled list.

A labelled list is a CSV with one row per CT series: ``path`` (a folder holding the series), ``label``
(the class) and ``group`` (the patient or phantom acquisition the series comes from: series of one
group never straddle train, validation and test). Each series is read as HU (``ctdose.dicom_io``),
clipped to [-1000, 1000] HU and scaled to [-1, 1], and brought to a ``cube`` x ``cube`` x ``cube``
array *in its stored voxel order* (slices, rows, columns: the order a network sees, which is what
tells axes apart) by adaptive average pooling (block means when shrinking, repeats when growing).

Protocol (:func:`train_series_classifier`): groups shuffled with ``seed`` and split 70 / 20 / 10 by
group count (:func:`split_by_group`; at least one group in each part); ``monai.networks.nets.resnet10``
(or resnet18; 1 input channel; ``widen`` scales its channels) trained with Adam and cross-entropy for ``epochs`` epochs on the
training part; the epoch with the best validation accuracy (then lowest validation loss) is kept and
evaluated once on the test part. Accuracy comes with its 95 % **Wilson score** interval
(:func:`wilson_interval`); the confusion matrix counts test series. On the CPU the run is
deterministic: seeded torch and numpy, ``torch.use_deterministic_algorithms``, one thread by default.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ctdose.csv_io import read_csv

#: Columns a labelled list must have.
LIST_REQUIRED = ("path", "label", "group")
#: Split fractions by group: train, validation, test.
SPLIT_FRACTIONS = (0.7, 0.2, 0.1)
SPLITS = ("train", "val", "test")
#: HU window of the network input (scaled to [-1, 1]).
HU_WINDOW = (-1000.0, 1000.0)


@dataclass(frozen=True)
class ClassifierSettings:
    """Training settings (recorded in every output)."""

    arch: str = "resnet10"  # resnet10 | resnet18 (monai.networks.nets)
    cube: int = 32  # input voxels per side
    widen: float = 1.0  # MONAI ResNet widen_factor (channels x widen; 1 = the published widths)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1  # torch CPU threads (1: bitwise reproducible)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_labelled_list(path: str | Path) -> pd.DataFrame:
    """A labelled list (CSV: path, label, group, optional others) with relative paths resolved against
    the list's folder. Raises FileNotFoundError / ValueError naming the list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no labelled list at {path}")
    df = read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LIST_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"labelled list {path} lacks column(s) {', '.join(missing)} (needs path, label, group)")
    if df.empty:
        raise ValueError(f"labelled list {path} has no rows")
    empty = df[(df["path"] == "") | (df["label"] == "") | (df["group"] == "")]
    if not empty.empty:
        raise ValueError(f"labelled list {path}: row {int(empty.index[0]) + 2} has an empty path, label or group")
    df["path"] = [str(p if Path(p).is_absolute() else (path.parent / p)) for p in df["path"]]
    return df


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (n > 0)."""
    if n <= 0:
        raise ValueError(f"Wilson interval needs n > 0, got {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact ends: at p = 0 the lower limit is 0 and at p = 1 the upper limit is 1 (no rounding below p)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def split_by_group(groups: Sequence[str], fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                   seed: int = 0) -> np.ndarray:
    """``train`` / ``val`` / ``test`` per row: whole groups, shuffled with ``seed``, split by group count
    (test = round(0.1 G), val = round(0.2 G), at least one each; train the rest). Needs >= 3 groups."""
    groups = np.asarray([str(g) for g in groups])
    unique = np.array(sorted(set(groups)))
    if unique.size < 3:
        raise ValueError(f"a train / validation / test split by group needs >= 3 groups, got {unique.size}")
    rng = np.random.default_rng(seed)
    order = unique[rng.permutation(unique.size)]
    n_test = max(1, int(round(fractions[2] * unique.size)))
    n_val = max(1, int(round(fractions[1] * unique.size)))
    if n_test + n_val >= unique.size:
        n_val = max(1, unique.size - n_test - 1)
    part = {g: "test" for g in order[:n_test]}
    part.update({g: "val" for g in order[n_test:n_test + n_val]})
    part.update({g: "train" for g in order[n_test + n_val:]})
    return np.array([part[g] for g in groups])


def to_cube(array: np.ndarray, cube: int) -> np.ndarray:
    """HU array (slices, rows, cols) -> float32 (cube, cube, cube) in [-1, 1], stored voxel order kept."""
    import torch

    lo, hi = HU_WINDOW
    x = torch.from_numpy(np.clip(np.asarray(array, dtype=np.float32), lo, hi))
    x = (x - (lo + hi) / 2) / ((hi - lo) / 2)
    return torch.nn.functional.adaptive_avg_pool3d(x[None, None], cube)[0, 0].numpy()


def load_cube(path: str | Path, cube: int) -> np.ndarray:
    """The series in folder ``path`` as a network input cube (see :func:`to_cube`)."""
    from ctdose.dicom_io import read_ct_series

    return to_cube(read_ct_series(path).array, cube)


def make_network(arch: str, n_classes: int, widen: float = 1.0):
    """A MONAI 3-D ResNet with one input channel, ``n_classes`` outputs and ``widen`` x its channels."""
    from monai.networks.nets import resnet10, resnet18

    nets = {"resnet10": resnet10, "resnet18": resnet18}
    if arch not in nets:
        raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(nets)}")
    return nets[arch](spatial_dims=3, n_input_channels=1, num_classes=n_classes, widen_factor=widen)


@dataclass
class ClassifierResult:
    """Outcome of one training run."""

    classes: list[str]
    split: np.ndarray  # (n,) train / val / test
    predictions: np.ndarray  # (n,) predicted class of every series (best epoch's model)
    history: pd.DataFrame  # epoch, train_loss, val_loss, val_accuracy
    best_epoch: int
    accuracy: dict[str, dict[str, float]]  # split -> accuracy, ci_low, ci_high, n, correct
    confusion: pd.DataFrame  # test: true x predicted counts
    state_dict: dict[str, Any]


def _evaluate(model, x, y, batch: int) -> tuple[float, np.ndarray]:
    import torch

    model.eval()
    losses, preds = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = model(x[start:start + batch])
            losses.append(float(torch.nn.functional.cross_entropy(logits, y[start:start + batch],
                                                                  reduction="sum")))
            preds.append(logits.argmax(dim=1).numpy())
    return sum(losses) / max(len(x), 1), np.concatenate(preds) if preds else np.array([], int)


def accuracy_with_ci(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, its 95 % Wilson interval, n and correct count (NaN accuracy for n = 0)."""
    n = int(len(truth))
    correct = int(np.sum(np.asarray(truth) == np.asarray(predicted)))
    if n == 0:
        return {"accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "correct": 0}
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / n, "ci_low": lo, "ci_high": hi, "n": n, "correct": correct}


def train_series_classifier(cubes: np.ndarray, labels: Sequence[str], groups: Sequence[str],
                            settings: ClassifierSettings = ClassifierSettings(),
                            progress: bool = False) -> ClassifierResult:
    """Train and evaluate a 3-D ResNet (see module docstring). ``cubes`` (n, cube, cube, cube) float32;
    ``progress`` shows a bar over the epochs."""
    import torch
    from tqdm import tqdm

    labels = np.asarray([str(v) for v in labels])
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"a classifier needs >= 2 classes, got {classes}")
    split = split_by_group(groups, seed=settings.seed)
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = make_network(settings.arch, len(classes), settings.widen)
        y_all = torch.tensor([classes.index(v) for v in labels], dtype=torch.long)
        x_all = torch.from_numpy(np.ascontiguousarray(cubes, dtype=np.float32))[:, None]
        train = np.flatnonzero(split == "train")
        val = np.flatnonzero(split == "val")
        optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        rng = np.random.default_rng(settings.seed)
        rows, best, best_key = [], None, None
        bar = tqdm(range(1, settings.epochs + 1), desc="epochs", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            order = train[rng.permutation(train.size)]
            batches = [order[s:s + settings.batch_size] for s in range(0, order.size, settings.batch_size)]
            if len(batches) > 1 and batches[-1].size == 1:  # batch norm needs > 1 sample per batch
                batches[-2] = np.concatenate([batches[-2], batches.pop()])
            total = 0.0
            for idx in batches:
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
                loss.backward()
                optimiser.step()
                total += loss.item() * idx.size
            val_loss, val_pred = _evaluate(model, x_all[val], y_all[val], settings.batch_size)
            val_acc = float(np.mean(val_pred == y_all[val].numpy()))
            rows.append({"epoch": epoch, "train_loss": total / max(train.size, 1), "val_loss": val_loss,
                         "val_accuracy": val_acc})
            bar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}", val_acc=f"{val_acc:.2f}")
            key = (val_acc, -val_loss)
            if best_key is None or key > best_key:
                best_key = key
                best = (epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        model.load_state_dict(best[1])
        _, pred_idx = _evaluate(model, x_all, y_all, settings.batch_size)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    predicted = np.array([classes[i] for i in pred_idx])
    accuracy = {part: accuracy_with_ci(labels[split == part], predicted[split == part]) for part in SPLITS}
    test = split == "test"
    confusion = (pd.crosstab(pd.Categorical(labels[test], classes), pd.Categorical(predicted[test], classes),
                             dropna=False).reindex(index=classes, columns=classes, fill_value=0))
    confusion.index.name, confusion.columns.name = "true", "predicted"
    return ClassifierResult(classes, split, predicted, pd.DataFrame(rows), best[0], accuracy, confusion, best[1])


def confusion_figure(confusion: pd.DataFrame, title: str, stem: str | Path) -> list[Path]:
    """Confusion-matrix figure (rows true, columns predicted; colour = share of the true class; cells =
    counts) written as ``<stem>.png`` / ``.pdf``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctdose.plots import save_figure

    counts = confusion.to_numpy(float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.7 * len(confusion)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    im = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(counts.shape[1]), list(confusion.columns), rotation=30, ha="right")
    ax.set_yticks(range(counts.shape[0]), list(confusion.index))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, label="share of the true class", shrink=0.8)
    return save_figure(fig, stem)
