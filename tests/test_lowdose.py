"""Low-dose simulation: 3 mGy simulated from the twin's 14 mGy matches the noise of its own 3 mGy."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ctdose.dicom_io import read_ct_series
from ctdose.lowdose import write_low_dose_series
from ctdose.naming import parse_series_name
from ctdose.twin import phantom as ph
from ctdose.twin.generate import generate_twin
from ctdose.twin.presets import get_preset

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _water_noise(folder: Path, pose: dict) -> float:
    """Std (HU) inside the twin's uniform water insert (the inner 60 % of its radius, away from its ends)."""
    volume = read_ct_series(folder)
    nz, ny, nx = volume.array.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    points = volume.index_to_physical(np.stack([i, j, k], axis=-1))
    q = ph.Pose(pose["rotation_z_deg"], tuple(pose["translation_mm"])).to_phantom(points)
    (cx, cy), radius, (z0, z1) = ph.WATER_INSERT
    in_disc = (q[..., 0] - cx) ** 2 + (q[..., 1] - cy) ** 2 <= (0.6 * radius) ** 2
    inside = in_disc & (q[..., 2] > z0 + 6) & (q[..., 2] < z1 - 6)
    return float(volume.array[inside].std())


def test_simulated_3mgy_matches_twin_3mgy(tmp_path):
    # the whole field of view (reprojection needs the whole body) over the test-pattern segment's water insert
    (_, _), _, (z0, z1) = ph.WATER_INSERT
    preset = dataclasses.replace(get_preset("tiny"), scanners=("A1",), recons=("FBP",), region_px=None,
                                 z_center_mm=(z0 + z1) / 2, z_extent_mm=24.0)
    out = tmp_path / "twin"
    truth = generate_twin(out, preset, seed=3, texture_seed=0)
    series = {s["dose_mgy"]: s for s in truth["series"]}
    high, low = out / series[14.0]["name"], out / series[3.0]["name"]
    per_mgy = {code: s["photons_per_ray_per_mgy"] for code, s in truth["scanners"].items()}
    simulated = write_low_dose_series(high, out_dir=tmp_path / "sim", target_mgy=3.0, photons_per_mgy=per_mgy,
                                      seed=11)
    pose = series[14.0]["pose"]
    noise_sim, noise_twin, noise_high = (_water_noise(f, pose) for f in (simulated, low, high))
    assert noise_high < 0.7 * noise_twin  # the test is not vacuous: 14 mGy is much less noisy
    assert abs(noise_sim / noise_twin - 1) < 0.10, (noise_sim, noise_twin)
    # the new series: new UID, scaled dose tags, TCIA name at the new dose, same geometry
    src = pydicom.dcmread(next(high.glob("CT*.dcm")))
    new = pydicom.dcmread(next(simulated.glob("CT*.dcm")))
    assert new.SeriesInstanceUID != src.SeriesInstanceUID
    assert float(new.CTDIvol) == pytest.approx(3.0)
    assert int(new.Exposure) == round(float(src.Exposure) * 3 / 14)
    assert parse_series_name(new.SeriesDescription).dose_mgy == 3.0
    a, b = read_ct_series(high), read_ct_series(simulated)
    assert np.allclose(a.origin, b.origin) and np.allclose(a.spacing, b.spacing)
    # mean HU kept (noise has zero mean)
    assert abs(float(b.array.mean() - a.array.mean())) < 1.0
    _assert_derived_from(simulated, high, fraction=3 / 14, photons_per_ray=per_mgy["A1"] * 14.0, seed=11)
    # same inputs, same bytes
    again = write_low_dose_series(high, out_dir=tmp_path / "again", target_mgy=3.0, photons_per_mgy=per_mgy,
                                  seed=11)
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in simulated.iterdir())
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in simulated.iterdir())


def _assert_derived_from(derived: Path, source: Path, *, fraction: float, photons_per_ray: float,
                         seed: int) -> None:
    """``derived`` is a DERIVED\\SECONDARY series whose description names the fraction, photons per ray
    and seed, and each of whose slices references the source slice at the same position."""
    by_uid = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f, stop_before_pixels=True)
                                                 for f in source.glob("CT*.dcm"))}
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(derived.glob("CT*.dcm"))]
    assert len(slices) == len(by_uid)
    referenced = set()
    for ds in slices:
        # PS3.3 C.7.6.1.1.2: pixels computed from other images (DERIVED) after the examination (SECONDARY)
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        text = ds.DerivationDescription
        written = float(re.search(r"dose fraction ([0-9.]+)", text).group(1))
        assert written == pytest.approx(fraction, rel=1e-3)  # written with 4 significant digits
        photons = float(re.search(r"([0-9.e+]+) photons per ray", text).group(1))
        assert photons == pytest.approx(photons_per_ray, rel=1e-5)  # written with 6 significant digits
        assert re.search(rf"seed {seed}\b", text)
        code = ds.DerivationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("113042", "DCM")  # pixel by pixel addition
        (item,) = ds.SourceImageSequence
        assert item.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
        origin = by_uid[str(item.ReferencedSOPInstanceUID)]  # a slice of the source series...
        assert origin.SOPClassUID == item.ReferencedSOPClassUID
        # ... the one at the same place (positions are written as decimal strings of <= 16 characters)
        np.testing.assert_allclose([float(v) for v in origin.ImagePositionPatient],
                                   [float(v) for v in ds.ImagePositionPatient], atol=1e-6)
        referenced.add(str(item.ReferencedSOPInstanceUID))
    assert len(referenced) == len(slices)


def test_bad_fraction_is_refused(tmp_path):
    preset = get_preset("tiny").with_overrides(scanners=("A1",), recons=("FBP",), doses=(14.0,))
    truth = generate_twin(tmp_path / "twin", preset, seed=3)
    folder = tmp_path / "twin" / truth["series"][0]["name"]
    with pytest.raises(ValueError, match="fraction"):
        write_low_dose_series(folder, fraction=1.5, photons_per_ray=1e4)
    with pytest.raises(ValueError, match="photons"):
        write_low_dose_series(folder, fraction=0.5)
    assert json.loads((tmp_path / "twin" / "ground_truth.json").read_text())["series"]
