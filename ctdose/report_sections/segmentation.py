"""Report section of the segmentation dose-robustness step (segmentation/dose_robustness.py).

``segmentation_section(layout)`` follows ``ctdose.report``'s sections: every table and figure it shows
is checked against the step's sidecar; absent outputs give a "Missing" note, never an error.
"""

from __future__ import annotations

from ctdose.layout import ResultsLayout
from ctdose.report import Section, _read_table
from ctdose.segmentation.interface import SIMULATED_CONTRAST


def _labelled(names: list[str]) -> str:
    """Segmenter names as the report shows them (a twin-trained model says so in its name)."""
    return ", ".join(names) if names else "?"


def segmentation_section(layout: ResultsLayout) -> Section:
    """Tsanda et al. 2024 equivalents: Table 2 layout, Fig. 7 (Dice / HD95 vs dose), Fig. 5 (Dice vs r_eff),
    label failure shares, an overlay example and the dose ladder's validation on the twin."""
    sec = Section("Segmentation dose robustness (Tsanda et al. 2024 layout)")
    record = sec.checked(layout.segmentation_rows, layout, "segmentation", "segmentation robustness rows")
    rows = None if record is None else _read_table(sec, layout.segmentation_rows)
    if record is None or rows is None:
        return sec
    settings = record.get("settings", {})
    per_kind = settings.get("segmenters", {})
    first = next(iter(per_kind.values()), {})
    fractions = first.get("fractions", sorted(rows["dose_fraction"].unique()))
    data = "the digital twin (simulated; its ground truth known)" if record.get("twin") else "real data"
    sec.notes.append(
        f"Data: {data}; {len(record.get('series', []))} input series (per scanner x repetition, the "
        f"{rows['recon'].iloc[0]} series at its highest dose). "
        f"Segmenters: {_labelled(record.get('segmenter_names', []))}"
        f" (a 'twin-trained' model was trained on a separately seeded twin only and has never seen a real scan). "
        f"Dose ladder {', '.join(f'{100 * f:.0f}' for f in fractions)} % of the acquired dose by "
        f"{', '.join(sorted(rows['ladder_method'].unique()))} (twin-counts: binomial thinning of the twin's own "
        f"photon counts, Zabic et al. 2013; reprojection: projection-domain noise insertion). Denoising options: "
        f"{', '.join(first.get('denoisers', []))}. Robustness = each prediction against the full-dose prediction "
        f"(reference denoiser: {first.get('reference_denoiser', '?')}); Dice and HD95 (95th percentile of the two "
        f"directed surface distances, the larger, MONAI) per label; both empty: Dice 1, HD95 0; one empty: "
        f"Dice 0, HD95 not counted. Last invocation {record.get('wall_s', '?')} s; per-series work "
        f"{record.get('series_s', '?')} s summed over series (when computed; a re-run skips finished series).")
    t2 = sec.table(record, layout.segmentation_table2)
    if t2 is not None:
        wide = t2.pivot(index="segmenter", columns="denoiser", values="cell")
        wide = wide[list(t2["denoiser"].drop_duplicates())].reset_index()
        n = int(t2["n_scans"].max())
        sec.tables.append((f"Table 2 layout: Dice / HD95 at {100 * float(t2['dose_fraction'].iloc[0]):.0f} % dose "
                           f"against the full-dose prediction, median ± MAD over {n} scan(s) of the per-scan mean "
                           f"over labels (rows: models, columns: denoising)", wide))
    by_phase = sec.table(record, layout.segmentation_table2_contrast)
    if by_phase is not None:
        wide = by_phase.pivot_table(index=["segmenter", "contrast"], columns="denoiser", values="cell",
                                    aggfunc="first", sort=False)
        wide = wide[list(by_phase["denoiser"].drop_duplicates())].reset_index()
        n = by_phase.groupby(["segmenter", "contrast"])["n_scans"].max()
        wide.insert(2, "n_scans", [int(n[key]) for key in zip(wide["segmenter"], wide["contrast"])])
        simulated = SIMULATED_CONTRAST in set(by_phase["contrast"].astype(str))
        sec.tables.append((f"Table 2 by contrast phase: Dice / HD95 at "
                           f"{100 * float(by_phase['dose_fraction'].iloc[0]):.0f} % dose against the full-dose "
                           f"prediction of the same phase, median ± MAD over scans"
                           + (f" ('{SIMULATED_CONTRAST}': the same acquisitions with +60 HU liver and +180 HU "
                              "vessel tubes added, ctdose.twin_qc, so both phases carry the same noise)"
                              if simulated else ""), wide))
    fails = sec.table(record, layout.segmentation_failures)
    if fails is not None:
        sel = fails[(fails["reference"] == "full_dose") & (fails["dose_fraction"] == fails["dose_fraction"].min())]
        if len(sel):
            wide = sel.pivot_table(index=["segmenter", "label_name"], columns="denoiser", values="share_failed",
                                   sort=False)
            wide = wide[[d for d in first.get("denoisers", []) if d in wide.columns] or list(wide.columns)]
            wide = wide.reset_index()
            sec.tables.append((f"Share of scans where a label fails (Dice < {float(sel['fail_dice'].iloc[0]):g} "
                               f"against full dose) at {100 * float(sel['dose_fraction'].iloc[0]):.0f} % dose", wide))
    gt = rows[(rows["reference"] == "ground_truth") & (rows["dose_fraction"] == rows["dose_fraction"].max())
              & (rows["denoiser"] == "none")]
    if "contrast" in gt.columns:  # the series as acquired (not the simulated contrast copies)
        gt = gt[gt["contrast"].astype(str) != SIMULATED_CONTRAST]
    if len(gt):
        present = gt[gt["ref_voxels"] > 0]
        acc = present.groupby(["segmenter", "label_name"], sort=False)["dice"].median().unstack("label_name")
        sec.tables.append(("Full-dose accuracy against the twin's ground truth: median Dice per label over scans "
                           "(undenoised input)", acc.reset_index()))
    sec.figure(record, "Fig. 7 equivalent: Dice and HD95 against the full-dose prediction vs dose, per label, "
               "median ± MAD over scans", layout.segmentation_figure("fig7_dice_vs_dose"))
    sec.figure(record, "Dice and HD95 against the twin's ground truth vs dose, per label",
               layout.segmentation_figure("fig7_vs_ground_truth"))
    sec.figure(record, "Fig. 5 equivalent: Dice against full dose by the label's effective radius "
               "r_eff = (3V/4π)^(1/3) in logarithmic bins, all reduced doses pooled (dotted: 19 mm)",
               layout.segmentation_figure("fig5_dice_vs_radius"))
    sec.figure(record, "Example: full vs lowest dose, image and prediction, and the pixels whose label changed",
               layout.segmentation_figure("overlay"))
    val = sec.table(record, layout.segmentation_ladder_validation)
    if val is not None:
        by_dose = val.groupby("dose_mgy").agg(fraction=("fraction", "first"),
                                              mean_rel_error=("rel_error", "mean"),
                                              mean_abs_rel_error=("rel_error", lambda e: e.abs().mean()),
                                              n=("rel_error", "size")).reset_index()
        sec.tables.append((f"Dose ladder validation: ROI std of the thinned {val['reference_mgy'].iloc[0]:g} mGy "
                           f"acquisition vs the twin's independent acquisition at that dose (relative error, "
                           f"normal-liver ROIs, {val['scanner'].nunique()} scanner(s)); overall mean |error| "
                           f"{100 * val['rel_error'].abs().mean():.1f} %", by_dose))
    return sec


__all__ = ["segmentation_section"]
