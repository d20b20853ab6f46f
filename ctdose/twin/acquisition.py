"""Photon statistics of the twin: attenuation, Poisson counts, exact dose reduction, log transform.

* HU -> linear attenuation at one effective energy per tube voltage (monoenergetic: no beam
  hardening), mu = mu_water * (1 + HU / 1000), clipped at 0.
* Counts per detector bin and view: n ~ Poisson(I0 * exp(-p)), I0 = photons per ray, proportional to
  mAs and hence CTDIvol through the scanner's calibration (``generate.calibrate``).
* Lower doses of the same scan come from the highest-dose counts by binomial thinning,
  n_f ~ Binomial(n, f): each detected photon is kept with probability f. For n ~ Poisson(lam) this is
  exactly Poisson(f * lam), so every dose level is itself an exact Poisson acquisition and all
  doses of one scan share their photons (Zabic et al. 2013 motivate deriving low doses this way).
  Their scaled-Poisson formula n_b ~ (a-b)/a * Poisson(b/(a-b) * n_a) has the same conditional
  mean (f n_a) and variance (f (1 - f) n_a) but non-integer counts; the binomial is the exact law,
  so the twin uses it (``tests/test_twin_physics.py`` checks the mean and variance of both).
* Optional electronic noise: Gaussian, std in counts, added to each dose's counts after thinning.
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


def thin_counts(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Counts of the same acquisition at ``fraction`` of its dose: Binomial(counts, fraction), exact."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"dose fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return counts.copy()
    return rng.binomial(counts, fraction)


def zabic_counts(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Zabic et al. (2013) reduced-dose counts (a-b)/a * Poisson(b/(a-b) * n), b/a = ``fraction``.

    Kept for comparison (same first two moments as :func:`thin_counts`, non-integer values).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"dose fraction must be in (0, 1), got {fraction}")
    return (1.0 - fraction) * rng.poisson(fraction / (1.0 - fraction) * counts)


def add_electronic_noise(counts: np.ndarray, std_counts: float, rng: np.random.Generator) -> np.ndarray:
    """Counts plus zero-mean Gaussian electronic noise of ``std_counts`` (float64; unchanged if 0)."""
    if std_counts <= 0:
        return counts
    return counts + rng.normal(0.0, std_counts, size=counts.shape)


def counts_to_line_integrals(counts: np.ndarray, photons_per_ray: float) -> np.ndarray:
    """Bias-corrected line integrals log(I0 / (n + 1/2)) (float32); negative counts count as 0."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 0.0) + 0.5
    return np.log(photons_per_ray / n).astype(np.float32)
