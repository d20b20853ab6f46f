"""The HTML + Markdown report that gathers every analysis output under one results folder.

Every file the report shows is first checked against its producer's sidecar
(:func:`ctdose.provenance.verify` for a step's main output; the checksum its sidecar recorded for a
second table or a figure): a missing output becomes a "Missing: ... Make it with ..." note naming the
command, a stale or damaged one a warning, never a silently shown old figure. Paths come from
:class:`ctdose.layout.ResultsLayout`; the report's own sidecar lists every file it read.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from ctdose.atomic import write_text
from ctdose.csv_io import read_csv
from ctdose.features import EXTRACTORS
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout
from ctdose.plots import figure_files
from ctdose.provenance import file_sha256, read_sidecar, verify, write_sidecar
from ctdose.stats.embedding import PAPER_FIGURES

#: What each paper-layout UMAP figure is (notes of a skipped one).
PAPER_FIGURE_TITLES = {"fig5_roi": "the dataset paper's Fig. 5 (one ROI)",
                       "fig6_rois": "the dataset paper's Fig. 6 (all ROIs)", "per_scanner": "the UMAP per scanner"}


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (index not shown; floats formatted)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _mean_sd(mean: pd.Series, sd: pd.Series, fmt: str) -> pd.Series:
    return [f"{fmt.format(m)} ± {fmt.format(s)}" if np.isfinite(s) else fmt.format(m) for m, s in zip(mean, sd)]


@dataclass
class Section:
    """One report section: title, notes, warnings, tables (caption, DataFrame), figures (caption, PNG)
    and the files it read (``inputs``, recorded in the report's sidecar)."""

    title: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)

    def missing(self, what: str, command: str) -> None:
        self.notes.append(f"Missing: {what}. Make it with `{command}`.")

    def checked(self, path: Path, layout: ResultsLayout, step: str, what: str) -> dict[str, Any] | None:
        """``path``'s sidecar once ``path`` matches it; None after a "Missing" note (no file) or a
        warning (damaged, edited, half-written, or a corrupt sidecar)."""
        if not path.is_file():
            self.missing(what, layout.command(step))
            return None
        try:
            record = verify(path, layout.command(step))
        except ValueError as err:  # StaleInputError or a corrupt sidecar
            self.warnings.append(f"{what} not shown: {err}")
            return None
        self.inputs.append(path)
        return record

    def recorded(self, record: dict[str, Any], path: Path) -> bool:
        """True when ``path`` is one of the outputs ``record`` lists, with the recorded checksum; a
        listed output that changed since gets a warning."""
        expected = record.get("outputs", {}).get(os.path.abspath(path))
        if expected is None or not path.is_file():
            return False
        if file_sha256(path) != expected:
            self.warnings.append(f"{path} changed since its step wrote it; not shown (re-run that step)")
            return False
        self.inputs.append(path)
        return True

    def figure(self, record: dict[str, Any], caption: str, stem: Path) -> None:
        """Show the PNG of figure ``stem`` if ``record`` lists it unchanged."""
        png = figure_files(stem)[0]
        if self.recorded(record, png):
            self.figures.append((caption, png))

    def table(self, record: dict[str, Any], path: Path) -> pd.DataFrame | None:
        """A second table of a step (listed in ``record``), or None when absent, changed or empty."""
        if not self.recorded(record, path) or path.stat().st_size == 0:
            return None
        try:
            df = read_csv(path, dtype={"series_uid": str, "scanner": str})
        except ValueError:  # an empty table written as a bare newline
            return None
        return None if df.empty else df


def _read_table(sec: Section, path: Path) -> pd.DataFrame | None:
    """A step's main table (already checked), or None when it holds no rows."""
    try:
        df = read_csv(path, dtype={"series_uid": str, "scanner": str})
    except ValueError as err:
        sec.warnings.append(str(err))
        return None
    return None if df.empty else df


def _data_root(catalog: pd.DataFrame) -> Path | None:
    paths = [p for p in catalog["path"].astype(str) if p]
    return Path(os.path.commonpath(paths)) if paths else None


def _data_source(catalog: pd.DataFrame) -> tuple[Path | None, str]:
    """The folder holding every catalogued series and what the data is: the twin when a
    ``ground_truth.json`` sits in it or up to three folders above, real data otherwise."""
    root = _data_root(catalog)
    twin = root is not None and any((d / "ground_truth.json").exists() for d in [root, *list(root.parents)[:3]])
    return root, ("the simulated digital twin (ground_truth.json found)" if twin
                  else "real data (no twin ground_truth.json found near the series)")


def data_section(layout: ResultsLayout) -> Section:
    """What data was used: twin or real, counts per scanner x dose x recon."""
    sec = Section("Data used")
    if sec.checked(layout.catalog, layout, "prepare", f"the catalog ({layout.catalog})") is None:
        return sec
    catalog = _read_table(sec, layout.catalog)
    if catalog is None:
        return sec
    root, kind = _data_source(catalog)
    sec.notes.append(f"{len(catalog)} CT series from {catalog['scanner'].nunique()} scanners, "
                     f"{catalog['dose_mgy'].nunique()} dose levels, recons {', '.join(sorted(catalog['recon'].astype(str).unique()))}; "
                     f"source: {kind}{f' under {root}' if root else ''}.")
    counts = (catalog.groupby(["scanner", "recon", "dose_mgy"]).size().unstack("dose_mgy", fill_value=0))
    counts.columns = [f"{c:g} mGy" for c in counts.columns]
    sec.tables.append(("Series per scanner x reconstruction x dose", counts.reset_index()))
    return sec


