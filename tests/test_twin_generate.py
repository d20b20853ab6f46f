"""The twin written to disk (tiny preset): names and tags, geometry, SEG placement, determinism, resume."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from ctdose.dicom_io import read_ct_series
from ctdose.naming import ROI_NAMES, parse_series_name
from ctdose.seg import read_seg_label_map
from ctdose.twin import phantom as ph
from ctdose.twin.generate import generate_twin, scan_grid
from ctdose.twin.presets import get_preset
from ctdose.twin.scanners import get_scanner

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def twin(tiny_twin) -> tuple[Path, dict]:
    """The session's tiny twin (conftest; made by data/make_twin.py with seed 5, texture seed 2)."""
    return tiny_twin


def _series_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_series_names_match_tags(twin):
    out, truth = twin
    preset = get_preset("tiny")
    dirs = _series_dirs(out)
    assert len(dirs) == len(truth["series"]) == len(preset.scanners) * len(preset.doses) * len(preset.recons)
    for folder in dirs:
        name = parse_series_name(folder.name)
        assert name is not None, folder.name
        files = sorted(folder.glob("CT*.dcm"))
        assert name.n_files == len(files)
        ds = pydicom.dcmread(files[0])
        profile = get_scanner(name.scanner)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert (ds.Manufacturer, ds.ManufacturerModelName, ds.ConvolutionKernel) == (
            profile.dicom_manufacturer, profile.model, profile.kernel_for(name.recon))
        assert float(ds.CTDIvol) == name.dose_mgy
        assert float(ds.SliceThickness) == (preset.slice_mm or profile.slice_mm)
        # DS values are decimal strings of <= 16 characters; Exposure (IS) is a whole number of mAs
        assert np.allclose([float(v) for v in ds.PixelSpacing], preset.pixel_mm, atol=1e-5)
        assert float(ds.Exposure) == pytest.approx(profile.mas_at_10mgy * name.dose_mgy / 10, abs=0.5)
        described = parse_series_name(ds.SeriesDescription)
        assert (described.scanner, described.dose_mgy, described.recon) == (
            name.scanner, name.dose_mgy, name.recon)


def test_simpleitk_reads_exact_geometry(twin):
    out, truth = twin
    preset = get_preset("tiny")
    for folder in _series_dirs(out)[::3]:
        profile = get_scanner(parse_series_name(folder.name).scanner)
        grid = scan_grid(preset, profile)
        reader = sitk.ImageSeriesReader()
        uid = pydicom.dcmread(next(folder.glob("CT*.dcm"))).SeriesInstanceUID
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
        image = reader.Execute()
        assert image.GetSize() == (grid.box[3], grid.box[2], grid.n_slices)  # the targeted region
        assert np.allclose(image.GetOrigin(), grid.origin, atol=1e-4)  # mm, through DS strings
        assert np.allclose(image.GetSpacing(), grid.spacing, atol=1e-5)
        assert np.allclose(image.GetDirection(), np.eye(3).ravel())
        ours = read_ct_series(folder)
        assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), ours.array)


def test_seg_masks_fall_on_the_right_tissue(twin):
    """SEG read back = the repositioned phantom's ROIs; mean HU in each (eroded) ROI is its tissue's, through
    the scanner's CT-number calibration (offset + scale x HU)."""
    out, truth = twin
    preset = get_preset("tiny")
    by_name = {s["name"]: s for s in truth["series"]}
    checked = 0
    for folder in _series_dirs(out):
        s = by_name[folder.name]
        if s["recon"] != "FBP" or s["dose_mgy"] != max(preset.doses):
            continue
        labels, names = read_seg_label_map(folder / "SEG.dcm", folder)
        assert tuple(names) == ROI_NAMES
        pose = ph.Pose(s["pose"]["rotation_z_deg"], tuple(s["pose"]["translation_mm"]))
        grid = scan_grid(preset, get_scanner(s["scanner"]))
        expected = ph.roi_labels(grid, pose)
        assert np.array_equal(labels, expected)
        image = read_ct_series(folder).array
        for i, roi in enumerate(ROI_NAMES, start=1):
            core = ndimage.binary_erosion(labels == i, iterations=2)
            assert core.sum() > 100
            mean = float(image[core].mean())
            cal = truth["scanners"][s["scanner"]]
            scan = next(x for x in truth["scans"] if (x["scanner"], x["rep"]) == (s["scanner"], s["rep"]))
            true = {r: cal["hu_offset"] + cal["hu_scale"] * v + scan["roi_shading_hu"][r]
                    for r, v in truth["roi_true_hu"].items()}
            closest = min(true, key=lambda r: abs(true[r] - mean))
            assert ph.ROI_TISSUE[closest] == ph.ROI_TISSUE[roi], (roi, mean)
            assert abs(mean - true[roi]) < 8.0, (roi, mean)
        checked += 1
    assert checked == len(preset.scanners)


