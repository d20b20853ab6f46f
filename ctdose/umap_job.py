"""One extractor's UMAP of analyze/umap_plots.py as a picklable task: embed its standardised features
(:mod:`ctdose.stats.embedding`), draw the three-panel figure and the papers' layouts (:mod:`ctdose.plots`),
and write the embedding table with its sidecar (figure captions, skipped figures, provenance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctdose.atomic import write_csv
from ctdose.features import load_tables
from ctdose.layout import ResultsLayout
from ctdose.plots import figure_files, paper_umap_figure, umap_panels
from ctdose.protocols import get_protocol
from ctdose.provenance import write_sidecar
from ctdose.stats.embedding import UMAPSettings, embed, embedding_frame, paper_umaps


@dataclass(frozen=True)
class UMAPJob:
    """One extractor's embedding and figures (plain fields: it travels to a worker process)."""

    results: str                # results folder
    name: str                   # extractor
    table: str                  # its feature table (the sidecar's input)
    settings: UMAPSettings
    record: dict[str, Any]      # the run's settings (sidecar), with figure_dose, figure_roi, per_scanner
    protocol: str


def run_umap(job: UMAPJob) -> None:
    """Embed one extractor's table, draw its figures and write its embedding table and sidecar."""
    layout, name, record = ResultsLayout(job.results), job.name, job.record
    table = load_tables(layout.root, [name])[name]
    emb = embed(table, job.settings)
    title = f"{name}{' (UNTRAINED weights)' if table.untrained else ''}"
    figures = figure_files(layout.umap_figure(name))
    umap_panels(emb, table.ident, title, layout.umap_figure(name))
    captions, skipped = {}, {}
    for fig in paper_umaps(table, emb, job.settings, record["figure_dose"], record["figure_roi"],
                           record["per_scanner"]):
        stem = layout.umap_paper_figure(name, fig.kind)
        for f in figure_files(stem):  # a figure skipped now must not survive from an earlier run
            f.unlink(missing_ok=True)
        if fig.skipped:
            skipped[fig.kind] = fig.skipped
            continue
        figures += paper_umap_figure(fig, title, stem)
        captions[fig.kind] = fig.caption
    out = layout.umap_table(name)
    write_csv(embedding_frame(table, emb), out)
    write_sidecar(out, record, inputs=[Path(job.table)], outputs=figures,
                  untrained=table.untrained, protocol_reproduces=get_protocol(job.protocol).reproduces,
                  figure_captions=captions, figures_skipped=skipped)
