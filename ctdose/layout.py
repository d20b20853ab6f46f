"""The one map of every path under the results folder, and of the command that makes each output.

Every step reads and writes through :class:`ResultsLayout`; no script or module builds a path under
``results/`` by hand. Figures are *stems*: the plotting functions write ``<stem>.png`` and ``.pdf``.
Sidecars (``x.csv`` -> ``x.json``) are placed by :func:`ctdose.provenance.sidecar_path`.

::

    results/
      catalog.csv                      data/prepare.py: one row per CT series
      reference.json                   data/prepare.py: the registration reference series
      registration.csv                 data/prepare.py: per series, quality before/after, identity kept?
      transforms/<uid>.tfm (+ .json)   data/prepare.py: rigid transform reference -> series
      masks/<uid>.nii.gz (+ .json)     data/prepare.py: ROI label map on the series' grid
      patch_centers.csv                data/patch_centers.py
      features/<extractor>.csv         radiomics/, cnn/, swin/, ct-fm/ (partial/<extractor>/<uid>.csv)
      analysis/                        analyze/*.py (ICC, UMAP, classification, image metrics,
                                       dose models, distribution shift, silhouettes)
      report.html, report.md           analyze/report.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Columns of ``catalog.csv``, one row per CT series (extra columns may follow).
CATALOG_COLUMNS: tuple[str, ...] = (
    "series_uid", "path", "seg_path", "scanner", "manufacturer", "model", "dose_mgy", "recon",
    "repetition", "kernel", "kvp", "mas", "ctdivol", "slice_thickness", "pixel_spacing", "n_slices",
)
#: Identity columns that open every feature table, in this order; feature columns follow,
#: prefixed by the extractor's name (``radiomics_original_glcm_Contrast``, ``swin_0000`` ...).
IDENTITY_COLUMNS: tuple[str, ...] = (
    "series_uid", "scanner", "manufacturer", "model", "dose_mgy", "recon", "repetition",
    "roi", "roi_class", "patch",
)
#: Quality columns between the identity and the feature columns of a feature table:
#: ``outside_fraction`` = share (0..1) of a patch's voxels outside the series' field of view.
QC_COLUMNS: tuple[str, ...] = ("outside_fraction",)
#: The one dtype map of the identity columns (and of the catalog columns of the same names).
IDENTITY_DTYPES: dict[str, str] = {
    "series_uid": "str", "scanner": "str", "manufacturer": "str", "model": "str", "dose_mgy": "float64",
    "recon": "str", "repetition": "int64", "roi": "str", "roi_class": "str", "patch": "int64",
    "outside_fraction": "float64",
}


def feature_columns(columns: "list[str] | tuple[str, ...]") -> list[str]:
    """The feature columns of a table: every column that is neither identity nor quality."""
    return [c for c in columns if c not in IDENTITY_COLUMNS and c not in QC_COLUMNS]


#: ``pandas.read_csv`` dtypes of the text identity columns (UIDs and codes stay text, e.g. "1.10").
TEXT_DTYPES: dict[str, type] = {c: str for c, t in IDENTITY_DTYPES.items() if t == "str"}

#: Columns of ``patch_centers.csv`` (centers in reference-space LPS millimetres).
PATCH_CENTER_COLUMNS: tuple[str, ...] = ("roi", "roi_class", "patch", "x_mm", "y_mm", "z_mm")

#: The repository root (scripts' default paths are relative to it, not to the current folder).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Commands that make each output (named in errors about a missing or stale input).
COMMANDS: dict[str, str] = {
    "prepare": "data/prepare.py --data DATA --results RESULTS",
    "centers": "data/patch_centers.py --results RESULTS",
    "radiomics": "radiomics/extract_radiomics.py --results RESULTS",
    "cnn": "cnn/extract_cnn.py --results RESULTS",
    "swin": "swin/extract_swin.py --results RESULTS",
    "ctfm": "ct-fm/extract_ctfm.py --results RESULTS",
    "icc": "analyze/icc.py --results RESULTS",
    "umap": "analyze/umap_plots.py --results RESULTS",
    "classify": "analyze/classify.py --results RESULTS",
    "image_metrics": "analyze/image_metrics.py --results RESULTS",
    "dose_effects": "analyze/dose_effects.py --results RESULTS",
    "report": "analyze/report.py --results RESULTS",
    "harmonize": "analyze/harmonize.py --results RESULTS",
    "series_qc": "analyze/series_qc.py --results RESULTS",
    "series_classifier": "analyze/train_series_classifier.py --list LIST --task TASK --results RESULTS",
    "size_dose": "data/size_dose.py --results RESULTS",
    "dataset_centers": "radiomics/extract_radiomics.py --dataset DATASET --dataset-path PATH --results RESULTS",
    "organ_classify": "analyze/organ_classify.py --results RESULTS",
    "segmentation": "segmentation/dose_robustness.py --data DATA --results RESULTS",
}


def repo_path(path: str | os.PathLike) -> Path:
    """A script default resolved against the repository root (absolute paths are kept)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


