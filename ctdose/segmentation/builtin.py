"""The built-in segmenter: a compact 3-D U-Net (MONAI) trained on a separately seeded digital twin.

What it is: a small ``monai.networks.nets.UNet`` that segments body, lungs, bone, liver and the six
ROIs of the twin phantom (:data:`LABELS`), trained by ``segmentation/train_builtin.py`` on full-dose
series of a twin generated with *other* seeds (placements, noise) and another phantom texture than
the evaluation twin, the same separation as the CNN pretraining (``ctdose.extractors.pretrain``).
It is labelled "twin-trained" everywhere: it has never seen a real scan, and its job is to be an
offline model whose outputs can move with dose, not a clinical segmenter.

Labels come from the twin's analytic phantom, evaluated at the voxel centers of any grid
(:func:`twin_label_map`): the tissue map of ``ctdose.twin.phantom`` folded into the classes below,
then the six ROI spheres painted over the liver. The pose of each series is read from the twin's
``ground_truth.json``.

Working grid: the network runs on a coarser grid (``work_spacing_zyx_mm``, default 2 x 1.4 x 1.4 mm)
covering the same field of view; the input is area-averaged onto it, the logits are interpolated
back (trilinear, class by class, running argmax) to the input grid. Inference is a MONAI sliding
window over ``patch_zyx`` blocks, batched, under bf16 autocast on CUDA, float32 on the CPU
(deterministic there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ctdose.naming import ROI_NAMES
from ctdose.twin import phantom as ph

#: Label value -> name of the built-in model's classes (0 = background / air).
LABELS: dict[int, str] = {1: "body", 2: "lung", 3: "bone", 4: "liver",
                          **{5 + i: name for i, name in enumerate(ROI_NAMES)}}
#: Twin tissue -> built-in class (the ROI spheres are painted over afterwards).
TISSUE_CLASS: dict[str, int] = {
    "air": 0, "body": 1, "canal": 1, "water": 1, "rod_fat": 1, "rod_soft": 1, "rod_bone": 1,
    "lung": 2, "bone": 3, "marrow": 3, "liver": 4, "cyst": 4, "hemangioma": 4, "metastasis": 4,
}
NAME = "builtin-unet (twin-trained)"
#: HU window of the network input: clipped, then divided by HU_SCALE.
HU_CLIP = (-1000.0, 1000.0)
HU_SCALE = 200.0


# ----------------------------------------------------------------------------------------- labels

def twin_label_map(shape_zyx: tuple[int, int, int], origin_xyz: np.ndarray, spacing_xyz: np.ndarray,
                   pose: ph.Pose) -> np.ndarray:
    """Built-in labels (uint8 (z, y, x), values of :data:`LABELS`) at the voxel centers of an axial grid.

    ``origin_xyz`` / ``spacing_xyz``: LPS mm of voxel (0, 0, 0) and voxel size (x, y, z order, identity
    direction); ``pose``: the phantom's placement in that scan (``ground_truth.json``).
    """
    nz, ny, nx = shape_zyx
    x = origin_xyz[0] + np.arange(nx) * spacing_xyz[0]
    y = origin_xyz[1] + np.arange(ny) * spacing_xyz[1]
    z = origin_xyz[2] + np.arange(nz) * spacing_xyz[2]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    flat = pose.to_phantom(np.stack([xx, yy, np.zeros_like(xx)], axis=-1))
    points = ph._Points(flat[..., 0], flat[..., 1], z - pose.translation_mm[2])
    lut = np.array([TISSUE_CLASS[name] for name in ph.TISSUE_NAMES], dtype=np.uint8)
    labels = lut[ph._tissue_labels(points)]
    rois = ph._roi_labels(points)  # 1..6 in ROI_NAMES order
    labels[rois > 0] = rois[rois > 0] + 4
    return labels


def series_pose(ground_truth: dict[str, Any], series_uid: str) -> ph.Pose:
    """The phantom's pose in a twin series, from the twin's ground-truth record (ValueError if absent)."""
    for s in ground_truth.get("series", []):
        if s.get("series_uid") == series_uid:
            p = s["pose"]
            return ph.Pose(float(p["rotation_z_deg"]), tuple(float(t) for t in p["translation_mm"]))
    raise ValueError(f"series {series_uid} is not in the twin's ground_truth.json (not a twin series?)")


# ----------------------------------------------------------------------------------------- grids

def working_shape(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...],
                  work_spacing_zyx: tuple[float, ...]) -> tuple[int, int, int]:
    """Shape of the working grid that covers the same field of view at about ``work_spacing_zyx`` mm."""
    return tuple(max(1, int(round(n * s / w))) for n, s, w in zip(shape_zyx, spacing_zyx, work_spacing_zyx))


def working_centres_xyz(shape_zyx: tuple[int, int, int], origin_xyz: np.ndarray, spacing_xyz: np.ndarray,
                        work_shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(origin, spacing) in x y z mm of the working grid whose voxels tile the original field of view.

    Voxel k' of m covers original voxels [k' n/m, (k'+1) n/m): its center sits at index (k'+0.5) n/m - 0.5
    (the convention of ``torch.nn.functional.interpolate`` with ``align_corners=False``).
    """
    n = np.array(shape_zyx[::-1], dtype=float)
    m = np.array(work_shape_zyx[::-1], dtype=float)
    ratio = n / m
    return np.asarray(origin_xyz) + np.asarray(spacing_xyz) * (0.5 * ratio - 0.5), np.asarray(spacing_xyz) * ratio