def _weights_label(side: dict) -> str:
    """How a feature table's weights are described: UNTRAINED, the file and its checksum, or none needed."""
    if side.get("untrained"):
        return "UNTRAINED"
    weights = side.get("weights")
    if not weights:
        return "none (not a network)"
    sha = side.get("weights_sha256")
    return f"{weights} (sha256 {sha[:12]}...)" if sha else str(weights)


def feature_section(layout: ResultsLayout) -> Section:
    """Which feature tables exist, their size and weights status (untrained shown as a warning)."""
    sec = Section("Feature tables and weights")
    rows = []
    for name in EXTRACTORS:
        path = layout.feature_table(name)
        side = sec.checked(path, layout, name, f"{name} features")
        if side is None:
            continue
        n_feat = len(read_csv(path, nrows=0).columns) - len(IDENTITY_COLUMNS)
        rows.append({"extractor": name, "rows": side.get("n_rows"), "features": n_feat,
                     "weights": _weights_label(side)})
        if side.get("untrained"):
            sec.warnings.append(f"{name}: features computed with UNTRAINED (random) weights; its results "
                                f"say nothing about the pretrained model.")
    if rows:
        sec.tables.append(("Feature tables", pd.DataFrame(rows)))
    return sec


def icc_section(layout: ResultsLayout) -> Section:
    sec = Section("ICC (feature repeatability)")
    record = sec.checked(layout.icc_summary, layout, "icc", "ICC tables")
    summary = None if record is None else _read_table(sec, layout.icc_summary)
    if summary is None:
        return sec
    side = record.get("settings", {})
    stat = {"icc3_1": "ICC(3,1)", "icc3_k": "ICC(3,k)"}.get(side.get("statistic", "icc3_1"), "ICC(3,1)")
    targets = ("ROIs (patch features averaged per ROI)" if side.get("targets") == "roi" else "ROI patches")
    sec.notes.append(f"{stat}, two-way mixed, consistency (protocol {side.get('protocol', 'toolkit')}). 'Across "
                     f"doses': per scanner, targets = {targets}, raters = doses. 'Across scanners': per dose, "
                     "raters = scanners. Settings: "
                     + ", ".join(f"{k} = {side[k]}" for k in ("recon", "repetitions", "standardize", "clip") if k in side)
                     + (". Negative ICCs were clipped to 0." if side.get("clip") else ". ICCs are not clipped."))
    sec.notes.append(f"{layout.icc_per_feature.name} gives ICC(3,1) and ICC(3,k) per feature with 95 % F-based "
                     "confidence intervals (McGraw & Wong, as pingouin). A feature with no variance between "
                     "targets but a residual has ICC(3,1) = -1/(k-1) and ICC(3,k) = -inf, and is included.")
    excluded = int(summary["n_excluded"].sum())
    if excluded:
        reasons = "; ".join(f"{n} {why.removeprefix('excluded: ')}" for why, n in record.get("excluded", {}).items())
        sec.notes.append(f"{excluded} feature x group ICCs were excluded ({reasons or 'see the table'}); "
                         f"they are listed with the reason in {layout.icc_per_feature.name}.")
    cell = lambda g: f"{g['mean'].mean():.2f} ({100 * g['share_gt_0.75'].mean():.0f}%)"  # noqa: E731
    for view, col, caption in (("scanner", "dose_mgy", f"Mean {stat} across scanners, extractor x dose "
                                                       "(share of features > 0.75)"),
                               ("dose", "scanner", f"Mean {stat} across doses, extractor x scanner "
                                                   "(share of features > 0.75)")):
        sub = summary[summary["view"] == view]
        if sub.empty:
            continue
        wide = sub.groupby(["extractor", "recon", col]).apply(cell, include_groups=False).unstack(col)
        wide.columns = [f"{c:g} mGy" if isinstance(c, float) else str(c) for c in wide.columns]
        sec.tables.append((caption, wide.reset_index()))
    pooled = record.get("boxplot_caption", "Reconstructions pooled: not recorded (re-run the ICC step).")
    sec.figure(record, f"{stat} per feature, extractors side by side: {int(summary['n_features'].sum())} included "
               f"feature x group values over {len(summary)} extractor x view x group rows. {pooled}", layout.icc_boxplots)
    return sec


def umap_section(layout: ResultsLayout) -> Section:
    sec = Section("UMAP embeddings")
    settings = None
    for name in EXTRACTORS:
        if not layout.umap_table(name).is_file():
            continue
        record = sec.checked(layout.umap_table(name), layout, "umap", f"UMAP of {name}")
        if record is not None:
            settings = settings or record.get("settings", {})
            sec.figure(record, f"UMAP of {name} features: {record.get('n_rows', '?')} patches, every series pooled "
                       "(all scanners, doses, reconstructions and repetitions), coloured by ROI class, "
                       "manufacturer and dose", layout.umap_figure(name))
            captions = record.get("figure_captions", {})
            for kind in PAPER_FIGURES:
                if kind in captions:
                    sec.figure(record, captions[kind], layout.umap_paper_figure(name, kind))
            for kind, why in record.get("figures_skipped", {}).items():
                sec.notes.append(f"{name}: {PAPER_FIGURE_TITLES.get(kind, kind)} not drawn: {why}.")
    if settings is None and not sec.warnings:
        sec.missing("UMAP figures", layout.command("umap"))
    if settings:
        sec.notes.append("Standardised features; " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".")
    return sec


