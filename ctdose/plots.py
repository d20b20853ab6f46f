"""Figures of the analysis step (matplotlib Agg): each saved as PNG (150 dpi) and PDF, atomically."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ctdose.atomic import atomic_path  # noqa: E402

DPI = 150


def figure_files(stem: str | os.PathLike) -> list[Path]:
    """The files :func:`save_figure` writes for ``stem``: ``<stem>.png`` and ``<stem>.pdf``."""
    stem = Path(stem)
    return [stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "pdf")]


def save_figure(fig: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically and close the figure.

    Both files are cropped to the box ``bbox_inches="tight"`` finds (every artist's extent plus the
    ``savefig.pad_inches`` margin), computed once for the two: ``"tight"`` lays the whole figure out
    again for each file, about 40 % of writing the pair.
    """
    paths = figure_files(stem)
    fig.draw_without_rendering()
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=DPI, bbox_inches=box)
    plt.close(fig)
    return paths


#: Caption font size (points) and the width of its average character in ems (DejaVu Sans runs about
#: 0.5-0.55; the margin keeps a line of wide characters inside the figure).
CAPTION_FONTSIZE = 7
CAPTION_EM_PER_CHAR = 0.6


def caption_below(fig: plt.Figure, caption: str, y: float = -0.02) -> None:
    """Write ``caption`` under the panels (figure coordinates x = 0.01, ``y``), broken into lines that
    fit the figure's width; nothing when it is empty.

    The lines are broken by character count (``textwrap``) rather than by matplotlib's ``wrap=True``,
    which measures the text word by word at every draw: about 0.3 s a figure for a long caption, most
    of an analysis step's figure time and of the tests that draw them.
    """
    if not caption:
        return
    width_pt = fig.get_figwidth() * 72.0 * 0.98
    chars = max(20, int(width_pt / (CAPTION_FONTSIZE * CAPTION_EM_PER_CHAR)))
    lines = [textwrap.fill(part, chars) if part else part for part in caption.split("\n")]
    fig.text(0.01, y, "\n".join(lines), fontsize=CAPTION_FONTSIZE, ha="left", va="top")


def _grouped_boxes(ax: plt.Axes, data: pd.DataFrame, x: str, hue: str, value: str,
                   x_order: list, hue_order: list) -> None:
    """Boxplots of ``value`` per ``x`` category with one box per ``hue`` level side by side."""
    width = 0.8 / max(len(hue_order), 1)
    colours = plt.get_cmap("tab10")
    for h, level in enumerate(hue_order):
        series = [data.loc[(data[x] == xv) & (data[hue] == level), value].dropna().to_numpy() for xv in x_order]
        positions = np.arange(len(x_order)) - 0.4 + width * (h + 0.5)
        keep = [i for i, s in enumerate(series) if s.size]
        if not keep:
            continue
        bp = ax.boxplot([series[i] for i in keep], positions=positions[keep], widths=width * 0.9,
                        patch_artist=True, showfliers=False, manage_ticks=False)
        for box in bp["boxes"]:
            box.set_facecolor(colours(h))
            box.set_alpha(0.75)
        ax.plot([], [], "s", color=colours(h), label=str(level))
    ax.set_xticks(np.arange(len(x_order)))
    ax.set_xticklabels([f"{v:g}" if isinstance(v, float) else str(v) for v in x_order])


#: Display order of reconstruction labels; others (e.g. averaged "FBP+IR") follow alphabetically.
_RECON_ORDER = {"FBP": 0, "IR": 1, "DL": 2}


def _recon_labels(per_feature: pd.DataFrame) -> list[str]:
    labels = per_feature["recon"].astype(str).unique()
    return sorted(labels, key=lambda r: (_RECON_ORDER.get(r, len(_RECON_ORDER)), r))


