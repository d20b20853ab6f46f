"""Labelled series for series QC and the series classifier, made from the digital twin (twin-trained).

Nothing here changes the twin (``ctdose.twin``): existing twin (or any) DICOM CT series are read and
new DICOM series are written beside them with ``ctdose.dicom_io.write_ct_series`` (new Series and
SOP Instance UIDs; same Study and Frame of Reference UIDs as the source, as a scanner's reformat):

* **axis**: exact coronal and sagittal reformats of an axial series (:func:`reorient`: a signed
  permutation of the voxel array, no interpolation). Coronal: IOP 1\\0\\0\\0\\0\\-1 (rows along
  patient left, columns toward the feet), slices stacked along +y; sagittal: IOP 0\\1\\0\\0\\0\\-1,
  slices along -x (the normals the geometry check expects). Headers say what they are:
  SeriesDescription ``COR MPR ...`` / ``SAG MPR ...``, DerivationDescription, ImageType
  ``DERIVED\\SECONDARY\\AXIAL`` (the CT Image IOD requires AXIAL as value 3 of every CT image, and
  dciodvfy flags any value 4 such as MPR as an unrecognised term: the files stay conformant).
* **contrast**: a contrast-enhanced variant (:func:`contrast_variant`): + ``LIVER_ENHANCEMENT_HU`` in
  the liver parenchyma and + ``VESSEL_ENHANCEMENT_HU`` in vessel-like tubes through the liver, the
  enhancement blurred by a Gaussian of ``ENHANCEMENT_BLUR_MM`` (the system's resolution). The twin has
  no vessels: the tubes (``VESSEL_TUBES_MM``, along z, in phantom coordinates) are painted for this.
  Liver and tubes come from the twin's phantom model at the series' placement (its ground_truth.json
  pose) when the series is a twin series; otherwise from a threshold band ``LIVER_BAND_HU`` on the
  smoothed image (largest connected component) with one tube through its centroid.
  Enhancements are typical portal-venous values (liver about +50-60 HU, portal vessels 150-200 HU).
* **body part**: the twin's three segments along z (``ctdose.twin.phantom``: thoracic z > 60 mm,
  liver -60..60 mm, test patterns z < -60 mm). The demo twin's series span the liver segment only, so
  a full-length source is rendered from the twin's phantom model (:func:`render_phantom`: noise-free
  phantom on a coarse grid, plus seeded white noise; no scan simulation) and cropped by z range
  (:func:`crop_z`), one crop per segment.

All of it is the twin: a classifier trained on these series is *twin-trained* (column ``origin``).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from scipy import ndimage

from ctdose.atomic import atomic_path
from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.volume import Volume

#: Direction matrices (columns: i = row direction, j = column direction, k = slice normal) per axis.
AXIS_DIRECTIONS: dict[str, np.ndarray] = {
    "axial": np.eye(3),
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "sagittal": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}
#: SeriesDescription keyword of each reformat.
AXIS_KEYWORD = {"axial": "AX", "coronal": "COR", "sagittal": "SAG"}
#: Contrast enhancement (HU added): liver parenchyma and vessel-like tubes.
LIVER_ENHANCEMENT_HU = 60.0
VESSEL_ENHANCEMENT_HU = 180.0
ENHANCEMENT_BLUR_MM = 1.0
#: Vessel-like tubes along z in phantom coordinates: (x, y) centre mm, radius mm (inside the liver,
#: clear of the six ROIs at y = +-30 mm).
VESSEL_TUBES_MM: tuple[tuple[tuple[float, float], float], ...] = (((-55.0, 0.0), 6.0), ((-100.0, -2.0), 4.0),
                                                                  ((-15.0, 2.0), 4.0))
#: Liver threshold band (HU) for series without the twin's model, on the image smoothed at 3 mm.
LIVER_BAND_HU = (70.0, 160.0)
#: Body regions: the twin phantom's segments along z (mm), thoracic / liver / test patterns.
BODY_REGIONS_MM: dict[str, tuple[float, float]] = {"thorax": (60.0, 200.0), "liver": (-60.0, 60.0),
                                                   "test_pattern": (-200.0, -60.0)}
#: What every list row says about where its series comes from.
ORIGIN = "ctdose twin (twin-trained)"
#: Columns of a labelled list.
LIST_COLUMNS = ("path", "label", "group", "task", "origin", "source")


def reorient(volume: Volume, direction: np.ndarray) -> Volume:
    """The same voxels stored along new axes (``direction`` columns, a signed permutation of the
    volume's own axes): exact, no interpolation. Raises ValueError for any other direction."""
    direction = np.asarray(direction, dtype=float)
    m = volume.direction.T @ direction  # column n: new axis n in source (i, j, k) index axes
    perm = np.argmax(np.abs(m), axis=0)
    signs = np.sign(m[perm, np.arange(3)])
    if sorted(perm) != [0, 1, 2] or not np.allclose(np.abs(m), np.eye(3)[perm].T, atol=1e-6):
        raise ValueError(f"direction {direction.tolist()} is not a signed permutation of the volume's axes")
    src = volume.array.transpose(2, 1, 0)  # [i, j, k]
    new = src.transpose(perm)
    for n in range(3):
        if signs[n] < 0:
            new = np.flip(new, axis=n)
    corner = np.array([(src.shape[perm[n]] - 1) if signs[n] < 0 else 0 for n in range(3)], dtype=float)
    start = np.zeros(3)
    start[perm] = corner
    origin = volume.index_to_physical(start)
    return Volume(np.ascontiguousarray(new.transpose(2, 1, 0)), origin, volume.spacing[perm], direction)


def _meta_from(header: pydicom.Dataset, description: str, seed: str, number_offset: int) -> CTSeriesMeta:
    """Series metadata copied from a source slice header, with a new Series UID (derived from ``seed``)."""
    def number(keyword: str) -> float | None:
        value = header.get(keyword)
        return None if value in (None, "") else float(value)

    stamp = _dt.datetime(2024, 1, 1, 12, 0, 0)
    date, time = str(header.get("SeriesDate", "") or ""), str(header.get("SeriesTime", "") or "")
    if date:
        try:
            stamp = _dt.datetime.strptime(date + time.split(".")[0].ljust(6, "0")[:6], "%Y%m%d%H%M%S")
        except ValueError:
            pass
    return CTSeriesMeta(
        manufacturer=str(header.get("Manufacturer", "UNKNOWN")), model=str(header.get("ManufacturerModelName", "")),
        kvp=number("KVP") or 120.0, tube_current_ma=number("XRayTubeCurrent"), exposure_mas=number("Exposure"),
        ctdivol=number("CTDIvol"), kernel=str(header.get("ConvolutionKernel", "") or ""),
        slice_thickness=number("SliceThickness"), series_description=description[:64],
        series_uid=generate_uid(entropy_srcs=[str(header.get("SeriesInstanceUID", "")), seed]),
        study_uid=str(header.get("StudyInstanceUID", "")) or None,
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "")) or None,
        series_datetime=stamp + _dt.timedelta(minutes=1),
        series_number=int(header.get("SeriesNumber", 1) or 1) + number_offset,
        station=str(header.get("StationName", "") or ""), body_part=str(header.get("BodyPartExamined", "") or ""),
    )