def classify_section(layout: ResultsLayout) -> Section:
    sec = Section("Classification")
    record = sec.checked(layout.cross_dose_matrix, layout, "classify", "classification results")
    matrix = None if record is None else _read_table(sec, layout.cross_dose_matrix)
    if matrix is None:
        return sec
    if not {"n", "over", "chance"} <= set(matrix.columns):
        sec.warnings.append(f"{layout.cross_dose_matrix} was written by an older version (no n / over / chance "
                            f"columns); re-run `{layout.command('classify')} --force`")
        return sec
    side = record.get("settings", {})
    model = (f"{side.get('mlp', '')}; {side.get('epochs', '?')} fixed epochs" if side.get("classifier") == "mlp"
             else "logistic regression")
    sec.notes.append(f"Classifier: {side.get('classifier', '?')} ({model}, seed {side.get('seed', '?')}). "
                     "Scaler and constant-feature filter fitted on "
                     "training rows only. Cross-dose: train at one dose, test at each dose on a held-out scanner "
                     "(leave one scanner out; the diagonal is never training accuracy).")
    draw = side.get("loso_draw", "random")
    sec.notes.append(f"LOSO-N: {side.get('loso_n', '?')}; training scanners drawn "
                     + ("at random from the other scanners." if draw == "random" else
                        "from the other manufacturers first, then the test scanner's own (the study code's variant).")
                     + f" k-fold-n: {side.get('kfold_n', '?')}, {side.get('n_folds', '?')} folds grouped by "
                     f"{side.get('kfold_groups', '?')}. Every mean ± sd is over the n units named in its table "
                     "(`over`, `n`); `chance` is the majority-class share of the test labels (for the six ROIs "
                     "in four classes: 1/3).")
    diag = matrix[matrix["train_dose"] == matrix["test_dose"]]
    table = (matrix.groupby("extractor", sort=False)
             .agg(mean_all_cells=("mean", "mean"), n=("n", "max"), over=("over", "first"),
                  chance=("chance", "mean")).reset_index()
             .merge(diag.groupby("extractor")["mean"].mean().rename("mean_diagonal").reset_index(), on="extractor"))
    sec.tables.append(("Cross-dose ROI-class accuracy (mean over cells of the dose x dose matrix; each cell a mean "
                       "over n held-out scanners)",
                       table[["extractor", "mean_all_cells", "mean_diagonal", "over", "n", "chance"]]))
    for name, m in matrix.groupby("extractor", sort=False):
        cells = m.assign(cell=_mean_sd(m["mean"], m["sd"], "{:.2f}"))
        wide = cells.pivot(index="train_dose", columns="test_dose", values="cell")
        wide.columns = [f"test {c:g} mGy" for c in wide.columns]
        wide.index = [f"train {i:g} mGy" for i in wide.index]
        about = (f"mean ± sd over {int(m['n'].max())} {m['over'].iloc[0]}; chance {m['chance'].mean():.2f}; "
                 f"reconstructions pooled: {', '.join(side.get('recons') or ['all present'])}")
        sec.tables.append((f"{name}: cross-dose accuracy, {about}", wide.rename_axis("").reset_index()))
        sec.figure(record, f"{name}: accuracy, train dose (rows) x test dose (columns); {about}",
                   layout.cross_dose_figure(name))
    curves = sec.table(record, layout.curves)
    if curves is not None:
        wide = curves.assign(cell=_mean_sd(curves["mean"], curves["sd"], "{:.2f}")).pivot_table(
            index=["protocol", "extractor"], columns="n_train", values="cell", aggfunc="first")
        meta = curves.groupby(["protocol", "extractor"]).agg(over=("over", "first"), n=("n", "max"),
                                                              chance=("chance", "mean"))
        sec.tables.append(("Accuracy (mean ± sd over n test scanners or test folds) by number of training scanners "
                           "N (loso_n) / training folds n (kfold_n)", meta.join(wide).reset_index()))
        for protocol, label in (("loso_n", "leave-one-scanner-out with N training scanners"),
                                ("kfold_n", "grouped k-fold with n training folds")):
            rows = curves[curves["protocol"] == protocol]
            if len(rows):
                sec.figure(record, f"ROI-class accuracy, {label}: mean ± sd over {int(rows['n'].max())} "
                           f"{rows['over'].iloc[0]}; dashed: chance (majority class) {rows['chance'].mean():.2f}",
                           layout.curve_figure(protocol))
    dose = sec.table(record, layout.dose_class)
    if dose is not None:
        agg = dose.groupby("extractor", sort=False).agg(mean=("accuracy", "mean"), sd=("accuracy", "std"),
                                                        n=("accuracy", "size"), chance=("chance", "mean")).reset_index()
        agg["accuracy"] = _mean_sd(agg["mean"], agg["sd"], "{:.3f}")
        sec.tables.append(("Dose-level classification, leave one scanner out",
                           agg.assign(over="held-out scanners")[["extractor", "accuracy", "over", "n", "chance"]]))
    return sec


