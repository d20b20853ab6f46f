"""The papers' figures: Fig. 4 (registered texture per scanner), Figs. 5-6 and the UMAP per scanner
(rows, captions, skips), PNG + PDF twins, and the report's figure links, anchors and embedded images."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from ctdose.atomic import write_csv, write_json
from ctdose.dicom_io import CTSeriesMeta, write_ct_series
from ctdose.features import FeatureTable, synthetic_feature_table
from ctdose.label_map_io import write_label_map
from ctdose.layout import CATALOG_COLUMNS, IDENTITY_COLUMNS, ResultsLayout, feature_columns
from ctdose.plots import (figure_files, paper_umap_figure, texture_panels, umap_category_panels,
                          window_to_grey)
from ctdose.provenance import write_sidecar
from ctdose.report import Section, render_html, render_markdown
from ctdose.stats import embedding
from ctdose.texture import TextureSettings, texture_figure, texture_series
from ctdose.transform_io import save_transform
from ctdose.volume import Volume


def _table(df: pd.DataFrame, name: str = "syn") -> FeatureTable:
    names = feature_columns(list(df.columns))
    return FeatureTable(name, df[list(IDENTITY_COLUMNS)].copy(), df[names].to_numpy(float), names)


@pytest.fixture
def linear_embed(monkeypatch):
    """UMAP replaced by the first two standardised features (no numba compile; the rows are what is tested)."""
    calls = []

    def fake(table, settings):
        if len(table.X) < 4:
            raise ValueError(f"{table.name}: {len(table.X)} rows are too few for UMAP")
        calls.append(table.ident.copy())
        return embedding.standardised_features(table)[:, :2]

    monkeypatch.setattr(embedding, "embed", fake)
    return calls


def test_paper_umaps_select_the_papers_rows_and_say_how_many(linear_embed, tmp_path):
    df = synthetic_feature_table("syn", scanners=("A1", "B1", "C1"), doses=(1, 10, 14), recons=("FBP", "IR"),
                                 patches_per_roi=2, n_features=5, seed=0)
    table = _table(df)
    first = df["roi"].iloc[0]
    settings = embedding.UMAPSettings(n_neighbors=5, epochs=5)
    figs = {f.kind: f for f in embedding.paper_umaps(table, np.zeros((len(df), 2)), settings)}
    fig5, fig6, per = figs["fig5_roi"], figs["fig6_rois"], figs["per_scanner"]
    # Fig. 5: exactly the rows of the first ROI at 10 mGy (counted from the frame, not from the code)
    (_, ident5), = fig5.panels.values()
    expected5 = df[(df["dose_mgy"] == 10) & (df["roi"] == first)]
    assert sorted(ident5["series_uid"] + ident5["patch"].astype(str)) == sorted(
        expected5["series_uid"] + expected5["patch"].astype(str))
    n_series = expected5["series_uid"].nunique()
    assert f"ROI {first} at 10 mGy" in fig5.caption and f"{n_series} series (3 scanners" in fig5.caption
    assert f"{len(expected5)} patch rows" in fig5.caption and "by scanner" in fig5.caption
    # Fig. 6: every ROI at 10 mGy, by manufacturer and ROI class
    (_, ident6), = fig6.panels.values()
    assert len(ident6) == int((df["dose_mgy"] == 10).sum()) and set(ident6["dose_mgy"]) == {10}
    assert f"all {df['roi'].nunique()} ROIs" in fig6.caption and [c for c, _ in fig6.colour_by] == [
        "manufacturer", "roi_class"]
    # per scanner (shared): the all-rows embedding split, every row once
    assert sorted(per.panels) == ["A1", "B1", "C1"]
    assert sum(len(e) for e, _ in per.panels.values()) == len(df) and f"{len(df)} rows in all" in per.caption
    for stem_kind, fig in figs.items():
        files = paper_umap_figure(fig, "syn", tmp_path / stem_kind)
        assert [f.suffix for f in files] == [".png", ".pdf"] and all(f.stat().st_size > 0 for f in files)
        Image.open(files[0]).verify()
    assert files[1].read_bytes()[:5] == b"%PDF-"


def test_paper_umaps_skip_without_rows_and_fit_per_scanner(linear_embed):
    df = synthetic_feature_table("syn", scanners=("A1", "B1"), doses=(1, 14), patches_per_roi=2, n_features=4,
                                 seed=1)
    settings = embedding.UMAPSettings(n_neighbors=5, epochs=5)
    figs = {f.kind: f for f in embedding.paper_umaps(_table(df), np.zeros((len(df), 2)), settings,
                                                     per_scanner="fit")}
    assert figs["fig5_roi"].skipped.startswith("no rows of ROI") and "doses present: 1, 14" in figs["fig6_rois"].skipped
    assert not figs["per_scanner"].skipped and "one UMAP fitted on each scanner's rows" in figs["per_scanner"].caption
    fitted = [c for c in linear_embed if c["scanner"].nunique() == 1]
    assert sorted(c["scanner"].iloc[0] for c in fitted) == ["A1", "B1"]
    with pytest.raises(ValueError, match="per-scanner UMAP mode"):
        embedding.paper_umaps(_table(df), np.zeros((len(df), 2)), settings, per_scanner="each")
    with pytest.raises(ValueError, match="skipped"):
        paper_umap_figure(figs["fig5_roi"], "syn", Path("unused"))


def test_window_to_grey_by_hand():
    # level 50 / width 400: -150 HU -> 0, 250 HU -> 1, linear between, clipped outside
    assert window_to_grey(np.array([-1000, -150, 50, 150, 250, 3000])).tolist() == [0, 0, 0.5, 0.75, 1, 1]
    with pytest.raises(ValueError):
        window_to_grey(np.zeros(2), width=0)


def _phantom(shape=(12, 40, 40)) -> np.ndarray:
    """A textured disc (HU): x-dependent stripes, so a misregistration shows as a shift of the stripes."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]].astype(float)
    inside = (y - 20) ** 2 + (x - 20) ** 2 < 17 ** 2
    return np.where(inside, 40.0 + 60.0 * np.sin(x / 2.0) + 2.0 * z, -1000.0)