def _mark_derived(files: list[Path], image_type: list[str], description: str) -> None:
    """Rewrite ImageType and DerivationDescription of written slices (atomically)."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ImageType = image_type
        ds.DerivationDescription = description[:1024]
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)


def write_derived_series(volume: Volume, source_header: pydicom.Dataset, out_dir: str | Path, *,
                         description: str, derivation: str, seed: str,
                         number_offset: int = 100) -> list[Path]:
    """Write ``volume`` as a new CT series derived from the series of ``source_header`` (one slice header).

    ImageType DERIVED\\SECONDARY\\AXIAL, DerivationDescription ``derivation``.
    Returns the files in slice order.
    """
    meta = _meta_from(source_header, description, seed, number_offset)
    files = write_ct_series(volume, out_dir, meta)
    _mark_derived(files, ["DERIVED", "SECONDARY", "AXIAL"], derivation)
    return files


def write_reformat(volume: Volume, source_header: pydicom.Dataset, out_dir: str | Path, axis: str,
                   label: str = "") -> list[Path]:
    """Write the ``axis`` (coronal / sagittal / axial) reformat of ``volume`` as a DICOM series."""
    if axis not in AXIS_DIRECTIONS:
        raise ValueError(f"unknown axis {axis!r}; use one of {', '.join(AXIS_DIRECTIONS)}")
    out = reorient(volume, AXIS_DIRECTIONS[axis])
    return write_derived_series(out, source_header, out_dir, description=f"{AXIS_KEYWORD[axis]} MPR {label}".strip(),
                                derivation=f"{axis} multiplanar reformat (exact voxel reordering) of series "
                                           f"{source_header.get('SeriesInstanceUID', '')}",
                                seed=f"reformat-{axis}")


@dataclass
class TwinPlacement:
    """Where a twin series' phantom sits: the pose from ground_truth.json (rotation about z, translation)."""

    rotation_z_deg: float
    translation_mm: tuple[float, float, float]

    def to_phantom(self, points: np.ndarray) -> np.ndarray:
        """Scanner points (..., 3) -> phantom points (..., 3), mm."""
        from ctdose.twin.phantom import Pose
        return Pose(self.rotation_z_deg, tuple(self.translation_mm)).to_phantom(points)


