"""The "cnn" denoising option: a small residual 3-D CNN trained on twin pairs (low dose -> full dose).

Network (:class:`ResidualDenoiser`): ``layers`` 3x3x3 convolutions (``features`` channels, default 8, ReLU,
replicate padding) predicting the noise, subtracted from the input (DnCNN-style residual learning,
Zhang et al. 2017, without batch norm). Input and output in HU / :data:`HU_SCALE`.

Training (``segmentation/train_denoiser.py``, :func:`train`): pairs of series of the same scan (same
placement, same grid; every dose an independent acquisition) of a twin generated with other seeds and
texture than the evaluation twin: FBP at the low doses -> FBP at the highest dose. Random crops at the
native grid, MSE, Adam, fixed iterations, seeded. The target is itself a noisy full-dose image
(as in the study: low dose -> full dose), so the network learns to remove the *extra* noise of the
lower dose; it is a twin-trained model, labelled so.

Inference runs slab by slab along z with a halo of ``layers`` slices, so any volume fits in memory and
the result equals the whole-volume result; on CUDA under bf16 autocast, on the CPU in float32.
Registered as denoiser ``cnn`` in :mod:`ctdose.segmentation.denoise` (option ``weights``; default
``segmentation/weights/cnn_denoiser.pt``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ctdose.segmentation.interface import Denoiser

HU_SCALE = 200.0
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "segmentation" / "weights" / "cnn_denoiser.pt"
NAME = "cnn-denoiser (twin-trained)"


class ResidualDenoiser(nn.Module):
    """``layers`` 3x3x3 convolutions predicting the noise; output = input - noise. Input (n, 1, z, y, x)."""

    def __init__(self, features: int = 8, layers: int = 4) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"the denoiser needs at least 2 layers, got {layers}")
        self.features, self.layers = features, layers
        mods: list[nn.Module] = [nn.Conv3d(1, features, 3, padding=1, padding_mode="replicate"), nn.ReLU()]
        for _ in range(layers - 2):
            mods += [nn.Conv3d(features, features, 3, padding=1, padding_mode="replicate"), nn.ReLU()]
        mods.append(nn.Conv3d(features, 1, 3, padding=1, padding_mode="replicate"))
        self.body = nn.Sequential(*mods)
        nn.init.zeros_(mods[-1].weight)  # starts as the identity
        nn.init.zeros_(mods[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def denoise_volume(network: ResidualDenoiser, volume_hu: np.ndarray, device: torch.device | None = None,
                   slab: int = 16) -> np.ndarray:
    """Denoised HU volume (float32, same shape) of ``volume_hu`` (z, y, x), slab by slab with a halo."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"denoiser needs a (z, y, x) volume, got shape {volume.shape}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = network.to(device).eval()
    halo, nz = network.layers, volume.shape[0]
    out = np.empty_like(volume)
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                                                enabled=device.type == "cuda"):
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            a, b = max(0, z0 - halo), min(nz, z1 + halo)
            x = torch.from_numpy(volume[a:b] / HU_SCALE)[None, None].to(device)
            y = network(x).float()[0, 0, z0 - a:z1 - a].cpu().numpy()
            out[z0:z1] = y * HU_SCALE
    return out


def save_denoiser(network: ResidualDenoiser, path: str | Path) -> Path:
    """Write the state_dict and architecture (loadable with ``weights_only=True``) atomically."""
    from ctdose.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                    "config": {"features": network.features, "layers": network.layers}, "what": NAME}, tmp)
    return Path(path)


def load_network(path: str | Path) -> ResidualDenoiser:
    """The network saved at ``path`` (FileNotFoundError / ValueError naming the file)."""
    from ctdose.extractors.weights import load_into, read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CNN denoiser weights {path} not found; run segmentation/train_denoiser.py")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign files raise many types
        raise ValueError(f"cannot read CNN denoiser weights {path}: {type(err).__name__}") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
        raise ValueError(f"{path} is not a CNN denoiser file (no 'config'); run segmentation/train_denoiser.py")
    network = ResidualDenoiser(int(blob["config"]["features"]), int(blob["config"]["layers"]))
    load_into(network, read_state_dict(path), path)
    return network.eval()


