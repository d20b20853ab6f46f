"""The digital phantom: an analytic torso with a liver holding six ROIs, a thoracic part and test inserts.

Coordinates are phantom millimetres in DICOM patient axes (LPS: +x patient left, +y posterior,
+z head), centered on the phantom. Shapes are analytic (ellipsoids, cylinders, boxes) and painted in
order, later shapes over earlier ones. Each tissue has a mean HU and a fixed texture: a Gaussian-
correlated random field defined on a 1 mm grid in phantom space and seeded by ``texture_seed``, so
the texture moves with the phantom and is identical in every scan of the same phantom (it was
"printed once"). The noise of each acquisition is seeded separately (see ``acquisition``).

Layout (body 156 x 124 mm, small enough for the 175 mm field of view of the demo's 256 matrix):
liver on the patient's right holding the six ROI spheres (radius 10 mm, centers at z = -8 / +8 mm),
lungs, ribs and a vertebra for the thoracic part, a uniform water insert, contrast rods and a
line-pair insert on the patient's left.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctdose.naming import ROI_NAMES

#: Tissue -> (mean HU, texture std HU, texture correlation length mm). Index = tissue label.
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, 0.0, 1.0),
    "body": (40.0, 6.0, 2.0),
    "lung": (-780.0, 25.0, 1.5),
    "bone": (700.0, 30.0, 1.0),
    "marrow": (250.0, 25.0, 1.5),
    "canal": (20.0, 0.0, 1.0),
    "liver": (100.0, 12.0, 1.2),
    "cyst": (8.0, 3.0, 2.0),
    "hemangioma": (130.0, 16.0, 1.8),
    "metastasis": (70.0, 18.0, 2.5),
    "water": (0.0, 0.0, 1.0),
    "rod_fat": (-100.0, 0.0, 1.0),
    "rod_soft": (60.0, 0.0, 1.0),
    "rod_bone": (300.0, 0.0, 1.0),
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)
TISSUE_LABEL: dict[str, int] = {name: i for i, name in enumerate(TISSUE_NAMES)}
#: Tissue of each ROI (the six ROIs keep ROI_NAMES order; labels 1..6 in ROI label maps).
ROI_TISSUE: dict[str, str] = {
    "cyst1": "cyst", "cyst2": "cyst", "hemangioma": "hemangioma", "metastasis": "metastasis",
    "normal1": "liver", "normal2": "liver",
}
#: ROI sphere centers (x, y, z) mm in phantom space and radius mm.
ROI_CENTERS_MM: dict[str, tuple[float, float, float]] = {
    "cyst1": (-48.0, -18.0, -8.0), "cyst2": (2.0, 12.0, 8.0),
    "hemangioma": (-24.0, -24.0, 8.0), "metastasis": (-44.0, 14.0, 8.0),
    "normal1": (-20.0, 18.0, -8.0), "normal2": (0.0, -18.0, -8.0),
}
ROI_RADIUS_MM = 10.0
#: Texture fields are defined on this box (phantom mm, x y z) with 1 mm spacing.
TEXTURE_BOX_MM = ((-90.0, 90.0), (-75.0, 75.0), (-80.0, 80.0))
#: Uniform water insert (for noise measurements): center x, y mm, radius mm, z range mm.
WATER_INSERT = ((46.0, -8.0), 13.0, (-80.0, 0.0))


@dataclass(frozen=True)
class Pose:
    """Rigid placement of the phantom in the scanner: rotation about z (degrees), then translation (mm).

    A phantom point q maps to the scanner point p = R q + t.
    """

    rotation_z_deg: float = 0.0
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def matrix(self) -> np.ndarray:
        a = np.radians(self.rotation_z_deg)
        return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])

    def to_scanner(self, q: np.ndarray) -> np.ndarray:
        """Phantom points (..., 3) -> scanner points (..., 3), mm."""
        return np.asarray(q) @ self.matrix.T + np.asarray(self.translation_mm)

    def to_phantom(self, p: np.ndarray) -> np.ndarray:
        """Scanner points (..., 3) -> phantom points (..., 3), mm."""
        return (np.asarray(p) - np.asarray(self.translation_mm)) @ self.matrix


class _Points:
    """Phantom points of a scan grid in separable form: in-plane x, y (ny, nx) and z (nz,) in mm.

    A pose rotates about z only, so the in-plane phantom coordinates are the same on every slice;
    shape tests then cost one broadcast operation per shape instead of work on full 3-D coordinates.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
        self.x, self.y = x.astype(np.float32), y.astype(np.float32)
        self.z = z.astype(np.float32)[:, None, None]
        self.shape = (z.size, *x.shape)

    def ellipsoid(self, c, r) -> np.ndarray:
        e2 = ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2
        return e2[None] + ((self.z - c[2]) / r[2]) ** 2 <= 1.0

    def cylinder(self, cxy, radius: float, zr=(-1e3, 1e3), rxy=None) -> np.ndarray:
        rx, ry = rxy or (radius, radius)
        inside = ((self.x - cxy[0]) / rx) ** 2 + ((self.y - cxy[1]) / ry) ** 2 <= 1.0
        return inside[None] & ((self.z >= zr[0]) & (self.z <= zr[1]))

    def box(self, lo, hi) -> np.ndarray:
        inside = (self.x >= lo[0]) & (self.x <= hi[0]) & (self.y >= lo[1]) & (self.y <= hi[1])
        return inside[None] & ((self.z >= lo[2]) & (self.z <= hi[2]))