def twin_placement(ground_truth: dict[str, Any], series_uid: str) -> TwinPlacement | None:
    """The placement of ``series_uid`` in a twin's ground_truth.json, None if it is not listed."""
    for entry in ground_truth.get("series", []):
        if entry.get("series_uid") == series_uid:
            pose = entry["pose"]
            return TwinPlacement(float(pose["rotation_z_deg"]), tuple(float(v) for v in pose["translation_mm"]))
    return None


def twin_enhancement_masks(volume: Volume, placement: TwinPlacement) -> tuple[np.ndarray, np.ndarray]:
    """Liver parenchyma and vessel-tube masks (bool, the array's shape) of an axial twin series, from
    the twin's phantom model at the series' placement (voxel centres)."""
    from ctdose.twin.phantom import TISSUE_LABEL, _Points, _tissue_labels

    if not np.allclose(volume.direction, np.eye(3)):
        raise ValueError("twin masks need an axial series with identity direction (the twin's own)")
    nz, ny, nx = volume.array.shape
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    plane = volume.index_to_physical(np.stack([ii, jj, np.zeros_like(ii)], axis=-1).astype(float))
    plane[..., 2] = placement.translation_mm[2]
    q = placement.to_phantom(plane)  # rotation about z only: in-plane phantom x, y are the same on every slice
    z = volume.origin[2] + np.arange(nz) * volume.spacing[2] - placement.translation_mm[2]
    liver = _tissue_labels(_Points(q[..., 0], q[..., 1], z)) == TISSUE_LABEL["liver"]
    tube = np.zeros((ny, nx), dtype=bool)
    for (cx, cy), radius in VESSEL_TUBES_MM:
        tube |= (q[..., 0] - cx) ** 2 + (q[..., 1] - cy) ** 2 <= radius ** 2
    return liver, liver & tube[None]


def band_enhancement_masks(volume: Volume, band_hu: tuple[float, float] = LIVER_BAND_HU,
                           tube_radius_mm: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Liver and vessel-tube masks of any axial series: the largest component of the threshold band on
    the image smoothed at 3 mm, and one tube along the slice axis through its centroid."""
    sigma = 3.0 / np.asarray(volume.spacing, dtype=float)[::-1]
    smooth = ndimage.gaussian_filter(volume.array, sigma)
    band = (smooth >= band_hu[0]) & (smooth <= band_hu[1])
    labels, n = ndimage.label(band)
    if n == 0:
        raise ValueError(f"no voxel in the liver band {band_hu} HU; give masks explicitly")
    sizes = ndimage.sum_labels(band, labels, index=np.arange(1, n + 1))
    liver = labels == 1 + int(np.argmax(sizes))
    _, cy, cx = ndimage.center_of_mass(liver)
    ny, nx = liver.shape[1:]
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    sx, sy = float(volume.spacing[0]), float(volume.spacing[1])
    tube = ((xx - cx) * sx) ** 2 + ((yy - cy) * sy) ** 2 <= tube_radius_mm ** 2
    return liver, liver & tube[None]


def contrast_variant(volume: Volume, liver: np.ndarray, vessels: np.ndarray,
                     liver_hu: float = LIVER_ENHANCEMENT_HU, vessel_hu: float = VESSEL_ENHANCEMENT_HU,
                     blur_mm: float = ENHANCEMENT_BLUR_MM) -> Volume:
    """``volume`` with + ``liver_hu`` in ``liver`` and + ``vessel_hu`` (not added to the liver's) in
    ``vessels``, the enhancement map blurred by a Gaussian of ``blur_mm`` (sigma, mm). Masks: bool,
    the array's shape. Noise and texture are the source's."""
    if liver.shape != volume.array.shape or vessels.shape != volume.array.shape:
        raise ValueError(f"masks {liver.shape} / {vessels.shape} do not match the volume {volume.array.shape}")
    enhancement = np.where(vessels, vessel_hu, np.where(liver, liver_hu, 0.0)).astype(np.float32)
    if blur_mm > 0:
        enhancement = ndimage.gaussian_filter(enhancement, blur_mm / np.asarray(volume.spacing, float)[::-1])
    return Volume(volume.array + enhancement, volume.origin, volume.spacing, volume.direction)


def render_phantom(seed: int, *, pixel_mm: float = 350.0 / 96, n_pix: int = 96, increment_mm: float = 4.0,
                   z_range_mm: tuple[float, float] = (-200.0, 200.0), noise_hu: float = 20.0,
                   texture_seed: int = 0) -> Volume:
    """The twin's phantom (noise-free model, ``ctdose.twin.phantom.build_phantom``) on a coarse axial
    grid over ``z_range_mm``, placed with a seeded small pose, plus seeded white noise of ``noise_hu``
    (HU sd). No scan simulation: a stand-in with the twin's anatomy along its whole length."""
    from ctdose.twin.phantom import Pose, ScanGrid, build_phantom

    rng = np.random.default_rng([seed, 17])
    n_slices = int(round((z_range_mm[1] - z_range_mm[0]) / increment_mm)) + 1
    grid = ScanGrid(n_pix=n_pix, pixel_mm=pixel_mm, n_slices=n_slices, increment_mm=increment_mm,
                    thickness_mm=increment_mm, z_center_mm=0.5 * (z_range_mm[0] + z_range_mm[1]))
    pose = Pose(float(rng.uniform(-3, 3)), (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5)), 0.0))
    image = build_phantom(grid, texture_seed=texture_seed, pose=pose, z_subsamples=2)
    hu = image.hu + rng.normal(0.0, noise_hu, image.hu.shape).astype(np.float32)
    return Volume(hu, grid.origin, grid.spacing)


