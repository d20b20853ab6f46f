"""Shared test fixtures: a small synthetic liver phantom written as DICOM CT + SEG with ctdose's writers.

Use the ``make_ct_series`` fixture (a factory) to build a series in any folder::

    case = make_ct_series(tmp_path / "A1", scanner="A1", dose=10, recon="IR")
    case.files, case.seg_path, case.volume, case.label_map, case.meta

``phantom_volume`` / ``phantom_label_map`` build the arrays alone (importable as plain
functions: ``from conftest import phantom_volume``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.naming import ROI_NAMES, format_series_name
from ctdose.seg import write_seg
from ctdose.volume import Volume

REPO = Path(__file__).resolve().parents[1]
#: Default test geometry: 24 slices of 64x64, 2 mm pixels, 2.5 mm slices.
SHAPE_ZYX = (24, 64, 64)
SPACING_XYZ = (2.0, 2.0, 2.5)
#: Width (mm) of the logistic edges of the phantom (smooth, like partial-volume blurred CT).
EDGE_MM = 1.5
#: ROI spheres: center offset from the volume center (x, y, z mm), radius mm, HU.
ROI_SPHERES = {
    "cyst1": ((-25.0, -18.0, -10.0), 7.0, 5.0),
    "cyst2": ((22.0, -20.0, 10.0), 6.0, 5.0),
    "hemangioma": ((-20.0, 18.0, 8.0), 8.0, 130.0),
    "metastasis": ((18.0, 16.0, -12.0), 7.0, 25.0),
    "normal1": ((0.0, -2.0, 14.0), 7.0, 60.0),
    "normal2": ((2.0, 24.0, 0.0), 6.0, 60.0),
}
#: Scanner code -> manufacturer, model and kernel for test series.
SCANNER_INFO = {
    "A1": ("SIEMENS", "SOMATOM Definition Edge", "Br40"),
    "B1": ("Philips", "IQon", "B"),
    "G1": ("GE MEDICAL SYSTEMS", "Revolution CT", "STANDARD"),
}


def default_origin(shape_zyx=SHAPE_ZYX, spacing_xyz=SPACING_XYZ) -> np.ndarray:
    """Origin (x, y, z mm) that centers the volume on (0, 0, 0)."""
    nz, ny, nx = shape_zyx
    return -0.5 * (np.array([nx, ny, nz]) - 1) * np.array(spacing_xyz)


def _grid_mm(shape_zyx, spacing_xyz, origin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(*(origin[a] + spacing_xyz[a] * np.arange(n)
                            for a, n in ((2, nz), (1, ny), (0, nx))), indexing="ij")
    return x, y, z


def phantom_label_map(shape_zyx=SHAPE_ZYX, spacing_xyz=SPACING_XYZ, origin=None,
                      shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """uint8 (z, y, x): 1..6 = ROI spheres in ROI_NAMES order, shifted by ``shift_mm`` (x, y, z)."""
    origin = default_origin(shape_zyx, spacing_xyz) if origin is None else np.asarray(origin, float)
    x, y, z = _grid_mm(shape_zyx, spacing_xyz, origin)
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    for n, roi in enumerate(ROI_NAMES, start=1):
        (cx, cy, cz), radius, _ = ROI_SPHERES[roi]
        cx, cy, cz = cx + shift_mm[0], cy + shift_mm[1], cz + shift_mm[2]
        labels[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius ** 2] = n
    return labels


def phantom_array(points_xyz: np.ndarray, noise_sd: float = 0.0, seed: int = 0) -> np.ndarray:
    """HU of the phantom at LPS points ``(..., 3)`` mm: body, ROI spheres, dense rods and beads.

    Smooth edges (logistic, EDGE_MM wide) so the image is well defined at any point (registration tests).
    """
    x, y, z = points_xyz[..., 0], points_xyz[..., 1], points_xyz[..., 2]

    def inside(d: np.ndarray) -> np.ndarray:  # d < 0 inside, in mm
        return 1.0 / (1.0 + np.exp(np.clip(d / EDGE_MM, -50, 50)))

    body = inside(np.sqrt((x / 52.0) ** 2 + (y / 44.0) ** 2) * 48.0 - 48.0)
    hu = -1000.0 + 1060.0 * body
    for roi in ROI_NAMES:
        (cx, cy, cz), radius, value = ROI_SPHERES[roi]
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - radius
        hu += (value - 60.0) * inside(d)
    for cx, cy, rz in ((-38.0, 0.0, 8.0), (36.0, -4.0, 12.0), (0.0, -36.0, 16.0)):
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + ((z - 2.0) * 4.0 / rz) ** 2) - 4.0
        hu += 600.0 * inside(d)
    for cx, cy, cz in ((-30.0, -25.0, -20.0), (30.0, 25.0, 20.0), (-8.0, 30.0, -5.0), (10.0, -32.0, 5.0)):
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - 4.0  # dense beads: z landmarks
        hu += 400.0 * inside(d)
    if noise_sd:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise_sd, hu.shape)
    return hu.astype(np.float32)


def phantom_volume(shape_zyx=SHAPE_ZYX, spacing_xyz=SPACING_XYZ, origin=None, noise_sd: float = 10.0,
                   seed: int = 0, transform=None) -> Volume:
    """The phantom as a Volume; ``transform`` (sitk, maps this volume's points -> phantom points)
    moves the phantom (for registration tests)."""
    origin = default_origin(shape_zyx, spacing_xyz) if origin is None else np.asarray(origin, float)
    x, y, z = _grid_mm(shape_zyx, spacing_xyz, origin)
    points = np.stack([x, y, z], axis=-1)
    if transform is not None:
        from ctdose.patches import affine_from_transform
        A, b = affine_from_transform(transform)
        points = points @ A.T + b
    return Volume(phantom_array(points, noise_sd, seed), origin, spacing_xyz)


@dataclass
class TestSeries:
    """A series written by ``make_ct_series``."""

    __test__ = False
    files: list[Path]
    seg_path: Path | None
    volume: Volume
    label_map: np.ndarray
    meta: CTSeriesMeta


def write_test_series(out_dir: str | Path, *, scanner: str = "A1", dose: float = 10.0, recon: str = "IR",
                      scan_id: int = 1, repetition: int = 1, volume: Volume | None = None,
                      with_seg: bool = True, roi_names=ROI_NAMES, seg_dir: str | Path | None = None,
                      prefix: str = "CT", ctdivol: float | None | str = "auto", seed: int = 0,
                      **meta_overrides) -> TestSeries:
    """Write a phantom CT series (+ SEG) named in the TCIA scheme into ``out_dir``.

    ``ctdivol="auto"`` writes the nominal dose with a small offset; ``None`` leaves the tag out.
    """
    out_dir = Path(out_dir)
    volume = volume if volume is not None else phantom_volume(seed=seed)
    manufacturer, model, kernel = SCANNER_INFO.get(scanner, ("ACME", "Model X", "K1"))
    # short middle part: SeriesDescription (VR LO) holds at most 64 characters
    name = format_series_name(scanner, f"1000{scan_id}", scan_id, dose, recon,
                              n_files=volume.array.shape[0])
    uid_seed = f"{scanner}-{dose}-{recon}-{scan_id}-{repetition}-{seed}"
    meta_args = dict(
        manufacturer=manufacturer, model=model, kvp=120.0, tube_current_ma=20 * dose,
        exposure_mas=10 * dose, ctdivol=(dose * 1.03 if ctdivol == "auto" else ctdivol), kernel=kernel,
        series_description=name, series_uid=generate_uid(entropy_srcs=[uid_seed]),
        study_uid=generate_uid(entropy_srcs=[uid_seed, "study"]),
        series_datetime=dt.datetime(2024, 1, 1, 8, 0) + dt.timedelta(minutes=10 * repetition + scan_id),
        series_number=scan_id, station=scanner,
    )
    meta_args.update(meta_overrides)
    meta = CTSeriesMeta(**meta_args)
    files = write_ct_series(volume, out_dir, meta, prefix=prefix)
    label_map = phantom_label_map(volume.array.shape, tuple(volume.spacing), volume.origin)
    seg_path = None
    if with_seg:
        seg_path = Path(seg_dir or out_dir) / f"{prefix}_seg.dcm"
        write_seg(files, label_map, seg_path, roi_names)
    return TestSeries(files, seg_path, volume, label_map, meta)


@pytest.fixture
def make_ct_series():
    """Factory fixture: ``make_ct_series(out_dir, **kwargs)`` -> TestSeries (see write_test_series)."""
    return write_test_series


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory) -> Path:
    """A tiny TCIA-like tree: A1 10 mGy IR (reference, two repetitions), A1 3 mGy FBP, B1 10 mGy IR,
    each series in its own folder with its SEG beside it."""
    root = tmp_path_factory.mktemp("tree")
    write_test_series(root / "A1_IR10_r1", scanner="A1", dose=10, recon="IR", scan_id=11, repetition=1)
    write_test_series(root / "A1_IR10_r2", scanner="A1", dose=10, recon="IR", scan_id=12, repetition=2,
                      seed=1)
    write_test_series(root / "A1_FBP3", scanner="A1", dose=3, recon="FBP", scan_id=13, seed=2)
    write_test_series(root / "B1_IR10", scanner="B1", dose=10, recon="IR", scan_id=14, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory) -> tuple[Path, dict]:
    """The ``tiny`` twin, made once per session by ``data/make_twin.py`` as a user runs it (seed 5,
    texture seed 2): (its folder, its ground_truth.json). Shared: tests read it and never change it."""
    out = tmp_path_factory.mktemp("tiny_twin") / "tiny"
    proc = subprocess.run([sys.executable, str(REPO / "data" / "make_twin.py"), "--preset", "tiny", "--out", str(out),
                           "--seed", "5", "--texture-seed", "2", "--workers", "1"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"make_twin.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads((out / "ground_truth.json").read_text())


def load_script(relpath: str) -> ModuleType:
    """Import a top-level script by its path in the repository (script folders are not packages)."""
    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(relpath: str, argv: list[str], **settings: object) -> None:
    """Run a script's ``main(argv)`` as its ``__main__`` does (through ``ctdose.cli.run_main``);
    ``settings`` replace names of its settings block first (e.g. ``WEIGHTS=...``).

    A non-zero status becomes ``SystemExit`` carrying the script's one-line stderr message, so tests
    can ``pytest.raises(SystemExit, match=...)``; a traceback would escape as the exception itself.
    """
    import contextlib
    import io

    from ctdose.cli import run_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        module = load_script(relpath)
        for name, value in settings.items():
            setattr(module, name, value)
        status = run_main(module.main, argv)
    if status:
        import re

        found = re.findall(r"(?:error:|interrupted)[^\r\n]*", err.getvalue())  # a progress bar may precede it
        raise SystemExit(found[-1] if found else f"exit status {status}: {err.getvalue()[-500:]}")
