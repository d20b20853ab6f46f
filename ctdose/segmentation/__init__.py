"""Segmentation dose robustness (Tsanda et al. 2024): dose ladder, denoisers, segmenters, metrics."""
from ctdose.segmentation.interface import Denoiser, Segmenter

__all__ = ["Segmenter", "Denoiser"]