def icc_boxplot_caption(per_feature: pd.DataFrame) -> str:
    """One line naming the reconstructions the ICC boxplots pool, or that there is one (or one average)."""
    recons = _recon_labels(per_feature)
    averaged = [r for r in recons if "+" in r]
    text = (f"Reconstructions averaged before the ICC: {', '.join(averaged)}. " if averaged else "")
    if len(recons) == 1:
        return text + f"Reconstruction: {recons[0]} only."
    return (text + f"Reconstructions {', '.join(recons)} analysed apart; panels 1-2 pool them "
            f"(one value per feature x reconstruction), panel 3 shows each apart.")


def icc_boxplot_figure(per_feature: pd.DataFrame, value: str = "icc3_1") -> tuple[plt.Figure, str]:
    """The ICC boxplot figure and its caption (also its title): extractors side by side, per scanner
    (dose view), per dose (scanner view), and pooled over groups with each reconstruction apart."""
    ok = per_feature[per_feature["status"] == "ok"]
    extractors = list(dict.fromkeys(ok["extractor"]))
    recons = _recon_labels(ok)
    caption = icc_boxplot_caption(ok)
    fig, axes = plt.subplots(1, 3, figsize=(18 + len(recons), 5.2),
                             gridspec_kw={"width_ratios": [3, 1.5, 0.4 + 0.8 * len(recons)]})
    label = "ICC(3,1)" if value == "icc3_1" else "ICC(3,k)"
    pooled_recons = "" if len(recons) == 1 else f" ({', '.join(recons)} pooled)"
    panels = [("dose", "scanner", "scanner", f"{label} across doses, per scanner{pooled_recons}"),
              ("scanner", "dose_mgy", "dose (mGy)", f"{label} across scanners, per dose{pooled_recons}")]
    for ax, (view, x, xlabel, title) in zip(axes[:2], panels):
        sub = ok[ok["view"] == view]
        _grouped_boxes(ax, sub, x, "extractor", value, sorted(sub[x].unique()), extractors)
        ax.set(xlabel=xlabel, ylabel=label, title=title)
    names = {"dose": "doses", "scanner": "scanners"}
    pooled = ok.assign(panel=ok["view"].map(names) + "\n" + ok["recon"].astype(str))
    order = [f"{names[v]}\n{r}" for v in ("dose", "scanner") for r in recons]
    _grouped_boxes(axes[2], pooled, "panel", "extractor", value, [o for o in order if o in set(pooled["panel"])],
                   extractors)
    axes[2].set(xlabel="across doses / scanners, per reconstruction", ylabel=label,
                title=f"{label} pooled over groups, per reconstruction")
    axes[2].legend(title="extractor", fontsize=8, loc="lower left")
    for ax in axes:
        ax.axhline(0.75, ls="--", lw=0.8, color="grey")
        ax.axhline(0.9, ls=":", lw=0.8, color="grey")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(caption, fontsize=10)
    return fig, caption


def icc_boxplots(per_feature: pd.DataFrame, stem: str | os.PathLike,
                 value: str = "icc3_1") -> tuple[list[Path], str]:
    """Write the ICC boxplots (:func:`icc_boxplot_figure`) as ``<stem>.png/.pdf``; returns the files
    and the caption naming the reconstructions pooled."""
    fig, caption = icc_boxplot_figure(per_feature, value)
    return save_figure(fig, stem), caption


