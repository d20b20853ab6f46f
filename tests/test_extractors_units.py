"""Unit tests of the extractors: selection, finite checks, PyRadiomics equality, networks and weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from ctdose.extractors import cnn, ctfm, deep, driver, pretrain, radiomics_features, swin, weights
from ctdose.layout import IDENTITY_COLUMNS
from ctdose.naming import ROI_CLASSES, ROI_NAMES
from ctdose.volume import Volume

torch.set_num_threads(1)
PARAMS_YAML = "radiomics/params.yaml"
IDENTITY = {"series_uid": "1.2.3", "scanner": "A1", "manufacturer": "SIEMENS", "model": "Edge",
            "dose_mgy": 10.0, "recon": "IR", "repetition": 1}


def _volume(seed: int = 0, shape=(40, 80, 80)) -> Volume:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    array = 40.0 + 80.0 * np.sin(x / 5.0) * np.cos(y / 7.0) + 10.0 * z / shape[0] + rng.normal(0, 15, shape)
    return Volume(array, origin=(-40.0, -40.0, -40.0), spacing=(1.0, 1.0, 2.0))


def _centers(per_roi: int = 2) -> pd.DataFrame:
    rows = [{"roi": roi, "roi_class": ROI_CLASSES[roi], "patch": p, "x_mm": -5.0 + 2 * n, "y_mm": 3.0 - p,
             "z_mm": -2.0 + p} for n, roi in enumerate(ROI_NAMES) for p in range(per_roi)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- driver


def test_select_series_filters_and_keeps_catalog_order():
    catalog = pd.DataFrame({"series_uid": list("abcdef"), "scanner": ["A1", "A1", "B1", "B1", "G1", "A1"],
                            "dose_mgy": [1.0, 14.0, 1.0, 3.0, 1.0, 1.0], "recon": ["FBP", "IR", "FBP", "FBP", "DL", "IR"]})
    got = driver.select_series(catalog, scanners=["a1", "B1"], doses=[1], recons=None)
    assert list(got["series_uid"]) == ["a", "c", "f"]
    assert list(driver.select_series(catalog, recons=["fbp"], max_series=2)["series_uid"]) == ["a", "c"]
    with pytest.raises(ValueError, match="no catalog series"):
        driver.select_series(catalog, scanners=["H2"])
    catalog["repetition"] = [1, 1, 2, 1, 1, 2]
    assert list(driver.select_series(catalog, repetitions=[2])["series_uid"]) == ["c", "f"]
    assert list(driver.select_series(catalog, scanners=["A1"], repetitions=[1, 2])["series_uid"]) == ["a", "b", "f"]


def test_select_centers_takes_first_k_per_roi_in_the_files_roi_order():
    centers = _centers(3)
    shuffled = centers.sample(frac=1.0, random_state=1)
    got = driver.select_centers(shuffled, 2)
    order = list(dict.fromkeys(shuffled["roi"]))  # ROIs in order of first appearance (the ROI set's order)
    assert order != list(ROI_NAMES)
    assert list(got["roi"]) == [r for r in order for _ in range(2)]
    assert list(got["patch"]) == [0, 1] * len(ROI_NAMES)
    assert list(driver.select_centers(centers, 2)["roi"]) == [r for r in ROI_NAMES for _ in range(2)]
    assert len(driver.select_centers(shuffled)) == 3 * len(ROI_NAMES)
    with pytest.raises(ValueError, match=rf"--patches-per-roi 3: ROI {ROI_NAMES[0]} has only 2 centers"):
        driver.select_centers(centers[~((centers["roi"] == ROI_NAMES[0]) & (centers["patch"] == 2))], 3)


def test_feature_frame_and_check_finite_names_the_bad_value():
    centers = _centers(1)
    values = np.arange(len(centers) * 2, dtype=float).reshape(-1, 2)
    frame = driver.feature_frame(IDENTITY, centers, values, ["x_a", "x_b"])
    assert list(frame.columns) == [*IDENTITY_COLUMNS, "outside_fraction", "x_a", "x_b"]
    assert (frame["outside_fraction"] == 0).all()
    driver.check_finite(frame)
    values[3, 1] = np.nan
    bad = driver.feature_frame(IDENTITY, centers, values, ["x_a", "x_b"])
    with pytest.raises(ValueError, match=rf"x_b = nan in series 1.2.3, roi {ROI_NAMES[3]}, patch 0"):
        driver.check_finite(bad)


# --------------------------------------------------------------------------- radiomics


def test_radiomics_patch_mode_equals_direct_pyradiomics_call():
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    params = radiomics_features.load_params(PARAMS_YAML)
    patch = driver.PatchSettings((32, 32, 16), (0.6836, 0.6836, 2.0))
    volume, centers = _volume(), _centers(1).head(2)
    frame = radiomics_features.patch_frame(volume, None, centers, IDENTITY, params, patch)
    assert list(frame.columns[:len(IDENTITY_COLUMNS)]) == list(IDENTITY_COLUMNS)
    assert len(frame) == 2 and frame.shape[1] - len(IDENTITY_COLUMNS) > 80

    # independent reference: sample the patch, build image + whole-box mask by hand, call PyRadiomics
    from ctdose.patches import sample_patches

    arr = sample_patches(volume, centers[["x_mm", "y_mm", "z_mm"]].to_numpy(), None, patch.size_xyz,
                         patch.spacing_xyz).patches[1]
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(patch.spacing_xyz)
    mask = sitk.GetImageFromArray(np.ones(arr.shape, np.uint8))
    mask.CopyInformation(image)
    direct = RadiomicsFeatureExtractor(PARAMS_YAML).execute(image, mask, label=1)
    expected = {f"radiomics_{k}": float(v) for k, v in direct.items() if not k.startswith("diagnostics")}
    got = frame.iloc[1][list(expected)].astype(float)
    assert set(expected) == set(frame.columns[len(IDENTITY_COLUMNS) + 1:])
    # the same float32 patch and the same PyRadiomics code in one process: equal up to float64 rounding
    np.testing.assert_allclose(got.to_numpy(), np.array(list(expected.values())), rtol=1e-12)
    assert "radiomics_original_glcm_Contrast" in expected


def test_radiomics_bin_edges_from_extremes_give_pyradiomics_own_edges_and_features(monkeypatch):
    from radiomics import imageoperations

    params = radiomics_features.load_params(PARAMS_YAML)  # installs the wrapper
    fast = imageoperations.getBinEdges
    original = fast.__wrapped__
    assert fast is not original
    rng = np.random.default_rng(7)
    cases = [rng.normal(40, 60, 5000).astype(np.float32), np.full(30, 50.0), np.array([-1000.0, 2000.0, 3.0]),
             rng.normal(0, 10, 999)]
    for values in cases:
        for kwargs in ({"binWidth": 25}, {"binWidth": 7.5}, {"binCount": 16}):
            np.testing.assert_array_equal(fast(values, **kwargs), original(values, **kwargs))
    # every feature of two patches, with the wrapper and with PyRadiomics' own function: the same numbers
    patch = driver.PatchSettings((32, 32, 16), (0.6836, 0.6836, 2.0))
    volume, centers = _volume(), _centers(1).head(2)
    with_wrapper = radiomics_features.patch_frame(volume, None, centers, IDENTITY, params, patch)
    monkeypatch.setattr(imageoperations, "getBinEdges", original)
    pd.testing.assert_frame_equal(with_wrapper, radiomics_features.patch_frame(volume, None, centers, IDENTITY,
                                                                               params, patch))


def test_radiomics_roi_mode_one_row_per_roi():
    params = radiomics_features.load_params(PARAMS_YAML)
    volume = _volume(shape=(20, 40, 40))
    masks = {"cyst1": np.zeros(volume.array.shape, bool), "normal2": np.zeros(volume.array.shape, bool)}
    masks["cyst1"][5:12, 10:20, 10:20] = True
    masks["normal2"][8:15, 20:35, 5:15] = True
    frame = radiomics_features.roi_frame(volume, masks, IDENTITY, params)
    assert list(frame["roi"]) == ["cyst1", "normal2"]
    assert list(frame["patch"]) == [driver.WHOLE_ROI_PATCH] * 2
    assert list(frame["roi_class"]) == ["cyst", "normal"]
    mean = frame["radiomics_original_firstorder_Mean"].to_numpy()
    # both sum the same float32 voxels in float64 (PyRadiomics casts): apart by ~n * eps64 * max|HU|
    reference = [volume.array[m].astype(np.float64).mean() for m in masks.values()]
    np.testing.assert_allclose(mean, reference, rtol=0, atol=1e-10 * np.abs(volume.array).max())
    masks["cyst1"][:] = False
    with pytest.raises(ValueError, match="cyst1: the mask is empty"):
        radiomics_features.roi_frame(volume, masks, IDENTITY, params)


def test_radiomics_params_unknown_setting_is_a_clear_error(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("setting:\n  binWidht: 25\nimageType:\n  Original: {}\n")
    with pytest.raises(ValueError, match=r"params.yaml: invalid PyRadiomics settings: .*binWidht"):
        radiomics_features.load_params(bad)
    with pytest.raises(FileNotFoundError):
        radiomics_features.load_params(tmp_path / "none.yaml")


# --------------------------------------------------------------------------- networks

EPS32 = float(np.finfo(np.float32).eps)


def _longest_dot_product(module: torch.nn.Module) -> int:
    """The longest sum in a network's layers: a Linear's in_features, a conv's in_channels x kernel."""
    lengths = [m.in_features for m in module.modules() if isinstance(m, torch.nn.Linear)]
    lengths += [m.in_channels // m.groups * int(np.prod(m.kernel_size)) for m in module.modules()
                if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return max(lengths)


def _assert_same_state(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Every parameter and buffer of ``target`` is bit-identical to ``source``'s (a loaded copy)."""
    a, b = source.state_dict(), target.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _assert_same_embeddings(a: np.ndarray, b: np.ndarray, net: deep.Network) -> float:
    """``a`` == ``b`` (n, F) up to float32 summation order; returns the largest tolerance used.

    Another batch size (or another copy of the weights in memory) lets oneDNN/BLAS pick other kernels
    that add the same products in another order. Reassociating a float32 sum of L terms moves it by
    about eps32 * sqrt(L) of the terms' scale (a random walk of roundings); 8x that for the layers'
    errors adding up, relative to each row's largest |value|: the embedding's scale, not each
    element's (a small component carries the error of the large products it was summed from).
    Measured: <= 1.3e-6 of the scale on an AMD EPYC (AVX-512), ~5e-7 on the Intel Xeon of issue 8
    (1.5e-6 on a SwinUNETR row of scale 3.3); the tolerances are 5e-5 (Swin) to 1.1e-4 (CT-FM) of it.
    """
    scale = np.abs(a).max(axis=1, keepdims=True)
    tolerance = 8 * EPS32 * np.sqrt(_longest_dot_product(net.module)) * scale
    error = np.abs(a - b)
    assert (error <= tolerance).all(), f"differ by {(error / scale).max():.2e} of the embeddings' scale"
    return float(tolerance.max())


def test_shallow_cnn_architecture_gives_2048_features():
    net = cnn.build()
    convs = [m for m in net.module.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5, 5), (2, 2, 2)), (32, 64, (5, 5, 5), (2, 2, 2))]
    pools = [m.kernel_size for m in net.module.modules() if isinstance(m, torch.nn.MaxPool3d)]
    assert pools == [4, 4]
    with torch.inference_mode():
        assert net.module(torch.zeros(1, 1, 32, 64, 64)).shape == (1, 2048)


