"""One configuration, one fold: the single entry point search/ calls.

``fit_predict_fold(config, manifest, train_idx, val_idx, test_idx, classes=..., cache_root=...)``
fits ``config`` on the training rows and returns validation and test probabilities in
``classes`` order. Three modes, cheapest first:

- ``"head"``: a `HeadClassifier` on pooled features from the feature cache (each image's
  features are computed once and shared by every fold and trial).
- ``"partial"``: a `PartialFineTuner` on cached activations at ``stage``: the backbone's last
  stages are trained with the new head.
- ``"full"``: a `FineTuner` on decoded images: the whole backbone, staged.

Cached views: ``plain``, ``flip`` and seeded augmented crops ``aug0, aug1, ...``. Training uses
plain, flip (when ``flip``) and ``train_views`` augmented crops; prediction averages plain, flip
(when ``flip``) and ``tta_views`` augmented crops.
"""
from __future__ import annotations

import contextvars
import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from models.heads import HEAD_KINDS, HeadClassifier, resolve_device

__all__ = ["FitConfig", "FoldResult", "fit_predict_fold", "MODES", "MODE_DEFAULTS"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("herostack_deadline", default=None)

MODES = ("head", "partial", "full")
# Per-mode defaults for the fields left as None: what one fold needs to train well.
MODE_DEFAULTS = {
    "head": {"lr": 3e-3, "epochs": 30, "batch_size": 512},
    "partial": {"lr": 2e-3, "epochs": 6, "batch_size": 64},
    "full": {"lr": 1e-3, "epochs": 5, "batch_size": 32},
}


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Everything that decides how one model is fit. Saved as ``meta.json["config"]``.

    ``lr``, ``epochs`` and ``batch_size`` left as None take the mode's default
    (``MODE_DEFAULTS``); `resolved` fills them in.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "auto"  # a models.backbones weight source
    image_size: int = 224
    mode: str = "head"  # "head" | "partial" | "full"
    head: str = "linear"  # head mode: "linear" | "mlp"
    hidden: int = 512  # mlp width
    dropout: float = 0.2  # mlp hidden dropout; partial: before the new head; full: timm drop_rate
    lr: float | None = None  # head lr; the backbone's layer groups get lower ones (lr_ratio)
    lr_ratio: float = 1 / 3  # partial: tail lr = lr * ratio; full: group k below head lr*ratio**k
    weight_decay: float = 1e-2
    epochs: int | None = None  # full: epochs with every layer trainable, after frozen_epochs
    frozen_epochs: int = 1  # full: head-only epochs first
    cycles: int = 1  # full: cosine cycles (warm restarts)
    cycle_mult: float = 1.0  # full: each cycle this much longer than the last
    label_smoothing: float = 0.1
    class_weight: str | None = None  # None | "balanced"
    train_views: int = 0  # head/partial: cached augmented crops trained on, besides plain (+flip)
    tta_views: int = 0  # head/partial: augmented crops averaged at prediction, besides plain (+flip)
    flip: bool = True  # train on and average over the mirrored view
    stage: int | None = None  # partial: first trained block stage; None = the last two stages
    randaug_magnitude: int = 9  # full: RandAugment magnitude; 0 = crops and flips only
    mixup: float = 0.0  # full: mixup alpha (0 = off)
    cutmix: float = 0.0  # full: cutmix alpha (0 = off)
    batch_size: int | None = None
    ema: bool = False  # partial/full: predict with an exponential moving average of the weights
    find_lr: bool = False  # full: run the LR range test and use its suggestion instead of lr
    grad_checkpointing: bool = False  # full: trade compute for memory
    use_extra: bool = True  # train on extra_train_idx rows when the caller passes them
    seed: int = 0

    def __post_init__(self):
        if self.class_weight in ("none", ""):  # search spaces spell "no weighting" as a string
            object.__setattr__(self, "class_weight", None)
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES} but got {self.mode!r}")
        if self.head not in HEAD_KINDS:
            problems.append(f"head must be one of {HEAD_KINDS} but got {self.head!r}")
        if self.class_weight not in (None, "balanced"):
            problems.append(f"class_weight must be None or 'balanced' but got {self.class_weight!r}")
        for name in ("image_size", "hidden", "cycles"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 but got {getattr(self, name)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                problems.append(f"{name} must be >= 1 (or None for the mode default) but got {value}")
        for name in ("frozen_epochs", "train_views", "tta_views", "randaug_magnitude"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0 but got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be > 0 (or None for the mode default) but got {self.lr}")
        if not 0 < self.lr_ratio <= 1:
            problems.append(f"lr_ratio must be in (0, 1] but got {self.lr_ratio}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1) but got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1) but got {self.label_smoothing}")
        if self.cycle_mult < 1:
            problems.append(f"cycle_mult must be >= 1 but got {self.cycle_mult}")
        if self.stage is not None and int(self.stage) < 0:
            problems.append(f"stage must be >= 0 or None but got {self.stage}")
        if self.mode == "full" and self.tta_views:
            problems.append("full mode averages plain and flip only: tta_views must be 0 "
                            f"but got {self.tta_views}")
        if problems:
            raise ValueError("invalid FitConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FitConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def resolved(self) -> "FitConfig":
        """This config with ``lr``, ``epochs`` and ``batch_size`` filled from the mode defaults."""
        defaults = MODE_DEFAULTS[self.mode]
        return dataclasses.replace(self, **{k: v for k, v in defaults.items()
                                            if getattr(self, k) is None})

    @property
    def fit_views(self) -> tuple[str, ...]:
        return ("plain",) + (("flip",) if self.flip else ()) + _aug_views(self.train_views)

    @property
    def predict_views(self) -> tuple[str, ...]:
        return ("plain",) + (("flip",) if self.flip else ()) + _aug_views(self.tta_views)


def _aug_views(k: int) -> tuple[str, ...]:
    return tuple(f"aug{i}" for i in range(int(k)))


@dataclasses.dataclass
class FoldResult:
    """Probabilities in ``classes`` order (rows sum to 1) and where the time went."""

    val_proba: np.ndarray  # [len(val_idx), C]
    test_proba: np.ndarray  # [len(test_idx), C]
    timings: dict  # features_s, fit_s, predict_s
    info: dict = dataclasses.field(default_factory=dict)  # e.g. loss curve, lr found, OOM events


# ---------------------------------------------------------------------------------- entry point


def fit_predict_fold(config: FitConfig, manifest: pd.DataFrame, train_idx, val_idx, test_idx, *,
                     classes: Sequence[str], cache_root, device: str = "auto",
                     progress: bool = False, extra_train_idx=None,
                     work_dir=None, deadline: float | None = None) -> FoldResult:
    """Fit ``config`` on ``train_idx`` (+ ``extra_train_idx``) and predict ``val_idx``/``test_idx``.

    Indices are positional rows of ``manifest`` (columns image_id, split, path, label, sha256).
    Training labels are mapped to integers by their position in ``classes``. ``work_dir``, when
    given, holds full fine-tuning's epoch checkpoints, so a killed fold resumes.
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    config = config.resolved()
    classes = list(classes)
    n = len(manifest)
    train_idx, val_idx, test_idx = (_positions(i, n, name) for i, name in
                                    ((train_idx, "train_idx"), (val_idx, "val_idx"),
                                     (test_idx, "test_idx")))
    extra = _positions(extra_train_idx, n, "extra_train_idx") if extra_train_idx is not None \
        else np.empty(0, np.int64)
    if config.use_extra and len(extra):
        train_idx = np.concatenate([train_idx, extra])
    leak = np.intersect1d(train_idx, val_idx)
    if len(leak):
        raise ValueError(f"{len(leak)} rows are in both training and validation, e.g. positions "
                         f"{leak[:5].tolist()}")
    if len(train_idx) == 0:
        raise ValueError("train_idx is empty")
    y = _labels(manifest, train_idx, classes)
    device = resolve_device(device)
    run = {"head": _fit_head, "partial": _fit_partial, "full": _fit_full}[config.mode]
    token = _DEADLINE.set(deadline)  # feature extraction stops there (models.features.DeadlineReached)
    try:
        val_proba, test_proba, timings, info = run(
            config, manifest, train_idx, y, val_idx, test_idx, classes=classes,
            cache_root=Path(cache_root), device=device, progress=progress, work_dir=work_dir)
    finally:
        _DEADLINE.reset(token)
    return FoldResult(_normalised(val_proba, len(val_idx), len(classes)),
                      _normalised(test_proba, len(test_idx), len(classes)), timings, info)


def _positions(idx, n: int, name: str) -> np.ndarray:
    idx = np.asarray(idx if idx is not None else [], dtype=np.float64).ravel()
    if len(idx) and (not np.all(idx == np.round(idx)) or idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{name} must hold integer row positions in 0..{n - 1}; got values from "
                         f"{idx.min()} to {idx.max()}")
    return idx.astype(np.int64)


def _labels(manifest: pd.DataFrame, idx: np.ndarray, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    labels = manifest["label"].to_numpy()[idx]
    bad = sorted({str(v) for v in labels if v not in index})
    if bad:
        raise ValueError(f"training rows have labels not in classes: {bad[:10]} "
                         f"(classes: {classes})")
    return np.array([index[v] for v in labels], dtype=np.int64)


def _normalised(proba, n_rows: int, n_classes: int) -> np.ndarray:
    if proba is None:
        return np.zeros((0, n_classes))
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (n_rows, n_classes):
        raise RuntimeError(f"model returned probabilities of shape {proba.shape}, "
                           f"expected {(n_rows, n_classes)}")
    if not np.all(np.isfinite(proba)):
        raise RuntimeError("model returned non-finite probabilities")
    return proba / proba.sum(axis=1, keepdims=True) if n_rows else proba


# ---------------------------------------------------------------------------------- modes


def _features(config, manifest, idx, views, *, cache_root, device, progress, stage=None):
    """``[V, len(idx), ...]`` cached features (or stage activations) for rows ``idx``."""
    from models.features import FeatureCache

    cache = FeatureCache(cache_root, device=str(device), deadline=_DEADLINE.get())
    got = cache.get(manifest.iloc[idx].reset_index(drop=True), config.backbone, config.image_size,
                    views=tuple(views), stage=stage, weights=config.weights, progress=progress)
    return np.stack([np.asarray(got[v]) for v in views])


def _fit_head(config, manifest, train_idx, y, val_idx, test_idx, *, classes, cache_root,
              device, progress, work_dir):
    t0 = time.perf_counter()
    fit_x = _features(config, manifest, train_idx, config.fit_views, cache_root=cache_root,
                      device=device, progress=progress)
    eval_idx = np.concatenate([val_idx, test_idx])
    eval_x = _features(config, manifest, eval_idx, config.predict_views, cache_root=cache_root,
                       device=device, progress=progress) if len(eval_idx) else None
    t1 = time.perf_counter()
    head = HeadClassifier(
        config.head, hidden=config.hidden, dropout=config.dropout, lr=config.lr,
        weight_decay=config.weight_decay, epochs=config.epochs, batch_size=config.batch_size,
        label_smoothing=config.label_smoothing, class_weight=config.class_weight,
        classes=np.arange(len(classes)), seed=config.seed, device=str(device)).fit(fit_x, y)
    t2 = time.perf_counter()
    proba = head.predict_proba(eval_x) if eval_x is not None else np.zeros((0, len(classes)))
    t3 = time.perf_counter()
    info = {"loss_curve": head.loss_curve_, "n_train_rows": int(len(train_idx)),
            "fit_views": list(config.fit_views), "predict_views": list(config.predict_views)}
    return (proba[:len(val_idx)], proba[len(val_idx):],
            {"features_s": t1 - t0, "fit_s": t2 - t1, "predict_s": t3 - t2}, info)


def _partial_stage(config) -> tuple[int, object]:
    from models.backbones import create_backbone, num_stages, split_at_stage

    model = create_backbone(config.backbone, weights=config.weights)
    n = num_stages(model)
    stage = n - 2 if config.stage is None else int(config.stage)
    if not 0 <= stage < n:
        raise ValueError(f"stage must be in 0..{n - 1} for {config.backbone} (it has {n} stages); "
                         f"got {stage}")
    return stage, split_at_stage(model, stage)[1]


def _fit_partial(config, manifest, train_idx, y, val_idx, test_idx, *, classes, cache_root,
                 device, progress, work_dir):
    from models.finetune import PartialFineTuner

    t0 = time.perf_counter()
    stage, tail = _partial_stage(config)
    fit_x = _features(config, manifest, train_idx, config.fit_views, cache_root=cache_root,
                      device=device, progress=progress, stage=stage)
    eval_idx = np.concatenate([val_idx, test_idx])
    eval_x = _features(config, manifest, eval_idx, config.predict_views, cache_root=cache_root,
                       device=device, progress=progress, stage=stage) if len(eval_idx) else None
    t1 = time.perf_counter()
    model = PartialFineTuner(
        tail, lr=config.lr, lr_ratio=config.lr_ratio, weight_decay=config.weight_decay,
        epochs=config.epochs, batch_size=config.batch_size,
        label_smoothing=config.label_smoothing, class_weight=config.class_weight,
        dropout=config.dropout, ema=config.ema, classes=np.arange(len(classes)),
        seed=config.seed, device=str(device), progress=progress).fit(fit_x, y)
    del fit_x
    t2 = time.perf_counter()
    proba = model.predict_proba(eval_x) if eval_x is not None else np.zeros((0, len(classes)))
    t3 = time.perf_counter()
    info = {"loss_curve": model.loss_curve_, "epoch_seconds": model.epoch_seconds_,
            "stage": stage, "n_train_rows": int(len(train_idx)),
            "fit_views": list(config.fit_views), "predict_views": list(config.predict_views)}
    return (proba[:len(val_idx)], proba[len(val_idx):],
            {"features_s": t1 - t0, "fit_s": t2 - t1, "predict_s": t3 - t2}, info)


def decode_geometry(config: FitConfig) -> tuple[int, str]:
    """(side, interpolation) of the decoded squares for full fine-tuning: the feature cache's
    stored squares (``image_size / crop_pct``, even margin), so both share one decoded store and
    the eval centre crop is the feature cache's "plain" view."""
    from models.backbones import data_config
    from models.features import stored_size

    cfg = data_config(config.backbone)
    return stored_size(config.image_size, cfg["crop_pct"]), cfg["interpolation"]


def _fit_full(config, manifest, train_idx, y, val_idx, test_idx, *, classes, cache_root,
              device, progress, work_dir):
    from models.finetune import FineTuner
    from models.images import DecodedCache

    t0 = time.perf_counter()
    cache = DecodedCache(cache_root / "decoded")  # where FeatureCache(cache_root) keeps its own
    size, interpolation = decode_geometry(config)

    def images(idx):
        rows = manifest.iloc[idx]
        return np.asarray(cache.get(rows["path"].tolist(), rows["sha256"].tolist(), size,
                                    progress=progress, interpolation=interpolation))

    fit_x = images(train_idx)
    eval_idx = np.concatenate([val_idx, test_idx])
    t1 = time.perf_counter()
    model = FineTuner(
        config.backbone, weights=config.weights, image_size=config.image_size,
        lr=None if config.find_lr else config.lr, lr_ratio=config.lr_ratio,
        weight_decay=config.weight_decay, epochs=config.epochs,
        frozen_epochs=config.frozen_epochs, cycles=config.cycles, cycle_mult=config.cycle_mult,
        aug="rand" if config.randaug_magnitude > 0 else "light",
        randaug_magnitude=config.randaug_magnitude, mixup=config.mixup, cutmix=config.cutmix,
        label_smoothing=config.label_smoothing, class_weight=config.class_weight,
        drop_rate=config.dropout, batch_size=config.batch_size, ema=config.ema,
        grad_checkpointing=config.grad_checkpointing,
        checkpoint_dir=None if work_dir is None else Path(work_dir),
        classes=np.arange(len(classes)), seed=config.seed, device=str(device),
        progress=progress).fit(fit_x, y)
    del fit_x
    t2 = time.perf_counter()
    views = ("plain", "flip") if config.flip else ("plain",)
    t_decode = time.perf_counter()
    eval_x = images(eval_idx) if len(eval_idx) else None
    t_decode = time.perf_counter() - t_decode
    proba = model.predict_proba(eval_x, tta=views) if eval_x is not None \
        else np.zeros((0, len(classes)))
    t3 = time.perf_counter()
    info = {"history": model.history_, "lr": model.lr_, "lr_find": model.lr_find_,
            "oom_events": model.oom_events_, "micro_batch_size": model.micro_batch_size_,
            "n_train_rows": int(len(train_idx))}
    return (proba[:len(val_idx)], proba[len(val_idx):],
            {"features_s": t1 - t0 + t_decode, "fit_s": t2 - t1, "predict_s": t3 - t2 - t_decode},
            info)