def accuracy_heatmap(mean: pd.DataFrame, sd: pd.DataFrame, title: str, stem: str | os.PathLike,
                     chance: float | None = None, n: int | None = None,
                     over: str = "held-out scanners") -> list[Path]:
    """Cross-dose accuracy heat map: rows = training dose, columns = test dose; cells 'mean ± sd'.

    ``n``, ``over``: how many of what each cell's mean and sd are taken over (written under the map);
    ``chance``: the chance level (majority-class share), written under the map and dashed on the colour bar.
    """
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    im = ax.imshow(mean.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m, s = mean.iat[i, j], sd.iat[i, j]
            text = f"{m:.2f}" + ("" if np.isnan(s) else f"\n±{s:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if m < 0.6 else "black")
    ax.set_xticks(range(mean.shape[1]), [f"{v:g}" for v in mean.columns])
    ax.set_yticks(range(mean.shape[0]), [f"{v:g}" for v in mean.index])
    ax.set(xlabel="test dose (mGy), held-out scanner", ylabel="training dose (mGy)", title=title)
    bar = fig.colorbar(im, ax=ax, label=f"accuracy (mean over {over})")
    note = [f"cells: mean ± sd over {n if n is not None else 'the'} {over}"]
    if chance is not None:
        bar.ax.axhline(chance, ls="--", color="white", lw=1.2)
        note.append(f"chance (majority class) = {chance:.2f}, dashed on the colour bar")
    fig.text(0.5, 0.0, "; ".join(note), ha="center", va="top", fontsize=7)
    return save_figure(fig, stem)


def accuracy_curves(curves: dict[str, pd.DataFrame], title: str, xlabel: str,
                    stem: str | os.PathLike) -> list[Path]:
    """Accuracy (mean ± sd) against ``n_train`` with one line per extractor, chance level dashed.

    Each curve is a frame with ``n_train, mean, sd, n, over, chance`` (as
    :func:`ctdose.stats.classify.curve` returns): the y label says what the sd is over and how many.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        ax.errorbar(c["n_train"], c["mean"], yerr=c["sd"].fillna(0), marker="o", ms=3, capsize=2, label=name)
    frames = list(curves.values())
    chances = sorted({round(float(v), 3) for c in frames for v in c["chance"]})
    for level in chances:
        ax.axhline(level, ls="--", lw=1, color="grey", label=f"chance (majority class) {level:.2f}")
    counts = sorted({int(v) for c in frames for v in c["n"]})
    overs = sorted({str(v) for c in frames for v in c["over"]})
    n_text = "-".join(map(str, counts[:1] + counts[-1:] if len(counts) > 1 else counts))
    ax.set(xlabel=xlabel, ylabel=f"accuracy, mean ± sd over {n_text} {' / '.join(overs)}", title=title,
           ylim=(0, 1.02))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(title="extractor", fontsize=8)
    return save_figure(fig, stem)


def umap_panels(embedding: np.ndarray, ident: pd.DataFrame, title: str, stem: str | os.PathLike) -> list[Path]:
    """Three scatter panels of a 2-D embedding (rows, 2): coloured by ROI class, manufacturer, dose."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, column, label in zip(axes, ("roi_class", "manufacturer", "dose_mgy"),
                                 ("ROI class", "manufacturer", "dose (mGy)")):
        if column == "dose_mgy":
            sc = ax.scatter(embedding[:, 0], embedding[:, 1], c=ident[column].to_numpy(float), s=6,
                            cmap="plasma", alpha=0.8)
            fig.colorbar(sc, ax=ax, label=label)
        else:
            cmap = plt.get_cmap("tab10")
            for n, level in enumerate(sorted(ident[column].astype(str).unique())):
                sel = (ident[column].astype(str) == level).to_numpy()
                ax.scatter(embedding[sel, 0], embedding[sel, 1], s=6, color=cmap(n % 10), alpha=0.8, label=level)
            ax.legend(title=label, fontsize=7, markerscale=2)
        ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title=f"{title}: {label}")
    return save_figure(fig, stem)


