"""Report sections of the later steps, one module each (``ctdose.report`` holds the core ones and the
:class:`~ctdose.report.Section` they all fill): harmonization bench, patient-size dose, series QC,
segmentation dose robustness, organ classification on other datasets."""

from ctdose.report_sections.datasets import organ_section
from ctdose.report_sections.harmonize import harmonize_section
from ctdose.report_sections.segmentation import segmentation_section
from ctdose.report_sections.series_qc import series_qc_section
from ctdose.report_sections.size_dose import size_dose_section

__all__ = ["harmonize_section", "organ_section", "segmentation_section", "series_qc_section", "size_dose_section"]