def dose_effects_section(layout: ResultsLayout) -> Section:
    """Dose-level models (grouped by scanner x ROI), distribution shift low vs high dose, silhouettes."""
    sec = Section("Dose effects: dose models, distribution shift, silhouettes")
    command = layout.command("dose_effects")
    record = sec.checked(layout.dose_models, layout, "dose_effects", "dose-level models")
    summary = None if record is None else _read_table(sec, layout.dose_models)
    if summary is not None:
        side = record.get("settings", {})
        sec.notes.append(f"Dose level (classes = dose levels) and dose in mGy predicted from each extractor's "
                         f"features; GroupKFold with {side.get('n_folds', '?')} folds, one group = one scanner x "
                         "ROI, so no scanner x ROI is in both training and test; constant-feature filter and "
                         f"scaler fitted on training folds; seed {side.get('seed', '?')}; random forests of "
                         f"{side.get('n_trees', '?')} trees, kNN k = {side.get('k', '?')}, ridge alpha "
                         f"{side.get('ridge_alpha', '?')}, MLP ({side.get('mlp', '?')}) {side.get('epochs', '?')} "
                         "epochs. Chance: majority-class "
                         "share of the test rows; baseline MAE: predicting the training fold's mean dose.")
        for task, caption in (("classification", "Dose-level accuracy (mean ± sd over n folds) and chance"),
                              ("regression", "Dose regression MAE in mGy (mean ± sd over n folds) and the mean "
                                             "predictor's MAE")):
            sub = summary[summary["task"] == task]
            if len(sub):
                cell = _mean_sd(sub["mean"], sub["sd"], "{:.3f}" if task == "classification" else "{:.2f}")
                wide = sub.assign(cell=cell).pivot(index="extractor", columns="model", values="cell")
                ref = sub.groupby("extractor")["reference_mean"].mean().rename(
                    "chance" if task == "classification" else "baseline MAE (mGy)")
                n = sub.groupby("extractor")["n"].max().rename("n folds")
                sec.tables.append((caption, wide.join(ref).join(n).reset_index()))
        for name in EXTRACTORS:
            sec.figure(record, f"{name}: dose-level confusion matrices (rows: true dose, columns: predicted; "
                       f"counts summed over the {side.get('n_folds', '?')} grouped folds, every test row once, "
                       f"reconstructions {', '.join(side.get('recons') or ['all'])} pooled; colour = share of the "
                       "row)", layout.dose_confusion_figure(name))
    record = sec.checked(layout.dose_shift_summary, layout, "dose_effects", "distribution shift")
    shift = None if record is None else _read_table(sec, layout.dose_shift_summary)
    if shift is not None:
        side = record.get("settings", {})
        sec.notes.append(f"Distribution shift {side.get('low_dose', '?'):g} vs {side.get('high_dose', '?'):g} mGy "
                         "per feature: two-sample Kolmogorov-Smirnov, Benjamini-Hochberg q per extractor x "
                         f"reconstruction, shifted = q < {side.get('alpha', '?')}; patches are not independent "
                         f"samples, so q is descriptive. Per feature values in {layout.dose_shift.name}.")
        sec.tables.append(("Features shifted by the dose change, per extractor x reconstruction", shift))
    record = sec.checked(layout.silhouette, layout, "dose_effects", "silhouette scores")
    sil = None if record is None else _read_table(sec, layout.silhouette)
    if sil is not None:
        wide = sil.pivot_table(index=["extractor", "space"], columns="label", values="silhouette", sort=False)
        rows = sil.groupby(["extractor", "space"], sort=False)["n_rows"].max().rename("rows scored")
        sec.tables.append(("Silhouette score (euclidean) of standardised features and of the 2-D UMAP, by label "
                           "(1: rows cluster by it; 0: no structure)", wide.join(rows).reset_index()))
        for name, why in record.get("umap_skipped", {}).items():
            sec.warnings.append(f"UMAP silhouette of {name} not computed: {why}")
    if not any((summary is not None, shift is not None, sil is not None)) and not sec.warnings:
        sec.notes = [n for n in sec.notes if not n.startswith("Missing:")]
        sec.missing("dose models, distribution shift and silhouettes", command)
    return sec


def _lower_triangle(by_scanner: pd.DataFrame, metric: str, fmt: str, recon: str) -> pd.DataFrame:
    """Tables 3-5 layout of one metric: scanner x scanner, 'mean ± sd' on and below the diagonal."""
    from ctdose.image_metrics import scanner_matrix

    mean = scanner_matrix(by_scanner, f"{metric}_mean", recon)
    sd = scanner_matrix(by_scanner, f"{metric}_sd", recon)
    cells = pd.DataFrame("", index=mean.index, columns=mean.columns)
    for i, a in enumerate(mean.index):
        for b in mean.columns[:i + 1]:
            if np.isfinite(mean.loc[a, b]):
                cells.loc[a, b] = _mean_sd([mean.loc[a, b]], [sd.loc[a, b]], fmt)[0]
    return cells.reset_index()


def _vs_paper(sec: Section, record: dict[str, Any], layout: ResultsLayout) -> None:
    """Our image metrics beside the dataset paper's (:mod:`ctdose.published`): Table 6 cells within the aim,
    the per-cell table, missing cells named, the scanner pairs' Spearman rho (n), and the scatter figure."""
    from ctdose.published import describe, scanner_pair_summary

    dose = sec.table(record, layout.image_metrics_vs_paper_dose)
    if dose is None:
        sec.missing(f"the image metrics beside the dataset paper's ({layout.image_metrics_vs_paper_dose.name})",
                    layout.command("image_metrics"))
        return
    pairs = sec.table(record, layout.image_metrics_vs_paper_scanner)
    sec.notes += describe(dose, {} if pairs is None else scanner_pair_summary(pairs))
    lacking = dose[dose["status"] == "twin missing"]
    if len(lacking):
        doses = lacking.groupby(["recon", "scanner"], sort=True)["dose_mgy"].agg(
            lambda d: ", ".join(f"{v:g}" for v in sorted(set(d))))
        sec.notes.append("Published Table 6 cells missing from ours (all metrics): " + "; ".join(
            f"{scanner} at {d} mGy" + (f" ({recon})" if recon != "any" else "")
            for (recon, scanner), d in doses.items()) + ".")
    shown = dose[dose["status"] != "twin missing"]
    if len(shown):
        fmt = shown["metric"].map({"rmse": "{:.1f}", "psnr": "{:.2f}", "ssim": "{:.3f}"}).fillna("{:.3f}")
        cells = {who: [_mean_sd([m], [sd], f)[0] if np.isfinite(m) else ""
                       for m, sd, f in zip(shown[f"{who}_mean"], shown[f"{who}_sd"], fmt)] for who in ("twin", "paper")}
        within = np.where(shown["within"].astype(str).str.lower() == "true", "yes", "no")
        table = pd.DataFrame({"recon": shown["recon"], "scanner": shown["scanner"], "dose (mGy)": [f"{d:g}" for d in shown["dose_mgy"]],
                              "metric": shown["metric"], "ours": cells["twin"], "paper": cells["paper"],
                              "ratio": shown["ratio"],
                              "within": np.where(shown["status"] == "compared", within, "paper missing")})
        sec.tables.append(("Ours against the dataset paper's Table 6 (each dose vs 14 mGy), mean ± sd per cell; "
                           "within = |ours - paper| <= max(2 paper sd, 15 % of the paper's mean)", table))
    sec.figure(record, "Ours against the dataset paper's image metrics, per metric (circles: Table 6 cells; "
               "triangles / squares: scanner pairs at 10 mGy / repeated scans; dashed: identity)",
               layout.image_metrics_vs_paper_figure)