@pytest.fixture
def prepared(tmp_path):
    """3 scanners at 10 mGy: A1 (reference, IR), B1 (IR, shifted +3 mm in x with its transform), C1 (FBP
    only); reference.json, the reference label map (one ROI cube) and every transform, with sidecars."""
    layout = ResultsLayout(tmp_path / "results")
    rows = []
    truth = _phantom()
    for n, (scanner, recon, shift) in enumerate((("A1", "IR", 0.0), ("B1", "IR", 3.0), ("C1", "FBP", 0.0))):
        uid = f"1.2.826.0.1.3680043.9.77.{n}"
        # the series sees the phantom moved by +shift mm in x: series point = reference point + shift
        vol = Volume(truth, origin=(shift, 0, 0), spacing=(1, 1, 2))
        folder = tmp_path / "dicom" / uid
        write_ct_series(vol, folder, CTSeriesMeta(series_uid=uid, ctdivol=10.0, station=scanner))
        save_transform(sitk.TranslationTransform(3, (shift, 0.0, 0.0)), layout.transform(uid))
        write_sidecar(layout.transform(uid), {"series_uid": uid})
        row = {c: "" for c in CATALOG_COLUMNS}
        row.update(series_uid=uid, path=str(folder), scanner=scanner, manufacturer="M", model="m", dose_mgy=10.0,
                   recon=recon, repetition=1)
        rows.append(row)
    catalog = pd.DataFrame(rows, columns=list(CATALOG_COLUMNS))
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, {})
    ref = rows[0]["series_uid"]
    write_json({"series_uid": ref}, layout.reference)
    write_sidecar(layout.reference, {"series_uid": ref})
    labels = np.zeros(truth.shape, np.uint8)
    labels[5:8, 18:23, 10:15] = 1   # ROI "lesion": center (i, j, k) = (12, 20, 6)
    write_label_map(labels, Volume(truth, origin=(0, 0, 0), spacing=(1, 1, 2)), layout.mask(ref))
    write_sidecar(layout.mask(ref), {}, labels=["lesion"], classes={"lesion": "lesion"})
    return layout, catalog, truth