def crop_z(volume: Volume, z_lo_mm: float, z_hi_mm: float) -> Volume:
    """The slices of an axial ``volume`` whose centres lie in [z_lo_mm, z_hi_mm] (ValueError if none)."""
    if not np.allclose(volume.direction, np.eye(3)):
        raise ValueError("crop_z needs an axial volume with identity direction")
    z = volume.origin[2] + np.arange(volume.array.shape[0]) * volume.spacing[2]
    keep = np.flatnonzero((z >= z_lo_mm - 1e-6) & (z <= z_hi_mm + 1e-6))
    if keep.size < 2:
        raise ValueError(f"fewer than 2 slices between z = {z_lo_mm:g} and {z_hi_mm:g} mm")
    origin = volume.origin.copy()
    origin[2] = z[keep[0]]
    return Volume(volume.array[keep[0]:keep[-1] + 1], origin, volume.spacing, volume.direction)


def region_crops(volume: Volume, length_mm: float, rng: np.random.Generator) -> dict[str, Volume]:
    """One crop of ``length_mm`` per body region (BODY_REGIONS_MM), placed at random inside it."""
    crops = {}
    for region, (lo, hi) in BODY_REGIONS_MM.items():
        span = hi - lo - length_mm
        if span < 0:
            raise ValueError(f"region {region} ({lo:g}..{hi:g} mm) is shorter than {length_mm:g} mm")
        start = lo + float(rng.uniform(0, span))
        crops[region] = crop_z(volume, start, start + length_mm)
    return crops


def list_row(path: Path, label: str, group: str, task: str, source: str) -> dict[str, str]:
    """One row of a labelled list."""
    return {"path": str(path), "label": label, "group": group, "task": task, "origin": ORIGIN, "source": source}


# --------------------------------------------------------------------------- making the labelled lists