def image_metrics_section(layout: ResultsLayout) -> Section:
    sec = Section("Image metrics")
    record = sec.checked(layout.image_metrics_dose, layout, "image_metrics", "image metrics")
    by_dose = None if record is None else _read_table(sec, layout.image_metrics_dose)
    if by_dose is None:
        return sec
    side = record.get("settings", {})
    clip = side.get("clip_hu", [-1000, 2000])
    region = {"crop": "the phantom's bounding box, unmasked (the dataset paper's code)",
              "phantom": "voxels inside the phantom only"}.get(side.get("region"), str(side.get("region")))
    pooled = ("reconstructions pooled in each cell (the paper)" if side.get("recon_pairing") == "any"
              else "one cell per reconstruction")
    sec.notes.append(
        f"As the dataset paper's code: volumes clipped to [{clip[0]:g}, {clip[1]:g}] HU; RMSE; PSNR with peak "
        f"{side.get('psnr_peak_hu', 2000):g} HU; 3-D SSIM with a Gaussian window {side.get('ssim_window', 11)} / "
        f"sigma {side.get('ssim_sigma', 1.5):g}, L = {side.get('data_range_hu', 3000):g} HU, "
        f"C1 = {side.get('c1', 900):g}, C2 = {side.get('c2', 8100):g} HU^2 (MONAI's PSNRMetric / SSIMMetric). "
        f"Region: {region}. Pairs: up to {side.get('max_pairs', 5)} per cell, i-th with i-th of two lists "
        f"shuffled with seed {side.get('seed', 0)}, {pooled}; mean ± sd over the pairs of each cell "
        "(n in the CSV). Only voxels both series cover are compared (largest share left out of a pair: "
        f"{100 * float(record.get('uncovered_fraction_max', 0)):.1f} %); a same-scan pair is not resampled.")
    metrics = (("ssim", "{:.3f}"), ("rmse_hu", "{:.1f}"), ("psnr_db", "{:.2f}"))
    ref_dose = side.get("reference_dose", 14)
    for metric, fmt in metrics:
        t = by_dose.assign(cell=_mean_sd(by_dose[f"{metric}_mean"], by_dose[f"{metric}_sd"], fmt))
        wide = t.pivot_table(index=["scanner", "recon"], columns="dose_mgy", values="cell", aggfunc="first")
        wide.columns = [f"{c:g} mGy" for c in wide.columns]
        shrink = side.get("dose_shrink", 1)
        sec.tables.append((f"{metric}: each dose against the scanner's {ref_dose:g} mGy series"
                           + (f", bin-shrunk by {shrink}" if shrink > 1 else "") + " (Table 6 layout)",
                           wide.reset_index()))
    by_scanner = sec.table(record, layout.image_metrics_scanner)
    if by_scanner is not None:
        for recon in sorted(by_scanner["recon"].astype(str).unique()):
            for metric, fmt in metrics:
                sec.tables.append((f"{metric}: scanner pairs at {side.get('scanner_dose', 10):g} mGy, {recon} "
                                   f"reconstruction (Tables 3-5 layout; diagonal = repeated scans; bin-shrunk by "
                                   f"{side.get('scanner_shrink', 4)})", _lower_triangle(by_scanner, metric, fmt, recon)))
    for png in sorted(Path(p) for p in record.get("outputs", {}) if Path(p).suffix == ".png" and "ssim" in Path(p).name):
        stem = png.with_suffix("")
        sec.figure(record, stem.name.replace("_", " ") + f" (up to {side.get('max_pairs', 5)} pairs per cell, "
                   f"{pooled})", stem)
    _vs_paper(sec, record, layout)
    return sec


def texture_section(layout: ResultsLayout) -> Section:
    """The dataset paper's Fig. 4 (registered texture per scanner), written by the image-metrics step."""
    sec = Section("Registered texture per scanner (Fig. 4)")
    record = sec.checked(layout.image_metrics_dose, layout, "image_metrics", "image metrics")
    if record is None:
        return sec
    note = record.get("texture_caption")
    if note is None:
        sec.notes.append(f"Fig. 4 was not made by this version of the image-metrics step; re-run "
                         f"`{layout.command('image_metrics')} --force`.")
    elif note.startswith("Fig. 4 not drawn"):
        sec.notes.append(note)
    else:
        sec.figure(record, note, layout.texture_figure())
    return sec


