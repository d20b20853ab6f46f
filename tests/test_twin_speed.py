"""The twin's fast paths give the same bits as the straightforward code they replace, and the
calibration cache is keyed by scanner and grid."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.fft

from ctdose.twin import generate
from ctdose.twin import phantom as ph
from ctdose.twin.acquisition import acquire_counts, add_electronic_noise, counts_to_line_integrals
from ctdose.twin.imaging import noise_sinograms
from ctdose.twin.projector import ParallelBeam, _backprojector, fbp, ramp_filter
from ctdose.twin.recon import huber_smooth
from ctdose.twin.scanners import get_scanner



def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def test_noise_sinograms_equal_the_acquisition_steps_bit_for_bit():
    p = np.random.default_rng(1).uniform(0.0, 7.0, (5, 6, 20)).astype(np.float32)
    for electronic in (0.0, 4.0):
        for photons in (3.0e4, 40.0):  # many counts; a few (some zeros, negative after electronic noise)
            rng = np.random.default_rng(7)
            steps = counts_to_line_integrals(add_electronic_noise(acquire_counts(p, photons, rng), electronic, rng),
                                             photons) - p
            fast = noise_sinograms(p, photons, electronic, np.random.default_rng(7))
            assert fast.dtype == steps.dtype == np.float32
            assert np.array_equal(_bits(fast), _bits(steps))


def _huber_steps_with_arrays(hu: np.ndarray, noise: float, lam: float, delta: float, iterations: int) -> np.ndarray:
    """The smoothing's gradient steps as whole-array float32 operations (the form the kernel replaces)."""
    f = hu / np.float32(noise)
    u = f.copy()
    tau = np.float32(1.0 / (1.0 + 8.0 * lam / delta))
    for _ in range(iterations):
        gx, gy = np.zeros_like(u), np.zeros_like(u)
        gx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
        gy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
        weight = np.float32(1.0) / np.maximum(np.sqrt(gx * gx + gy * gy), np.float32(delta))
        px, py = gx * weight, gy * weight
        div = px.copy()
        div[..., :, 1:] -= px[..., :, :-1]
        div += py
        div[..., 1:, :] -= py[..., :-1, :]
        u -= tau * ((u - f) - np.float32(lam) * div)
    return u * np.float32(noise)


def test_compiled_smoothing_equals_the_array_form_bit_for_bit():
    hu = np.random.default_rng(2).normal(40.0, 25.0, (3, 20, 18)).astype(np.float32)  # not square
    hu[:, 5:12, 4:9] += 400.0  # an edge, where the Huber flux saturates
    smoothed = huber_smooth(hu, 25.0, 1.9, 1.5, 5)
    assert smoothed.dtype == np.float32
    assert np.array_equal(_bits(smoothed), _bits(_huber_steps_with_arrays(hu, 25.0, 1.9, 1.5, 5)))
    assert np.array_equal(_bits(huber_smooth(hu[1], 25.0, 1.9, 1.5, 5)), _bits(smoothed[1]))  # one (n, n) slice


def test_tiled_back_projection_equals_the_row_major_matrix_bit_for_bit():
    geom = ParallelBeam(64, 50, 64, (10, 5, 40, 36))  # region not a multiple of the tile
    sino = np.random.default_rng(3).normal(size=(3, 50, 64)).astype(np.float32)
    size, response = ramp_filter(64, "hann", 0.8)
    filtered = scipy.fft.irfft(scipy.fft.rfft(sino, n=size, axis=-1) * response, n=size, axis=-1)[..., :64]
    ref = (_backprojector(geom) @ np.ascontiguousarray(filtered.reshape(3, -1).T)).T
    ref = ref.reshape(3, 40, 36) * np.float32(math.pi / (2 * 50) / 0.7)
    assert np.array_equal(_bits(fbp(sino, geom, 0.7, "hann", 0.8)), _bits(ref.astype(np.float32)))


def test_back_projection_matrix_built_in_chunks_is_the_whole_array_build(monkeypatch):
    import ctdose.twin.projector as projector

    geom = ParallelBeam(64, 50, 64, (10, 5, 40, 36))
    order = np.random.default_rng(4).permutation(40 * 36)
    monkeypatch.setattr(projector, "MATRIX_CHUNK_PIXELS", 10**9)  # one chunk: every row at once
    whole = projector._backprojection_matrix(geom, order)
    monkeypatch.setattr(projector, "MATRIX_CHUNK_PIXELS", 7)  # chunks that split rows unevenly
    chunked = projector._backprojection_matrix(geom, order)
    for name in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name)), name
    assert whole.shape == chunked.shape == (40 * 36, 50 * 64)


def test_calibration_cache_is_kept_per_scanner_and_grid(tmp_path, monkeypatch):
    calls = []

    def fake_calibrate(profile, grid):
        calls.append((profile.code, grid.n_pix))
        return {"photons_per_ray_per_mgy": 1000.0 + len(calls)}

    monkeypatch.setattr(generate, "calibrate", fake_calibrate)
    grid = ph.ScanGrid(64, 2.0, 3, 2.0, 2.0)
    a1, c1 = get_scanner("A1"), get_scanner("C1")
    first = generate.cached_calibration(tmp_path, a1, grid)
    assert generate.cached_calibration(tmp_path, a1, grid) == first and len(calls) == 1  # reused
    other = generate.cached_calibration(tmp_path, c1, grid)  # another scanner: its own entry
    assert other != first and calls[-1] == ("C1", 64)
    assert generate.cached_calibration(tmp_path, a1, dataclasses.replace(grid, n_pix=32)) != first  # another grid
    changed = dataclasses.replace(a1, noise_10mgy_hu=a1.noise_10mgy_hu + 1.0)  # another profile of A1
    assert generate.cached_calibration(tmp_path, changed, grid) != first and len(calls) == 4
    (tmp_path / "calibration_C1.json").write_text("{damaged")
    generate.cached_calibration(tmp_path, c1, grid)
    assert len(calls) == 5