def _tissue_labels(q: _Points) -> np.ndarray:
    """Tissue label (index into TISSUE_NAMES) at the points, uint8 (nz, ny, nx)."""
    lab = np.zeros(q.shape, dtype=np.uint8)

    def paint(mask: np.ndarray, tissue: str) -> None:
        np.putmask(lab, np.broadcast_to(mask, q.shape), TISSUE_LABEL[tissue])

    paint(q.cylinder((0, 0), 0.0, rxy=(78, 62)), "body")
    paint(q.ellipsoid((38, 4, 60), (28, 40, 75)), "lung")  # left lung, from mid-liver level upwards
    paint(q.ellipsoid((-34, 6, 95), (34, 42, 55)), "lung")  # right lung above the liver dome
    paint(q.ellipsoid((-24, -2, -2), (50, 46, 60)), "liver")
    for name, center in ROI_CENTERS_MM.items():
        paint(q.ellipsoid(center, (ROI_RADIUS_MM,) * 3), ROI_TISSUE[name])
    # vertebra: cortical ring, marrow, canal
    paint(q.cylinder((0, 44), 12.0), "bone")
    paint(q.cylinder((0, 44), 9.5), "marrow")
    paint(q.cylinder((0, 54), 4.0), "canal")
    # ribs: bone rods just inside the body outline, in the thoracic half (z > 0)
    for ang in np.radians(np.arange(-150, 180, 30)):
        paint(q.cylinder((70 * np.cos(ang), 55 * np.sin(ang)), 3.5, (0.0, 1e3)), "bone")
    # test patterns on the patient's left, in the lower half (z < 0)
    (wx, wy), wr, wz = WATER_INSERT
    paint(q.cylinder((wx, wy), wr, wz), "water")
    for (cx, cy), tissue in (((58, 16), "rod_fat"), ((42, 24), "rod_soft"), ((26, 30), "rod_bone")):
        paint(q.cylinder((cx, cy), 5.0, (-80.0, 0.0)), tissue)
    x0 = 20.0
    for width in (2.5, 2.0, 1.5, 1.0):  # line pairs: 3 bars of bone-like material per width (mm)
        for _ in range(3):
            paint(q.box((x0, -44, -80), (x0 + width, -32, 0)), "rod_bone")
            x0 += 2 * width
        x0 += 2.0
    return lab


def _roi_labels(q: _Points) -> np.ndarray:
    """ROI label (0 background, 1..6 in ROI_NAMES order) at the points, uint8 (nz, ny, nx)."""
    lab = np.zeros(q.shape, dtype=np.uint8)
    for i, name in enumerate(ROI_NAMES, start=1):
        np.putmask(lab, q.ellipsoid(ROI_CENTERS_MM[name], (ROI_RADIUS_MM,) * 3), i)
    return lab


#: Texture is band-limited: structure coarser than this (Gaussian sigma, mm) is removed, so the mean
#: of a textured tissue over an ROI (20 mm) stays within about a HU of its nominal mean.
TEXTURE_HIGHPASS_MM = 6.0


