"""Batched inference shared by the three networks (shallow CNN, SwinUNETR encoder, CT-FM encoder).

A :class:`Network` bundles a torch module, the HU window its input is clipped to and scaled from
(to [0, 1]; for data that is not in HU, e.g. OrganMNIST3D's grey levels 0..255, :func:`run` replaces
the window by the data's range, :func:`ctdose.datasets.input_range`, so values are only divided by 255)
and the function that turns a normalised batch ``(B, 1, Z, Y, X)`` into embeddings ``(B, F)``.
Patches come from :func:`ctdose.patches.sample_patches` as ``(n, Z, Y, X)`` float32 HU in the
LPS-aligned [z, y, x] ("SPL") orientation and are fed in that order.

CPU: fp32, deterministic kernels (``torch.use_deterministic_algorithms`` during inference), seeded,
so embeddings repeat exactly.
CUDA: bf16 autocast, TF32 allowed, cuDNN autotuning (fast, not bit-exact).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ctdose.datasets import input_range
from ctdose.extractors import driver
from ctdose.extractors.weights import LoadReport, read_state_dict, resolve_weights
from ctdose.parallel import prefetched
from ctdose.patches import sample_patches

#: Module implementing each network (``build(seed)`` and ``load_weights(net, path)``).
NETWORK_MODULES: dict[str, str] = {
    "cnn": "ctdose.extractors.cnn",
    "swin": "ctdose.extractors.swin",
    "ctfm": "ctdose.extractors.ctfm",
}


@dataclass
class Network:
    """A feature network: ``embed(module, x)`` maps (B, 1, Z, Y, X) in [0, 1] to (B, n_features)."""

    name: str
    module: torch.nn.Module
    hu_range: tuple[float, float]
    n_features: int
    embed: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]

    def feature_names(self) -> list[str]:
        return [f"{self.name}_{i:04d}" for i in range(self.n_features)]


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA GPU")
    return chosen


def configure(device: torch.device, seed: int) -> None:
    """Seed torch; on CUDA allow the fast kernels (TF32, cuDNN autotuning; CPU runs are made
    deterministic inside :func:`embed_patches`)."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` for the block only (the global flag is restored)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def normalise(x: torch.Tensor, hu_range: tuple[float, float]) -> torch.Tensor:
    """Clip HU to ``hu_range`` and scale linearly to [0, 1] (in place on ``x``)."""
    lo, hi = hu_range
    return x.clamp_(lo, hi).sub_(lo).div_(hi - lo)


