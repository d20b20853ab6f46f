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


def icc_boxplots(per_feature: pd.DataFrame, stem: str | os.PathLike, value: str = "icc3_1") -> list[Path]:
    """ICC boxplots, extractors side by side: per scanner (dose view), per dose (scanner view), pooled."""
    ok = per_feature[per_feature["status"] == "ok"]
    extractors = list(dict.fromkeys(ok["extractor"]))
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw={"width_ratios": [3, 1.5, 1]})
    label = "ICC(3,1)" if value == "icc3_1" else "ICC(3,k)"
    panels = [("dose", "scanner", "scanner", f"{label} across doses, per scanner"),
              ("scanner", "dose_mgy", "dose (mGy)", f"{label} across scanners, per dose")]
    for ax, (view, x, xlabel, title) in zip(axes[:2], panels):
        sub = ok[ok["view"] == view]
        _grouped_boxes(ax, sub, x, "extractor", value, sorted(sub[x].unique()), extractors)
        ax.set(xlabel=xlabel, ylabel=label, title=title)
        ax.axhline(0.75, ls="--", lw=0.8, color="grey")
        ax.axhline(0.9, ls=":", lw=0.8, color="grey")
    pooled = ok.assign(view_name=ok["view"].map({"dose": "across doses", "scanner": "across scanners"}))
    _grouped_boxes(axes[2], pooled, "view_name", "extractor", value,
                   [v for v in ("across doses", "across scanners") if v in set(pooled["view_name"])], extractors)
    axes[2].set(xlabel="view", ylabel=label, title=f"{label} pooled")
    axes[2].legend(title="extractor", fontsize=8, loc="lower left")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, stem)


def accuracy_heatmap(mean: pd.DataFrame, sd: pd.DataFrame, title: str, stem: str | os.PathLike) -> list[Path]:
    """Cross-dose accuracy heat map: rows = training dose, columns = test dose; cells 'mean ± sd'."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(mean.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m, s = mean.iat[i, j], sd.iat[i, j]
            text = f"{m:.2f}" + ("" if np.isnan(s) else f"\n±{s:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if m < 0.6 else "black")
    ax.set_xticks(range(mean.shape[1]), [f"{v:g}" for v in mean.columns])
    ax.set_yticks(range(mean.shape[0]), [f"{v:g}" for v in mean.index])
    ax.set(xlabel="test dose (mGy), held-out scanner", ylabel="training dose (mGy)", title=title)
    fig.colorbar(im, ax=ax, label="accuracy (mean over held-out scanners)")
    return save_figure(fig, stem)


def accuracy_curves(curves: dict[str, pd.DataFrame], title: str, xlabel: str,
                    stem: str | os.PathLike) -> list[Path]:
    """Accuracy (mean ± sd) against ``n_train`` with one line per extractor."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        ax.errorbar(c["n_train"], c["mean"], yerr=c["sd"].fillna(0), marker="o", ms=3, capsize=2, label=name)
    ax.set(xlabel=xlabel, ylabel="accuracy", title=title, ylim=(0, 1.02))
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
                stem: str | os.PathLike) -> list[Path]:
    """Mean ± sd bars of ``metric`` (columns ``<metric>_mean`` / ``<metric>_sd``) per ``x`` and ``hue``."""
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
    return save_figure(fig, stem)
