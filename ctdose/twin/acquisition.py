"""Photon statistics of the twin: attenuation, Poisson counts, exact dose reduction, log transform.

* HU -> linear attenuation at one effective energy per tube voltage (monoenergetic: no beam
  hardening), mu = mu_water * (1 + HU / 1000), clipped at 0.
* Counts per detector bin and view: n ~ Poisson(I0 * exp(-p)), I0 = photons per ray, proportional to
  mAs and hence CTDIvol through the scanner's calibration (``generate.calibrate``). Every dose and
  repetition draws its own counts (independent acquisitions, as in the collection); lowering the dose
  of an existing series is a different job (``ctdose.lowdose``).
* Optional electronic noise: Gaussian, std in counts, added to the counts of each ray.
* Log transform with a first-order bias correction, p = log(I0 / (n + 1/2)): E[log(n + 1/2)] =
  log(lam) + O(lam^-2), so line integrals stay unbiased at low counts, and n = 0 is harmless.
"""

from __future__ import annotations

import numpy as np


def hu_to_mu(hu: np.ndarray, mu_water: float) -> np.ndarray:
    """Linear attenuation (1/mm, float32) from HU at an effective energy where water has ``mu_water``."""
    return np.maximum(mu_water * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0), 0.0).astype(np.float32)


def mu_to_hu(mu: np.ndarray, mu_water: float) -> np.ndarray:
    """HU (float32) from linear attenuation (1/mm)."""
    return (1000.0 * (np.asarray(mu, dtype=np.float32) / mu_water - 1.0)).astype(np.float32)


def acquire_counts(line_integrals: np.ndarray, photons_per_ray: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Detected photon counts (int64, same shape) for line integrals (dimensionless mu*mm)."""
    expected = photons_per_ray * np.exp(-np.asarray(line_integrals, dtype=np.float64))
    return rng.poisson(expected)


def add_electronic_noise(counts: np.ndarray, std_counts: float, rng: np.random.Generator) -> np.ndarray:
    """Counts plus zero-mean Gaussian electronic noise of ``std_counts`` (float64; unchanged if 0)."""
    if std_counts <= 0:
        return counts
    return counts + rng.normal(0.0, std_counts, size=counts.shape)


def counts_to_line_integrals(counts: np.ndarray, photons_per_ray: float) -> np.ndarray:
    """Bias-corrected line integrals log(I0 / (n + 1/2)) (float32); negative counts count as 0."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 0.0) + 0.5
    return np.log(photons_per_ray / n).astype(np.float32)
