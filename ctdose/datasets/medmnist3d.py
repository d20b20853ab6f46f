"""OrganMNIST3D (MedMNIST v2): 3-D organ crops from LiTS CT, 11 classes, in one ``.npz``.

File (Zenodo record of MedMNIST v2; ``organmnist3d.npz`` = 28^3, ``organmnist3d_64.npz`` = 64^3 of
MedMNIST+): keys ``train_images`` (N, S, S, S), ``train_labels`` (N, 1), and the same for ``val_`` and
``test_``. Labels (MedMNIST's ``INFO["organmnist3d"]``): 0 liver, 1 kidney-right, 2 kidney-left,
3 femur-right, 4 femur-left, 5 bladder, 6 heart, 7 lung-right, 8 lung-left, 9 spleen, 10 pancreas.

Intensities are NOT Hounsfield units: MedMNIST mapped HU through an abdominal window to grey levels
0..255. So no HU window is applied to them:

* the three networks (shallow CNN, SwinUNETR, CT-FM) get ``value / 255`` in [0, 1] (the range their HU
  windows map to), i.e. :data:`INPUT_RANGE` replaces each network's HU window;
* PyRadiomics gets the grey levels as they are (0..255), with the params file's bin width.

Geometry: the crop has no physical spacing; it is read as a volume of 1 mm voxels (origin 0, identity
direction), axes as stored (taken as z, y, x). One patch per sample, centred on the crop centre and
covering the whole crop: ``P^3`` voxels with spacing ``(S - 1) / (P - 1)``, where ``P`` is the crop side
``S`` rounded up to the multiple a network needs (SwinUNETR 32, CT-FM 16; radiomics and the CNN: ``S``).
Each sample is one case: ``series_uid`` = ``organmnist3d-<split>-<index>``; the MedMNIST split is
written to the ``recon`` column. The npz holds no patient ids, so crops of one patient cannot be grouped.
"""

from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ctdose.volume import Volume