def load_cnn_denoiser(path: str | Path = DEFAULT_WEIGHTS, device: str | None = None) -> Denoiser:
    """The trained CNN denoiser at ``path`` as a ``Denoiser`` (volume (z, y, x) HU, spacing) -> HU volume."""
    network = load_network(path)
    dev = torch.device(device) if device else None

    def denoise(volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
        if len(spacing_zyx_mm) != 3 or min(spacing_zyx_mm) <= 0:
            raise ValueError(f"spacing must be three positive mm values (z, y, x), got {spacing_zyx_mm}")
        return denoise_volume(network, volume_hu, dev)

    denoise.name = NAME  # type: ignore[attr-defined]
    denoise.weights = str(path)  # type: ignore[attr-defined]
    return denoise


def make_cnn(*, weights: str | Path | None = None, cnn_weights: str | Path | None = None,
             device: str | None = None, **_: object) -> Denoiser:
    """Registry factory: the CNN denoiser from ``weights`` (or ``cnn_weights``; default :data:`DEFAULT_WEIGHTS`)."""
    return load_cnn_denoiser(weights or cnn_weights or DEFAULT_WEIGHTS, device)


def _register() -> None:
    try:
        from ctdose.segmentation.denoise import register_denoiser
    except ImportError:  # the registry is optional for this module
        return
    register_denoiser("cnn", make_cnn)


_register()


# ----------------------------------------------------------------------------------------- training

@dataclass
class DenoisePair:
    """A low-dose volume and the full-dose volume of the same scan (same grid), HU (z, y, x) float32."""

    name: str
    group: str  # scanner
    low: np.ndarray
    full: np.ndarray
    low_dose_mgy: float
    full_dose_mgy: float
    roi_mask: np.ndarray | None = None  # uniform region for the noise figures (e.g. normal liver)


def twin_pairs(twin_dir: str | Path, low_doses: tuple[float, ...] | None = None, recon: str = "FBP",
               with_roi_masks: bool = True) -> list[DenoisePair]:
    """Low -> full dose pairs of every scan of a twin folder (full = the highest dose of the folder).

    Series are paired through the twin's ``ground_truth.json`` (scanner, repetition); ``roi_mask`` is
    the two normal-liver ROIs (uniform tissue) from the analytic phantom.
    """
    import json
    import warnings

    from ctdose.catalog import build_catalog
    from ctdose.dicom_io import read_ct_series
    from ctdose.segmentation.builtin import LABELS, series_pose, twin_label_map

    twin_dir = Path(twin_dir)
    truth_path = twin_dir / "ground_truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path} not found: {twin_dir} is not a twin folder")
    truth = json.loads(truth_path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = build_catalog(twin_dir)
    rows = catalog[catalog["recon"] == recon]
    info = {s["series_uid"]: s for s in truth["series"]}
    full_dose = float(rows["dose_mgy"].max())
    wanted = sorted(set(rows["dose_mgy"]) - {full_dose}) if low_doses is None else [float(d) for d in low_doses]
    by_key = {}
    for row in rows.itertuples(index=False):
        s = info.get(row.series_uid)
        if s is not None:
            by_key[(s["scanner"], int(s["rep"]), float(s["dose_mgy"]))] = row
    normal = [k for k, v in LABELS.items() if v.startswith("normal")]
    pairs = []
    keys = sorted({(k[0], k[1]) for k in by_key})
    for scanner, rep in tqdm(keys, desc="denoiser pairs", unit="scan"):
        full_row = by_key.get((scanner, rep, full_dose))
        if full_row is None:
            continue
        full = read_ct_series(full_row.path, full_row.series_uid)
        mask = None
        if with_roi_masks:
            labels = twin_label_map(full.array.shape, full.origin, full.spacing, series_pose(truth, full_row.series_uid))
            mask = np.isin(labels, normal)
        for dose in wanted:
            low_row = by_key.get((scanner, rep, dose))
            if low_row is None:
                continue
            low = read_ct_series(low_row.path, low_row.series_uid)
            if low.array.shape != full.array.shape or not np.allclose(low.origin, full.origin):
                raise ValueError(f"series {low_row.series_uid} and {full_row.series_uid} of one scan differ in grid")
            pairs.append(DenoisePair(f"{scanner}_rep{rep}_{dose:g}mGy", scanner, low.array, full.array, dose,
                                     full_dose, mask))
    if not pairs:
        raise ValueError(f"{twin_dir} has no {recon} low/full dose pairs (doses {wanted} -> {full_dose:g} mGy)")
    return pairs


def _crop_pair(pair: DenoisePair, patch: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = pair.low.shape
    size = [min(p, s) for p, s in zip(patch, shape)]
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size)]
    sl = tuple(slice(a, a + p) for a, p in zip(start, size))
    return pair.low[sl], pair.full[sl]


