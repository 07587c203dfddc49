"""Classifier heads trained on cached features: the cheap end of the fast.ai recipe.

`HeadClassifier` is a scikit-learn style estimator (``fit``/``predict_proba``/``classes_``) that
trains a linear layer or a one-hidden-layer MLP with AdamW in torch. It takes features of one
view, ``[N, D]``, or several views of the same images stacked, ``[V, N, D]``: it trains on every
view and predicts by averaging the views' probabilities (test-time augmentation).
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

__all__ = [
    "HeadClassifier",
    "resolve_device",
    "class_weights",
    "make_schedule",
    "as_views",
    "check_labels",
]

HEAD_KINDS = ("linear", "mlp")
SCHEDULES = ("cosine", "onecycle", "constant")
MIN_STEPS = 8  # optimiser steps per epoch at least


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA when present, otherwise the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def as_views(X, *, item_ndim: int, name: str = "X") -> np.ndarray | torch.Tensor:
    """Return ``X`` with a leading view axis: ``[N, ...]`` becomes ``[1, N, ...]``.

    ``item_ndim`` is the number of dimensions of one sample (1 for a feature vector, 3 for a
    ``C, H, W`` activation map).
    """
    if isinstance(X, (list, tuple)):
        X = np.stack([np.asarray(v) for v in X])
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
    if X.ndim == item_ndim + 1:
        return X[None]
    if X.ndim == item_ndim + 2:
        return X
    raise ValueError(
        f"{name} must have shape [N, ...] or [V, N, ...] with {item_ndim} sample dimension(s); "
        f"got shape {tuple(X.shape)}"
    )


def check_labels(y, n_rows: int, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to positions in ``classes`` (``np.unique(y)`` when None)."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_rows:
        raise ValueError(f"y must be 1-D with one label per sample: X has {n_rows} samples, "
                         f"y has shape {y.shape}")
    classes = np.unique(y) if classes is None else np.asarray(classes)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes, got {list(classes)}")
    index = {c: i for i, c in enumerate(classes.tolist())}
    unknown = sorted({v for v in y.tolist() if v not in index}, key=str)
    if unknown:
        raise ValueError(f"labels not in classes: {unknown[:10]} (classes: {classes.tolist()})")
    return classes, np.array([index[v] for v in y.tolist()], dtype=np.int64)


def class_weights(class_weight, y_int: np.ndarray, n_classes: int) -> torch.Tensor | None:
    """None, ``"balanced"`` (n_samples / (n_classes * count), as scikit-learn) or an array."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced' or an array; "
                             f"got {class_weight!r}")
        counts = np.bincount(y_int, minlength=n_classes).astype(np.float64)
        # A class absent from this fold gets weight 1: it has no samples to weigh anyway.
        w = np.where(counts > 0, len(y_int) / (n_classes * np.maximum(counts, 1)), 1.0)
    else:
        w = np.asarray(class_weight, dtype=np.float64)
        if w.shape != (n_classes,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"class_weight array must hold {n_classes} finite non-negative "
                             f"weights; got shape {w.shape}")
    return torch.tensor(w, dtype=torch.float32)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, kind: str = "cosine",
                  warmup_frac: float = 0.05) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate multiplier: warmup then cosine to zero, one-cycle, or flat."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {kind!r}")
    total_steps = max(1, int(total_steps))
    # One-cycle: 25% rising from lr/10, then cosine down to lr/1000 (written out rather than
    # torch's OneCycleLR, which divides by zero on runs of a handful of steps).
    warmup = int(round((0.25 if kind == "onecycle" else warmup_frac) * total_steps))
    start, end = (0.1, 1e-3) if kind == "onecycle" else (0.0, 0.0)

    def factor(step: int) -> float:
        if kind == "constant":
            return 1.0
        if step < warmup:
            return start + (1.0 - start) * (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (None: leave the setting alone)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_head(kind: str, n_in: int, n_out: int, hidden: int, dropout: float) -> nn.Module:
    if kind == "linear":
        # No input dropout: on ~1280-wide features drawing the mask costs more than the layer.
        return nn.Sequential(nn.Linear(n_in, n_out))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_out))


