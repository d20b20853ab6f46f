"""Report section of the other datasets (CT-ORG, OrganMNIST3D): organ classification and organ UMAPs.

:func:`organ_section` follows the other sections: the outputs are checked against their sidecars, a
missing output becomes a "Missing ..." note naming the command, nothing here ever fails the report.
"""

from __future__ import annotations

import pandas as pd

from ctdose.features import EXTRACTORS
from ctdose.layout import ResultsLayout
from ctdose.report import Section, _read_table


def organ_section(layout: ResultsLayout) -> Section:
    """Organ classification accuracy (mean ± sd over folds, chance) per extractor x classifier, and UMAPs."""
    sec = Section("Organ classification on other datasets (CT-ORG, OrganMNIST3D)")
    record = sec.checked(layout.organ_accuracy, layout, "organ_classify", "organ classification")
    if record is None:
        return sec
    summary = _read_table(sec, layout.organ_accuracy)
    if summary is None:
        return sec
    datasets = sorted({d for names in record.get("datasets", {}).values() for d in names})
    over = record.get("settings", {}).get("over", "test folds")
    folds = "/".join(str(n) for n in sorted(summary["n_folds"].unique()))
    sec.notes.append(f"Dataset(s): {', '.join(datasets) or '?'}. Accuracy mean ± sd over {folds} {over}; "
                     "chance = share of the majority class in the test fold. Scaler and constant-feature filter "
                     "fitted on training folds only; MLP 100-60-30 GELU, dropout 0.2, fixed epochs.")
    for name, untrained in record.get("untrained", {}).items():
        if untrained:
            sec.warnings.append(f"{name}: features from UNTRAINED (random) weights.")
    for target, part in summary.groupby("target", sort=False):
        cell = [f"{m:.3f} ± {s:.3f}" if pd.notna(s) else f"{m:.3f}"
                for m, s in zip(part["accuracy_mean"], part["accuracy_sd"])]
        table = (part.assign(accuracy=cell).pivot(index="extractor", columns="classifier", values="accuracy")
                 .reset_index().rename_axis(columns=None))
        chance = part.groupby("extractor", sort=False)["chance"].mean()
        table["chance"] = table["extractor"].map(chance)
        info = part.drop_duplicates("extractor").set_index("extractor")
        table["rows / cases / classes"] = table["extractor"].map(
            lambda e: f"{info.loc[e, 'n_rows']} / {info.loc[e, 'n_cases']} / {info.loc[e, 'n_classes']}")
        order = {e: n for n, e in enumerate(EXTRACTORS)}
        table = table.sort_values("extractor", key=lambda s: s.map(order)).reset_index(drop=True)
        sec.tables.append((f"Organ classification accuracy, target {target}", table))
    for name in EXTRACTORS:
        sec.figure(record, f"UMAP of {name} features on {', '.join(datasets)}, coloured by organ and organ class",
                   layout.organ_umap_figure(name))
    return sec

