"""The digital phantom at human scale: a 320 x 230 mm torso in three segments along z.

Coordinates are phantom millimetres in DICOM patient axes (LPS: +x patient left, +y posterior,
+z head), centered on the phantom. Shapes are analytic (ellipsoids, cylinders, boxes) and painted in
order, later shapes over earlier ones. Each tissue has a mean HU and a fixed texture: a Gaussian-
correlated random field defined on a 1 mm grid in phantom space and seeded by ``texture_seed``, so
the texture moves with the phantom and is identical in every scan of the same phantom (it was
"printed once"). The noise of each acquisition is seeded separately (see ``acquisition``).

Layout, as the collection's phantom (thoracic, liver and test-pattern segments along z; the real
phantom's exact shapes are not published, so these are the twin's): body 320 x 230 mm (the
collection's 350 mm field of view holds it); thoracic segment z > 60 mm (lungs, ribs); liver segment
-60 < z < 60 mm (a liver of 190 x 160 x 120 mm on the patient's right holding the six ROIs in one
axial plane, z = 0); test-pattern segment z < -60 mm (uniform water insert, contrast rods, line
pairs); a vertebra through all three. ROI radii are plausible lesion sizes (cysts 9 and 12 mm,
hemangioma 12 mm, metastasis 14 mm, normal-liver spheres 12 mm) and the ROIs sit 45 mm apart along x
and 60 mm along y, so that a 32 x 32 x 16 patch (0.6836 x 0.6836 x 2 mm, the dataset paper's) around
any center inside one ROI holds no voxel of another (``tests/test_twin_generate.py``).
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
#: Mean HU of each tissue, indexed by tissue label.
TISSUE_MEAN_HU = np.array([v[0] for v in TISSUES.values()], dtype=np.float32)
TISSUE_LABEL: dict[str, int] = {name: i for i, name in enumerate(TISSUE_NAMES)}
#: Tissue of each ROI (the six ROIs keep ROI_NAMES order; labels 1..6 in ROI label maps).
ROI_TISSUE: dict[str, str] = {
    "cyst1": "cyst", "cyst2": "cyst", "hemangioma": "hemangioma", "metastasis": "metastasis",
    "normal1": "liver", "normal2": "liver",
}
#: ROI sphere centers (x, y, z) mm in phantom space.
ROI_CENTERS_MM: dict[str, tuple[float, float, float]] = {
    "cyst1": (-100.0, -30.0, 0.0), "hemangioma": (-55.0, -30.0, 0.0), "normal1": (-10.0, -30.0, 0.0),
    "metastasis": (-100.0, 30.0, 0.0), "normal2": (-55.0, 30.0, 0.0), "cyst2": (-10.0, 30.0, 0.0),
}
#: ROI sphere radii (mm).
ROI_RADII_MM: dict[str, float] = {"cyst1": 9.0, "cyst2": 12.0, "hemangioma": 12.0, "metastasis": 14.0,
                                  "normal1": 12.0, "normal2": 12.0}
#: Body outline: elliptic cylinder semi-axes (x, y) mm.
BODY_SEMI_AXES_MM = (160.0, 115.0)
#: Segments along z (mm): thoracic above, test patterns below the liver segment.
LIVER_SEGMENT_MM = (-60.0, 60.0)
#: Texture fields are defined on this box (phantom mm, x y z) with 1 mm spacing: the liver segment's
#: central part, which holds every region the pipeline reconstructs; outside it tissues are uniform.
TEXTURE_BOX_MM = ((-160.0, 45.0), (-100.0, 100.0), (-62.0, 62.0))
#: Uniform water insert (for noise measurements): center x, y mm, radius mm, z range mm.
WATER_INSERT = ((0.0, -20.0), 40.0, (-170.0, -70.0))


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

    z0, z1 = LIVER_SEGMENT_MM
    paint(q.cylinder((0, 0), 0.0, (-200.0, 200.0), rxy=BODY_SEMI_AXES_MM), "body")
    # thoracic segment: lungs whose bases reach into the top of the liver segment, ribs
    paint(q.ellipsoid((70, 0, 150), (65, 85, 110)), "lung")
    paint(q.ellipsoid((-70, 0, 165), (65, 85, 110)), "lung")
    for ang in np.radians(np.arange(-165, 180, 30)):
        paint(q.cylinder((148 * np.cos(ang), 104 * np.sin(ang)), 4.0, (z1, 200.0)), "bone")
    # liver segment: the liver (an ellipsoid cut by the segment's faces) and its six ROIs
    paint(q.ellipsoid((-55, -5, 0), (95, 80, 75)) & q.cylinder((0, 0), 1e3, (z0, z1)), "liver")
    for name, center in ROI_CENTERS_MM.items():
        paint(q.ellipsoid(center, (ROI_RADII_MM[name],) * 3), ROI_TISSUE[name])
    # vertebra through all segments: cortical ring, marrow, canal
    paint(q.cylinder((0, 80), 16.0, (-200.0, 200.0)), "bone")
    paint(q.cylinder((0, 80), 12.5, (-200.0, 200.0)), "marrow")
    paint(q.cylinder((0, 100), 6.0, (-200.0, 200.0)), "canal")
    # test-pattern segment: uniform water insert, contrast rods, line pairs
    (wx, wy), wr, wz = WATER_INSERT
    paint(q.cylinder((wx, wy), wr, wz), "water")
    for (cx, cy), tissue in (((-90, -20), "rod_fat"), ((90, -20), "rod_soft"), ((60, 40), "rod_bone")):
        paint(q.cylinder((cx, cy), 10.0, wz), tissue)
    x0 = -70.0
    for width in (2.5, 2.0, 1.5, 1.0):  # line pairs: 3 bars of bone-like material per width (mm)
        for _ in range(3):
            paint(q.box((x0, 40, wz[0]), (x0 + width, 60, wz[1])), "rod_bone")
            x0 += 2 * width
        x0 += 4.0
    return lab


def _roi_labels(q: _Points) -> np.ndarray:
    """ROI label (0 background, 1..6 in ROI_NAMES order) at the points, uint8 (nz, ny, nx)."""
    lab = np.zeros(q.shape, dtype=np.uint8)
    for i, name in enumerate(ROI_NAMES, start=1):
        np.putmask(lab, q.ellipsoid(ROI_CENTERS_MM[name], (ROI_RADII_MM[name],) * 3), i)
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
    hu = TISSUE_MEAN_HU[lab]
    lo = np.array([b[0] for b in TEXTURE_BOX_MM], dtype=np.float32)
    for name, field in texture_fields(texture_seed).items():
        sel = lab == TISSUE_LABEL[name]
        k, j, i = np.nonzero(sel)
        if k.size == 0:
            continue
        idx = np.stack([q.z[k, 0, 0] - lo[2], q.y[j, i] - lo[1], q.x[j, i] - lo[0]])  # 1 mm grid
        hu[sel] += TISSUES[name][1] * ndimage.map_coordinates(field, idx, order=1, mode="constant", cval=0.0)
    return hu


@dataclass(frozen=True)
class ScanGrid:
    """Reconstruction grid of a scan: a region of an ``n_pix`` x ``n_pix`` field of view, slices along z.

    The full matrix's pixel ``n_pix // 2`` sits on the rotation axis; ``region`` = (row0, col0, rows,
    cols) picks the reconstructed part of it (targeted reconstruction; None = the whole field of view).
    Slices are ``increment_mm`` apart, ``thickness_mm`` thick, centered on ``z_center_mm``.
    """

    n_pix: int
    pixel_mm: float
    n_slices: int
    increment_mm: float
    thickness_mm: float
    region: tuple[int, int, int, int] | None = None
    z_center_mm: float = 0.0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) of the reconstructed part of the full matrix."""
        return self.region or (0, 0, self.n_pix, self.n_pix)

    @property
    def origin(self) -> np.ndarray:
        """LPS position (x, y, z) mm of voxel (0, 0, 0) of the reconstructed region."""
        c = self.n_pix // 2
        row0, col0 = self.box[:2]
        return np.array([(col0 - c) * self.pixel_mm, (row0 - c) * self.pixel_mm,
                         self.z_center_mm - (self.n_slices - 1) / 2 * self.increment_mm])

    @property
    def spacing(self) -> np.ndarray:
        return np.array([self.pixel_mm, self.pixel_mm, self.increment_mm])

    @property
    def slice_z(self) -> np.ndarray:
        """z (mm) of every slice center, shape (n_slices,)."""
        return self.origin[2] + np.arange(self.n_slices) * self.increment_mm


