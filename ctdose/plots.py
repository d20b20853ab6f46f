"""Figures of the analysis step (matplotlib Agg): each saved as PNG (150 dpi) and PDF, atomically."""

from __future__ import annotations

import os
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
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically and close the figure."""
    paths = figure_files(stem)
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return paths


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
    if caption:
        fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top", wrap=True)
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
    if caption:
        fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top", wrap=True)
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
    if caption:
        fig.text(0.01, -0.04, caption, fontsize=7, ha="left", va="top", wrap=True)
    return save_figure(fig, stem)
