"""Generate the twin: calibrate each scanner, simulate every scan, write DICOM CT + SEG + ground truth.

One *scan* = one placement (pose) of the phantom on one scanner (one repetition): the phantom is
repositioned between repetitions and not moved between the doses of one repetition. Every dose of a
scan is its own acquisition with its own photon counts (``imaging``), reconstructed with FBP and, from
the same counts, IR (and DL where the collection has it, at the doses it has it). Each series is
written into a hidden temporary folder beside ``out`` and renamed when complete, so a killed run
resumes where it stopped; a finished scan also leaves ``.jobs/<scanner>_rep<r>.json`` with its
ground truth.

Determinism: all randomness comes from ``numpy`` generators seeded by (seed, scanner, repetition);
UIDs are derived from (seed, texture_seed, scanner, repetition, dose, recon) and dates are fixed,
so the same settings give byte-identical files.

Output layout (``out/``): ``<series name>/CT0001.dcm ...`` plus ``<series name>/SEG.dcm``, with
series names in the TCIA scheme (``naming.format_series_name``); ``ground_truth.json``;
``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from ctdose.atomic import write_json
from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.naming import RECONS, ROI_NAMES, format_series_name
from ctdose.parallel import parallel_map
from ctdose.provenance import file_sha256, write_sidecar
from ctdose.seg import SegStamp, write_seg
from ctdose.twin import phantom as ph
from ctdose.twin import imaging
from ctdose.twin.presets import Preset
from ctdose.twin.recon import denoise
from ctdose.twin.scanners import MU_WATER_PER_MM, SCANNERS, ScannerProfile, choices_path, get_scanner
from ctdose.volume import Volume

#: Photons per ray used for the calibration run (high: the log transform is then nearly linear).
CALIBRATION_PHOTONS = 2.0e5
#: Repositioning between repetitions: rotation about z (deg) and translation x, y, z (mm), uniform +-.
POSE_ROTATION_DEG = 1.5
POSE_TRANSLATION_MM = (3.0, 3.0, 2.0)
#: Version of the twin's simulation: bumped when a change alters the series it writes (a folder made
#: by another version is refused, not mixed).
TWIN_MODEL_VERSION = 4
#: Fixed date of the first scan (series date/times are derived from it).
BASE_DATETIME = _dt.datetime(2024, 3, 4, 8, 0, 0)


def scan_grid(preset: Preset, profile: ScannerProfile) -> ph.ScanGrid:
    """The reconstruction grid of a scanner in a preset (slices cover ``z_extent_mm``)."""
    increment = preset.increment_mm or profile.increment_mm
    region = None
    if preset.region_px is not None:
        c, half = preset.n_pix // 2, preset.region_px // 2
        cx, cy = (int(round(v / preset.pixel_mm)) for v in preset.region_center_mm)
        region = (c + cy - half, c + cx - half, preset.region_px, preset.region_px)
        if min(region[:2]) < 0 or max(region[:2]) + preset.region_px > preset.n_pix:
            raise ValueError(f"region of {preset.region_px} pixels at {preset.region_center_mm} mm leaves "
                             f"the {preset.n_pix}-pixel field of view")
    return ph.ScanGrid(preset.n_pix, preset.pixel_mm, int(np.floor(preset.z_extent_mm / increment + 1e-9)) + 1,
                       increment, preset.slice_mm or profile.slice_mm, region, preset.z_center_mm)


def scan_pose(seed: int, scanner: str, rep: int) -> ph.Pose:
    """The placement of repetition ``rep`` on ``scanner`` (random, from the seed)."""
    rng = np.random.default_rng([seed, list(SCANNERS).index(scanner), rep, 1])
    rot = float(rng.uniform(-POSE_ROTATION_DEG, POSE_ROTATION_DEG))
    trans = tuple(float(rng.uniform(-t, t)) for t in POSE_TRANSLATION_MM)
    return ph.Pose(round(rot, 4), tuple(round(t, 4) for t in trans))


@functools.lru_cache(maxsize=64)
def calibrate(profile: ScannerProfile, grid: ph.ScanGrid) -> dict[str, float]:
    """Photons per ray per mGy (for a whole slice) giving ``profile.noise_10mgy_hu`` in normal liver at 10 mGy.

    Reconstructs the noise of a few slices through the ROIs' plane at ``CALIBRATION_PHOTONS`` (Poisson
    only) and measures its std inside the normal-liver ROIs; FBP noise variance is proportional to
    1 / photons, so one run fixes the count.
    """
    z = ph.ROI_CENTERS_MM["normal1"][2]
    small = dataclasses.replace(grid, n_slices=3, z_center_mm=z)
    slabs, _ = imaging.slab_positions(small)
    mu_w = MU_WATER_PER_MM[profile.kvp]
    n_angles = imaging.n_angles_for(grid)
    body = imaging.body_line_integrals(small, ph.Pose(), slabs, mu_w, n_angles)
    rng = np.random.default_rng([12345, grid.n_pix])
    quiet = dataclasses.replace(profile, electronic_noise_counts=0.0)
    noise = imaging.acquisition_noise(body, small, quiet, mu_w, CALIBRATION_PHOTONS, rng)
    normal = np.isin(ph.roi_labels(small), [ROI_NAMES.index("normal1") + 1, ROI_NAMES.index("normal2") + 1])
    sigma = float(noise[normal].std())
    photons_10 = CALIBRATION_PHOTONS * (sigma / profile.noise_10mgy_hu) ** 2
    return {"photons_per_ray_per_mgy": photons_10 / 10.0, "calibration_noise_hu": sigma,
            "calibration_photons": CALIBRATION_PHOTONS, "calibration_voxels": int(normal.sum())}


def cached_calibration(folder: Path, profile: ScannerProfile, grid: ph.ScanGrid) -> dict[str, float]:
    """``calibrate(profile, grid)``, kept in ``folder/calibration_<code>.json`` for the other scans of
    the scanner (the repetitions run on any worker process; the calibration depends only on the
    scanner's profile and grid, which the file records and must match, else it is computed again)."""
    key = json.loads(json.dumps({"profile": asdict(profile), "grid": asdict(grid)}))
    path = folder / f"calibration_{profile.code}.json"
    try:
        found = json.loads(path.read_text())
        if found.get("key") == key:
            return found["calibration"]
    except (OSError, ValueError, AttributeError, KeyError):  # absent, damaged or of other settings
        pass
    cal = calibrate(profile, grid)
    write_json({"key": key, "calibration": cal}, path)
    return cal


def expected_noise_hu(profile: ScannerProfile, dose_mgy: float) -> float:
    """Calibrated FBP noise std (HU) in normal liver at a dose without electronic noise: noise_10mgy * sqrt(10 / dose)."""
    return profile.noise_10mgy_hu * float(np.sqrt(10.0 / dose_mgy))


def reconstruct(fbp: np.ndarray, recon: str, profile: ScannerProfile, dose_mgy: float,
                detail: np.ndarray | None) -> np.ndarray:
    """Reconstruction ``recon`` of one acquisition from its FBP image (slices, rows, cols) HU float32.

    FBP is the image itself; IR and DL denoise it (``recon.denoise`` at the dose's expected noise) and add
    ``profile.ir_edge_gain`` times ``detail`` (``imaging.edge_detail`` of the scan's noise-free signal;
    may be None when the gain is 0).
    """
    if recon == "FBP":
        return fbp
    image = denoise(fbp, recon, expected_noise_hu(profile, dose_mgy), profile.ir_strength)
    if profile.ir_edge_gain:
        image += np.float32(profile.ir_edge_gain) * detail
    return image


@dataclass(frozen=True)
class ScanJob:
    """One scan to simulate (picklable, for the worker processes)."""

    out: str
    preset: Preset
    scanner: str
    rep: int
    seed: int
    texture_seed: int

    @property
    def key(self) -> str:
        return f"{self.scanner}_rep{self.rep}"


def _model_token(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9+]+", "_", model).strip("_")


def series_plan(job: ScanJob) -> list[dict[str, Any]]:
    """Names, UIDs, dates and dose tags of every series of a scan (no simulation)."""
    profile = get_scanner(job.scanner)
    grid = scan_grid(job.preset, profile)
    s_index = list(SCANNERS).index(job.scanner)
    doses = sorted(job.preset.doses, reverse=True)
    base = BASE_DATETIME + _dt.timedelta(days=s_index, minutes=20 * job.rep)
    tag = [str(job.seed), str(job.texture_seed), job.scanner, str(job.rep)]
    plan = []
    for d_index, dose in enumerate(sorted(job.preset.doses)):
        if job.rep >= profile.repetitions_at(dose):  # E1 has 9 repetitions at 10 mGy
            continue
        recons = [r for r in profile.recons_at(dose) if r in job.preset.recons]
        acq_time = base + _dt.timedelta(minutes=2 * d_index, seconds=7 * d_index)
        scan_id = 10 + job.rep * len(doses) + d_index
        acq_number = (s_index * 7919 + scan_id * 104729) % 1000000  # stands for the second number
        middle = f"{acq_time:%H%M%S}_{acq_number:06d}_{_model_token(profile.model)}"
        mas = profile.mas_at_10mgy * dose / 10.0
        for r_index, recon in enumerate(recons):
            name = format_series_name(job.scanner, middle, scan_id, dose, recon, grid.n_slices)
            # SeriesDescription (VR LO, at most 64 characters): the name without acquisition numbers
            description = format_series_name(job.scanner, _model_token(profile.model), scan_id, dose,
                                             recon, grid.n_slices)
            if len(description) > 64:
                description = format_series_name(job.scanner, _model_token(profile.model), scan_id, dose,
                                                 recon)
            plan.append({
                "name": name, "description": description[:64], "scanner": job.scanner, "rep": job.rep,
                "scan_id": scan_id,
                "dose_mgy": float(dose), "recon": recon,
                "series_uid": generate_uid(entropy_srcs=[*tag, f"{dose:g}", recon, "ct"]),
                "study_uid": generate_uid(entropy_srcs=tag + ["study"]),
                "frame_of_reference_uid": generate_uid(entropy_srcs=tag + ["frame"]),
                "series_datetime": acq_time + _dt.timedelta(seconds=r_index),
                "series_number": 100 * (d_index + 1) + r_index + 1,
                "exposure_mas": mas, "tube_current_ma": mas / profile.rotation_s,
                "slice_thickness_mm": grid.thickness_mm,
            })
    return plan


def _pose_record(pose: ph.Pose) -> dict[str, Any]:
    return {"rotation_z_deg": pose.rotation_z_deg, "translation_mm": list(pose.translation_mm),
            "phantom_to_scanner_matrix": pose.matrix.round(12).tolist(),
            "convention": "scanner_point = matrix @ phantom_point + translation (LPS mm)"}


def run_scan(job: ScanJob) -> dict[str, Any]:
    """Simulate one scan (every dose an independent acquisition) and write its series; return its ground truth.

    Finished series are skipped; each dose's random stream is seeded by (seed, scanner, rep, dose), so
    a resumed run draws the same noise for the series it still writes.
    """
    out = Path(job.out)
    record_path = out / ".jobs" / f"{job.key}.json"
    plan = series_plan(job)
    if record_path.exists() and all((out / s["name"]).is_dir() for s in plan):
        try:
            return json.loads(record_path.read_text())
        except json.JSONDecodeError:  # a damaged record: the scan is simulated again
            pass
    profile = get_scanner(job.scanner)
    grid = scan_grid(job.preset, profile)
    cal = cached_calibration(out / ".jobs", profile, grid)
    pose = scan_pose(job.seed, job.scanner, job.rep)
    mu_w = MU_WATER_PER_MM[profile.kvp]
    n_angles = imaging.n_angles_for(grid)
    s_index = list(SCANNERS).index(job.scanner)
    volume_geometry = {"origin": grid.origin, "spacing": grid.spacing}
    series_records, signal, body, rois, roi_shading, detail, gradient = [], None, None, None, None, None, None
    seg_stamp: SegStamp | None = None
    for dose in sorted({s["dose_mgy"] for s in plan}):
        todo = [s for s in plan if s["dose_mgy"] == dose]
        photons = cal["photons_per_ray_per_mgy"] * dose
        series_records += [_series_record(s, pose, photons, profile) for s in todo]
        if all((out / s["name"]).is_dir() for s in todo):
            continue
        if signal is None:  # the placement's noise-free image and body projections, once per scan
            phantom = ph.build_phantom(grid, job.texture_seed, pose, job.preset.z_subsamples,
                                       margin=imaging.SIGNAL_MARGIN)
            shading = imaging.shading_image(phantom, profile)
            signal, rois = imaging.signal_image(phantom, profile, shading), phantom.rois
            roi_shading = imaging.roi_shading_hu(shading, rois)
            detail = imaging.edge_detail(signal, grid.pixel_mm) if profile.ir_edge_gain else None
            gradient = imaging.edge_gradient(signal, grid.pixel_mm) if profile.edge_jitter_mm else None
            del phantom, shading
            body = imaging.body_line_integrals(grid, pose, imaging.slab_positions(grid)[0], mu_w, n_angles)
        rng = np.random.default_rng([job.seed, s_index, job.rep, int(round(dose * 1000)), 2])
        fbp = signal + imaging.acquisition_noise(body, grid, profile, mu_w, photons, rng)
        if gradient is not None:  # its own stream, so the noise draws do not depend on the jitter
            jitter_rng = np.random.default_rng([job.seed, s_index, job.rep, int(round(dose * 1000)), 3])
            fbp += imaging.edge_jitter(gradient, imaging.jitter_field(grid, jitter_rng), profile.edge_jitter_mm)
        for s in todo:
            if (out / s["name"]).is_dir():  # finished in an earlier run
                continue
            image = reconstruct(fbp, s["recon"], profile, dose, detail)
            seg_stamp = _write_series(out, s, Volume(image, **volume_geometry), rois, profile, seg_stamp)
    if roi_shading is None:  # every series was already written: the record alone is rebuilt
        phantom = ph.build_phantom(grid, job.texture_seed, pose, 1, margin=imaging.SIGNAL_MARGIN)
        roi_shading = imaging.roi_shading_hu(imaging.shading_image(phantom, profile), phantom.rois)
    record = {"scanner": job.scanner, "rep": job.rep, "pose": _pose_record(pose),
              "calibration": cal, "n_angles": n_angles, "roi_shading_hu": roi_shading, "series": series_records}
    write_json(record, record_path)
    return record


def _series_record(s: dict[str, Any], pose: ph.Pose, photons: float,
                   profile: ScannerProfile) -> dict[str, Any]:
    return {"name": s["name"], "series_uid": s["series_uid"], "scanner": s["scanner"], "rep": s["rep"],
            "dose_mgy": s["dose_mgy"], "recon": s["recon"], "photons_per_ray": photons,
            "expected_fbp_noise_normal_liver_hu": expected_noise_hu(profile, s["dose_mgy"]),
            "pose": _pose_record(pose)}


def _partial_dir(out: Path) -> Path:
    """Where series are assembled before the rename: beside ``out`` (same file system), not inside it,
    so that a killed run never leaves half a series where a DICOM crawler would find it."""
    return out.parent / f".{out.name}.partial"


def _write_series(out: Path, s: dict[str, Any], volume: Volume, rois: np.ndarray, profile: ScannerProfile,
                  seg_stamp: SegStamp | None) -> SegStamp | None:
    """Write one CT series and its SEG into a temporary folder, then rename it into place.

    ``seg_stamp``: the SEG of a series of the same scan written before (the same ROIs on the same
    grid), which stamps this series' SEG (:class:`ctdose.seg.SegStamp`, about 20x faster than building it).
    Returns the stamp for the scan's next series (None when no SEG was written).
    """
    final = out / s["name"]
    tmp = _partial_dir(out) / s["name"]
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = CTSeriesMeta(
        manufacturer=profile.dicom_manufacturer, model=profile.model, kvp=profile.kvp,
        tube_current_ma=s["tube_current_ma"], exposure_mas=s["exposure_mas"], ctdivol=s["dose_mgy"],
        kernel=profile.kernel_for(s["recon"]), slice_thickness=s["slice_thickness_mm"],
        series_description=s["description"],
        series_uid=s["series_uid"], study_uid=s["study_uid"],
        frame_of_reference_uid=s["frame_of_reference_uid"], series_datetime=s["series_datetime"],
        series_number=s["series_number"], station=profile.code,
    )
    files = write_ct_series(volume, tmp, meta)
    if not rois.any():  # a grid away from the liver segment (e.g. the test patterns) has no ROI to segment
        seg_stamp = None
    elif seg_stamp is None:
        write_seg(files, rois, tmp / "SEG.dcm")
    else:
        seg_stamp.write(files, tmp / "SEG.dcm")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
    if seg_stamp is None and rois.any():
        seg_stamp = SegStamp(final / "SEG.dcm", [final / f.name for f in files])
    return seg_stamp


def ground_truth(preset: Preset, seed: int, texture_seed: int,
                 records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ground-truth record of a twin: phantom, scanners, calibration and every series."""
    scanners = {}
    for rec in records:
        profile = get_scanner(rec["scanner"])
        scanners[rec["scanner"]] = {**asdict(profile), **rec["calibration"],
                                    "mu_water_per_mm": MU_WATER_PER_MM[profile.kvp]}
    return {
        "what": "ctdose digital twin of the liver phantom: a physics simulation, not the real phantom",
        "seed": seed, "texture_seed": texture_seed, "preset": asdict(preset),
        "tissues": {k: {"mean_hu": v[0], "texture_std_hu": v[1], "texture_corr_mm": v[2]}
                    for k, v in ph.TISSUES.items()},
        "roi_true_hu": {roi: ph.TISSUES[ph.ROI_TISSUE[roi]][0] for roi in ROI_NAMES},
        "roi_tissue": ph.ROI_TISSUE, "roi_centers_phantom_mm": ph.ROI_CENTERS_MM,
        "roi_radii_mm": ph.ROI_RADII_MM,
        "physics": {"geometry": "2-D parallel beam per noise slab (one increment thick), detector bin = "
                                "pixel, views over 180 deg; targeted reconstruction of the preset's region",
                    "signal": "phantom (after the scanner's CT-number calibration) through the FBP MTF "
                              "W(f / cutoff) sinc(f)^4, plus the scanner's shading next to bone and edges "
                              "(scans[].roi_shading_hu: its mean over each ROI); slice sensitivity: a box "
                              "of the slice thickness",
                    "ir_dl": "denoised FBP of the same counts (Huber smoothing, ir_strength) plus ir_edge_gain "
                             "times the unsharp mask of the signal's part outside the soft-tissue window",
                    "noise": "every (scanner, dose, repetition) an independent acquisition: Poisson counts "
                             "through the whole body, log with bias correction, FBP of the noise",
                    "edge_jitter": "per acquisition, the high-contrast part moved by a smooth random "
                                   "displacement field of rms edge_jitter_mm per in-plane axis (first order); "
                                   "shared by FBP, IR and DL of the acquisition",
                    "log": "p = log(I0 / (n + 1/2))",
                    "electronic_noise": "per scanner (electronic_noise_counts), Gaussian per ray; "
                                        "not included in the noise calibration"},
        "scanners": scanners,
        "scans": [{k: v for k, v in rec.items() if k != "series"} for rec in records],
        "series": [s for rec in records for s in rec["series"]],
    }


def twin_settings(preset: Preset, seed: int, texture_seed: int) -> dict[str, Any]:
    """What fixes the content of every series of a twin folder: the model version, the seeds, the grid
    and the scanner choices file's checksum (not the selection of scanners, doses, recons and repetitions,
    which only adds or leaves out series)."""
    grid = {k: v for k, v in asdict(preset).items() if k not in ("name", "scanners", "doses", "recons", "reps")}
    return {"twin_model_version": TWIN_MODEL_VERSION, "seed": seed, "texture_seed": texture_seed, "grid": grid,
            "scanner_choices_sha256": file_sha256(choices_path())}


def _claim_folder(out: Path, preset: Preset, seed: int, texture_seed: int) -> None:
    """Record the twin settings of ``out`` (``.jobs/settings.json``), or refuse a folder made with others:
    its finished series would otherwise be kept beside series simulated differently."""
    path = out / ".jobs" / "settings.json"
    wanted = json.loads(json.dumps(twin_settings(preset, seed, texture_seed)))
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError:
            found = None
        if found != wanted:
            changed = sorted(k for k in wanted if not isinstance(found, dict) or found.get(k) != wanted[k])
            raise ValueError(f"{out} holds a twin made with other settings ({', '.join(changed)} differ); "
                             f"delete it or choose another output folder")
    elif any(p.is_dir() and not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"{out} holds series but no record of the settings they were made with; "
                         f"delete it or choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(wanted, path)


def _scan_cost(job: ScanJob) -> int:
    """Relative cost of a scan: series written x slices (sorts the scans, longest first)."""
    return len(series_plan(job)) * scan_grid(job.preset, get_scanner(job.scanner)).n_slices


def generate_twin(out: str | Path, preset: Preset, seed: int = 0, texture_seed: int = 0,
                  workers: int = 1) -> dict[str, Any]:
    """Simulate and write a whole twin into ``out`` (resumable); returns the ground-truth record.

    ``preset`` fixes the grid and which scanners / doses / recons / repetitions are simulated (use
    ``Preset.with_overrides`` to change them). ``texture_seed`` fixes the phantom's texture (another
    value gives another "printed" phantom), ``seed`` the placements and photon noise.
    """
    for code in preset.scanners:
        get_scanner(code)
    bad = [r for r in preset.recons if r not in RECONS]
    if bad or not preset.recons:
        raise ValueError(f"bad reconstruction list {list(preset.recons)}; expected some of FBP, IR, DL")
    if not preset.doses or min(preset.doses) <= 0:
        raise ValueError(f"doses must be positive mGy values, got {preset.doses}")
    if preset.reps < 1:
        raise ValueError(f"reps must be >= 1, got {preset.reps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _claim_folder(out, preset, seed, texture_seed)
    jobs = [ScanJob(str(out), preset, code, rep, seed, texture_seed)
            for code in preset.scanners for rep in range(preset.reps)]
    # longest scans first (series x slices), so that no worker is left with a long scan at the end
    order = sorted(range(len(jobs)), key=lambda i: -_scan_cost(jobs[i]))
    done = parallel_map(run_scan, [jobs[i] for i in order], workers=workers, desc="twin scans", unit="scan")
    records: list[dict[str, Any]] = [{}] * len(jobs)
    for i, record in zip(order, done):
        records[i] = record
    truth = ground_truth(preset, seed, texture_seed, records)
    write_json(truth, out / "ground_truth.json")
    write_sidecar(out, {"preset": asdict(preset), "seed": seed,
                                       "texture_seed": texture_seed, "workers": workers})
    shutil.rmtree(_partial_dir(out), ignore_errors=True)
    return truth