def provenance_section(layout: ResultsLayout) -> Section:
    sec = Section("Provenance")
    outputs = {f"features/{n}": layout.feature_table(n) for n in EXTRACTORS}
    outputs.update({"catalog": layout.catalog, "icc": layout.icc_summary, "classify": layout.cross_dose_matrix,
                    "image_metrics": layout.image_metrics_dose})
    rows, versions = [], {}
    for step, out in outputs.items():
        try:
            side = read_sidecar(out)
        except ValueError as err:
            sec.warnings.append(str(err))
            continue
        if not side:
            continue
        versions = versions or side.get("versions", {})
        rows.append({"step": step, "created (UTC)": side.get("created_utc", ""),
                     "untrained": side.get("untrained", "") if step.startswith("features") else "",
                     "settings": json.dumps(side.get("settings", {}), default=str)[:300]})
    if rows:
        sec.tables.append(("Settings per step (from the JSON sidecars)", pd.DataFrame(rows)))
    if versions:
        sec.tables.append(("Library versions", pd.DataFrame(sorted(versions.items()), columns=["library", "version"])))
    if not rows:
        sec.notes.append("No sidecars found: nothing has been run yet under this results folder.")
    return sec


#: Dose-ratio bins of the Findings table, (label, low, high]: ratio = higher / lower dose of a cell.
DOSE_RATIO_BINS: tuple[tuple[str, float, float], ...] = (("≤ 2×", 1.0, 2.0), ("2-5×", 2.0, 5.0),
                                                         ("> 5×", 5.0, np.inf))
#: ICC threshold of "good" reliability (Koo & Li 2016) used in the Findings.
ICC_GOOD = 0.75


def cross_dose_drop(matrix: pd.DataFrame,
                    bins: tuple[tuple[str, float, float], ...] = DOSE_RATIO_BINS) -> pd.DataFrame:
    """Accuracy a dose change costs, per extractor and dose-ratio bin.

    ``matrix``: rows of ``classify_cross_dose_matrix.csv`` (extractor, train_dose, test_dose, mean ...).
    For each off-diagonal cell A -> B (train at A, test at B), drop = mean(B -> B) - mean(A -> B): what
    training at another dose costs on the same test series (accuracy, 0..1; > 0 = a loss). Returns one
    row per extractor x bin holding cells: extractor, bin, drop (mean over the bin's cells), n_cells.
    """
    diag = matrix[matrix["train_dose"] == matrix["test_dose"]].set_index(["extractor", "test_dose"])["mean"]
    off = matrix[matrix["train_dose"] != matrix["test_dose"]].copy()
    off["drop"] = diag.reindex(pd.MultiIndex.from_frame(off[["extractor", "test_dose"]])).to_numpy() - off["mean"]
    ratio = (np.maximum(off["train_dose"], off["test_dose"]) / np.minimum(off["train_dose"], off["test_dose"]))
    off["bin"] = None
    for label, low, high in bins:
        off.loc[(ratio > low) & (ratio <= high), "bin"] = label
    return (off.dropna(subset=["bin", "drop"]).groupby(["extractor", "bin"], sort=False)
            .agg(drop=("drop", "mean"), n_cells=("drop", "size")).reset_index())


def _icc_headline(summary: pd.DataFrame, view: str) -> pd.Series:
    """Per extractor, 'median (share > 0.75)' of one ICC view of ``icc_summary.csv``: the median over
    the view's groups (scanner or dose x recon) of each group's median ICC(3,1), and the share of all
    included feature x group values above :data:`ICC_GOOD`."""
    sub = summary[summary["view"] == view]
    if sub.empty:
        return pd.Series(dtype=str)
    share = sub[f"share_gt_{ICC_GOOD:g}"] * sub["n_features"]
    agg = (sub.assign(good=share).groupby("extractor", sort=False)
           .agg(median=("median", "median"), good=("good", "sum"), n=("n_features", "sum"), groups=("median", "size")))
    return pd.Series([f"{r.median:.2f} ({100 * r.good / r.n:.0f} %, {r.groups} group{'s' * (r.groups > 1)})" if r.n else ""
                      for r in agg.itertuples()], index=agg.index)


def _weights_short(side: dict[str, Any] | None) -> str:
    if side is None:
        return "? (no feature table)"
    if side.get("untrained"):
        return "UNTRAINED"
    return "trained" if side.get("weights") else "not a network"


