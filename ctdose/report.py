"""Analysis output paths and the HTML + Markdown report that gathers them.

:func:`analysis_files` is the one place that names every file under ``<results>/analysis`` (the
analysis scripts write them, the report reads them). Figures are keyed by their stem (PNG + PDF
beside each other).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctdose.atomic import write_text
from ctdose.features import EXTRACTOR_COMMANDS, EXTRACTORS, read_sidecar
from ctdose.layout import IDENTITY_COLUMNS, ResultsLayout


def analysis_files(results: str | os.PathLike) -> dict[str, Path]:
    """Paths of the analysis outputs (figure entries are stems without suffix)."""
    d = ResultsLayout(results).analysis_dir
    return {
        "icc_per_feature": d / "icc_per_feature.csv",
        "icc_summary": d / "icc_summary.csv",
        "icc_boxplots": d / "icc_boxplots",
        "umap_dir": d / "umap",
        "cross_dose": d / "classify_cross_dose.csv",
        "cross_dose_matrix": d / "classify_cross_dose_matrix.csv",
        "curves": d / "classify_curves.csv",
        "curves_raw": d / "classify_curves_folds.csv",
        "dose_class": d / "classify_dose_level.csv",
        "classify_figs": d / "classify",
        "image_metrics_series": d / "image_metrics_series.csv",
        "image_metrics_dose": d / "image_metrics_vs_14mGy.csv",
        "image_metrics_scanner": d / "image_metrics_vs_reference_scanner.csv",
        "image_metrics_figs": d / "image_metrics",
    }


#: Command that makes each analysis output (shown when it is missing).
COMMANDS: dict[str, str] = {
    "catalog": "data/prepare.py --data DATA --results RESULTS",
    "icc": "analyze/icc.py --results RESULTS",
    "umap": "analyze/umap_plots.py --results RESULTS",
    "classify": "analyze/classify.py --results RESULTS",
    "image_metrics": "analyze/image_metrics.py --results RESULTS",
}


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
    """One report section: title, paragraphs/notes, tables (caption, DataFrame), figures (caption, PNG)."""

    title: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)

    def missing(self, what: str, command: str, results: Path) -> None:
        self.notes.append(f"Missing: {what}. Make it with `{command.replace('RESULTS', str(results))}`.")


def _read_csv(path: Path) -> pd.DataFrame | None:
    """A CSV or None when absent or empty."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        df = pd.read_csv(path, dtype={"series_uid": str, "scanner": str})
    except pd.errors.EmptyDataError:
        return None
    return None if df.empty else df


def _data_root(catalog: pd.DataFrame) -> Path | None:
    paths = [p for p in catalog["path"].astype(str) if p]
    return Path(os.path.commonpath(paths)) if paths else None


