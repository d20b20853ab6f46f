"""Report section of the harmonization bench (analyze/harmonize.py): the Table 7 layout before / after,
ICC views, silhouettes and UMAPs. Absent outputs give a "Missing ..." note, never an error."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctdose.csv_io import read_csv
from ctdose.features import EXTRACTORS
from ctdose.layout import ResultsLayout
from ctdose.report import TABLE7_COLUMNS, Section


def _cell(mean: float, sd: float, fmt: str = "{:.2f}") -> str:
    if not np.isfinite(mean):
        return ""
    return f"{fmt.format(mean)} ± {fmt.format(sd)}" if np.isfinite(sd) else fmt.format(mean)


def table7_layout(t7: pd.DataFrame) -> pd.DataFrame:
    """The bench's numeric Table 7 rows as the dataset paper's layout (text cells), one row per
    extractor x method, extractors in report order, methods in bench order."""
    rows = []
    for _, r in t7.iterrows():
        rows.append({TABLE7_COLUMNS[0]: r["extractor"], "Method": r["method"],
                     TABLE7_COLUMNS[1]: "" if not np.isfinite(r["mean_icc"]) else f"{r['mean_icc']:.3f}",
                     TABLE7_COLUMNS[2]: _cell(r["loso_1_mean"], r["loso_1_sd"]),
                     TABLE7_COLUMNS[3]: _cell(r["loso_last_mean"], r["loso_last_sd"]),
                     TABLE7_COLUMNS[4]: _cell(r["kfold_mean"], r["kfold_sd"]),
                     "chance": f"{r['chance']:.2f}"})
    out = pd.DataFrame(rows)
    order = {e: i for i, e in enumerate(EXTRACTORS)}
    methods = {m: i for i, m in enumerate(dict.fromkeys(t7["method"]))}
    key = out[TABLE7_COLUMNS[0]].map(lambda e: order.get(e, len(order))) * 100 + out["Method"].map(methods)
    return out.loc[key.sort_values(kind="stable").index].reset_index(drop=True)


def harmonize_section(layout: ResultsLayout) -> Section:
    """Harmonization bench: Table 7 layout per extractor x method, ICC views, silhouettes, UMAP figures."""
    sec = Section("Harmonization bench")
    record = sec.checked(layout.harmonize_table7, layout, "harmonize", "harmonization bench")
    if record is None:
        return sec
    try:
        t7 = read_csv(layout.harmonize_table7, dtype={"extractor": str, "method": str})
    except ValueError:
        t7 = pd.DataFrame()
    if t7.empty:
        sec.notes.append(f"{layout.harmonize_table7.name} holds no rows.")
        return sec
    s = record.get("settings", {})
    h = s.get("harmonize", {})
    last = int(t7["loso_last_n_train"].max())
    scanners = int(t7["n_test_scanners"].max())
    about = (f"Batch = {h.get('batch', '?')}; classifier {s.get('classifier', '?')} (ROI class); LOSO: mean ± sd over "
             f"{scanners} test scanners, trained on N = 1 and N = {last} scanners; 10-fold: mean ± sd over "
             f"{int(t7['n_test_folds'].max())} test folds, trained on n = {int(t7['kfold_n_train'].max())} folds. "
             "Harmonizers fitted on each split's training rows only; a held-out scanner's batch terms "
             + ("come from its own unlabelled rows (location/scale onto the harmonized training rows)."
                if h.get("unseen") == "estimate" else "are left out (unseen = skip).")
             + " Mean ICC: ICC(3,1) across scanners at 10 mGy, clipped at 0, averaged over features, of the table "
             "harmonized on all rows.")
    if last + 1 < 13:
        about += f" This data has {last + 1} scanners, not the paper's 13: 'LOSO 12 scanners' is N = {last}."
    sec.tables.append(("Table 7 layout (dataset paper) before / after harmonization. " + about, table7_layout(t7)))
    described = dict(zip(t7["method"], t7["description"]))
    sec.notes.append("Methods: " + "; ".join(f"{m} = {d}" for m, d in described.items()) + ".")
    if record.get("schemes"):
        sec.notes.append("Schemes applied to test rows: " + " | ".join(record["schemes"]) + ".")
    icc = sec.table(record, layout.harmonize_icc)
    if icc is not None:
        wide = icc.assign(cell=[f"{m:.3f} ({s:.2f})" for m, s in zip(icc["mean"], icc["share_gt_0.75"])]).pivot_table(
            index=["extractor", "method"], columns="view", values="cell", aggfunc="first", sort=False).rename_axis(None, axis=1).reset_index()
        sec.tables.append(("ICC(3,1) per view: mean over feature x group values (share > 0.75). dose = raters are "
                           "doses within each scanner (a per-scanner affine map, e.g. batch = scanner, cannot change "
                           "it); scanner = raters are scanners at each dose.", wide))
    sil = sec.table(record, layout.harmonize_silhouette)
    if sil is not None:
        wide = sil.pivot_table(index=["extractor", "method"], columns="label", values="silhouette",
                               sort=False).round(3).rename_axis(None, axis=1).reset_index()
        sec.tables.append(("Silhouette (euclidean, up to 2000 sampled rows of every dose and reconstruction) of the z-scored features by manufacturer (harmonization should lower it) and "
                           "by ROI class (it should not lower it).", wide))
        sec.figure(record, "Silhouettes per extractor x method.", layout.harmonize_silhouette_figure)
    for name, caption in record.get("umap_captions", {}).items():
        if not caption.startswith("skipped"):
            sec.figure(record, f"UMAP before / after: {caption}", layout.harmonize_umap_figure(name))
    return sec