def choose_sources(ground_truth: dict[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` twin series, one per acquisition (scanner x repetition), picked with ``seed``: spread
    over scanners first (round-robin over the shuffled scanners), reconstruction and dose at random."""
    rng = np.random.default_rng(seed)
    by_acquisition: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in ground_truth.get("series", []):
        by_acquisition.setdefault((entry["scanner"], int(entry["rep"])), []).append(entry)
    if not by_acquisition:
        raise ValueError("the twin's ground_truth.json lists no series")
    scanners = sorted({s for s, _ in by_acquisition})
    scanners = [scanners[i] for i in rng.permutation(len(scanners))]
    reps = {s: sorted(r for t, r in by_acquisition if t == s) for s in scanners}
    chosen, round_ = [], 0
    while len(chosen) < n and any(round_ < len(reps[s]) for s in scanners):
        for scanner in scanners:
            if round_ < len(reps[scanner]) and len(chosen) < n:
                entries = sorted(by_acquisition[(scanner, reps[scanner][round_])], key=lambda e: e["name"])
                chosen.append(entries[int(rng.integers(len(entries)))])
        round_ += 1
    return chosen


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished series folder into place (a killed run leaves only a hidden partial folder)."""
    if final.exists():
        import shutil
        shutil.rmtree(final)
    tmp.rename(final)


def _partial(final: Path) -> Path:
    tmp = final.parent / f".partial-{final.name}"
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    return tmp


def axis_job(item: tuple[str, str, str, str]) -> list[dict[str, str]]:
    """Coronal and sagittal reformats of one axial series: (source folder, out root, group, label) ->
    list rows (axial = the source itself). Finished reformats are kept on a re-run."""
    from ctdose.dicom_io import dicom_files, read_ct_series

    source, out_root, group, label = item
    source_dir = Path(source)
    rows = [list_row(source_dir, "axial", group, "axis", str(source_dir))]
    volume = None
    for axis in ("coronal", "sagittal"):
        final = Path(out_root) / "axis" / f"{source_dir.name}_{AXIS_KEYWORD[axis]}"
        if not final.is_dir():
            if volume is None:
                volume = read_ct_series(source_dir)
            header = pydicom.dcmread(dicom_files(source_dir)[0], stop_before_pixels=True)
            tmp = _partial(final)
            write_reformat(volume, header, tmp, axis, label)
            _publish(tmp, final)
        rows.append(list_row(final, axis, group, "axis", str(source_dir)))
    return rows


def contrast_job(item: tuple[str, str, str, str, str]) -> list[dict[str, str]]:
    """A contrast variant of one twin series: (source folder, out root, group, ground_truth.json path,
    label) -> list rows (native = the source itself)."""
    import json

    from ctdose.dicom_io import dicom_files, read_ct_series

    source, out_root, group, truth_path, label = item
    source_dir = Path(source)
    final = Path(out_root) / "contrast" / f"{source_dir.name}_CE"
    rows = [list_row(source_dir, "native", group, "contrast", str(source_dir))]
    if not final.is_dir():
        volume = read_ct_series(source_dir)
        header = pydicom.dcmread(dicom_files(source_dir)[0], stop_before_pixels=True)
        placement = twin_placement(json.loads(Path(truth_path).read_text()), str(header.SeriesInstanceUID)) \
            if truth_path else None
        if placement is not None:
            liver, vessels = twin_enhancement_masks(volume, placement)
            how = "liver and vessel tubes from the twin's phantom model"
        else:
            liver, vessels = band_enhancement_masks(volume)
            how = f"liver from the threshold band {LIVER_BAND_HU} HU, one vessel tube"
        enhanced = contrast_variant(volume, liver, vessels)
        tmp = _partial(final)
        write_derived_series(enhanced, header, tmp, description=f"CE {label}".strip(),
                             derivation=f"simulated contrast: +{LIVER_ENHANCEMENT_HU:g} HU liver, "
                                        f"+{VESSEL_ENHANCEMENT_HU:g} HU vessels ({how})", seed="contrast")
        _publish(tmp, final)
    rows.append(list_row(final, "contrast", group, "contrast", str(source_dir)))
    return rows


def body_part_job(item: tuple[int, str, float]) -> list[dict[str, str]]:
    """Body-region crops of one phantom render: (render seed, out root, crop length mm) -> list rows."""
    from ctdose.dicom_io import CTSeriesMeta

    seed, out_root, length_mm = item
    group = f"render{seed:03d}"
    finals = {region: Path(out_root) / "body_part" / f"{group}_{region}" for region in BODY_REGIONS_MM}
    if not all(f.is_dir() for f in finals.values()):
        crops = region_crops(render_phantom(seed), length_mm, np.random.default_rng([seed, 3]))
        for region, crop in crops.items():
            uid = generate_uid(entropy_srcs=["qc-twin-body", str(seed), region])
            meta = CTSeriesMeta(manufacturer="ctdose twin", model="phantom render", kvp=120.0, ctdivol=None,
                                series_description=f"twin phantom {region.replace('_', ' ')} {group}",
                                series_uid=uid, study_uid=generate_uid(entropy_srcs=["qc-twin-body", str(seed)]),
                                body_part={"thorax": "CHEST", "liver": "ABDOMEN", "test_pattern": "PHANTOM"}[region],
                                institution="ctdose digital twin (phantom render, no scan simulation)")
            tmp = _partial(finals[region])
            write_ct_series(crop, tmp, meta)
            _publish(tmp, finals[region])
    return [list_row(final, region, group, "body_part", f"render seed {seed}") for region, final in finals.items()]