def test_texture_figure_registers_each_scanner_and_skips_one_without_ir(prepared, tmp_path):
    layout, catalog, truth = prepared
    settings = TextureSettings(half_width_mm=8)
    fig = texture_figure(catalog, layout, settings)
    assert sorted(fig.slices) == ["A1", "B1"] and list(fig.skipped) == ["C1"]
    assert fig.skipped["C1"] == "no IR series at 10 mGy (has FBP)"
    # the slice through the ROI center (k = 6), x 12 +- 8 -> 4..20, y 20 +- 8 -> 12..28, cut from the phantom
    expected = truth[6, 12:29, 4:21]
    assert fig.slices["A1"].shape == expected.shape == (17, 17)
    assert np.allclose(fig.slices["A1"], expected, atol=0.5)  # DICOM stores integer HU
    # B1 is the same phantom 3 mm further along x: registered, it matches the reference texture
    assert np.allclose(fig.slices["B1"], expected, atol=0.5)
    assert fig.pixel_mm == (1.0, 1.0)
    assert "2 of 3 scanners" in fig.caption and "ROI lesion" in fig.caption and "C1: no IR series" in fig.caption
    files = texture_panels(fig.slices, fig.pixel_mm, "texture", tmp_path / "fig4", fig.caption)
    assert [f.suffix for f in files] == [".png", ".pdf"] and Image.open(files[0]).size[0] > 100


def test_texture_series_and_bad_roi(prepared):
    layout, catalog, _ = prepared
    chosen, skipped = texture_series(catalog, TextureSettings(dose=14.0))
    assert chosen.empty and skipped == {s: "no IR series at 14 mGy (no series at that dose)" for s in ("A1", "B1", "C1")}
    with pytest.raises(ValueError, match="texture ROI 'liver' is not in the reference label map"):
        texture_figure(catalog, layout, TextureSettings(roi="liver"))


class _Links(HTMLParser):
    """Every id, every href and every img src of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids, self.hrefs, self.srcs = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "img":
            self.srcs.append(attrs.get("src", ""))


def check_html_links(page: str, folder: Path) -> int:
    """Assert every href="#x" has an element id="x", every relative href names a file under ``folder``, and
    every <img> is an embedded image PIL decodes (not blank: > 1 pixel wide); returns the images checked."""
    links = _Links()
    links.feed(page)
    for href in links.hrefs:
        if href.startswith("#"):
            assert href[1:] in links.ids, f"broken anchor {href}"
        else:
            assert (folder / href).is_file(), f"link to a missing file {href}"
    for src in links.srcs:
        assert src.startswith("data:image/png;base64,"), f"image not embedded: {src[:60]}"
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.size[0] > 1 and image.size[1] > 1
    return len(links.srcs)


def test_report_links_each_figures_pdf_and_every_anchor_resolves(tmp_path):
    stem = tmp_path / "analysis" / "fig"
    df = synthetic_feature_table("syn", scanners=("A1", "B1"), doses=(10,), patches_per_roi=1, n_features=3)
    umap_category_panels(np.random.default_rng(0).normal(size=(len(df), 2)), df, [("scanner", "scanner")],
                         "syn", stem, "caption")
    sec = Section("Figures", figures=[("a figure", figure_files(stem)[0])])
    page = render_html([sec, Section("Other")], "t", tmp_path)
    assert "href='analysis/fig.pdf'" in page
    assert check_html_links(page, tmp_path) == 1
    md = render_markdown([sec], "t", tmp_path)
    assert "![a figure](analysis/fig.png)" in md and "[PDF](analysis/fig.pdf)" in md
    # the checker itself fails on a broken anchor and on an image that does not decode
    with pytest.raises(AssertionError, match="broken anchor"):
        check_html_links("<a href='#nowhere'>x</a>", tmp_path)
    with pytest.raises(Exception):
        check_html_links("<img src='data:image/png;base64,AAAA'>", tmp_path)