#: Label value -> documented class name.
LABELS: dict[int, str] = {0: "liver", 1: "kidney-right", 2: "kidney-left", 3: "femur-right", 4: "femur-left",
                          5: "bladder", 6: "heart", 7: "lung-right", 8: "lung-left", 9: "spleen", 10: "pancreas"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Grey-level range mapped linearly to the networks' [0, 1] input (no HU window).
INPUT_RANGE: tuple[float, float] = (0.0, 255.0)
#: Patch side multiple each network needs (radiomics and the CNN take any side).
SIDE_MULTIPLE: dict[str, int] = {"swin": 32, "ctfm": 16}
#: Spacing (mm) the crop's voxels are read with (MedMNIST has none).
VOXEL_MM = 1.0


def roi_name(label: int) -> str:
    """``kidney-right`` -> ``kidney_right`` (the ``roi`` column)."""
    return LABELS[int(label)].replace("-", "_")


def roi_class(label: int) -> str:
    """``kidney-right`` -> ``kidney`` (the ``roi_class`` column)."""
    return LABELS[int(label)].split("-")[0]


def find_npz(path: str | os.PathLike) -> Path:
    """The npz file: ``path`` itself, or the one ``organmnist3d*.npz`` in folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"OrganMNIST3D file {path} not found (see README: MedMNIST v2 on Zenodo)")
    found = sorted(path.glob("organmnist3d*.npz"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected one organmnist3d*.npz, found "
                                f"{', '.join(p.name for p in found) or 'none'}; pass the file itself")
    return found[0]


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shape of every array in an ``.npz`` from the .npy headers alone (nothing decompressed in full)."""
    path = Path(path)
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as handle:
                    version = np.lib.format.read_magic(handle)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)(handle)
                shapes[name.removesuffix(".npy")] = tuple(header[0])
    except (zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz ({err})") from None
    return shapes


def check_keys(path: str | os.PathLike) -> int:
    """The crop side S after checking the documented keys and shapes (ValueError naming the key)."""
    shapes = npz_shapes(path)
    side = None
    for split in SPLITS:
        images, labels = f"{split}_images", f"{split}_labels"
        for key in (images, labels):
            if key not in shapes:
                raise ValueError(f"{path}: key {key} missing (MedMNIST keys: "
                                 f"{', '.join(f'{s}_images/{s}_labels' for s in SPLITS)})")
        shape = shapes[images]
        if len(shape) != 4 or len(set(shape[1:])) != 1:
            raise ValueError(f"{path}: {images} has shape {shape}; expected (N, S, S, S)")
        if shapes[labels][:1] != shape[:1]:
            raise ValueError(f"{path}: {labels} has shape {shapes[labels]} for {shape[0]} images")
        if side not in (None, shape[1]):
            raise ValueError(f"{path}: crops of {side}^3 and {shape[1]}^3 in one file")
        side = shape[1]
    return int(side)


@functools.lru_cache(maxsize=2)
def _arrays(path: str, size: int, mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        arrays = {key: np.asarray(data[key]) for key in data.files}
    for split in SPLITS:
        images = arrays[f"{split}_images"]
        if images.size and (images.min() < INPUT_RANGE[0] or images.max() > INPUT_RANGE[1]):
            raise ValueError(f"{path}: {split}_images outside 0..255 ({images.min()}..{images.max()}); "
                             "not MedMNIST grey levels")
        labels = arrays[f"{split}_labels"].reshape(-1)
        bad = sorted(set(labels.tolist()) - set(LABELS))
        if bad:
            raise ValueError(f"{path}: {split}_labels holds value(s) {bad}; OrganMNIST3D has 0..10")
        arrays[f"{split}_labels"] = labels.astype(int)
    return arrays


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of the npz (labels flattened to (N,) int), read once per process and file version."""
    path = Path(path)
    check_keys(path)
    stat = path.stat()
    return _arrays(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def parse_item(item: str) -> tuple[str, int]:
    """``train:17`` -> ("train", 17)."""
    split, _, index = str(item).partition(":")
    if split not in SPLITS or not index.isdigit():
        raise ValueError(f"bad OrganMNIST3D item {item!r}; expected <train|val|test>:<index>")
    return split, int(index)


def load_sample(path: str | os.PathLike, item: str) -> Volume:
    """One crop as a :class:`Volume` of grey levels 0..255 (float32), 1 mm voxels, origin 0."""
    split, index = parse_item(item)
    images = load_arrays(path)[f"{split}_images"]
    if index >= len(images):
        raise ValueError(f"{path}: {split}_images has {len(images)} samples, no index {index}")
    return Volume(images[index].astype(np.float32), origin=np.zeros(3), spacing=np.full(3, VOXEL_MM))


def patch_geometry(side: int, extractor: str) -> tuple[list[int], list[float]]:
    """(size_xyz, spacing_xyz) of the one patch covering a ``side``^3 crop for ``extractor``."""
    multiple = SIDE_MULTIPLE.get(extractor, 1)
    p = -(-side // multiple) * multiple
    spacing = VOXEL_MM * (side - 1) / (p - 1) if p > 1 else VOXEL_MM
    return [p, p, p], [spacing] * 3


def case_rows(path: str | os.PathLike, max_cases: int | None = None) -> pd.DataFrame:
    """One row per sample (splits train, val, test in order, at most ``max_cases``): series_uid, recon
    (the split), item, roi, roi_class, patch 0 and the crop centre x_mm, y_mm, z_mm."""
    path = find_npz(path)
    side = check_keys(path)
    centre = VOXEL_MM * (side - 1) / 2.0
    with np.load(path) as data:
        labels = {split: np.asarray(data[f"{split}_labels"]).reshape(-1) for split in SPLITS}
    rows = []
    for split in SPLITS:
        for index, label in enumerate(labels[split]):
            if int(label) not in LABELS:
                raise ValueError(f"{path}: {split}_labels[{index}] = {label}; OrganMNIST3D has 0..10")
            rows.append({"series_uid": f"organmnist3d-{split}-{index:04d}", "recon": split,
                         "item": f"{split}:{index}", "roi": roi_name(label), "roi_class": roi_class(label),
                         "patch": 0, "x_mm": centre, "y_mm": centre, "z_mm": centre})
            if max_cases is not None and len(rows) >= max_cases:
                return pd.DataFrame(rows)
    if not rows:
        raise ValueError(f"{path}: no samples")
    return pd.DataFrame(rows)
