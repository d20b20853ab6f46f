"""Segmenter adapters: any supported model behind the one ``Segmenter`` interface (HU volume in, labels out).

``make_segmenter(kind, **options)`` with ``kind``:

* ``"builtin"`` -- the toolkit's twin-trained compact U-Net (``ctdose.segmentation.builtin``);
  option ``weights`` (default ``segmentation/weights/builtin_unet.pt``, made by
  ``segmentation/train_builtin.py``).
* ``"totalsegmentator"`` -- TotalSegmentator (Wasserthal et al. 2023) through its Python API, on a NIfTI
  written to a temporary folder; options ``task`` ("total" or "body"), ``fast``, ``fastest``,
  ``roi_subset`` (list of its class names), ``device``. Needs the ``totalsegmentator`` package AND
  its weights already on disk (``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``,
  else ``~/.totalsegmentator/nnunet/results``): the adapter refuses, in one line, rather than let it
  download them.
* ``"nnunet"`` -- an nnU-Net v2 trained-model folder (``dataset.json``, ``plans.json``,
  ``fold_<k>/checkpoint_final.pth``) through ``nnunetv2``'s ``nnUNetPredictor``; options ``model_dir``
  (required), ``folds`` (default: every ``fold_*`` holding the checkpoint), ``checkpoint``,
  ``device``, ``use_mirroring``.
* ``"monai"`` -- a MONAI network checkpoint plus a small YAML / JSON config::

      network: UNet                 # class name in monai.networks.nets (or a dotted path)
      kwargs: {spatial_dims: 3, in_channels: 1, out_channels: 3, channels: [8, 16], strides: [2]}
      labels: {1: liver, 2: lesion} # output channel -> name (0 = background)
      window_hu: [-200, 300]        # clip, then scale linearly to [0, 1]
      spacing_zyx_mm: [2.0, 1.5, 1.5]   # the network's working grid (null: the input grid)
      roi_size_zyx: [32, 64, 64]    # sliding-window size
      sw_batch_size: 4              # optional
      overlap: 0.25                 # optional

  options ``checkpoint`` and ``config`` (paths). The state dict is loaded through
  ``ctdose.extractors.weights`` (wrapped ``state_dict`` / ``model`` keys unwrapped; wrong shapes or
  missing parameters refused, naming the file).

Every adapter returns labels on the input grid. Models that run on another grid (built-in, MONAI with
``spacing_zyx_mm``) area-average the input onto it and interpolate their logits back. On CUDA the
torch models run batched sliding windows under bf16 autocast; on the CPU in float32.
Failures (missing package, missing weights, wrong folder or checkpoint) raise
:class:`SegmenterUnavailable` (a ValueError) or FileNotFoundError with one line naming the cause.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctdose.segmentation.interface import Segmenter

#: Where ``make_segmenter("builtin")`` looks by default (the train script writes there).
DEFAULT_BUILTIN_WEIGHTS = Path(__file__).resolve().parents[2] / "segmentation" / "weights" / "builtin_unet.pt"
KINDS: tuple[str, ...] = ("builtin", "totalsegmentator", "nnunet", "monai")


class SegmenterUnavailable(ValueError):
    """A segmenter cannot be made here (package, weights or model folder missing or wrong): one line."""


def make_segmenter(kind: str, **options: Any) -> Segmenter:
    """The segmenter of ``kind`` (one of :data:`KINDS`) with its ``options`` (see the module docstring)."""
    makers = {"builtin": _builtin, "totalsegmentator": TotalSegmentatorSegmenter, "nnunet": NnUNetSegmenter,
              "monai": MonaiSegmenter}
    if kind not in makers:
        raise ValueError(f"unknown segmenter kind {kind!r}; expected one of {', '.join(KINDS)}")
    return makers[kind](**options)


def _builtin(weights: str | os.PathLike | None = None, device: str | None = None) -> Segmenter:
    from ctdose.segmentation.builtin import load_builtin

    return load_builtin(weights or DEFAULT_BUILTIN_WEIGHTS, device)


def _require(module: str, kind: str, extra: str) -> None:
    """SegmenterUnavailable (one line) when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise SegmenterUnavailable(f"segmenter {kind!r} needs the Python package {module!r}, which is not installed "
                                   f"(pip install {extra})")