def to_working(volume_hu: np.ndarray, work_shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Area-average a HU volume (z, y, x) onto the working grid (float32)."""
    t = torch.from_numpy(np.ascontiguousarray(volume_hu, dtype=np.float32))[None, None]
    if tuple(t.shape[2:]) == tuple(work_shape_zyx):
        return t[0, 0].numpy().copy()
    return F.interpolate(t, size=tuple(work_shape_zyx), mode="area")[0, 0].numpy()


def normalise(hu: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Network input from HU: clipped to :data:`HU_CLIP`, divided by :data:`HU_SCALE`."""
    t = torch.as_tensor(hu, dtype=torch.float32)
    return t.clamp(*HU_CLIP) / HU_SCALE


# ----------------------------------------------------------------------------------------- model

@dataclass
class BuiltinConfig:
    """Architecture and grid of the built-in model (saved inside its weights file)."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    work_spacing_zyx_mm: tuple[float, float, float] = (2.0, 1.4, 1.4)
    patch_zyx: tuple[int, int, int] = (32, 96, 96)
    labels: dict[int, str] = field(default_factory=lambda: dict(LABELS))

    def as_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "strides": list(self.strides), "num_res_units": self.num_res_units,
                "work_spacing_zyx_mm": list(self.work_spacing_zyx_mm), "patch_zyx": list(self.patch_zyx),
                "labels": {int(k): v for k, v in self.labels.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuiltinConfig":
        return cls(tuple(d["channels"]), tuple(d["strides"]), int(d["num_res_units"]),
                   tuple(float(v) for v in d["work_spacing_zyx_mm"]), tuple(int(v) for v in d["patch_zyx"]),
                   {int(k): str(v) for k, v in d["labels"].items()})


def build_network(config: BuiltinConfig) -> torch.nn.Module:
    """The compact MONAI 3-D U-Net of ``config`` (1 input channel, background + labels outputs)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=len(config.labels) + 1,
                channels=tuple(config.channels), strides=tuple(config.strides),
                num_res_units=config.num_res_units)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sliding_logits(network: torch.nn.Module, x: torch.Tensor, patch_zyx: tuple[int, int, int],
                   device: torch.device, sw_batch_size: int = 4, overlap: float = 0.25) -> torch.Tensor:
    """Logits (1, C, z, y, x) float32 on the CPU of a normalised input (1, 1, z, y, x), by sliding window.

    Batched (``sw_batch_size`` windows a call); on CUDA under bf16 autocast, on the CPU in float32.
    """
    from monai.inferers import sliding_window_inference

    network.eval()
    with torch.inference_mode():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = sliding_window_inference(x.to(device), roi_size=tuple(patch_zyx), sw_batch_size=sw_batch_size,
                                           predictor=network, overlap=overlap, mode="constant")
    return out.float().cpu()