def test_ground_truth_records_repositioning_and_photons(twin):
    out, truth = twin
    on_disk = json.loads((out / "ground_truth.json").read_text())
    assert on_disk["seed"] == 5 and on_disk["texture_seed"] == 2
    poses = {(s["scanner"], s["rep"]): s["pose"]["translation_mm"] for s in on_disk["series"]}
    assert len({tuple(p) for p in poses.values()}) == len(poses)  # one placement per scan
    for s in on_disk["series"]:
        per_mgy = on_disk["scanners"][s["scanner"]]["photons_per_ray_per_mgy"]
        assert s["photons_per_ray"] == pytest.approx(per_mgy * s["dose_mgy"])
        assert abs(s["pose"]["rotation_z_deg"]) <= 2.0


def test_same_seed_gives_identical_files_and_resume_rewrites_only_missing(twin, tmp_path):
    out, _ = twin
    preset = get_preset("tiny").with_overrides(scanners=("A1",))
    again = tmp_path / "again"
    generate_twin(again, preset, seed=5, texture_seed=2)
    a1 = [d for d in _series_dirs(out) if d.name.startswith("A1_")]
    assert [d.name for d in a1] == [d.name for d in _series_dirs(again)]
    for folder in a1:
        _, mismatch, errors = filecmp.cmpfiles(folder, again / folder.name,
                                               [p.name for p in folder.glob("*.dcm")], shallow=False)
        assert not mismatch and not errors, mismatch
        assert (folder / "SEG.dcm").is_file()
    # resume: remove one series; a re-run writes it again, identical, and leaves the others alone
    victim = _series_dirs(again)[0]
    shutil.rmtree(victim)
    kept = _series_dirs(again)[1]
    before = kept.stat().st_mtime_ns
    generate_twin(again, preset, seed=5, texture_seed=2)
    assert victim.is_dir() and kept.stat().st_mtime_ns == before
    _, mismatch, _ = filecmp.cmpfiles(out / victim.name, victim, [p.name for p in victim.glob("CT*.dcm")],
                                      shallow=False)
    assert not mismatch
    # another seed changes the noise but not the phantom's texture
    other = generate_twin(tmp_path / "other", preset.with_overrides(doses=(14.0,), recons=("FBP",)), seed=6,
                          texture_seed=2)
    assert other["series"][0]["series_uid"] not in {s["series_uid"] for s in json.loads(
        (out / "ground_truth.json").read_text())["series"]}


def test_patches_around_every_roi_stay_inside_the_volume(twin):
    """A 64x64x32 patch (0.6836 x 0.6836 x 2 mm) centered anywhere near an ROI's edge lies in the volume."""
    from ctdose.patches import sample_patches

    out, truth = twin
    for s in truth["series"][:: len(get_preset("tiny").recons) * len(get_preset("tiny").doses)]:
        volume = read_ct_series(out / s["name"])
        pose = ph.Pose(s["pose"]["rotation_z_deg"], tuple(s["pose"]["translation_mm"]))
        unit = np.vstack([np.eye(3), -np.eye(3)])
        centers = np.vstack([np.asarray(c) + 0.95 * ph.ROI_RADII_MM[roi] * unit
                             for roi, c in ph.ROI_CENTERS_MM.items()])
        batch = sample_patches(volume, pose.to_scanner(centers), None)
        assert batch.patches.shape == (len(centers), 32, 64, 64)
        assert not batch.n_outside.any()


def test_a_twin_folder_made_with_other_settings_is_refused_not_mixed(twin, tmp_path):
    """Re-running into a twin folder with another seed, or after the scanner choices changed, stops with
    one line naming what differs (finished series would otherwise be kept beside new ones); a folder
    of series without a settings record is refused too. Nothing is written before the check."""
    out, _ = twin
    preset = get_preset("tiny")
    copy = tmp_path / "twin"
    shutil.copytree(out, copy)
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(ValueError, match=r"other settings \(seed differ\)"):
        generate_twin(copy, preset, seed=6, texture_seed=2)
    record = copy / ".jobs" / "settings.json"
    settings = json.loads(record.read_text())
    record.write_text(json.dumps({**settings, "scanner_choices_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="scanner_choices_sha256 differ"):
        generate_twin(copy, preset, seed=5, texture_seed=2)
    record.unlink()
    with pytest.raises(ValueError, match="no record of the settings"):
        generate_twin(copy, preset, seed=5, texture_seed=2)
    assert sorted(p.name for p in copy.iterdir()) == before
