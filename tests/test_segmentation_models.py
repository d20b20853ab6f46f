"""Segmenter adapters, the built-in twin-trained U-Net and the CNN denoiser (issue 11, models half).

Everything runs on tiny synthetic volumes in seconds: no twin, no download. TotalSegmentator and
nnU-Net are not installed here: their error paths are tested as they are, and TotalSegmentator's
plumbing (NIfTI orientation, weights check) through a stand-in package written by the test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from ctdose.segmentation import adapters, builtin, cnn_denoiser
from ctdose.twin import phantom as ph


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


def hide_package(monkeypatch, name: str) -> None:
    """Make ``name`` look not installed (whether or not it is)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


# ------------------------------------------------------------------------------ adapters: errors

def test_unknown_kind_is_one_line():
    with pytest.raises(ValueError) as err:
        adapters.make_segmenter("sam")
    assert "builtin" in one_line(err)


def test_totalsegmentator_missing_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    hide_package(monkeypatch, "totalsegmentator")
    with pytest.raises(adapters.SegmenterUnavailable) as err:
        adapters.make_segmenter("totalsegmentator")
    assert "pip install totalsegmentator" in one_line(err)


@pytest.fixture
def fake_totalseg(tmp_path, monkeypatch):
    """A stand-in ``totalsegmentator`` package: labels = input > 50 HU; records what it was given."""
    pkg = tmp_path / "pkgs" / "totalsegmentator"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("CALLS = []\n")
    (pkg / "map_to_binary.py").write_text("class_map = {'total': {1: 'dense'}, 'body': {1: 'body'}}\n")
    (pkg / "python_api.py").write_text(textwrap.dedent("""
        import nibabel as nib
        import numpy as np
        import totalsegmentator as pkg

        def totalsegmentator(input, output=None, **kw):
            img = nib.load(input)
            pkg.CALLS.append({"affine": img.affine.copy(), "kw": kw})
            return nib.Nifti1Image((np.asarray(img.dataobj) > 50).astype(np.uint8), img.affine)
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    for name in [m for m in sys.modules if m.startswith("totalsegmentator")]:
        monkeypatch.delitem(sys.modules, name)
    home = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    yield home
    for name in [m for m in sys.modules if m.startswith("totalsegmentator")]:
        del sys.modules[name]


def test_totalsegmentator_refuses_without_weights_then_runs_with_them(fake_totalseg):
    with pytest.raises(adapters.SegmenterUnavailable) as err:
        adapters.make_segmenter("totalsegmentator", fast=True)
    msg = one_line(err)
    assert "Dataset297" in msg and str(fake_totalseg) in msg
    with pytest.raises(adapters.SegmenterUnavailable) as err:  # roi_subset also needs the 6 mm model
        (fake_totalseg / "nnunet" / "results" / "Dataset297_TotalSegmentator_fast").mkdir(parents=True)
        adapters.make_segmenter("totalsegmentator", fast=True, roi_subset=["dense"])
    assert "Dataset298" in one_line(err) and "Dataset297" not in str(err.value)
    seg = adapters.make_segmenter("totalsegmentator", fast=True)
    assert seg.labels == {1: "dense"}
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 100, (5, 6, 7)).astype(np.float32)  # (z, y, x), all sizes different
    labels = seg.predict(volume, (3.0, 2.0, 1.0))
    np.testing.assert_array_equal(labels, (volume > 50).astype(np.int16))  # back on the input grid and axes
    import nibabel as nib
    import totalsegmentator

    call = totalsegmentator.CALLS[-1]
    assert nib.aff2axcodes(call["affine"]) == ("L", "P", "S")  # LPS voxel axes said as such in RAS+
    np.testing.assert_allclose(nib.affines.voxel_sizes(call["affine"]), (1.0, 2.0, 3.0))
    assert call["kw"]["fast"] is True and call["kw"]["ml"] is True


def test_nnunet_folder_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as err:
        adapters.make_segmenter("nnunet")
    one_line(err)
    with pytest.raises(FileNotFoundError) as err:
        adapters.make_segmenter("nnunet", model_dir=tmp_path / "absent")
    assert "absent" in one_line(err)
    folder = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    with pytest.raises(adapters.SegmenterUnavailable) as err:
        adapters.make_segmenter("nnunet", model_dir=folder)
    assert "plans.json" in one_line(err)
    (folder / "plans.json").write_text("{}")
    with pytest.raises(adapters.SegmenterUnavailable) as err:
        adapters.make_segmenter("nnunet", model_dir=folder)
    assert "fold_X/checkpoint_final.pth" in one_line(err)
    (folder / "fold_0").mkdir()
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    assert adapters.check_nnunet_folder(folder) == (folder, (0,), {1: "liver", 2: "tumour"})
    with pytest.raises(FileNotFoundError) as err:
        adapters.make_segmenter("nnunet", model_dir=folder, folds=(0, 1))
    assert "fold_1" in one_line(err)
    hide_package(monkeypatch, "nnunetv2")
    with pytest.raises(adapters.SegmenterUnavailable) as err:
        adapters.make_segmenter("nnunet", model_dir=folder)
    assert "pip install nnunetv2" in one_line(err)


# ------------------------------------------------------------------------------ adapters: MONAI

MONAI_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]}


@pytest.fixture
def monai_model(tmp_path):
    from monai.networks.nets import UNet

    torch.manual_seed(3)
    net = UNet(**MONAI_KWARGS).eval()
    ckpt = tmp_path / "net.pt"
    torch.save({"state_dict": net.state_dict()}, ckpt)  # wrapped, as many training scripts save it
    config = tmp_path / "net.yaml"
    config.write_text(textwrap.dedent(f"""
        network: UNet
        kwargs: {json.dumps(MONAI_KWARGS)}
        labels: {{1: liver, 2: lesion}}
        window_hu: [-200, 300]
        roi_size_zyx: [8, 16, 16]
    """))
    return net, ckpt, config


def test_monai_checkpoint_round_trips(monai_model):
    net, ckpt, config = monai_model
    seg = adapters.make_segmenter("monai", checkpoint=ckpt, config=config, device="cpu")
    assert seg.labels == {1: "liver", 2: "lesion"}
    rng = np.random.default_rng(1)
    volume = rng.uniform(-400, 500, (8, 16, 16)).astype(np.float32)  # one window: no tiling
    labels = seg.predict(volume, (2.0, 1.0, 1.0))
    x = torch.from_numpy((np.clip(volume, -200, 300) + 200) / 500)[None, None].float()
    with torch.no_grad():
        expected = net(x)[0].argmax(0).numpy()
    assert len(np.unique(expected)) > 1  # a test that can tell labels apart
    np.testing.assert_array_equal(labels, expected)


def test_monai_wrong_or_missing_checkpoint_is_one_line(monai_model, tmp_path):
    from monai.networks.nets import UNet

    _, ckpt, config = monai_model
    other = tmp_path / "other.pt"
    torch.save(UNet(**{**MONAI_KWARGS, "channels": [4, 16]}).state_dict(), other)
    with pytest.raises(ValueError) as err:
        adapters.make_segmenter("monai", checkpoint=other, config=config)
    assert "other.pt" in one_line(err) and "shape" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        adapters.make_segmenter("monai", checkpoint=tmp_path / "nope.pt", config=config)
    assert "nope.pt" in one_line(err)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as err:
        adapters.make_segmenter("monai", checkpoint=garbage, config=config)
    assert "garbage.pt" in one_line(err)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"network": "NoSuchNet", "labels": {"1": "a"}}))
    with pytest.raises(ValueError) as err:
        adapters.make_segmenter("monai", checkpoint=ckpt, config=bad)
    assert "NoSuchNet" in one_line(err)


# ------------------------------------------------------------------------------ built-in model

def test_twin_label_map_follows_the_pose():
    pose = ph.Pose(0.0, (3.0, -2.0, 1.5))
    spacing = np.array([1.0, 1.0, 1.0])
    for roi, value in (("cyst1", 5), ("hemangioma", 7), ("normal2", 10)):
        centre = np.array(ph.ROI_CENTERS_MM[roi]) + pose.translation_mm  # scanner position of the ROI center
        origin = centre - 2.0  # a 5^3 grid centered there
        labels = builtin.twin_label_map((5, 5, 5), origin, spacing, pose)
        assert labels[2, 2, 2] == value and builtin.LABELS[value] == roi
    far = builtin.twin_label_map((1, 1, 1), np.array([0.0, 200.0, 0.0]), spacing, pose)  # outside the body
    assert far[0, 0, 0] == 0
    vertebra = builtin.twin_label_map((1, 1, 1), np.array([3.0, 80.0 - 14.0 - 2.0, 1.5]), spacing, pose)
    assert vertebra[0, 0, 0] == 3  # cortical ring of the vertebra: bone
    rotated = ph.Pose(90.0, (0.0, 0.0, 0.0))  # q = (-100, -30) -> p = (30, -100)
    lab = builtin.twin_label_map((1, 1, 1), np.array([30.0, -100.0, 0.0]), spacing, rotated)
    assert lab[0, 0, 0] == 5


def test_dice_per_label():
    a = np.array([1, 1, 2, 0, 0])
    b = np.array([1, 0, 2, 2, 0])
    d = builtin.dice_per_label(a, b, {1: "x", 2: "y", 3: "z"})
    assert d["x"] == pytest.approx(2 / 3) and d["y"] == pytest.approx(2 / 3) and np.isnan(d["z"])


TINY = builtin.BuiltinConfig(channels=(4, 8), strides=(2,), num_res_units=0, work_spacing_zyx_mm=(8.0, 8.0, 8.0),
                             patch_zyx=(8, 16, 16))


def _tiny_case(name: str, group: str, seed: int) -> builtin.TrainingCase:
    """A coarse (4 mm) noisy image of the liver segment, made from the analytic labels."""
    origin, spacing = np.array([-150.0, -90.0, -30.0]), np.array([4.0, 4.0, 4.0])
    pose = ph.Pose(0.0, (float(seed), 0.0, 0.0))
    labels = builtin.twin_label_map((16, 45, 48), origin, spacing, pose)
    hu = np.array([-1000, 40, -780, 700, 100, 8, 8, 130, 70, 100, 100], dtype=np.float32)[labels]
    hu += np.random.default_rng(seed).normal(0, 20, hu.shape).astype(np.float32)
    return builtin.make_case(name, group, hu, origin, spacing, pose, TINY.work_spacing_zyx_mm)


def test_builtin_trains_and_predicts_deterministically(tmp_path):
    cases = [_tiny_case("a", "A", 0), _tiny_case("b", "B", 2)]
    network, record = builtin.train(cases, ("B",), TINY, iterations=3, batch_size=2, lr=1e-2, seed=0,
                                    device=torch.device("cpu"), log_every=1)
    assert [c["iteration"] for c in record["loss_curve"]] == [1, 2, 3]
    assert all(np.isfinite(c["loss"]) for c in record["loss_curve"])
    assert record["val_series"] == ["b"] and set(record["validation_dice"]["b"]) == set(builtin.LABELS.values())
    path = builtin.save_model(network, TINY, tmp_path / "m.pt")
    seg = adapters.make_segmenter("builtin", weights=path, device="cpu")
    assert seg.name == "builtin-unet (twin-trained)" and seg.labels == builtin.LABELS
    case = cases[1]
    first = seg.predict(case.hu, case.spacing_zyx)
    again = adapters.make_segmenter("builtin", weights=path, device="cpu").predict(case.hu, case.spacing_zyx)
    assert first.shape == case.hu.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    # same weights straight from training: the file round trip changes nothing
    direct = builtin.BuiltinSegmenter(network, TINY, torch.device("cpu")).predict(case.hu, case.spacing_zyx)
    np.testing.assert_array_equal(first, direct)


def test_builtin_missing_or_foreign_weights_are_one_line(tmp_path, monai_model):
    with pytest.raises(FileNotFoundError) as err:
        adapters.make_segmenter("builtin", weights=tmp_path / "none.pt")
    assert "train_builtin.py" in one_line(err)
    _, ckpt, _ = monai_model
    with pytest.raises(ValueError) as err:
        adapters.make_segmenter("builtin", weights=ckpt)
    assert "net.pt" in one_line(err)


def test_logits_to_labels_interpolates_class_by_class():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 3, 4, 5)
    got = builtin.logits_to_labels(logits, (6, 8, 10))
    full = torch.nn.functional.interpolate(logits, size=(6, 8, 10), mode="trilinear", align_corners=False)
    np.testing.assert_array_equal(got, full[0].argmax(0).numpy())


# ------------------------------------------------------------------------------ CNN denoiser

def _toy_pair(seed: int) -> cnn_denoiser.DenoisePair:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (12, 32, 32)), indexing="ij")
    signal = np.where((y - 16) ** 2 + (x - 16) ** 2 < 100, 100.0, 0.0).astype(np.float32) + np.zeros_like(z, np.float32)
    low = signal + rng.normal(0, 40, signal.shape).astype(np.float32)
    full = signal + rng.normal(0, 10, signal.shape).astype(np.float32)
    return cnn_denoiser.DenoisePair(f"p{seed}", "A" if seed == 0 else "B", low, full, 3.0, 14.0, signal == 0)


def test_cnn_denoiser_reduces_noise_and_registers(tmp_path):
    train_pair, val_pair = _toy_pair(0), _toy_pair(1)
    network, record = cnn_denoiser.train([train_pair, val_pair], ("B",), features=8, layers=3, iterations=60,
                                         batch_size=4, patch_zyx=(8, 24, 24), lr=5e-3, seed=0,
                                         device=torch.device("cpu"))
    fig = record["validation"]["p1"]
    background = val_pair.roi_mask
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    far = np.broadcast_to((yy - 16) ** 2 + (xx - 16) ** 2 > 14 ** 2, background.shape)  # 4+ voxels off the disc
    den = cnn_denoiser.denoise_volume(network, val_pair.low, torch.device("cpu"))
    assert den[far].std() < 0.7 * val_pair.low[far].std()  # noise down in a uniform region (40 HU in)
    assert abs(den[far].mean()) < 5.0  # mean kept (true value 0 HU)
    assert fig["rmse_denoised_vs_full"] < 0.7 * fig["rmse_low_vs_full"]
    assert fig["roi_std_denoised"] == pytest.approx(float(den[background].std()), rel=1e-5)
    # slab-wise inference with a halo equals one whole-volume pass
    with torch.no_grad():
        whole = network(torch.from_numpy(val_pair.low / cnn_denoiser.HU_SCALE)[None, None]).numpy()[0, 0]
    np.testing.assert_allclose(cnn_denoiser.denoise_volume(network, val_pair.low, torch.device("cpu"), slab=5),
                               whole * cnn_denoiser.HU_SCALE, atol=1e-3)
    path = cnn_denoiser.save_denoiser(network, tmp_path / "d.pt")
    from ctdose.segmentation.denoise import get_denoiser

    loaded = get_denoiser("cnn", weights=path)
    np.testing.assert_allclose(loaded(val_pair.low, (2.0, 1.0, 1.0)), den, atol=1e-4)


def test_cnn_denoiser_missing_weights_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cnn_denoiser.load_cnn_denoiser(tmp_path / "absent.pt")
    assert "train_denoiser.py" in one_line(err)