def logits_to_labels(logits: torch.Tensor, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Argmax label map (uint8 (z, y, x)) of logits (1, C, z', y', x') interpolated to ``shape_zyx``.

    Class by class (trilinear, ``align_corners=False``) with a running maximum, so memory stays at two
    full-size arrays whatever the number of classes.
    """
    size = tuple(int(s) for s in shape_zyx)
    if tuple(logits.shape[2:]) == size:
        return logits[0].argmax(0).numpy().astype(np.uint8)
    best = torch.full(size, -torch.inf)
    label = torch.zeros(size, dtype=torch.uint8)
    for c in range(logits.shape[1]):
        up = F.interpolate(logits[:, c:c + 1], size=size, mode="trilinear", align_corners=False)[0, 0]
        better = up > best
        best = torch.where(better, up, best)
        label[better] = c
    return label.numpy()


class BuiltinSegmenter:
    """The built-in twin-trained U-Net behind the ``Segmenter`` interface."""

    def __init__(self, network: torch.nn.Module, config: BuiltinConfig, device: torch.device | None = None,
                 weights: str | None = None, sw_batch_size: int = 4) -> None:
        self.device = device or default_device()
        self.network = network.to(self.device).eval()
        self.config = config
        self.labels = dict(config.labels)
        self.name = NAME
        self.weights = weights
        self.sw_batch_size = sw_batch_size

    def predict(self, volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
        """Label map (uint8 (z, y, x), values of ``labels``) of a HU volume (z, y, x) with voxel size ``spacing_zyx_mm``."""
        volume_hu = np.asarray(volume_hu, dtype=np.float32)
        if volume_hu.ndim != 3:
            raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume_hu.shape}")
        work = working_shape(volume_hu.shape, spacing_zyx_mm, self.config.work_spacing_zyx_mm)
        x = normalise(to_working(volume_hu, work))[None, None]
        logits = sliding_logits(self.network, x, self.config.patch_zyx, self.device, self.sw_batch_size)
        return logits_to_labels(logits, volume_hu.shape)


def save_model(network: torch.nn.Module, config: BuiltinConfig, path: str | Path) -> Path:
    """Write the state_dict and config (one torch file, loadable with ``weights_only=True``) atomically."""
    from ctdose.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                    "config": config.as_dict(), "what": NAME}, tmp)
    return Path(path)


def load_builtin(path: str | Path, device: torch.device | str | None = None) -> BuiltinSegmenter:
    """The built-in segmenter saved at ``path`` (FileNotFoundError / ValueError naming the file)."""
    from ctdose.extractors.weights import load_into, read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"built-in segmenter weights {path} not found; run segmentation/train_builtin.py")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign files raise many types
        raise ValueError(f"cannot read built-in segmenter weights {path}: {type(err).__name__}") from None
    if not isinstance(blob, dict) or "config" not in blob:
        raise ValueError(f"{path} is not a built-in segmenter file (no 'config'); run segmentation/train_builtin.py")
    config = BuiltinConfig.from_dict(blob["config"])
    network = build_network(config)
    load_into(network, read_state_dict(path), path)
    return BuiltinSegmenter(network, config, torch.device(device) if device else None, weights=str(path))


# ----------------------------------------------------------------------------------------- training

@dataclass
class TrainingCase:
    """One training / validation series: HU on its own grid and on the working grid, with labels."""

    name: str
    group: str  # scanner: validation holds out whole scanners
    hu: np.ndarray  # (z, y, x) float32, the series grid
    labels: np.ndarray  # (z, y, x) uint8 on the series grid
    spacing_zyx: tuple[float, float, float]
    work_hu: np.ndarray  # (z', y', x') float32
    work_labels: np.ndarray  # (z', y', x') uint8, analytic at the working voxel centers


def make_case(name: str, group: str, hu: np.ndarray, origin_xyz: np.ndarray, spacing_xyz: np.ndarray,
              pose: ph.Pose, work_spacing_zyx: tuple[float, float, float]) -> TrainingCase:
    """A case of a twin series (HU (z, y, x), axial grid ``origin_xyz`` / ``spacing_xyz``, phantom ``pose``)."""
    spacing_zyx = tuple(float(s) for s in np.asarray(spacing_xyz)[::-1])
    work = working_shape(hu.shape, spacing_zyx, work_spacing_zyx)
    w_origin, w_spacing = working_centres_xyz(hu.shape, origin_xyz, spacing_xyz, work)
    return TrainingCase(name, group, hu.astype(np.float32), twin_label_map(hu.shape, origin_xyz, spacing_xyz, pose),
                        spacing_zyx, to_working(hu, work), twin_label_map(work, w_origin, w_spacing, pose))


def twin_cases(twin_dir: str | Path, work_spacing_zyx: tuple[float, float, float], dose_mgy: float | None = None,
               recons: tuple[str, ...] = ("FBP",)) -> list[TrainingCase]:
    """Cases of every series of a twin folder at ``dose_mgy`` (None: the highest dose) and ``recons``."""
    import json
    import warnings

    from ctdose.catalog import build_catalog
    from ctdose.dicom_io import read_ct_series

    twin_dir = Path(twin_dir)
    truth_path = twin_dir / "ground_truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path} not found: {twin_dir} is not a twin folder")
    truth = json.loads(truth_path.read_text())
    with warnings.catch_warnings():  # the twin folder also holds JSON records: not DICOM, skipped
        warnings.simplefilter("ignore")
        catalog = build_catalog(twin_dir)
    dose = float(catalog["dose_mgy"].max()) if dose_mgy is None else float(dose_mgy)
    rows = catalog[(catalog["dose_mgy"] == dose) & catalog["recon"].isin(recons)]
    if rows.empty:
        raise ValueError(f"{twin_dir} has no {'/'.join(recons)} series at {dose:g} mGy")
    cases = []
    for row in tqdm(list(rows.itertuples(index=False)), desc="segmentation cases", unit="series"):
        vol = read_ct_series(row.path, row.series_uid)
        if not np.allclose(vol.direction, np.eye(3), atol=1e-6):
            raise ValueError(f"series {row.series_uid}: only axial series with identity direction are supported")
        cases.append(make_case(Path(row.path).name, str(row.scanner), vol.array, vol.origin, vol.spacing,
                               series_pose(truth, row.series_uid), work_spacing_zyx))
    return cases


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """Dice of each label (NaN where the label is absent from both maps)."""
    out = {}
    for value, name in labels.items():
        p, t = pred == value, truth == value
        denom = int(p.sum()) + int(t.sum())
        out[name] = float("nan") if denom == 0 else 2.0 * int((p & t).sum()) / denom
    return out


def _crop(case: TrainingCase, patch: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random crop (padded with air / background where the volume is smaller than the patch)."""
    x, y = case.work_hu, case.work_labels
    pad = [(0, max(0, p - s)) for p, s in zip(patch, x.shape)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, constant_values=HU_CLIP[0])
        y = np.pad(y, pad, constant_values=0)
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(x.shape, patch)]
    sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
    return x[sl], y[sl]


def train(cases: list[TrainingCase], val_groups: tuple[str, ...], config: BuiltinConfig, iterations: int,
          batch_size: int, lr: float, seed: int, device: torch.device | None = None,
          log_every: int = 10) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the U-Net on random working-grid crops of the cases outside ``val_groups`` (Dice + CE loss).

    Fixed iterations, Adam, seeded; no augmentation that would break the phantom's left/right layout.
    Returns the network and a record: loss curve (mean every ``log_every`` iterations), validation Dice
    per label on the held-out series at their own grid (and its mean), timings.
    """
    from monai.losses import DiceCELoss

    device = device or default_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_cases = [c for c in cases if c.group not in val_groups]
    val_cases = [c for c in cases if c.group in val_groups]
    if not train_cases:
        raise ValueError(f"no training series left after holding out {list(val_groups)}")
    network = build_network(config).to(device)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    curve, running = [], []
    start = time.perf_counter()
    network.train()
    for it in tqdm(range(iterations), desc="train builtin", unit="it"):
        xs, ys = zip(*(_crop(train_cases[int(rng.integers(len(train_cases)))], config.patch_zyx, rng)
                       for _ in range(batch_size)))
        xb = normalise(np.stack(xs))[:, None].to(device)
        yb = torch.from_numpy(np.stack(ys).astype(np.int64))[:, None].to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(network(xb).float(), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(float(loss.item()))
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            curve.append({"iteration": it + 1, "loss": float(np.mean(running))})
            running = []
    train_s = time.perf_counter() - start
    segmenter = BuiltinSegmenter(network, config, device)
    val = {}
    for case in val_cases:
        val[case.name] = dice_per_label(segmenter.predict(case.hu, case.spacing_zyx), case.labels, config.labels)
    record = {"loss_curve": curve, "train_seconds": train_s, "iterations": iterations, "batch_size": batch_size,
              "n_train_series": len(train_cases), "n_val_series": len(val_cases),
              "train_series": [c.name for c in train_cases], "val_series": [c.name for c in val_cases],
              "val_groups": list(val_groups), "validation_dice": val,
              "validation_dice_mean": _mean_dice(val, config.labels)}
    return network.cpu(), record


def _mean_dice(per_case: dict[str, dict[str, float]], labels: dict[int, str]) -> dict[str, float]:
    out = {}
    for name in labels.values():
        values = [d[name] for d in per_case.values() if not np.isnan(d[name])]
        out[name] = float(np.mean(values)) if values else float("nan")
    return out


def generate_training_twin(out: str | Path, scanners: tuple[str, ...], doses: tuple[float, ...],
                           recons: tuple[str, ...], reps: int, seed: int, texture_seed: int,
                           workers: int = 1) -> Path:
    """Generate (or resume) the training twin of the segmentation models: the ``demo`` grid, other seeds.

    Refuses the evaluation twin's seeds (0): the training data must be kept apart from evaluation
    (other placements and noise via ``seed``, another phantom texture via ``texture_seed``).
    """
    from ctdose.twin.generate import generate_twin
    from ctdose.twin.presets import get_preset

    if seed == 0 or texture_seed == 0:
        raise ValueError("the training twin's seed and texture seed must differ from the evaluation twin's (0)")
    preset = get_preset("demo").with_overrides(scanners=tuple(scanners), doses=tuple(float(d) for d in doses),
                                               recons=tuple(recons), reps=int(reps))
    generate_twin(out, preset, seed=seed, texture_seed=texture_seed, workers=workers)
    return Path(out)