@dataclass(frozen=True)
class ResultsLayout:
    """Paths of all outputs below one results root (default ``results/``)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    def command(self, step: str) -> str:
        """The command that makes ``step``'s output, with this results folder filled in."""
        return COMMANDS[step].replace("RESULTS", str(self.root))

    # --- data/prepare.py ---------------------------------------------------------------------
    @property
    def catalog(self) -> Path:
        return self.root / "catalog.csv"

    @property
    def reference(self) -> Path:
        """The registration reference series (UID, scanner, dose, recon, repetition, path) as JSON."""
        return self.root / "reference.json"

    @property
    def registration(self) -> Path:
        """One row per series: quality before/after, whether the identity was kept."""
        return self.root / "registration.csv"

    @property
    def transforms_dir(self) -> Path:
        return self.root / "transforms"

    def transform(self, series_uid: str) -> Path:
        """Rigid transform reference -> series (SimpleITK ``.tfm``; its sidecar holds the registration row)."""
        return self.transforms_dir / f"{series_uid}.tfm"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    def mask(self, series_uid: str) -> Path:
        """ROI label map on the series' CT grid (0 = background, 1..n = ROI order)."""
        return self.masks_dir / f"{series_uid}.nii.gz"

    # --- data/patch_centers.py ---------------------------------------------------------------
    @property
    def patch_centers(self) -> Path:
        return self.root / "patch_centers.csv"

    # --- extractors ----------------------------------------------------------------------------
    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def feature_table(self, extractor: str) -> Path:
        """Merged feature table of one extractor; its JSON sidecar sits beside it."""
        return self.features_dir / f"{extractor}.csv"

    def feature_partial_dir(self, extractor: str) -> Path:
        return self.features_dir / "partial" / extractor

    def feature_partial(self, extractor: str, series_uid: str) -> Path:
        """Per-series partial table (+ sidecar), written atomically so that a re-run skips finished series."""
        return self.feature_partial_dir(extractor) / f"{series_uid}.csv"

    # --- analysis --------------------------------------------------------------------------------
    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def icc_per_feature(self) -> Path:
        return self.analysis_dir / "icc_per_feature.csv"

    @property
    def icc_summary(self) -> Path:
        return self.analysis_dir / "icc_summary.csv"

    @property
    def icc_boxplots(self) -> Path:
        """Figure stem."""
        return self.analysis_dir / "icc_boxplots"

    @property
    def umap_dir(self) -> Path:
        return self.analysis_dir / "umap"

    def umap_table(self, extractor: str) -> Path:
        return self.umap_dir / f"umap_{extractor}.csv"

    def umap_figure(self, extractor: str) -> Path:
        """Figure stem."""
        return self.umap_dir / f"umap_{extractor}"

    def umap_paper_figure(self, extractor: str, kind: str) -> Path:
        """Figure stem of a paper-layout UMAP (kind: ``fig5_roi``, ``fig6_rois``, ``per_scanner``)."""
        return self.umap_dir / f"umap_{kind}_{extractor}"

    @property
    def cross_dose(self) -> Path:
        return self.analysis_dir / "classify_cross_dose.csv"

    @property
    def cross_dose_matrix(self) -> Path:
        return self.analysis_dir / "classify_cross_dose_matrix.csv"

    @property
    def curves(self) -> Path:
        return self.analysis_dir / "classify_curves.csv"

    @property
    def curves_folds(self) -> Path:
        return self.analysis_dir / "classify_curves_folds.csv"

    @property
    def dose_class(self) -> Path:
        return self.analysis_dir / "classify_dose_level.csv"

    @property
    def classify_figures_dir(self) -> Path:
        return self.analysis_dir / "classify"

    def cross_dose_figure(self, extractor: str) -> Path:
        """Figure stem."""
        return self.classify_figures_dir / f"cross_dose_{extractor}"

    def curve_figure(self, protocol: str) -> Path:
        """Figure stem."""
        return self.classify_figures_dir / f"curve_{protocol}"

    @property
    def image_metrics_series(self) -> Path:
        """One row per measured pair (both series, the cell, metrics, uncovered share)."""
        return self.analysis_dir / "image_metrics_series.csv"

    @property
    def image_metrics_dose(self) -> Path:
        """Table 6 layout: each dose against the scanner's 14 mGy, mean / sd over up to 5 pairs per cell."""
        return self.analysis_dir / "image_metrics_vs_14mGy.csv"

    @property
    def image_metrics_scanner(self) -> Path:
        """Tables 3-5 layout: every scanner pair at 10 mGy (scanner_a, scanner_b; diagonal = repeated scans)."""
        return self.analysis_dir / "image_metrics_scanner_pairs.csv"

    @property
    def image_metrics_vs_paper_dose(self) -> Path:
        """Our Table 6 layout beside the dataset paper's, per scanner x dose x metric (ctdose.published)."""
        return self.analysis_dir / "image_metrics_vs_paper_table6.csv"

    @property
    def image_metrics_vs_paper_scanner(self) -> Path:
        """Our scanner pairs beside the dataset paper's Tables 3-5, per metric x pair (ctdose.published)."""
        return self.analysis_dir / "image_metrics_vs_paper_pairs.csv"

    @property
    def image_metrics_vs_paper_figure(self) -> Path:
        """Figure stem: our image metrics against the paper's, per metric (Table 6 cells and scanner pairs)."""
        return self.image_metrics_figures_dir / "vs_paper_scatter"

    @property
    def image_metrics_partial_dir(self) -> Path:
        return self.analysis_dir / "image_metrics_partial"

    def image_metrics_partial(self, comparison: str, series_uid: str, reference_uid: str) -> Path:
        """Cached result of one pair (a one-row CSV + sidecar)."""
        return self.image_metrics_partial_dir / f"{comparison}__{series_uid}__{reference_uid}.csv"

    @property
    def image_metrics_figures_dir(self) -> Path:
        return self.analysis_dir / "image_metrics"

    def texture_figure(self) -> Path:
        """Figure stem of the registered texture per scanner (the dataset paper's Fig. 4)."""
        return self.image_metrics_figures_dir / "fig4_texture"

    def image_metrics_figure(self, name: str) -> Path:
        """Figure stem (``vs_dose_<metric>_<recon>`` bars, ``vs_scanner_<metric>_<recon>`` matrix)."""
        return self.image_metrics_figures_dir / name

    # --- analyze/dose_effects.py: dose models, distribution shift, silhouettes -------------------
    @property
    def dose_models(self) -> Path:
        """Dose-level classification and dose regression, mean / sd over grouped folds per extractor x model."""
        return self.analysis_dir / "dose_models.csv"

    @property
    def dose_models_folds(self) -> Path:
        """One row per extractor x model x fold (accuracy and chance, or MAE and the mean predictor's MAE)."""
        return self.analysis_dir / "dose_models_folds.csv"

    @property
    def dose_confusion(self) -> Path:
        """Confusion counts summed over folds: extractor, model, true_dose, pred_dose, count."""
        return self.analysis_dir / "dose_models_confusion.csv"

    @property
    def dose_effects_figures_dir(self) -> Path:
        return self.analysis_dir / "dose_effects"

    def dose_confusion_figure(self, extractor: str) -> Path:
        """Figure stem: one confusion-matrix panel per classifier."""
        return self.dose_effects_figures_dir / f"confusion_{extractor}"

    @property
    def dose_shift(self) -> Path:
        """Per feature and reconstruction: KS statistic, p, BH q, changes of mean, variance, skewness, kurtosis."""
        return self.analysis_dir / "dose_shift_per_feature.csv"

    @property
    def dose_shift_summary(self) -> Path:
        """Per extractor x reconstruction: share of features shifted at q < alpha."""
        return self.analysis_dir / "dose_shift_summary.csv"

    @property
    def silhouette(self) -> Path:
        """Silhouette per extractor x space (features, umap) x label."""
        return self.analysis_dir / "silhouette.csv"

    # --- series QC: analyze/series_qc.py, analyze/train_series_classifier.py ----------------------
    @property
    def series_qc(self) -> Path:
        """One row per series: geometry / header / image axis, gantry tilt, QC warnings (+ sidecar)."""
        return self.analysis_dir / "series_qc.csv"

    @property
    def series_classifier_dir(self) -> Path:
        return self.analysis_dir / "series_classifier"

    def series_classifier(self, task: str) -> Path:
        """Folder of one classifier run (task: axis, contrast, body_part): model, record, predictions."""
        return self.series_classifier_dir / task

    # --- patient-size dose: data/size_dose.py (WED per AAPM TG-220, SSDE per TG-204) ------------------
    @property
    def size_dose_dir(self) -> Path:
        return self.root / "size_dose"

    @property
    def size_dose_series(self) -> Path:
        """One row per series: WED, SSDE (mean and centre of scan range), phantom, truncation, noise,
        per-ROI-slab WED / SSDE: the catalog's size columns (ctdose.size_dose.join_size_columns)."""
        return self.size_dose_dir / "size_dose_series.csv"

    @property
    def size_dose_slices(self) -> Path:
        """One row per series and slice: z, object area, mean HU, WED, truncation, mA, CTDIvol, SSDE."""
        return self.size_dose_dir / "size_dose_slices.csv"

    @property
    def organ_dose_inputs(self) -> Path:
        """One row per series, slice and organ (label) on it: organ HU mean / sd, mA, WED, z."""
        return self.size_dose_dir / "organ_dose_inputs.csv"

    @property
    def organ_doses(self) -> Path:
        """organ_dose_inputs.csv plus a user model's predictions (only when --organ-model is given)."""
        return self.size_dose_dir / "organ_doses_predicted.csv"

    @property
    def size_dose_partial_dir(self) -> Path:
        return self.size_dose_dir / "partial"

    def size_dose_partial(self, series_uid: str, kind: str = "series") -> Path:
        """Per-series partial table (kind: series, slices, organs); the series one carries the sidecar."""
        return self.size_dose_partial_dir / f"{series_uid}_{kind}.csv"

    def size_dose_figure(self, name: str) -> Path:
        """Figure stem (``ctdivol_vs_ssde``, ``noise_vs_ssde``)."""
        return self.size_dose_dir / name

    # --- harmonization bench: analyze/harmonize.py ---------------------------------------------------
    @property
    def harmonize_dir(self) -> Path:
        return self.analysis_dir / "harmonize"

    @property
    def harmonize_table7(self) -> Path:
        """Table 7 layout per extractor x method (mean ICC, LOSO 1 / S-1, k-fold), numbers (+ sidecar)."""
        return self.harmonize_dir / "harmonize_table7.csv"

    @property
    def harmonize_icc(self) -> Path:
        """ICC(3,1) per extractor x method x view: mean, median, share > 0.75 / 0.9."""
        return self.harmonize_dir / "harmonize_icc_summary.csv"

    @property
    def harmonize_folds(self) -> Path:
        """One row per extractor x method x protocol x split x test set: accuracy, chance, scheme."""
        return self.harmonize_dir / "harmonize_classify_folds.csv"

    @property
    def harmonize_cross_dose(self) -> Path:
        """Cross-dose cells per extractor x method (only when the bench ran the cross-dose protocol)."""
        return self.harmonize_dir / "harmonize_cross_dose.csv"

    @property
    def harmonize_silhouette(self) -> Path:
        """Silhouette by manufacturer and by ROI class per extractor x method."""
        return self.harmonize_dir / "harmonize_silhouette.csv"

    def harmonize_umap_figure(self, extractor: str) -> Path:
        """Figure stem: UMAP before / after harmonization, by manufacturer and ROI class."""
        return self.harmonize_dir / f"umap_{extractor}"

    @property
    def harmonize_silhouette_figure(self) -> Path:
        """Figure stem: silhouettes per extractor x method."""
        return self.harmonize_dir / "silhouette"

    # --- other datasets (CT-ORG, OrganMNIST3D): extractors with --dataset, analyze/organ_classify.py ---
    @property
    def dataset_centers(self) -> Path:
        """One row per (case, ROI, patch) of a CT-ORG / OrganMNIST3D run: identity, files, centre (mm)."""
        return self.root / "dataset_centers.csv"

    @property
    def organs_dir(self) -> Path:
        return self.analysis_dir / "organs"

    @property
    def organ_accuracy(self) -> Path:
        """Organ classification: mean / sd accuracy over folds per extractor x target x classifier."""
        return self.organs_dir / "organ_accuracy.csv"

    @property
    def organ_accuracy_folds(self) -> Path:
        """One row per extractor x target x classifier x fold (accuracy, chance, train / test sizes)."""
        return self.organs_dir / "organ_accuracy_folds.csv"

    def organ_umap_table(self, extractor: str) -> Path:
        return self.organs_dir / f"umap_{extractor}.csv"

    def organ_umap_figure(self, extractor: str) -> Path:
        """Figure stem: UMAP coloured by organ and organ class."""
        return self.organs_dir / f"umap_{extractor}"

    # --- segmentation dose robustness: segmentation/dose_robustness.py (Tsanda et al. 2024) -------------
    @property
    def segmentation_dir(self) -> Path:
        return self.root / "segmentation"

    def segmentation_partial(self, segmenter: str, series_uid: str) -> Path:
        """Rows of one series x segmenter kind (+ sidecar, + overlay slice ``.npz``), written atomically."""
        return self.segmentation_dir / "partial" / segmenter / f"{series_uid}.csv"

    @property
    def segmentation_rows(self) -> Path:
        """One row per series x segmenter x denoiser x dose fraction x reference x label: Dice, HD95, r_eff."""
        return self.segmentation_dir / "segmentation_rows.csv"

    @property
    def segmentation_table2(self) -> Path:
        """Table 2 layout (long): segmenter x denoiser at the lowest dose, median / MAD of Dice and HD95."""
        return self.segmentation_dir / "table2_lowest_dose.csv"

    @property
    def segmentation_table2_wide(self) -> Path:
        """Table 2 layout (wide): rows = segmenters, columns = denoisers, cells 'Dice ± MAD / HD95 ± MAD'."""
        return self.segmentation_dir / "table2_wide.csv"

    @property
    def segmentation_table2_contrast(self) -> Path:
        """Table 2 layout (long) split by contrast phase (contrast x segmenter x denoiser), when two are present."""
        return self.segmentation_dir / "table2_by_contrast.csv"

    @property
    def segmentation_curves(self) -> Path:
        """Fig. 7 data: Dice / HD95 median, MAD per segmenter x denoiser x reference x label x dose."""
        return self.segmentation_dir / "dice_vs_dose.csv"

    @property
    def segmentation_radius(self) -> Path:
        """Fig. 5 data: Dice by r_eff log bins."""
        return self.segmentation_dir / "dice_vs_radius.csv"

    @property
    def segmentation_failures(self) -> Path:
        """Share of scans whose Dice of a label is below the failure setting."""
        return self.segmentation_dir / "label_failures.csv"

    @property
    def segmentation_ladder_validation(self) -> Path:
        """Dose ladder vs the twin's independent acquisitions: ROI std simulated / acquired."""
        return self.segmentation_dir / "ladder_validation.csv"

    def segmentation_figure(self, name: str) -> Path:
        """Figure stem (``fig7_dice_vs_dose``, ``fig7_vs_ground_truth``, ``fig5_dice_vs_radius``, ``overlay``)."""
        return self.segmentation_dir / name

    # --- report -----------------------------------------------------------------------------------
    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"