@functools.lru_cache(maxsize=2)
def texture_fields(texture_seed: int) -> dict[str, np.ndarray]:
    """Unit-variance correlated fields (z, y, x on the 1 mm TEXTURE_BOX_MM grid), one per textured tissue.

    White noise smoothed with a Gaussian of the tissue's correlation length, minus its own 6 mm
    smoothing (band-pass), normalised to zero mean and unit std.
    """
    shape = tuple(int(hi - lo) + 1 for lo, hi in reversed(TEXTURE_BOX_MM))
    fields = {}
    for label, (name, (_, std, corr)) in enumerate(TISSUES.items()):
        if std <= 0:
            continue
        rng = np.random.default_rng([texture_seed, label])
        f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), corr, mode="wrap")
        f -= ndimage.gaussian_filter(f, TEXTURE_HIGHPASS_MM, mode="wrap")  # ROI means stay on the tissue mean
        fields[name] = (f - f.mean()) / f.std()
    return fields


def _hu(q: _Points, texture_seed: int) -> np.ndarray:
    """HU (float32, (nz, ny, nx)) at the points: tissue mean plus its fixed texture."""
    lab = _tissue_labels(q)
    means = np.array([v[0] for v in TISSUES.values()], dtype=np.float32)
    hu = means[lab]
    lo = np.array([b[0] for b in TEXTURE_BOX_MM], dtype=np.float32)
    for name, field in texture_fields(texture_seed).items():
        sel = lab == TISSUE_LABEL[name]
        k, j, i = np.nonzero(sel)
        if k.size == 0:
            continue
        idx = np.stack([q.z[k, 0, 0] - lo[2], q.y[j, i] - lo[1], q.x[j, i] - lo[0]])  # 1 mm grid
        hu[sel] += TISSUES[name][1] * ndimage.map_coordinates(field, idx, order=1, mode="nearest")
    return hu


@dataclass
class ScanGrid:
    """Reconstruction grid of a scan: ``n_pix`` square matrix, pixel mm, slices centered on z = 0."""

    n_pix: int
    pixel_mm: float
    n_slices: int
    slice_mm: float

    @property
    def origin(self) -> np.ndarray:
        """LPS position (x, y, z) mm of voxel (0, 0, 0); pixel n_pix // 2 sits on the rotation axis."""
        c = self.n_pix // 2
        return np.array([-c * self.pixel_mm, -c * self.pixel_mm, -(self.n_slices - 1) / 2 * self.slice_mm])

    @property
    def spacing(self) -> np.ndarray:
        return np.array([self.pixel_mm, self.pixel_mm, self.slice_mm])


@dataclass
class PhantomImage:
    """The noise-free phantom on a scan grid: ``hu`` (z, y, x) float32, ``rois`` (z, y, x) uint8 1..6."""

    hu: np.ndarray
    rois: np.ndarray
    grid: ScanGrid
    pose: Pose


def _grid_points(grid: "ScanGrid", pose: Pose, z_offset_mm: float, slices: slice) -> _Points:
    o, sp_ = grid.origin, grid.spacing
    x = o[0] + np.arange(grid.n_pix) * sp_[0]
    y = o[1] + np.arange(grid.n_pix) * sp_[1]
    z = o[2] + np.arange(grid.n_slices)[slices] * sp_[2] + z_offset_mm
    yy, xx = np.meshgrid(y, x, indexing="ij")
    flat = pose.to_phantom(np.stack([xx, yy, np.zeros_like(xx)], axis=-1))
    qz = z - pose.translation_mm[2]
    return _Points(flat[..., 0], flat[..., 1], qz)


def build_phantom(grid: ScanGrid, texture_seed: int = 0, pose: Pose = Pose(), z_subsamples: int = 2,
                  slices: slice = slice(None)) -> PhantomImage:
    """Voxelise the phantom placed with ``pose`` on ``grid``.

    Each slice averages ``z_subsamples`` planes spread over its thickness (partial volume along z);
    in-plane values are taken at voxel centers. ROI labels are taken at voxel centers, so masks follow
    the repositioned phantom exactly. ``slices`` restricts the voxelised slices (e.g. for calibration).
    """
    hu = None
    for j in range(z_subsamples):
        offset = (-0.5 + (j + 0.5) / z_subsamples) * grid.slice_mm
        h = _hu(_grid_points(grid, pose, offset, slices), texture_seed)
        hu = h if hu is None else hu + h
    rois = _roi_labels(_grid_points(grid, pose, 0.0, slices))
    return PhantomImage(hu=(hu / z_subsamples).astype(np.float32), rois=rois, grid=grid, pose=pose)
