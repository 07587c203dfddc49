"""models.backbones: registry, weight sources, preprocessing config, stage splitting."""
from __future__ import annotations

import sys

import pytest
import torch

from models import backbones as bb
from models.backbones import (
    BackboneError,
    BackboneSpec,
    WeightsUnavailableError,
    create_backbone,
    data_config,
    num_stages,
    split_at_stage,
    weights_info,
)

# ImageNet classes of buildings; china.jpg shows a temple on a hill.
BUILDINGS = {698, 497, 663, 442, 538, 498, 668, 832, 873, 449, 483, 975, 580, 727, 510, 900, 406}


@pytest.fixture(scope="module")
def tiny():
    return create_backbone("test_efficientnet", weights="random")


def test_lite0_offline_weights_recognise_a_building():
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.data import create_transform

    model = create_backbone("efficientnet_lite0", num_classes=1000)
    assert weights_info("efficientnet_lite0")["source"] == "offline"
    x = create_transform(**data_config("efficientnet_lite0", model))(Image.fromarray(load_sample_images().images[0]))
    with torch.no_grad():
        top5 = model(x[None]).topk(5).indices[0].tolist()
    assert BUILDINGS & set(top5), top5


def test_lite0_data_config_comes_from_the_tf_lite_weights():
    cfg = data_config("efficientnet_lite0")
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == pytest.approx(0.875)
    assert data_config("efficientnet_lite2")["input_size"] == (3, 260, 260)


def test_offline_backbones_listed_and_weights_hash_is_cached():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(bb.offline_backbones())
    info = weights_info("efficientnet_lite0")
    assert info["sha256"].startswith("57934424")  # the package names its file by the hash
    assert info["key"] == info["sha256"]
    before = bb._sha256_of.cache_info().hits
    weights_info("efficientnet_lite0")
    assert bb._sha256_of.cache_info().hits == before + 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="no_such_net"), r"unknown backbone 'no_such_net'; known backbones: .*efficientnet_lite0"),
        (dict(name="test_efficientnet", weights="bogus"), r"weights must be one of"),
        (dict(name="test_efficientnet"), r"pass weights='random' explicitly"),
        (dict(name="test_efficientnet", weights="checkpoint"), r"needs checkpoint="),
        (dict(name="test_efficientnet", weights="random", checkpoint="x.pth"), r"use weights='checkpoint'"),
        (dict(name="resnet50", weights="offline"), r"no offline weights package.*efficientnet_lite0"),
        (dict(name="test_efficientnet", weights="hub"), r"no hub weights"),
    ],
)
def test_bad_requests_fail_with_a_clear_message(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(BackboneError, match=match):
        create_backbone(name, **kwargs)


def test_hub_backbone_offline_names_it_and_the_offline_ones(monkeypatch):
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(bb, "_hub_cached_file", lambda arch: None)
    monkeypatch.setattr(bb, "_hub_reachable", lambda timeout=3.0: True)  # reachable, but the loader fails
    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(builder, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match=r"backbone 'resnet50'.*efficientnet_lite0, efficientnet_lite1"):
        create_backbone("resnet50")
    monkeypatch.setattr(bb, "_hub_reachable", lambda timeout=3.0: False)  # no network: fail at once
    with pytest.raises(WeightsUnavailableError, match=r"'convnext_tiny'.*not reachable.*efficientnet_lite2"):
        create_backbone("convnext_tiny", weights="hub")


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_checkpoint_roundtrip(tmp_path, tiny, wrap):
    source = create_backbone("test_efficientnet", weights="random", num_classes=5)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))  # differ from the seeded random init
    state = source.state_dict()
    obj = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "module_prefix": {"module." + k: v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)

    same_head = create_backbone("test_efficientnet", checkpoint=path, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(same_head(x), source.eval()(x), atol=1e-5)
        features = create_backbone("test_efficientnet", weights="checkpoint", checkpoint=path)  # head dropped
        assert torch.allclose(features(x), source.forward_head(source.forward_features(x), pre_logits=True), atol=1e-5)
    assert weights_info("test_efficientnet", checkpoint=path)["source"] == "checkpoint"


def test_checkpoint_shape_mismatch_names_the_tensor(tmp_path):
    state = create_backbone("test_efficientnet", weights="random").state_dict()
    state["conv_stem.weight"] = torch.zeros(7, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match=r"'conv_stem.weight' has shape \(7, 3, 3, 3\)"):
        create_backbone("test_efficientnet", checkpoint=tmp_path / "bad.pth")
    del state["conv_stem.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(BackboneError, match=r"1 missing keys \(first: \['conv_stem.weight'\]\)"):
        create_backbone("test_efficientnet", checkpoint=tmp_path / "short.pth")


def test_offline_package_maps_keys_in_order_and_checks_shapes(tmp_path, monkeypatch):
    """A fake weights package with foreign key names; then one with a wrong shape."""
    ref = bb._new_model("test_efficientnet", 1000)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(1.0)
    foreign = {f"_t{i}.w": v for i, v in enumerate(ref.state_dict().values())}
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    torch.save(foreign, pkg / "models" / "w.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(bb.BACKBONES, "fake_net", BackboneSpec("fake_net", "test_efficientnet", "fake_weights_pkg", hub=False))

    assert "fake_net" in bb.offline_backbones()
    model = create_backbone("fake_net", num_classes=1000)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert create_backbone("fake_net").num_classes == 0

    keys = list(foreign)
    foreign[keys[3]] = torch.zeros(2, 2)
    torch.save(foreign, pkg / "models" / "w.pth")
    with pytest.raises(BackboneError, match=rf"tensor #3 '{keys[3]}' has shape \(2, 2\)"):
        create_backbone("fake_net", weights="offline")
    sys.modules.pop("fake_weights_pkg", None)


def test_random_init_is_deterministic():
    a = create_backbone("test_efficientnet", weights="random").state_dict()
    b = create_backbone("test_efficientnet", weights="random").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", [0, 1, 2, "last"])
def test_split_at_stage_equals_forward(tiny, stage):
    stage = num_stages(tiny) if stage == "last" else stage
    trunk, tail = split_at_stage(tiny, stage)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        act = trunk(x)
        full = tiny.forward_head(tiny.forward_features(x), pre_logits=True)
        assert act.ndim == 4 and act.shape[0] == 2
        assert torch.allclose(tail(act), full, atol=1e-5)
        assert tail(act).shape == (2, tiny.num_features)


def test_split_errors(tiny):
    with pytest.raises(BackboneError, match=rf"stage must be an integer in 0..{num_stages(tiny)}"):
        split_at_stage(tiny, num_stages(tiny) + 1)
    with pytest.raises(BackboneError, match=r"EfficientNet-family.*ResNet has no conv_stem"):
        split_at_stage(create_backbone("test_resnet", weights="random"), 1)