def embed_patches(net: Network, patches: np.ndarray | torch.Tensor, batch_size: int = 8,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Embeddings (n, F) float32 of patches (n, Z, Y, X) in HU, computed in batches of ``batch_size``."""
    device = torch.device(device)
    data = torch.as_tensor(patches, dtype=torch.float32)
    if data.ndim != 4:
        raise ValueError(f"patches must be (n, Z, Y, X), got shape {tuple(data.shape)}")
    net.module.to(device).eval()
    out = np.empty((len(data), net.n_features), dtype=np.float32)
    on_cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    with torch.inference_mode(), autocast, deterministic(not on_cuda):
        for start in range(0, len(data), batch_size):
            chunk = data[start:start + batch_size]
            if on_cuda and chunk.device.type == "cpu":
                chunk = chunk.pin_memory()
            # copy=True: normalise works in place and must never touch the caller's patches
            x = normalise(chunk.unsqueeze(1).to(device, non_blocking=True, copy=True).contiguous(), net.hu_range)
            out[start:start + len(chunk)] = net.embed(net.module, x).float().cpu().numpy()
    return out


def series_frame(job: driver.SeriesJob, net: Network, patch: driver.PatchSettings, batch_size: int,
                 device: torch.device, loaded: Future | None = None) -> pd.DataFrame:
    """One series' rows: one sampler call cuts all its patches (float32, on the GPU when there is one,
    else by the CPU kernel), then they are embedded in batches.

    ``loaded``: a future of ``driver.load_series(job)`` already started (:func:`ctdose.parallel.prefetched`);
    None loads it here.
    """
    volume, transform = driver.load_series(job) if loaded is None else loaded.result()
    centers = job.centers
    xyz = centers[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    batch = sample_patches(volume, xyz, transform, patch.size_xyz, patch.spacing_xyz,
                           device=device if device.type == "cuda" else None)
    values = embed_patches(net, batch.patches, batch_size, device)
    return driver.feature_frame(job.identity, centers, values, net.feature_names(),
                                batch.n_outside / float(np.prod(patch.size_xyz)))


def build_network(name: str, weights: str | None, allow_untrained: bool, seed: int,
                  size_zyx: tuple[int, int, int] = (32, 64, 64)) -> tuple[Network, dict]:
    """The network ``name`` for patches of ``size_zyx`` voxels with weights loaded, and its provenance.

    Without ``weights`` a ValueError stops the run unless ``allow_untrained`` (seeded random init,
    provenance ``{"untrained": true}``).
    """
    module = importlib.import_module(NETWORK_MODULES[name])
    if weights is None and not allow_untrained:
        raise ValueError(f"no --weights given for {name}; pass a weights file (see README) or "
                         "--allow-untrained to run with seeded random weights")
    path = None
    if weights is not None:
        try:
            path = resolve_weights(weights)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (see README for where to get the {name} weights, or pass "
                                    "--allow-untrained)") from None
    torch.manual_seed(seed)
    net: Network = module.build(size_zyx)
    if path is None:
        return net, {"untrained": True, "weights": None, "init_seed": seed}
    report: LoadReport = module.load_weights(net, read_state_dict(path), path)
    print(f"{name}: {report.summary()}")
    return net, {"untrained": False, **report.as_dict()}


def add_deep_args(parser: argparse.ArgumentParser, weights: str | None, batch_size: int, device: str = "auto",
                  seed: int = 0, allow_untrained: bool = False) -> None:
    """Flags of the three network scripts, with the defaults of their settings block."""
    parser.add_argument("--weights", default=weights,
                        help="checkpoint file, snapshot folder or hub id; 'none' = no weights (with "
                             "--allow-untrained) (default: %(default)s)")
    parser.add_argument("--allow-untrained", action="store_true", default=allow_untrained,
                        help="run with seeded random weights when --weights is 'none' or its default file is "
                             "absent (the sidecar and the report say untrained)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="patches per batch (default: %(default)s)")
    parser.add_argument("--device", default=device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=seed,
                        help="seed for torch and the untrained init (default: %(default)s)")


def chosen_weights(weights: str | None, default: str | None, allow_untrained: bool) -> str | None:
    """The weights to load (None: untrained) from the ``--weights`` flag and the script's default.

    ``none`` means no weights. With ``--allow-untrained``, a default path that does not exist also
    means none (the run goes on untrained, as asked, instead of failing on the missing default file);
    any other path is kept, so a mistyped explicit path still fails as "not found".
    """
    if weights is None or weights.lower() == "none":
        return None
    if allow_untrained and weights == default and not Path(weights).exists():
        return None
    return weights


def run(args: argparse.Namespace, name: str) -> str:
    """Extract one network's features for the selected series; returns the table path."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = pick_device(args.device)
    configure(device, args.seed)
    driver.dataset_patch(args, name)  # OrganMNIST3D: the patch is the whole crop
    net, weights_info = build_network(name, args.weights, args.allow_untrained, args.seed,
                                      tuple(reversed(args.patch_size)))
    scaled = input_range(getattr(args, "dataset", "ctdose"))
    if scaled is not None:  # not HU (OrganMNIST3D grey levels): scaled linearly to [0, 1], no HU window
        net.hu_range = scaled
    value_settings = {"weights_sha256": weights_info.get("weights_sha256"), "untrained": weights_info["untrained"],
                      "init_seed": args.seed if weights_info["untrained"] else None,
                      "hu_range": list(net.hu_range)}
    layout, jobs, patch = driver.prepare(args, name, value_settings)
    n_patches = len(jobs[0].centers)
    todo = [job for job in jobs if not driver.partial_is_current(job)]
    with tqdm(total=len(jobs) * n_patches, initial=(len(jobs) - len(todo)) * n_patches, desc=name,
              unit="patch") as bar:
        # the next series is read from DICOM while the network embeds the current one's patches
        for n, (job, loaded) in enumerate(prefetched(todo, driver.load_series), start=1):
            driver.run_job(job, lambda j: series_frame(j, net, patch, args.batch_size, device, loaded))
            bar.set_postfix_str(f"series {n}/{len(todo)}", refresh=False)
            bar.update(n_patches)
    settings = {**driver.selection_settings(args), "batch_size": args.batch_size, "device": str(device),
                "seed": args.seed, "hu_range": list(net.hu_range),
                "precision": "bf16 autocast" if device.type == "cuda" else "fp32 deterministic"}
    return str(driver.finish(name, layout, jobs, settings, **weights_info))