def noise_figures(network: ResidualDenoiser, pair: DenoisePair) -> dict[str, float]:
    """RMSE to the full-dose image and std in the pair's uniform ROI, before and after denoising (HU)."""
    den = denoise_volume(network, pair.low, torch.device("cpu"))
    out = {"rmse_low_vs_full": float(np.sqrt(np.mean((pair.low - pair.full) ** 2))),
           "rmse_denoised_vs_full": float(np.sqrt(np.mean((den - pair.full) ** 2)))}
    if pair.roi_mask is not None and pair.roi_mask.any():
        m = pair.roi_mask
        out.update({"roi_std_low": float(pair.low[m].std()), "roi_std_denoised": float(den[m].std()),
                    "roi_std_full": float(pair.full[m].std()), "roi_mean_low": float(pair.low[m].mean()),
                    "roi_mean_denoised": float(den[m].mean())})
    return out


def train(pairs: list[DenoisePair], val_groups: tuple[str, ...], features: int, layers: int, iterations: int,
          batch_size: int, patch_zyx: tuple[int, int, int], lr: float, seed: int,
          device: torch.device | None = None, log_every: int = 10) -> tuple[ResidualDenoiser, dict[str, Any]]:
    """Train the residual CNN on crops of the pairs outside ``val_groups`` (MSE in HU / HU_SCALE).

    Returns the network (CPU) and a record: loss curve, validation noise figures per held-out pair, timings.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_pairs = [p for p in pairs if p.group not in val_groups]
    val_pairs = [p for p in pairs if p.group in val_groups]
    if not train_pairs:
        raise ValueError(f"no training pairs left after holding out {list(val_groups)}")
    network = ResidualDenoiser(features, layers).to(device)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    curve, running = [], []
    start = time.perf_counter()
    network.train()
    for it in tqdm(range(iterations), desc="train denoiser", unit="it"):
        xs, ys = zip(*(_crop_pair(train_pairs[int(rng.integers(len(train_pairs)))], patch_zyx, rng)
                       for _ in range(batch_size)))
        xb = torch.from_numpy(np.stack(xs) / HU_SCALE)[:, None].float().to(device)
        yb = torch.from_numpy(np.stack(ys) / HU_SCALE)[:, None].float().to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.mean((network(xb).float() - yb) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(float(loss.item()))
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            curve.append({"iteration": it + 1, "mse_scaled": float(np.mean(running))})
            running = []
    train_s = time.perf_counter() - start
    network = network.cpu().eval()
    record = {"loss_curve": curve, "train_seconds": train_s, "iterations": iterations, "batch_size": batch_size,
              "patch_zyx": list(patch_zyx), "features": features, "layers": layers,
              "train_pairs": [p.name for p in train_pairs], "val_pairs": [p.name for p in val_pairs],
              "val_groups": list(val_groups),
              "validation": {p.name: noise_figures(network, p) for p in val_pairs}}
    return network, record