def findings_section(layout: ResultsLayout) -> Section:
    """The answer on one screen: per extractor, what a dose change costs in accuracy, ICC across doses and
    across scanners, with the data source and the weights status beside them."""
    sec = Section("Findings")
    source = "not known (no catalog)"
    if sec.checked(layout.catalog, layout, "prepare", f"the catalog ({layout.catalog})") is not None:
        catalog = _read_table(sec, layout.catalog)
        if catalog is not None:
            source = (f"{_data_source(catalog)[1]}: {len(catalog)} series, {catalog['scanner'].nunique()} scanners, "
                      f"doses {', '.join(f'{d:g}' for d in sorted(catalog['dose_mgy'].unique()))} mGy")
    sec.notes.append(f"Data: {source}.")
    classify = sec.checked(layout.cross_dose_matrix, layout, "classify", "classification results")
    matrix = None if classify is None else _read_table(sec, layout.cross_dose_matrix)
    if matrix is not None and not {"n", "over", "chance"} <= set(matrix.columns):
        sec.warnings.append(f"{layout.cross_dose_matrix} was written by an older version (no n / over / chance "
                            f"columns); re-run `{layout.command('classify')} --force`")
        matrix = None
    icc = sec.checked(layout.icc_summary, layout, "icc", "ICC tables")
    summary = None if icc is None else _read_table(sec, layout.icc_summary)
    names = [n for n in EXTRACTORS if any(t is not None and n in set(t["extractor"]) for t in (matrix, summary))]
    if not names:
        return sec
    table = pd.DataFrame({"extractor": names}).set_index("extractor")
    table["weights"] = [_weights_short(sec.checked(layout.feature_table(n), layout, n, f"{n} features"))
                        for n in names]
    if matrix is not None:
        diag = matrix[matrix["train_dose"] == matrix["test_dose"]].groupby("extractor")
        table["accuracy, same dose"] = diag["mean"].mean().map("{:.2f}".format)
        table["chance"] = matrix.groupby("extractor")["chance"].mean().map("{:.2f}".format)
        drop = cross_dose_drop(matrix)
        for label, _, _ in DOSE_RATIO_BINS:
            cells = drop[drop["bin"] == label].set_index("extractor")
            if len(cells):
                table[f"cost of a dose change {label}"] = pd.Series(
                    [f"{d:+.2f} ({n})" for d, n in zip(cells["drop"], cells["n_cells"])], index=cells.index)
        side = classify.get("settings", {})
        sec.notes.append(
            f"Cost of a dose change: accuracy (ROI class, {side.get('classifier', '?')}, mean over "
            f"{int(matrix['n'].max())} {matrix['over'].iloc[0]}) trained and tested at dose B minus trained at dose "
            f"A and tested at B, averaged over the (A, B) cells whose dose ratio max/min falls in the column's "
            f"bin (number of cells in brackets); > 0 means the dose change loses accuracy. Same dose: the "
            f"diagonal of the cross-dose matrix (never training accuracy). Chance: majority-class share.")
    if summary is not None:
        for view, label in (("dose", "ICC across doses"), ("scanner", "ICC across scanners")):
            table[label] = _icc_headline(summary, view)
        settings = icc.get("settings", {})
        sec.notes.append(
            f"ICC(3,1) {'clipped at 0' if settings.get('clip') else 'unclipped'}: median over groups (across "
            f"doses: one group per scanner; across scanners: one per dose; x reconstruction) of the median over "
            f"features, then the share of all feature x group ICCs > {ICC_GOOD:g}.")
    protocol = next((r.get("settings", {}).get("protocol") for r in (classify, icc) if r), None)
    sec.notes.append(f"Protocol: {protocol or 'toolkit'}"
                     + (" (the toolkit's own default: per-feature ICC(3,1), unclipped)." if protocol in (None, "toolkit")
                        else ".")
                     + (" UNTRAINED weights: those features say nothing about the pretrained model."
                        if (table["weights"] == "UNTRAINED").any() else ""))
    sec.tables.append(("Per extractor: what a dose change costs, feature reliability, weights",
                       table.fillna("").reset_index()))
    return sec


#: Column names of the dataset paper's Table 7.
TABLE7_COLUMNS = ("Features", "Mean ICC", "LOSO 1 scanner", "LOSO 12 scanners", "10-fold 13 scanners")
#: Dose (mGy) of the paper's ICC across scanners.
TABLE7_DOSE = 10.0


def table7_section(layout: ResultsLayout) -> Section:
    """The dataset paper's Table 7 per extractor: mean ICC across scanners at 10 mGy (clipped at 0,
    averaged over features), accuracy with LOSO 1 and S-1 training scanners and 10-fold with all folds."""
    sec = Section("Dataset paper's Table 7 layout")
    rows: dict[str, dict[str, str]] = {}
    about: list[str] = []
    icc = sec.checked(layout.icc_summary, layout, "icc", "ICC tables")
    per_feature = None if icc is None else sec.table(icc, layout.icc_per_feature)
    if icc is not None and per_feature is None:
        sec.missing(f"{layout.icc_per_feature.name} (per-feature ICCs)", layout.command("icc"))
    if per_feature is not None:
        at10 = per_feature[(per_feature["view"] == "scanner") & np.isclose(per_feature["dose_mgy"], TABLE7_DOSE)
                           & (per_feature["status"] == "ok")]
        if at10.empty:
            doses = sorted(per_feature.loc[per_feature["view"] == "scanner", "dose_mgy"].dropna().unique())
            sec.notes.append(f"Mean ICC: no ICC across scanners at {TABLE7_DOSE:g} mGy in {layout.icc_per_feature.name} "
                             f"(its doses: {', '.join(f'{d:g}' for d in doses) or 'none'}); it needs {TABLE7_DOSE:g} mGy "
                             f"series of at least two scanners, then `{layout.command('icc')} --protocol dataset-paper`.")
        for name, g in at10.groupby("extractor", sort=False):
            rows.setdefault(name, {})["Mean ICC"] = f"{g['icc3_1'].clip(lower=0).mean():.3f}"
        if len(at10):
            recon = icc.get("settings", {}).get("recon")
            about.append(
                f"Mean ICC: ICC(3,1) across the {int(at10['n_raters'].max())} scanners at {TABLE7_DOSE:g} mGy "
                f"(targets = ROI patches), each clipped at 0, averaged over {at10.groupby('extractor').size().max()} "
                "feature x reconstruction values" + (
                    " (features averaged over reconstructions first, as the paper)." if recon == "average" else
                    f"; reconstructions analysed one at a time (the paper averages features over reconstructions "
                    f"first: `{layout.command('icc')} --protocol dataset-paper`)."))
    classify = sec.checked(layout.cross_dose_matrix, layout, "classify", "classification results")
    curves = None if classify is None else sec.table(classify, layout.curves)
    if classify is not None and curves is None:
        sec.missing("LOSO-N / k-fold-n curves (classify_curves.csv)", layout.command("classify"))
    n_scanners = None
    if curves is not None:
        for (protocol, name), c in curves.groupby(["protocol", "extractor"], sort=False):
            cell = lambda r: _mean_sd([r["mean"]], [r["sd"]], "{:.2f}")[0]  # noqa: E731
            first, last = c.loc[c["n_train"].idxmin()], c.loc[c["n_train"].idxmax()]
            row = rows.setdefault(name, {})
            row["chance"] = f"{c['chance'].mean():.2f}"
            if protocol == "loso_n":
                row["LOSO 1 scanner"] = cell(first) if first["n_train"] == 1 else ""
                row["LOSO 12 scanners"] = cell(last)
                n_scanners = int(last["n_train"]) + 1
            elif protocol == "kfold_n":
                row["10-fold 13 scanners"] = cell(last)
        side = classify.get("settings", {})
        loso, kfold = curves[curves["protocol"] == "loso_n"], curves[curves["protocol"] == "kfold_n"]
        if len(loso):
            about.append(f"LOSO: accuracy (ROI class, {side.get('classifier', '?')}) mean ± sd over "
                         f"{int(loso['n'].max())} test scanners, trained on N = 1 and N = {n_scanners - 1} scanners.")
        if len(kfold):
            about.append(f"10-fold: mean ± sd over {int(kfold['n'].max())} test folds (grouped by "
                         f"{side.get('kfold_groups', 'acquisition')}), trained on n = {int(kfold['n_train'].max())} folds.")
    if not rows:
        return sec
    if n_scanners is not None and n_scanners < 13:
        about.append(f"This data has {n_scanners} scanners, not the paper's 13: 'LOSO 12 scanners' is N = "
                     f"{n_scanners - 1} and '10-fold 13 scanners' pools all {n_scanners}.")
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=[*TABLE7_COLUMNS[1:], "chance"])
    table = table.reindex([n for n in EXTRACTORS if n in rows]).fillna("").rename_axis(TABLE7_COLUMNS[0]).reset_index()
    sec.tables.append(("Table 7 layout (dataset paper). " + " ".join(about), table))
    return sec