@dataclass
class PhantomImage:
    """The noise-free phantom on a scan grid: ``hu`` (z, y, x) float32, ``rois`` (z, y, x) uint8 1..6.

    ``hu`` covers the grid's region plus ``margin`` pixels on each in-plane side (for the kernel's blur);
    ``rois`` covers the region only.
    """

    hu: np.ndarray
    rois: np.ndarray
    grid: ScanGrid
    pose: Pose
    margin: int = 0


def _grid_points(grid: ScanGrid, pose: Pose, z: np.ndarray, margin: int = 0) -> _Points:
    o, px = grid.origin, grid.pixel_mm
    row0, col0, rows, cols = grid.box
    x = o[0] + np.arange(-margin, cols + margin) * px
    y = o[1] + np.arange(-margin, rows + margin) * px
    yy, xx = np.meshgrid(y, x, indexing="ij")
    flat = pose.to_phantom(np.stack([xx, yy, np.zeros_like(xx)], axis=-1))
    return _Points(flat[..., 0], flat[..., 1], np.asarray(z, dtype=float) - pose.translation_mm[2])


def tissue_labels(grid: ScanGrid, pose: Pose, z: np.ndarray) -> np.ndarray:
    """Tissue labels (uint8, (planes, rows, cols)) of the grid's region at planes ``z`` (mm), no texture."""
    return _tissue_labels(_grid_points(grid, pose, z))