def data_section(results: Path) -> Section:
    """What data was used: twin or real, counts per scanner x dose x recon."""
    sec = Section("Data used")
    layout = ResultsLayout(results)
    if not layout.catalog.exists():
        sec.missing("the catalog (results/catalog.csv)", COMMANDS["catalog"], results)
        return sec
    catalog = pd.read_csv(layout.catalog, dtype={"series_uid": str, "scanner": str, "path": str})
    root = _data_root(catalog)
    twin = root is not None and any((d / "ground_truth.json").exists() for d in [root, *list(root.parents)[:3]])
    kind = ("the simulated digital twin (ground_truth.json found)" if twin
            else "real data (no twin ground_truth.json found near the series)")
    sec.notes.append(f"{len(catalog)} CT series from {catalog['scanner'].nunique()} scanners, "
                     f"{catalog['dose_mgy'].nunique()} dose levels, recons {', '.join(sorted(catalog['recon'].unique()))}; "
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


def feature_section(results: Path) -> Section:
    """Which feature tables exist, their size and weights status (untrained shown as a warning)."""
    sec = Section("Feature tables and weights")
    rows = []
    for name in EXTRACTORS:
        path = ResultsLayout(results).feature_table(name)
        if not path.exists():
            sec.missing(f"{name} features", EXTRACTOR_COMMANDS[name], results)
            continue
        side = read_sidecar(path)
        n_rows = sum(1 for _ in path.open()) - 1
        n_feat = len(pd.read_csv(path, nrows=0).columns) - len(IDENTITY_COLUMNS)
        rows.append({"extractor": name, "rows": n_rows, "features": n_feat, "weights": _weights_label(side)})
        if side.get("untrained"):
            sec.warnings.append(f"{name}: features computed with UNTRAINED (random) weights; its results "
                                f"say nothing about the pretrained model.")
    if rows:
        sec.tables.append(("Feature tables", pd.DataFrame(rows)))
    return sec


def icc_section(results: Path) -> Section:
    sec = Section("ICC (feature repeatability)")
    files = analysis_files(results)
    summary = _read_csv(files["icc_summary"])
    if summary is None:
        sec.missing("ICC tables", COMMANDS["icc"], results)
        return sec
    side = read_sidecar(files["icc_summary"]).get("settings", {})
    sec.notes.append("ICC(3,1), two-way mixed, consistency. 'Across doses': per scanner, targets = ROI patches, "
                     "raters = doses. 'Across scanners': per dose, raters = scanners. Settings: "
                     + ", ".join(f"{k} = {side[k]}" for k in ("recon", "repetitions", "standardize", "clip") if k in side)
                     + (". Negative ICCs were clipped to 0." if side.get("clip") else ". ICCs are not clipped."))
    excluded = int(summary["n_excluded"].sum())
    if excluded:
        sec.notes.append(f"{excluded} feature x group ICCs were excluded as degenerate (no variance between "
                         f"targets); they are listed in {files['icc_per_feature'].name}.")
    cell = lambda g: f"{g['mean'].mean():.2f} ({100 * g['share_gt_0.75'].mean():.0f}%)"  # noqa: E731
    for view, col, caption in (("scanner", "dose_mgy", "Mean ICC(3,1) across scanners, extractor x dose "
                                                       "(share of features > 0.75)"),
                               ("dose", "scanner", "Mean ICC(3,1) across doses, extractor x scanner "
                                                   "(share of features > 0.75)")):
        sub = summary[summary["view"] == view]
        if sub.empty:
            continue
        wide = sub.groupby(["extractor", "recon", col]).apply(cell, include_groups=False).unstack(col)
        wide.columns = [f"{c:g} mGy" if isinstance(c, float) else str(c) for c in wide.columns]
        sec.tables.append((caption, wide.reset_index()))
    sec.figures.append(("ICC(3,1) per feature, extractors side by side", files["icc_boxplots"].with_suffix(".png")))
    return sec


def umap_section(results: Path) -> Section:
    sec = Section("UMAP embeddings")
    d = analysis_files(results)["umap_dir"]
    figs = [(f"UMAP of {name} features", d / f"umap_{name}.png") for name in EXTRACTORS
            if (d / f"umap_{name}.png").exists()]
    if not figs:
        sec.missing("UMAP figures", COMMANDS["umap"], results)
        return sec
    side = read_sidecar(d / f"umap_{figs[0][1].stem.removeprefix('umap_')}.csv").get("settings", {})
    sec.notes.append("Standardised features; " + ", ".join(f"{k} = {v}" for k, v in side.items()) + ".")
    sec.figures += figs
    return sec


def classify_section(results: Path) -> Section:
    sec = Section("Classification")
    files = analysis_files(results)
    matrix = _read_csv(files["cross_dose_matrix"])
    if matrix is None:
        sec.missing("classification results", COMMANDS["classify"], results)
        return sec
    side = read_sidecar(files["cross_dose_matrix"]).get("settings", {})
    sec.notes.append(f"Classifier: {side.get('classifier', '?')} ({side.get('mlp', '')}; {side.get('epochs', '?')} "
                     f"fixed epochs, seed {side.get('seed', '?')}). Scaler and constant-feature filter fitted on "
                     "training rows only. Cross-dose: train at one dose, test at each dose on a held-out scanner "
                     "(leave one scanner out; the diagonal is never training accuracy).")
    diag = matrix[matrix["train_dose"] == matrix["test_dose"]]
    table = (matrix.groupby("extractor", sort=False)
             .agg(mean_all_cells=("mean", "mean"), folds=("n_folds", "max")).reset_index()
             .merge(diag.groupby("extractor")["mean"].mean().rename("mean_diagonal").reset_index(), on="extractor"))
    sec.tables.append(("Cross-dose ROI-class accuracy (mean over cells of the dose x dose matrix)", table))
    for name, m in matrix.groupby("extractor", sort=False):
        cells = m.assign(cell=_mean_sd(m["mean"], m["sd"], "{:.2f}"))
        wide = cells.pivot(index="train_dose", columns="test_dose", values="cell")
        wide.columns = [f"test {c:g} mGy" for c in wide.columns]
        wide.index = [f"train {i:g} mGy" for i in wide.index]
        sec.tables.append((f"{name}: cross-dose accuracy, mean ± sd over {int(m['n_folds'].max())} held-out scanners",
                           wide.rename_axis("").reset_index()))
        fig = files["classify_figs"] / f"cross_dose_{name}.png"
        if fig.exists():
            sec.figures.append((f"{name}: accuracy, train dose (rows) x test dose (columns)", fig))
    curves = _read_csv(files["curves"])
    if curves is not None:
        wide = curves.assign(cell=_mean_sd(curves["mean"], curves["sd"], "{:.2f}")).pivot_table(
            index=["protocol", "extractor"], columns="n_train", values="cell", aggfunc="first")
        sec.tables.append(("Accuracy by number of training scanners (loso_n) / training folds (kfold_n)",
                           wide.reset_index()))
        for protocol, label in (("loso_n", "leave-one-scanner-out with N training scanners"),
                                ("kfold_n", "grouped k-fold with n training folds")):
            fig = files["classify_figs"] / f"curve_{protocol}.png"
            if fig.exists():
                sec.figures.append((f"ROI-class accuracy, {label}", fig))
    dose = _read_csv(files["dose_class"])
    if dose is not None:
        agg = dose.groupby("extractor", sort=False)["accuracy"].agg(["mean", "std", "count"]).reset_index()
        agg["accuracy"] = _mean_sd(agg["mean"], agg["std"], "{:.3f}")
        sec.tables.append(("Dose-level classification, leave one scanner out (mean ± sd over held-out scanners)",
                           agg[["extractor", "accuracy", "count"]].rename(columns={"count": "folds"})))
    return sec


def image_metrics_section(results: Path) -> Section:
    sec = Section("Image metrics")
    files = analysis_files(results)
    by_dose = _read_csv(files["image_metrics_dose"])
    if by_dose is None:
        sec.missing("image metrics", COMMANDS["image_metrics"], results)
        return sec
    side = read_sidecar(files["image_metrics_dose"]).get("settings", {})
    sec.notes.append(f"Inside the phantom ({side.get('mask', 'body mask')}); SSIM with a {side.get('ssim_window', 7)}-voxel "
                     f"3-D window, L = {side.get('data_range_hu', 3000):g} HU, C1 = {side.get('c1', 900):g}, "
                     f"C2 = {side.get('c2', 8100):g} HU^2; PSNR peak {side.get('psnr_peak_hu', 3000):g} HU. "
                     "Mean ± sd over repetitions.")
    for metric, fmt in (("ssim", "{:.3f}"), ("rmse_hu", "{:.1f}"), ("psnr_db", "{:.1f}")):
        t = by_dose.assign(cell=_mean_sd(by_dose[f"{metric}_mean"], by_dose[f"{metric}_sd"], fmt))
        wide = t.pivot_table(index=["scanner", "recon"], columns="dose_mgy", values="cell", aggfunc="first")
        wide.columns = [f"{c:g} mGy" for c in wide.columns]
        sec.tables.append((f"{metric} against the scanner's reference-dose series (Table 6 layout)", wide.reset_index()))
    by_scanner = _read_csv(files["image_metrics_scanner"])
    if by_scanner is not None:
        t = by_scanner.copy()
        for metric, fmt in (("ssim", "{:.3f}"), ("rmse_hu", "{:.1f}"), ("psnr_db", "{:.1f}")):
            t[metric] = _mean_sd(t[f"{metric}_mean"], t[f"{metric}_sd"], fmt)
        sec.tables.append(("Each scanner against the reference scanner (Tables 3-5 layout)",
                           t[["scanner", "reference_scanner", "recon", "dose_mgy", "ssim", "rmse_hu", "psnr_db", "n"]]))
    for fig in sorted(files["image_metrics_figs"].glob("*ssim*.png")):
        sec.figures.append((fig.stem.replace("_", " "), fig))
    return sec


def provenance_section(results: Path) -> Section:
    sec = Section("Provenance")
    sidecars = {f"features/{n}": ResultsLayout(results).feature_table(n) for n in EXTRACTORS}
    files = analysis_files(results)
    sidecars.update({"icc": files["icc_summary"], "classify": files["cross_dose_matrix"],
                     "image_metrics": files["image_metrics_dose"]})
    rows, versions = [], {}
    for step, out in sidecars.items():
        side = read_sidecar(out)
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


def build_sections(results: str | os.PathLike) -> list[Section]:
    """All report sections in order; each says what is missing instead of failing."""
    results = Path(results)
    return [data_section(results), feature_section(results), icc_section(results), umap_section(results),
            classify_section(results), image_metrics_section(results), provenance_section(results)]


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}th,td{border:1px solid #ccc;padding:.2em .5em}
th{background:#f0f0f0}.warn{background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;font-weight:bold}
.missing{color:#a00}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}"""


def render_html(sections: list[Section], title: str) -> str:
    """One self-contained HTML page (figures embedded as base64 PNG)."""
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
            out.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
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
            out += [f"![{caption}]({rel.as_posix()})", ""]
    return "\n".join(out)


def write_report(results: str | os.PathLike, title: str = "CT dose impact on AI features: report") -> tuple[Path, Path]:
    """Write ``<results>/report.html`` (self-contained) and ``<results>/report.md``; returns both paths."""
    results = Path(results)
    sections = build_sections(results)
    html_path = write_text(render_html(sections, title), ResultsLayout(results).report)
    md_path = write_text(render_markdown(sections, title, results), results / "report.md")
    return html_path, md_path