def _torch_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _reoriented_nifti(volume_hu: np.ndarray, spacing_zyx: tuple[float, float, float]):
    """A NIfTI image of a (z, y, x) LPS-axis volume: array (x, y, z), RAS affine flipping x and y."""
    import nibabel as nib

    sz, sy, sx = (float(s) for s in spacing_zyx)
    affine = np.diag([-sx, -sy, sz, 1.0])
    return nib.Nifti1Image(np.ascontiguousarray(np.transpose(volume_hu, (2, 1, 0)), dtype=np.float32), affine)


# ------------------------------------------------------------------------------ TotalSegmentator

#: TotalSegmentator's nnU-Net datasets per task and speed, from its python_api (v2): what must be on disk.
TOTALSEG_DATASETS: dict[tuple[str, str], tuple[int, ...]] = {
    ("total", "normal"): (291, 292, 293, 294, 295), ("total", "fast"): (297,), ("total", "fastest"): (298,),
    ("body", "normal"): (299,), ("body", "fast"): (300,),
}


def totalseg_weights_dir() -> Path:
    """Where TotalSegmentator reads its weights (its own rule: env variables, then the home folder)."""
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if "TOTALSEG_HOME_DIR" in os.environ:
        return Path(os.environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results"
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator" / "nnunet" / "results"


def missing_totalseg_datasets(task: str, speed: str, roi_subset: list[str] | None,
                              weights_dir: Path | None = None) -> list[int]:
    """Dataset ids the task needs that are not in the weights folder (roi_subset also needs the 6 mm model)."""
    if (task, speed) not in TOTALSEG_DATASETS:
        known = ", ".join(sorted({f"{t}/{s}" for t, s in TOTALSEG_DATASETS}))
        raise ValueError(f"TotalSegmentator task/speed {task}/{speed} is not supported here (known: {known})")
    needed = list(TOTALSEG_DATASETS[(task, speed)]) + ([298] if roi_subset else [])
    weights_dir = weights_dir or totalseg_weights_dir()
    return [i for i in dict.fromkeys(needed)
            if not (weights_dir.is_dir() and any(weights_dir.glob(f"Dataset{i:03d}_*")))]


class TotalSegmentatorSegmenter:
    """TotalSegmentator through its Python API; refuses (one line) without the package or its weights."""

    def __init__(self, task: str = "total", fast: bool = False, fastest: bool = False,
                 roi_subset: list[str] | None = None, device: str | None = None) -> None:
        speed = "fastest" if fastest else "fast" if fast else "normal"
        missing = missing_totalseg_datasets(task, speed, roi_subset)  # checked first: never a download
        _require("totalsegmentator", "totalsegmentator", "totalsegmentator")
        if missing:
            raise SegmenterUnavailable(
                f"TotalSegmentator weights for task {task!r} ({speed}) are not in {totalseg_weights_dir()} "
                f"(missing Dataset{', Dataset'.join(f'{i:03d}' for i in missing)}); download them on a connected "
                f"machine (TotalSegmentator --download / totalseg_download_weights) and set TOTALSEG_HOME_DIR")
        from totalsegmentator.map_to_binary import class_map

        self.task, self.fast, self.fastest, self.roi_subset = task, fast, fastest, roi_subset
        dev = _torch_device(device)
        self.device = "gpu" if dev.type == "cuda" else "cpu"
        names = class_map[task]
        self.labels = {int(k): str(v) for k, v in names.items()
                       if roi_subset is None or v in set(roi_subset)}
        self.name = f"totalsegmentator ({task}{', ' + speed if speed != 'normal' else ''})"

    def predict(self, volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
        """Label map (int16 (z, y, x)) of TotalSegmentator's classes on the input grid."""
        import nibabel as nib
        from totalsegmentator.python_api import totalsegmentator

        with tempfile.TemporaryDirectory(prefix="ctdose_totalseg_") as tmp:
            path = Path(tmp) / "ct.nii.gz"
            nib.save(_reoriented_nifti(volume_hu, spacing_zyx_mm), path)
            seg = totalsegmentator(str(path), None, ml=True, fast=self.fast, fastest=self.fastest, task=self.task,
                                   roi_subset=self.roi_subset, device=self.device, quiet=True, skip_saving=True)
            data = np.asarray(seg.dataobj)
        labels = np.transpose(data, (2, 1, 0)).astype(np.int16)
        if labels.shape != np.shape(volume_hu):
            raise ValueError(f"TotalSegmentator returned shape {labels.shape} for an input of {np.shape(volume_hu)}")
        return labels


# ------------------------------------------------------------------------------ nnU-Net v2

def check_nnunet_folder(model_dir: str | os.PathLike, folds: tuple[int, ...] | None = None,
                        checkpoint: str = "checkpoint_final.pth") -> tuple[Path, tuple[int, ...], dict[int, str]]:
    """Validate an nnU-Net v2 trained-model folder; returns (folder, folds, labels). One-line errors."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"nnU-Net model folder {folder} not found")
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise SegmenterUnavailable(f"{folder} is not an nnU-Net v2 trained-model folder: no {name} "
                                       f"(expected dataset.json, plans.json, fold_X/{checkpoint})")
    if folds is None:
        folds = tuple(sorted(int(p.parent.name.split("_", 1)[1]) for p in folder.glob(f"fold_*/{checkpoint}")
                             if p.parent.name.split("_", 1)[1].isdigit()))
        if not folds:
            raise SegmenterUnavailable(f"{folder} holds no fold_X/{checkpoint} (an nnU-Net v2 trained-model folder "
                                       f"has dataset.json, plans.json, fold_X/{checkpoint})")
    for k in folds:
        if not (folder / f"fold_{k}" / checkpoint).is_file():
            raise FileNotFoundError(f"{folder / f'fold_{k}' / checkpoint} not found")
    try:
        dataset = json.loads((folder / "dataset.json").read_text())
        raw = dataset["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SegmenterUnavailable(f"{folder / 'dataset.json'}: not an nnU-Net dataset.json ({type(err).__name__})") \
            from None
    labels = {int(v): str(k) for k, v in raw.items() if isinstance(v, int) and int(v) != 0}
    return folder, tuple(folds), labels


class NnUNetSegmenter:
    """An nnU-Net v2 trained-model folder through ``nnUNetPredictor`` (sliding window, mirroring optional)."""

    def __init__(self, model_dir: str | os.PathLike | None = None, folds: tuple[int, ...] | None = None,
                 checkpoint: str = "checkpoint_final.pth", device: str | None = None,
                 use_mirroring: bool = True) -> None:
        if model_dir is None:
            raise ValueError("segmenter 'nnunet' needs model_dir (an nnU-Net v2 trained-model folder)")
        folder, folds, labels = check_nnunet_folder(model_dir, folds, checkpoint)
        _require("nnunetv2", "nnunet", "nnunetv2")
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        dev = _torch_device(device)
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                         perform_everything_on_device=dev.type == "cuda", device=dev,
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        try:
            self.predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds,
                                                                checkpoint_name=checkpoint)
        except Exception as err:  # nnU-Net raises many types for a broken folder
            raise SegmenterUnavailable(f"cannot load nnU-Net model {folder}: {type(err).__name__}: "
                                       f"{str(err).splitlines()[0][:200] if str(err) else ''}") from None
        self.labels = labels
        self.name = f"nnunet ({folder.name})"

    def predict(self, volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
        """Label map (int16 (z, y, x)) on the input grid (nnU-Net's own preprocessing and resampling)."""
        image = np.asarray(volume_hu, dtype=np.float32)[None]  # (c, z, y, x), as its SimpleITK reader
        props = {"spacing": [float(s) for s in spacing_zyx_mm]}
        seg = self.predictor.predict_single_npy_array(image, props, None, None, False)
        return np.asarray(seg).astype(np.int16)


# ------------------------------------------------------------------------------ MONAI checkpoint

def read_monai_config(path: str | os.PathLike) -> dict[str, Any]:
    """The MONAI adapter's config (YAML or JSON), checked; one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MONAI model config {path} not found")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            config = yaml.safe_load(path.read_text())
        else:
            config = json.loads(path.read_text())
    except Exception as err:  # YAML / JSON syntax errors have many types
        raise ValueError(f"cannot read MONAI model config {path}: {type(err).__name__}") from None
    if not isinstance(config, dict):
        raise ValueError(f"MONAI model config {path} is not a mapping")
    missing = [k for k in ("network", "labels") if k not in config]
    if missing:
        raise ValueError(f"MONAI model config {path} lacks {', '.join(missing)} (needs network, kwargs, labels)")
    try:
        config["labels"] = {int(k): str(v) for k, v in dict(config["labels"]).items() if int(k) != 0}
    except (TypeError, ValueError):
        raise ValueError(f"MONAI model config {path}: labels must map integers to names") from None
    config.setdefault("kwargs", {})
    window = config.get("window_hu")
    if window is not None and (len(window) != 2 or float(window[1]) <= float(window[0])):
        raise ValueError(f"MONAI model config {path}: window_hu must be [low, high] with high > low, got {window}")
    return config


def monai_network_class(name: str, config_path: Path) -> type:
    """The network class named in a config: a class of ``monai.networks.nets`` or a dotted path."""
    module_name, _, cls_name = name.rpartition(".")
    try:
        module = importlib.import_module(module_name or "monai.networks.nets")
        return getattr(module, cls_name)
    except (ImportError, AttributeError):
        raise ValueError(f"MONAI model config {config_path}: unknown network {name!r}") from None


class MonaiSegmenter:
    """A MONAI network (any ``monai.networks.nets`` class) with its checkpoint and config; sliding window."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 device: str | None = None) -> None:
        if checkpoint is None or config is None:
            raise ValueError("segmenter 'monai' needs checkpoint and config (paths)")
        from ctdose.extractors.weights import load_into, read_state_dict

        _require("monai", "monai", "monai")
        checkpoint, config_path = Path(checkpoint), Path(config)
        cfg = read_monai_config(config_path)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"MONAI checkpoint {checkpoint} not found")
        cls = monai_network_class(str(cfg["network"]), config_path)
        try:
            network = cls(**cfg["kwargs"])
        except TypeError as err:
            raise ValueError(f"MONAI model config {config_path}: {cfg['network']}(**kwargs) failed: "
                             f"{str(err).splitlines()[0]}") from None
        self.report = load_into(network, read_state_dict(checkpoint), checkpoint)
        if self.report.unexpected:
            raise ValueError(f"MONAI checkpoint {checkpoint} has {len(self.report.unexpected)} key(s) the network "
                             f"{cfg['network']} lacks (e.g. {', '.join(self.report.unexpected[:3])}): wrong config?")
        self.device = _torch_device(device)
        self.network = network.to(self.device).eval()
        self.config = cfg
        self.labels = dict(cfg["labels"])
        self.name = str(cfg.get("name") or f"monai {cfg['network']} ({checkpoint.name})")

    def _normalise(self, hu: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
        window = self.config.get("window_hu")
        if window is None:
            return t
        lo, hi = float(window[0]), float(window[1])
        return (t.clamp(lo, hi) - lo) / (hi - lo)

    def predict(self, volume_hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
        """Label map (int16 (z, y, x)) on the input grid: argmax of the network's channels."""
        from ctdose.segmentation.builtin import logits_to_labels, sliding_logits, to_working, working_shape

        volume_hu = np.asarray(volume_hu, dtype=np.float32)
        if volume_hu.ndim != 3:
            raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume_hu.shape}")
        work_spacing = self.config.get("spacing_zyx_mm")
        work = volume_hu.shape if work_spacing is None else working_shape(volume_hu.shape, spacing_zyx_mm,
                                                                           tuple(work_spacing))
        x = self._normalise(to_working(volume_hu, work))[None, None]
        roi = tuple(int(v) for v in self.config.get("roi_size_zyx") or work)
        logits = sliding_logits(self.network, x, roi, self.device, int(self.config.get("sw_batch_size", 4)),
                                float(self.config.get("overlap", 0.25)))
        return logits_to_labels(logits, volume_hu.shape).astype(np.int16)