def build_sections(results: str | os.PathLike) -> list[Section]:
    """All report sections in order; each says what is missing or stale instead of failing.

    A results folder of another dataset (``dataset_centers.csv``, the extractors' ``--dataset``) gets
    its features, the organ classification and the provenance.
    """
    from ctdose.report_sections import (harmonize_section, organ_section, segmentation_section,
                                        series_qc_section, size_dose_section)

    layout = ResultsLayout(results)
    if layout.dataset_centers.is_file():
        return [organ_section(layout), feature_section(layout), provenance_section(layout)]
    return [findings_section(layout), table7_section(layout),  # the answer first
            data_section(layout), series_qc_section(layout), size_dose_section(layout),
            feature_section(layout), icc_section(layout), umap_section(layout),
            classify_section(layout), harmonize_section(layout), dose_effects_section(layout),
            image_metrics_section(layout), segmentation_section(layout), texture_section(layout),
            provenance_section(layout)]


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}th,td{border:1px solid #ccc;padding:.2em .5em}
th{background:#f0f0f0}.warn{background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;font-weight:bold}
.missing{color:#a00}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}"""


def _pdf_twin(png: Path, base: Path | None) -> str | None:
    """The path of ``png``'s PDF twin (:func:`ctdose.plots.figure_files`) relative to ``base`` (the report's
    folder; absolute when ``png`` lies outside it), or None when there is no PDF beside the PNG."""
    pdf = png.with_suffix(".pdf")
    if not pdf.is_file():
        return None
    return (pdf.relative_to(base) if base is not None and pdf.is_relative_to(base) else pdf).as_posix()


def render_html(sections: list[Section], title: str, base: Path | None = None) -> str:
    """One self-contained HTML page (figures embedded as base64 PNG, each captioned with a link to its
    PDF twin, relative to ``base``: the folder the page is written to)."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    all_warnings = [w for s in sections for w in s.warnings]
    for w in all_warnings:
        out.append(f"<div class='warn'>&#9888; {html.escape(w)}</div>")
    out.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                for i, s in enumerate(sections)) + "</ul>")
    for i, s in enumerate(sections):
        out.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        for w in s.warnings:
            out.append(f"<div class='warn'>&#9888; {html.escape(w)}</div>")
        for n in s.notes:
            cls = " class='missing'" if n.startswith("Missing:") else ""
            out.append(f"<p{cls}>{html.escape(n)}</p>")
        for caption, df in s.tables:
            out.append(f"<h4>{html.escape(caption)}</h4>" + df.to_html(index=False, na_rep="", float_format="%.3f"))
        for caption, path in s.figures:
            if not path.exists():
                out.append(f"<p class='missing'>Missing figure {html.escape(str(path))}</p>")
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            pdf = _pdf_twin(path, base)
            link = f" <a href='{html.escape(quote(pdf))}'>[PDF]</a>" if pdf else ""
            out.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(caption)}{link}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(sections: list[Section], title: str, base: Path | None = None) -> str:
    """The report's text and tables as Markdown (figures referenced by path, relative to ``base``)."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [f"> **WARNING:** {w}" for w in s.warnings] + ([""] if s.warnings else [])
        for n in s.notes:
            out += [n, ""]
        for caption, df in s.tables:
            out += [f"**{caption}**", "", markdown_table(df), ""]
        for caption, path in s.figures:
            rel = path.relative_to(base) if base is not None and path.is_relative_to(base) else path
            pdf = _pdf_twin(path, base)
            out += [f"![{caption}]({rel.as_posix()})", ""] + ([f"[PDF]({quote(pdf)})", ""] if pdf else [])
    return "\n".join(out)


def write_report(results: str | os.PathLike, title: str = "CT dose impact on AI features: report") -> tuple[Path, Path]:
    """Write ``<results>/report.html`` (self-contained) and ``report.md`` (+ a sidecar listing every
    file read); returns both paths."""
    layout = ResultsLayout(results)
    sections = build_sections(layout.root)
    html_path = write_text(render_html(sections, title, layout.report.parent), layout.report)
    md_path = write_text(render_markdown(sections, title, layout.root), layout.report_md)
    inputs = sorted({p for s in sections for p in s.inputs})
    write_sidecar(html_path, {"title": title}, inputs=inputs, outputs=[md_path],
                  warnings=[w for s in sections for w in s.warnings])
    return html_path, md_path