@pytest.mark.parametrize("module,n", [(cnn, 512), (swin, 768), (ctfm, 512)])
def test_embeddings_deterministic_and_batch_independent_on_cpu(module, n):
    deep.configure(torch.device("cpu"), 0)
    patches = _volume().array[None, :32, :32, :32].repeat(3, axis=0) + np.arange(3)[:, None, None, None] * 50
    torch.manual_seed(3)
    net_a = module.build((32, 32, 32))
    torch.manual_seed(3)
    net_b = module.build((32, 32, 32))
    before = patches.copy()
    a = deep.embed_patches(net_a, patches, batch_size=3)
    np.testing.assert_array_equal(patches, before)  # the input HU patches are left untouched
    b = deep.embed_patches(net_b, patches, batch_size=1)
    assert a.shape == (3, n) and np.isfinite(a).all()
    tolerance = _assert_same_embeddings(a, b, net_b)  # same seed, other batching: other kernels
    np.testing.assert_array_equal(a, deep.embed_patches(net_a, patches, batch_size=3))  # exact repeat
    assert np.abs(a[0] - a[2]).max() > 100 * tolerance  # the input matters, far above that tolerance


def test_normalise_clips_and_scales():
    # each expected value is the exact result of (x - lo) / (hi - lo) in float32: default rtol holds anywhere
    x = torch.tensor([-3000.0, -1000.0, 0.0, 1000.0, 5000.0])
    np.testing.assert_allclose(deep.normalise(x.clone(), swin.HU_RANGE).numpy(), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(deep.normalise(torch.tensor([-200.0, 40.0, 240.0]), cnn.HU_RANGE).numpy(), [0, 0.5, 1])
    np.testing.assert_allclose(deep.normalise(torch.tensor([-1024.0, 512.0, 2048.0]), ctfm.HU_RANGE).numpy(),
                               [0, 0.5, 1])


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_round_trip_gives_identical_embeddings(tmp_path, suffix):
    torch.manual_seed(11)
    source = ctfm.build((32, 32, 32))
    path = tmp_path / f"ctfm{suffix}"
    state = {f"model.{k}": v for k, v in source.module.state_dict().items()}  # a wrapper prefix
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(99)
    target = ctfm.build((32, 32, 32))
    report = ctfm.load_weights(target, weights.read_state_dict(weights.resolve_weights(str(path))), path)
    assert report.unexpected == [] and report.sha256 == weights.sha256(path)
    _assert_same_state(source.module, target.module)
    patches = _volume().array[None, :32, :32, :32]
    _assert_same_embeddings(deep.embed_patches(source, patches), deep.embed_patches(target, patches), target)


def test_swin_loads_model_swinvit_layout_like_monai(tmp_path):
    """A checkpoint in model_swinvit.pt's layout (module. prefix, mlp.fc1/fc2, extra heads) loads fully."""
    torch.manual_seed(5)
    source = swin.build((32, 32, 32))
    ssl = {}
    for key, value in source.module.state_dict().items():
        key = key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        ssl[f"module.{key}"] = value
    ssl["module.rotation_head.weight"] = torch.zeros(4, 768)
    path = tmp_path / "model_swinvit.pt"
    torch.save({"epoch": 100, "state_dict": ssl}, path)
    torch.manual_seed(6)
    target = swin.build((32, 32, 32))
    report = swin.load_weights(target, weights.read_state_dict(path), path)
    assert report.unexpected == ["rotation_head.weight"]
    assert report.missing == []
    assert report.n_loaded == len(source.module.state_dict())
    _assert_same_state(source.module, target.module)
    patches = _volume().array[None, :32, :32, :32]
    _assert_same_embeddings(deep.embed_patches(source, patches), deep.embed_patches(target, patches), target)


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    net = cnn.build()
    wrong_keys = tmp_path / "other.pt"
    torch.save({"encoder.fc.weight": torch.zeros(3, 3)}, wrong_keys)
    with pytest.raises(ValueError, match="does not fit this model: none of its 1 keys match"):
        cnn.load_weights(net, weights.read_state_dict(wrong_keys), wrong_keys)
    state = net.module.state_dict()
    wrong_shape = tmp_path / "shape.pt"
    torch.save({**state, "features.0.weight": torch.zeros(16, 1, 5, 5, 5)}, wrong_shape)
    with pytest.raises(ValueError, match=r"wrong shape, e.g. features.0.weight \(16, 1, 5, 5, 5\)"):
        cnn.load_weights(net, weights.read_state_dict(wrong_shape), wrong_shape)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if k != "features.3.bias"}, partial)
    with pytest.raises(ValueError, match="lacks 1 parameter.*features.3.bias"):
        cnn.load_weights(net, weights.read_state_dict(partial), partial)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot read weights file .*corrupt.safetensors"):
        weights.read_state_dict(corrupt)
    with pytest.raises(FileNotFoundError, match="holds none of model.safetensors"):
        weights.resolve_weights(str(tmp_path))


