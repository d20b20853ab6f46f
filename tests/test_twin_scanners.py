"""The twin's scanner profiles are the collection's (the dataset paper's Tables 1 and 2)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ctdose.naming import DOSE_LEVELS_MGY
from ctdose.twin.generate import ScanJob, series_plan
from ctdose.twin.presets import get_preset
from ctdose.twin.scanners import SCANNERS

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ct4h_scanners.csv"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} not present (the shared reference folder sits beside the repository)")
    return pd.read_csv(REFERENCE, dtype=str, keep_default_na=False).set_index("scanner")


def test_profiles_equal_the_published_table(table):
    assert list(SCANNERS) == list(table.index)
    for code, p in SCANNERS.items():
        row = table.loc[code]
        assert (p.center, p.manufacturer, p.model) == (row["center"], row["manufacturer"], row["model"])
        for attr, col in (("kvp", "kvp"), ("mas_at_10mgy", "mas_at_10mgy"), ("pitch", "pitch"),
                          ("rotation_s", "rotation_s"), ("collimation_mm", "collimation_mm"),
                          ("slice_mm", "slice_thickness_mm"), ("increment_mm", "slice_increment_mm")):
            assert getattr(p, attr) == float(row[col]), (code, attr)
        assert p.recons == tuple(row["recons"].split(";"))
        assert p.dl_doses == tuple(float(d) for d in row["dl_doses_mgy"].split(";") if d)
        for dose in DOSE_LEVELS_MGY:
            # series per dose = repetitions x reconstructions at that dose
            assert p.repetitions_at(dose) * len(p.recons_at(dose)) == int(row[f"series_{dose}mgy"]), (code, dose)


def test_dl_only_where_the_collection_has_it(table):
    with_dl = {code for code in table.index if table.loc[code, "dl_doses_mgy"]}
    assert with_dl == {"D1", "E2"}
    preset = get_preset("full")
    total = 0
    for code in SCANNERS:
        plan = [s for rep in range(preset.reps) for s in series_plan(ScanJob("/nonexistent", preset, code, rep, 0, 0))]
        dl = {s["dose_mgy"] for s in plan if s["recon"] == "DL"}
        assert dl == set(SCANNERS[code].dl_doses), code
        total += len(plan)
        assert len(plan) == int(table.loc[code, "series_total"]), code
    assert total == 1378  # the collection's series count