def roi_labels(grid: ScanGrid, pose: Pose = Pose()) -> np.ndarray:
    """ROI labels (uint8 (slices, rows, cols), 0 background, 1..6 in ROI_NAMES order) at the grid's voxel centers."""
    return _roi_labels(_grid_points(grid, pose, grid.slice_z))


def build_phantom(grid: ScanGrid, texture_seed: int = 0, pose: Pose = Pose(), z_subsamples: int = 2,
                  margin: int = 0) -> PhantomImage:
    """Voxelise the phantom placed with ``pose`` on ``grid`` (slice sensitivity: a box of the thickness).

    Each slice averages ``z_subsamples`` planes spread evenly over its thickness (partial volume along
    z); planes shared by overlapping slices (thickness > increment) are voxelised once. In-plane values
    are taken at voxel centers. ROI labels are taken at voxel centers, so masks follow the repositioned
    phantom exactly. ``margin`` adds pixels around the region in ``hu``.
    """
    z = grid.slice_z
    offsets = (-0.5 + (np.arange(z_subsamples) + 0.5) / z_subsamples) * grid.thickness_mm
    planes = np.round(z[:, None] + offsets[None, :], 6)
    unique, index = np.unique(planes, return_inverse=True)
    chunks = [_hu(_grid_points(grid, pose, unique[i:i + 32], margin), texture_seed)
              for i in range(0, unique.size, 32)]
    hu_planes = np.concatenate(chunks)
    hu = hu_planes[index.reshape(planes.shape)].mean(axis=1, dtype=np.float32)
    return PhantomImage(hu=hu.astype(np.float32), rois=roi_labels(grid, pose), grid=grid, pose=pose, margin=margin)


def other_roi_share(patch_voxels: tuple[int, int, int], spacing_mm: tuple[float, float, float] = (
        350.0 / 512, 350.0 / 512, 2.0)) -> dict[str, float]:
    """Largest share of another ROI's voxels in a patch centered anywhere inside each ROI.

    ``patch_voxels`` (x, y, z) on a grid of ``spacing_mm``; the patch is taken one voxel larger on each
    axis (conservative for the "no other ROI" check). Computed on the unposed phantom with a box filter.
    Returns {roi: share in [0, 1]}.
    """
    sx, sy, sz = spacing_mm
    xs = [c[0] for c in ROI_CENTERS_MM.values()]
    ys = [c[1] for c in ROI_CENTERS_MM.values()]
    reach = max(ROI_RADII_MM.values())
    half = [(n + 1) / 2 * s + reach for n, s in zip(patch_voxels, spacing_mm)]
    x = np.arange(min(xs) - half[0], max(xs) + half[0], sx)
    y = np.arange(min(ys) - half[1], max(ys) + half[1], sy)
    z = np.arange(-half[2], half[2], sz)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    labels = _roi_labels(_Points(xx, yy, z))
    size = (patch_voxels[2] + 1, patch_voxels[1] + 1, patch_voxels[0] + 1)
    shares = {}
    for i, name in enumerate(ROI_NAMES, start=1):
        other = ((labels > 0) & (labels != i)).astype(np.float32)
        share = ndimage.uniform_filter(other, size=size, mode="constant")
        shares[name] = float(share[labels == i].max())
    return shares