def metric_bars(table: pd.DataFrame, metric: str, x: str, hue: str, title: str,
                stem: str | os.PathLike, caption: str = "") -> list[Path]:
    """Mean ± sd bars of ``metric`` (columns ``<metric>_mean`` / ``<metric>_sd``) per ``x`` and ``hue``;
    ``caption`` (what each bar pools, over how many) is written below the axes."""
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * table[x].nunique() * max(table[hue].nunique(), 1)), 4))
    xs = sorted(table[x].unique())
    hues = sorted(table[hue].unique())
    width = 0.8 / max(len(hues), 1)
    for h, level in enumerate(hues):
        sub = table[table[hue] == level].set_index(x).reindex(xs)
        ax.bar(np.arange(len(xs)) - 0.4 + width * (h + 0.5), sub[f"{metric}_mean"], width,
               yerr=sub[f"{metric}_sd"].fillna(0), capsize=2, label=f"{level:g}" if isinstance(level, float) else str(level))
    ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set(xlabel=x, ylabel=metric, title=title)
    ax.legend(title=hue, fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    caption_below(fig, caption)
    return save_figure(fig, stem)


def metric_matrix(matrix: pd.DataFrame, metric: str, title: str, stem: str | os.PathLike,
                  caption: str = "") -> list[Path]:
    """Scanner x scanner heat map of ``metric`` (square ``matrix``, NaN = unmeasured), values written in
    the cells (lower triangle and diagonal, as the dataset paper's Tables 3-5); ``caption`` below it."""
    n = len(matrix)
    values = matrix.to_numpy(dtype=float)
    shown = np.where(np.tril(np.ones((n, n), bool)), values, np.nan)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    im = ax.imshow(shown, cmap="viridis_r" if metric == "rmse_hu" else "viridis")
    fmt = "{:.3f}" if metric == "ssim" else "{:.1f}"
    for i in range(n):
        for j in range(i + 1):
            if np.isfinite(shown[i, j]):
                r, g, b, _ = im.cmap(im.norm(shown[i, j]))
                ax.text(j, i, fmt.format(shown[i, j]), ha="center", va="center", fontsize=6,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.set_xticks(range(n), list(matrix.columns), rotation=90)
    ax.set_yticks(range(n), list(matrix.index))
    ax.set(xlabel="scanner b (grid)", ylabel="scanner a", title=title)
    fig.colorbar(im, ax=ax, label=metric)
    caption_below(fig, caption)
    return save_figure(fig, stem)


def ours_vs_published(dose_cells: pd.DataFrame, pair_cells: pd.DataFrame, title: str,
                      stem: str | os.PathLike, caption: str = "") -> list[Path]:
    """One scatter panel per metric: our mean (y) against the published mean (x), with the identity line.

    ``dose_cells``: Table 6 cells, ``pair_cells``: scanner-pair cells (columns metric, twin_mean,
    paper_mean, status; pair cells also diagonal), as :mod:`ctdose.published` writes them; only rows with
    status "compared" are drawn (circles: Table 6, triangles: scanner pairs, squares: their diagonal).
    ``caption`` below the panels.
    """
    metrics = list(dict.fromkeys([*dose_cells["metric"], *pair_cells["metric"]]))
    if not metrics:
        raise ValueError("no cells to draw")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.4), squeeze=False)
    diagonal = pair_cells["diagonal"].astype(str).str.lower() == "true" if len(pair_cells) else pd.Series(dtype=bool)
    groups = [("Table 6 (vs 14 mGy)", dose_cells, None, "o", "tab:blue"),
              ("scanner pairs", pair_cells, False, "^", "tab:orange"),
              ("repeated scans (diagonal)", pair_cells, True, "s", "tab:green")]
    for ax, metric in zip(axes[0], metrics):
        lo, hi = np.inf, -np.inf
        for label, cells, diag, marker, colour in groups:
            sel = (cells["metric"] == metric) & (cells["status"] == "compared")
            if diag is not None:
                sel &= diagonal == diag
            x, y = cells.loc[sel, "paper_mean"].to_numpy(float), cells.loc[sel, "twin_mean"].to_numpy(float)
            if x.size:
                ax.scatter(x, y, s=16, marker=marker, color=colour, alpha=0.75, label=f"{label}, {x.size}")
                lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
        if np.isfinite(lo):
            pad = 0.05 * (hi - lo or abs(hi) or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8, ls="--", label="identity")
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no cell compared", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel=f"published {metric}", ylabel=f"ours {metric}", title=metric)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    caption_below(fig, caption)
    return save_figure(fig, stem)