class HeadClassifier(ClassifierMixin, BaseEstimator):
    """A linear or MLP classifier on fixed features, trained with AdamW.

    Parameters
    ----------
    kind : "linear" or "mlp" (one hidden layer of width ``hidden``, GELU, dropout).
    hidden, dropout : MLP width and the dropout after its hidden layer (unused by "linear").
    lr, weight_decay, epochs : AdamW settings; an epoch is one pass over every view.
    batch_size : rows per step at most; fits of under ``8 * batch_size`` rows use smaller
        batches so that every epoch has 8 steps.
    schedule : "cosine" (with 5% warmup), "onecycle" or "constant", stepped per batch.
    label_smoothing : cross-entropy label smoothing.
    class_weight : None, "balanced" or an array with one weight per class.
    standardize : scale features to zero mean, unit variance (statistics of the training rows).
        On by default: it makes lr mean the same for any backbone's feature scale (without it a
        random-init backbone's features did not train at all). On pretrained EfficientNet-Lite0
        features of a 1,300-image CAX subsample the two were within noise (0.49-0.56 vs 0.59).
    num_threads : CPU threads while fitting ("auto" = 1; None = torch's setting). A head's
        matrices are small: each step with several threads pays for waking and syncing them. On
        a shared 2-core machine, 7,000 x 1,280 rows took 0.8 s (linear) and 7.8 s (mlp 512) on
        one thread, 0.8-27 s and 8-16 s on two.
    classes : the full, ordered class list; defaults to ``np.unique(y)``. Pass it when a fold may
        lack a class, so ``predict_proba`` still has one column per class.
    seed : makes a fit repeatable (on one device).
    device : "auto", "cpu", "cuda", ...
    """

    def __init__(self, kind: str = "linear", *, hidden: int = 512, dropout: float = 0.1,
                 lr: float = 3e-3, weight_decay: float = 1e-2, epochs: int = 30,
                 batch_size: int = 512, schedule: str = "cosine", label_smoothing: float = 0.1,
                 class_weight=None, standardize: bool = True, num_threads="auto",
                 classes: Sequence | None = None, seed: int = 0, device: str = "auto"):
        self.kind = kind
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.schedule = schedule
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.standardize = standardize
        self.num_threads = num_threads
        self.classes = classes
        self.seed = seed
        self.device = device

    def _validate_params(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}; got {self.kind!r}")
        for name in ("epochs", "batch_size", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}")

    def fit(self, X, y) -> "HeadClassifier":
        """Fit on ``X`` [N, D] or [V, N, D] (views of the same N images) and labels ``y`` [N]."""
        self._validate_params()
        views = as_views(X, item_ndim=1)
        if not np.all(np.isfinite(views)):
            raise ValueError("X contains NaN or infinite values")
        n_views, n, d = views.shape
        self.classes_, y_int = check_labels(y, n, None if self.classes is None
                                            else np.asarray(self.classes))
        n_classes = len(self.classes_)
        device = resolve_device(self.device)

        x = torch.as_tensor(np.ascontiguousarray(views), dtype=torch.float32).reshape(-1, d)
        self.mean_ = x.mean(0) if self.standardize else torch.zeros(d)
        self.scale_ = x.std(0).clamp_min(1e-6) if self.standardize else torch.ones(d)
        x = ((x - self.mean_) / self.scale_).to(device)
        target = torch.as_tensor(y_int).repeat(n_views).to(device)
        weight = class_weights(self.class_weight, y_int, n_classes)

        threads = 1 if self.num_threads == "auto" else self.num_threads
        with torch.random.fork_rng(devices=[]), _cpu_threads(threads if device.type == "cpu"
                                                             else None):
            torch.manual_seed(self.seed)
            model = _build_head(self.kind, d, n_classes, self.hidden, self.dropout).to(device)
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            self.loss_curve_ = self._train(model, x, target, weight, gen, device)
        self.model_ = model.eval()
        self.n_features_in_ = d
        return self

    def _train(self, model, x, target, weight, gen, device) -> list[float]:
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        rows = x.shape[0]
        # Small fits take smaller batches: an epoch of at least MIN_STEPS steps keeps AdamW's
        # step count (and so what lr and epochs mean) from collapsing on a few hundred rows.
        batch = max(1, min(int(self.batch_size), math.ceil(rows / MIN_STEPS)))
        steps_per_epoch = math.ceil(rows / batch)
        sched = make_schedule(opt, steps_per_epoch * int(self.epochs), self.schedule)
        loss_fn = nn.CrossEntropyLoss(
            weight=None if weight is None else weight.to(device),
            label_smoothing=float(self.label_smoothing))
        curve = []
        model.train()
        for _ in range(int(self.epochs)):
            order = torch.randperm(rows, generator=gen).to(device)
            total = 0.0
            for start in range(0, rows, batch):
                idx = order[start:start + batch]
                loss = loss_fn(model(x[idx]), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            curve.append(total / rows)
        return curve

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; "
                                 "call fit(X, y) before predicting.")

    @torch.no_grad()
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [N, C]; for [V, N, D] input, the mean over the V views."""
        self._check_fitted()
        views = as_views(X, item_ndim=1)
        if views.shape[-1] != self.n_features_in_:
            raise ValueError(f"X has {views.shape[-1]} features; the head was fitted on "
                             f"{self.n_features_in_}")
        device = next(self.model_.parameters()).device
        threads = 1 if self.num_threads == "auto" else self.num_threads
        probs = []
        with _cpu_threads(threads if device.type == "cpu" else None):
            for view in views:
                x = torch.as_tensor(np.asarray(view), dtype=torch.float32)
                x = ((x - self.mean_) / self.scale_).to(device)
                probs.append(torch.softmax(self.model_(x).float(), dim=1).cpu().numpy()
                             .astype(np.float64))
        return np.mean(probs, axis=0)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
