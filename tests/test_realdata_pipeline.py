"""The data steps and an extractor on real DICOM made by others: a lung CT with an RTSTRUCT (IBSI CT
phantom), a user's ROI YAML, no CTDIvol and no TCIA-style name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_script
from ctdose.label_map_io import read_label_map
from ctdose.layout import ResultsLayout
from ctdose.provenance import read_sidecar

IBSI_CT = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "ibsi1_ct_phantom"


@pytest.mark.skipif(not IBSI_CT.is_dir(), reason="../shared/realdata is not present")
def test_rtstruct_series_with_own_rois_runs_through_prepare_centers_and_radiomics(tmp_path):
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois:\n  - name: gtv\n    class: tumour\n    aliases: [GTV-1]\n")
    results = tmp_path / "results"
    layout = ResultsLayout(results)
    run_script("data/prepare.py", ["--data", str(IBSI_CT / "dicom"), "--results", str(results),
                                   "--workers", "1", "--rois", str(rois)])
    catalog = pd.read_csv(layout.catalog, dtype={"series_uid": str})
    assert len(catalog) == 1 and catalog["roi_format"].iloc[0] == "RTSTRUCT"
    assert np.isnan(catalog["dose_mgy"].iloc[0])  # no CTDIvol, no TCIA name: catalogued without a dose
    uid = catalog["series_uid"].iloc[0]
    mask = read_label_map(layout.mask(uid))
    assert read_sidecar(layout.mask(uid))["labels"] == ["gtv"]
    # the IBSI-provided voxel mask of the same GTV, as an independent reference
    import SimpleITK as sitk
    ibsi = sitk.GetArrayFromImage(sitk.ReadImage(str(IBSI_CT / "nifti" / "mask" / "mask.nii.gz"))) > 0
    ours = mask.array > 0
    assert ours.shape == ibsi.shape
    assert 2 * (ours & ibsi).sum() / (ours.sum() + ibsi.sum()) > 0.95

    run_script("data/patch_centers.py", ["--results", str(results), "--per-roi", "2"])
    centers = pd.read_csv(layout.patch_centers)
    assert set(centers["roi"]) == {"gtv"} and set(centers["roi_class"]) == {"tumour"}
    run_script("radiomics/extract_radiomics.py", ["--results", str(results), "--workers", "1",
                                                  "--patch-size", "16", "16", "4"])
    table = pd.read_csv(layout.feature_table("radiomics"))
    assert list(table["roi"]) == ["gtv", "gtv"] and (table["outside_fraction"] == 0).all()
    # patches sit inside the tumour: their mean HU is soft tissue, not lung air
    assert (table["radiomics_original_firstorder_Mean"] > -300).all()