def confusion_panels(confusion: pd.DataFrame, title: str, stem: str | os.PathLike,
                     caption: str = "") -> list[Path]:
    """One confusion-matrix panel per ``model`` of ``confusion`` (long: model, true_dose, pred_dose,
    count): rows = true dose, columns = predicted dose (mGy), colour = share of the true dose's rows,
    cells = counts; ``caption`` (how the counts were pooled) is written below the panels."""
    models = list(dict.fromkeys(confusion["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models) + 1.2, 3.8), squeeze=False,
                             layout="constrained")
    for n, (ax, model) in enumerate(zip(axes[0], models)):
        counts = (confusion[confusion["model"] == model]
                  .pivot(index="true_dose", columns="pred_dose", values="count").fillna(0))
        shares = counts.to_numpy(float) / np.maximum(counts.to_numpy(float).sum(axis=1, keepdims=True), 1)
        im = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                ax.text(j, i, f"{int(counts.iat[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
        ax.set_xticks(range(counts.shape[1]), [f"{v:g}" for v in counts.columns])
        ax.set_yticks(range(counts.shape[0]), [f"{v:g}" for v in counts.index])
        accuracy = np.trace(counts.to_numpy()) / max(counts.to_numpy().sum(), 1)
        ax.set(xlabel="predicted dose (mGy)", ylabel="true dose (mGy)" if n == 0 else "",
               title=f"{model} (accuracy {accuracy:.2f})")
    fig.colorbar(im, ax=list(axes[0]), label="share of the true dose's test rows", shrink=0.8)
    fig.suptitle(title, y=1.06)  # above the panel titles
    caption_below(fig, caption, y=-0.04)
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- paper figures (Figs. 4-6)

from typing import TYPE_CHECKING  # noqa: E402


def _category_colours(levels: list[str]) -> dict[str, tuple]:
    """One colour per level: tab10 up to 10 levels, tab20 up to 20, then a cycle through tab20."""
    cmap = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
    return {level: cmap(n % cmap.N) for n, level in enumerate(levels)}


def umap_category_panels(embedding: np.ndarray, ident: pd.DataFrame, columns: list[tuple[str, str]],
                         title: str, stem: str | os.PathLike, caption: str = "") -> list[Path]:
    """One scatter panel of a 2-D embedding (rows, 2) per (identity column, label) of ``columns``,
    each coloured by that column's levels (the dataset paper's Figs. 5-6); ``caption`` below them."""
    embedding = np.asarray(embedding, float)
    if embedding.ndim != 2 or embedding.shape[1] != 2 or len(embedding) != len(ident):
        raise ValueError(f"embedding of shape {embedding.shape} does not match {len(ident)} identity rows x 2")
    fig, axes = plt.subplots(1, len(columns), figsize=(7.0 * len(columns), 4.8), squeeze=False)
    fig.subplots_adjust(wspace=0.45)  # room for each panel's legend outside its axes
    for ax, (column, label) in zip(axes[0], columns):
        values = ident[column].astype(str).to_numpy()
        colours = _category_colours(sorted(set(values)))
        for level, colour in colours.items():
            sel = values == level
            ax.scatter(embedding[sel, 0], embedding[sel, 1], s=8, color=colour, alpha=0.8, label=level)
        ax.legend(title=label, fontsize=7, markerscale=2, ncol=1 + (len(colours) > 10),
                  bbox_to_anchor=(1.01, 1), loc="upper left")
        ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title=f"{title}: by {label}")
    caption_below(fig, caption)
    return save_figure(fig, stem)


def umap_small_multiples(panels: dict[str, tuple[np.ndarray, pd.DataFrame]], colour: str, title: str,
                         stem: str | os.PathLike, caption: str = "", columns: int = 5) -> list[Path]:
    """Small multiples: one scatter panel per key of ``panels`` (e.g. per scanner: its embedding (rows, 2)
    and identity rows), every panel coloured by the levels of ``colour`` (e.g. dose_mgy) with one legend
    for all; ``caption`` below the grid."""
    if not panels:
        raise ValueError("no panels to draw")
    levels = sorted({v for _, ident in panels.values() for v in ident[colour]},
                    key=lambda v: (not isinstance(v, (int, float)), v))
    cmap = plt.get_cmap("plasma")
    shades = {v: cmap(0.9 * n / max(len(levels) - 1, 1)) for n, v in enumerate(levels)}
    ncol = min(columns, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow + 0.6), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (key, (emb, ident)) in zip(axes.ravel(), panels.items()):
        emb = np.asarray(emb, float)
        for v in levels:
            sel = (ident[colour] == v).to_numpy()
            if sel.any():
                ax.scatter(emb[sel, 0], emb[sel, 1], s=5, color=shades[v], alpha=0.8)
        ax.set_title(f"{key} ({len(emb)} rows)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], ls="", marker="o", color=shades[v], label=f"{v:g}" if isinstance(v, float) else str(v))
               for v in levels]
    fig.legend(handles=handles, title=colour.replace("_mgy", " (mGy)"), loc="upper right", fontsize=8)
    fig.suptitle(title)
    caption_below(fig, caption, y=0.0)
    return save_figure(fig, stem)


def window_to_grey(hu: np.ndarray, level: float = 50.0, width: float = 400.0) -> np.ndarray:
    """HU (any shape) to display grey 0..1 through a CT window: level - width/2 -> 0, level + width/2 -> 1."""
    if width <= 0:
        raise ValueError(f"window width {width}; must be > 0")
    return np.clip((np.asarray(hu, float) - (level - width / 2.0)) / width, 0.0, 1.0)


def texture_panels(slices: dict[str, np.ndarray], pixel_mm: tuple[float, float], title: str,
                   stem: str | os.PathLike, caption: str = "", level: float = 50.0, width: float = 400.0,
                   columns: int = 5) -> list[Path]:
    """Fig. 4 layout: one axial slice (rows, cols) in HU per key (scanner), shown through the window
    ``level`` / ``width`` HU with square pixels of ``pixel_mm`` (row, col) mm; ``caption`` below."""
    if not slices:
        raise ValueError("no slices to draw")
    ncol = min(columns, len(slices))
    nrow = -(-len(slices) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.8 * ncol, 2.9 * nrow + 0.5), squeeze=False)
    for ax in axes.ravel()[len(slices):]:
        ax.set_visible(False)
    for ax, (key, image) in zip(axes.ravel(), slices.items()):
        rows, cols = np.asarray(image).shape
        ax.imshow(window_to_grey(image, level, width), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, cols * pixel_mm[1], rows * pixel_mm[0], 0))
        ax.set_title(str(key), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} (window level {level:g} / width {width:g} HU)")
    caption_below(fig, caption, y=0.0)
    return save_figure(fig, stem)


if TYPE_CHECKING:
    from ctdose.stats.embedding import PaperUMAP


def paper_umap_figure(figure: PaperUMAP, title: str, stem: str | os.PathLike) -> list[Path]:
    """Draw a :class:`ctdose.stats.embedding.PaperUMAP`: the per-scanner small multiples coloured by
    dose, or the panels of one embedding coloured by each of its ``colour_by`` columns (Figs. 5-6)."""
    if figure.skipped:
        raise ValueError(f"{figure.kind} UMAP figure was skipped ({figure.skipped}); nothing to draw")
    if figure.kind == "per_scanner":
        return umap_small_multiples(figure.panels, figure.colour_by[0][0], title, stem, figure.caption)
    (emb, ident), = figure.panels.values()
    return umap_category_panels(emb, ident, figure.colour_by, title, stem, figure.caption)