def test_missing_weights_need_allow_untrained(monkeypatch):
    with pytest.raises(ValueError, match="--allow-untrained"):
        deep.build_network("cnn", None, allow_untrained=False, seed=0)
    net, info = deep.build_network("cnn", None, allow_untrained=True, seed=0)
    assert info["untrained"] is True and net.n_features == 2048
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline"):
        deep.build_network("ctfm", "no-such-owner/no-such-model-xyz", allow_untrained=False, seed=0)


def test_patch_center_outside_the_volume_is_an_error_naming_the_series(tmp_path):
    centers = _centers(1).head(1).assign(x_mm=500.0)
    job = driver.SeriesJob(identity=IDENTITY, ct_path="", seg_path=None, transform_path="",
                           partial_path=str(tmp_path / "p.csv"), centers=centers)
    params = radiomics_features.load_params(PARAMS_YAML)
    with pytest.raises(ValueError, match="series 1.2.3: patch center 0 at .*outside the volume"):
        driver.run_job(job, lambda j: radiomics_features.patch_frame(_volume(), None, j.centers, IDENTITY, params,
                                                                     driver.PatchSettings()))
    assert not (tmp_path / "p.csv").exists()


def test_pretrain_saves_an_encoder_that_extract_cnn_loads(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(8) % 4
    x = (rng.normal(0, 20, (8, 16, 32, 32)) + 60.0 * y[:, None, None, None]).astype(np.float32)
    data = pretrain.PatchSet(x, y, np.array(["A1"] * 6 + ["B1"] * 2))
    model, info = pretrain.train(data, ("B1",), epochs=2, batch_size=4, lr=1e-3, seed=0)
    assert (info["n_train"], info["n_val"], len(info["history"])) == (6, 2, 2)
    assert info["classes"] == ["cyst", "hemangioma", "metastasis", "normal"]
    path = pretrain.save_encoder(model, tmp_path / "shallow_cnn.pt")
    net = cnn.build((16, 32, 32))
    report = cnn.load_weights(net, weights.read_state_dict(path), path)
    assert report.n_loaded == 4 and report.unexpected == []
    trained = deep.Network("cnn", model.encoder, cnn.HU_RANGE, net.n_features, lambda m, t: m(t))
    _assert_same_state(model.encoder, net.module)
    _assert_same_embeddings(deep.embed_patches(net, x), deep.embed_patches(trained, x), net)


def test_pick_device_rejects_bad_names():
    assert deep.pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown --device 'gpu0'"):
        deep.pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            deep.pick_device("cuda")
