"""Report section of series QC: imaging axis (geometry vs header vs image) and the series classifiers."""

from __future__ import annotations

import pandas as pd

from ctdose.layout import ResultsLayout
from ctdose.report import Section, _read_table
from ctdose.series_qc import AXIS_TOLERANCE_DEG
from ctdose.stats.series_classifier import SPLITS

#: Classifier tasks shown when their outputs exist.
CLASSIFIER_TASKS = ("axis", "contrast", "body_part")


def _classifier_rows(layout: ResultsLayout, sec: Section) -> list[dict]:
    rows = []
    for task in CLASSIFIER_TASKS:
        path = layout.series_classifier(task) / "accuracy.csv"
        if not path.is_file():
            continue
        record = sec.checked(path, layout, "series_classifier", f"series classifier ({task})")
        if record is None:
            continue
        info = record.get("record", {})
        for split in SPLITS:
            acc = info.get("accuracy", {}).get(split, {})
            rows.append({"task": task, "split": split, "series": acc.get("n"),
                         "accuracy": acc.get("accuracy"), "95 % CI (Wilson)":
                         f"{acc.get('ci_low', float('nan')):.2f}-{acc.get('ci_high', float('nan')):.2f}",
                         "trained on": "twin (twin-trained)" if info.get("twin_trained") else "list"})
        sec.figure(record, f"Confusion matrix of the {task} classifier (test series; "
                           f"{'twin-trained' if info.get('twin_trained') else 'trained on the list'})",
                   layout.series_classifier(task) / "confusion")
    return rows


def series_qc_section(layout: ResultsLayout) -> Section:
    """Series QC: axis per geometry vs header claim, image cross-checks, warnings; classifier accuracy."""
    sec = Section("Series QC: is each series what its header says?")
    record = sec.checked(layout.series_qc, layout, "series_qc", "series QC table")
    if record is not None:
        table = _read_table(sec, layout.series_qc)
        if table is not None:
            table = table.fillna({"header_axis": "", "image_axis": "", "qc_warnings": ""})
            counts = (table.assign(header_axis=table["header_axis"].replace("", "(no claim)"))
                      .groupby(["axis", "header_axis"]).size().rename("series").reset_index())
            sec.tables.append((f"Imaging axis from ImageOrientationPatient (normal within {AXIS_TOLERANCE_DEG:g} deg "
                               f"of a patient axis) against the header's claim (SeriesDescription, ImageType)", counts))
            checked = table[table["image_axis"] != ""]
            if not checked.empty:
                agree = (checked.groupby(["axis", "image_axis"]).size().rename("series").reset_index())
                sec.tables.append(("Image-based cross-check (series checked: the patient's long axis is the array "
                                   "axis along which the smoothed image changes least)", agree))
            flagged = table[table["qc_warnings"] != ""]
            tilt = pd.to_numeric(table["gantry_tilt_deg"], errors="coerce")
            sec.notes.append(f"{len(table)} series; {len(flagged)} with QC warnings; gantry tilt "
                             f"{'none' if not (tilt.abs() > 0.05).any() else f'up to {tilt.abs().max():.1f} deg'}.")
            if not flagged.empty:
                sec.tables.append(("Series with QC warnings (first 20)",
                                   flagged[["series_uid", "scanner", "axis", "header_axis", "image_axis",
                                            "qc_warnings"]].head(20)))
    rows = _classifier_rows(layout, sec)
    if rows:
        sec.tables.append(("Series classifiers (MONAI 3-D ResNet; split 70/20/10 by group; accuracy with 95 % "
                           "Wilson interval)", pd.DataFrame(rows)))
    else:
        sec.notes.append("No series classifier run under this results folder (analyze/train_series_classifier.py).")
    return sec
