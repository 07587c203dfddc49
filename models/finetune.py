"""Partial and full fine-tuning: the "unfreeze" half of the fast.ai recipe.

- `PartialFineTuner` trains the last stages of a backbone (its ``tail``) plus a new linear head
  on cached stage activations. Unfreezing the last layers at the cost of a small network.
- `FineTuner` fine-tunes a whole backbone on images, staged: an optional LR range test
  (`FineTuner.lr_find`), frozen-head epochs, then every layer with discriminative learning rates
  (early layer groups lower) under cosine annealing with warm restarts. timm augmentation
  (random-resized crop, flips, RandAugment, mixup/cutmix), label smoothing, optional EMA. On CUDA:
  autocast, channels-last, pinned-memory loaders, gradient accumulation, and a batch size that
  halves on out-of-memory instead of ending the run. It checkpoints every epoch and resumes.
- TTA helpers: `tta_mean`, `align_proba`.

Every estimator here has scikit-learn manners: ``__init__`` stores parameters, ``fit`` returns
self, learned state ends in ``_``, ``predict_proba`` before ``fit`` raises `NotFittedError`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from models.heads import as_views, check_labels, class_weights, make_schedule, resolve_device

__all__ = [
    "PartialFineTuner",
    "FineTuner",
    "LRFindResult",
    "AUGMENTATIONS",
    "TTA_VIEWS",
    "tta_mean",
    "align_proba",
    "layer_groups",
    "discriminative_param_groups",
    "seed_everything",
]

log = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "flip", "light", "rand")
TTA_VIEWS = ("plain", "flip")
CHECKPOINT_NAME = "last.pt"


# ---------------------------------------------------------------------------------- helpers


def tta_mean(probas: Sequence[np.ndarray]) -> np.ndarray:
    """Average per-view probability arrays (all [N, C]) into one [N, C] array."""
    probas = [np.asarray(p, dtype=np.float64) for p in probas]
    if not probas:
        raise ValueError("tta_mean needs at least one view")
    shapes = {p.shape for p in probas}
    if len(shapes) != 1:
        raise ValueError(f"every view must give the same shape; got {sorted(shapes)}")
    return np.mean(probas, axis=0)


def align_proba(proba: np.ndarray, fitted_classes: Sequence, classes: Sequence) -> np.ndarray:
    """Reorder ``proba``'s columns (in ``fitted_classes`` order) to ``classes`` order.

    A class the model never saw gets probability 0; a fitted class not in ``classes`` is an error.
    """
    proba = np.asarray(proba, dtype=np.float64)
    fitted = list(fitted_classes)
    if proba.ndim != 2 or proba.shape[1] != len(fitted):
        raise ValueError(f"proba has shape {proba.shape}; expected [N, {len(fitted)}]")
    index = {c: i for i, c in enumerate(classes)}
    extra = [c for c in fitted if c not in index]
    if extra:
        raise ValueError(f"fitted classes {extra} are not in classes {list(classes)}")
    out = np.zeros((proba.shape[0], len(index)), dtype=np.float64)
    out[:, [index[c] for c in fitted]] = proba
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): augmentation draws from all three."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch reseeds from (seed, epoch), so a resumed run draws what an unbroken one would.
    return (int(seed) * 100_003 + int(epoch) * 7919 + 17) % (2**31)


def layer_groups(model: nn.Module, n_groups: int = 3) -> list[list[nn.Parameter]]:
    """Split ``model``'s parameters into ``n_groups`` groups ordered from input to output.

    The last group is the classifier; the backbone's blocks (timm's ``group_matcher``, as
    ``group_parameters`` orders them) are spread evenly over the other ``n_groups - 1``.
    """
    if n_groups < 2:
        raise ValueError(f"n_groups must be >= 2 (backbone groups + classifier); got {n_groups}")
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    named = dict(model.named_parameters())
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        ordered = [[named[n] for n in names if id(named[n]) not in head_ids]
                   for _, names in sorted(group_parameters(model, model.group_matcher()).items())]
    else:  # no matcher: registration order, one parameter tensor per unit
        ordered = [[p] for p in named.values() if id(p) not in head_ids]
    ordered = [g for g in ordered if g]
    chunks = np.array_split(np.arange(len(ordered)), min(n_groups - 1, max(1, len(ordered))))
    groups = [[p for i in chunk for p in ordered[i]] for chunk in chunks if len(chunk)]
    groups.append([p for p in model.parameters() if id(p) in head_ids])
    return [g for g in groups if g]


def discriminative_param_groups(groups: Sequence[Sequence[nn.Parameter]], lr: float,
                                lr_ratio: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: group i of G gets ``lr * lr_ratio ** (G - 1 - i)``.

    With three groups and ``lr_ratio=1/3`` that is fast.ai's ``lr/9, lr/3, lr``. Biases and norm
    weights (1-D tensors) get no weight decay.
    """
    out = []
    n = len(groups)
    for i, params in enumerate(groups):
        group_lr = lr * lr_ratio ** (n - 1 - i)
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            out.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            out.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0})
    return out


def _autocast_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. ``amp``: "auto", True/False, "bf16", "fp16"."""
    if amp in (False, None, "off", "none") or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp not in ("auto", True, "bf16"):
        raise ValueError(f"amp must be 'auto', True, False, 'bf16' or 'fp16'; got {amp!r}")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def _make_ema(model: nn.Module, decay: float):
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled or os.environ.get("HEROSTACK_NO_PROGRESS"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


class _NotFitted:
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; "
                                 "call fit(X, y) before predicting.")


# ---------------------------------------------------------------------------------- partial


class PartialFineTuner(_NotFitted, ClassifierMixin, BaseEstimator):
    """Fine-tune a backbone's last stages (``tail``) and a new linear head on cached activations.

    ``X`` is ``[N, C, H, W]`` or ``[V, N, C, H, W]`` (views of the same images, e.g. plain and
    flipped, float16 is fine). Each epoch visits every image once, through a view drawn at random;
    prediction averages the views' probabilities (TTA).

    Parameters
    ----------
    tail : module mapping activations to pooled features ``[B, D]`` (from
        ``models.backbones.split_at_stage``); it is deep-copied, the original is never trained.
    lr : head learning rate; the tail trains at ``lr * lr_ratio`` (discriminative rates).
    schedule : "onecycle", "cosine" or "constant", stepped per batch.
    ema : keep an exponential moving average of the weights (decay ``ema_decay``) and predict
        with it.
    amp : autocast on CUDA ("auto" = bf16 where supported); ignored on the CPU.
    channels_last : NHWC memory format; measured 1.7x faster for the last two EfficientNet-Lite0
        stages on a 2-core CPU, and the fast path for autocast convolutions on CUDA.
    """

    def __init__(self, tail: nn.Module | None = None, *, lr: float = 2e-3, lr_ratio: float = 0.3,
                 weight_decay: float = 1e-2, epochs: int = 6, batch_size: int = 64,
                 schedule: str = "onecycle", label_smoothing: float = 0.1, class_weight=None,
                 dropout: float = 0.2, ema: bool = False, ema_decay: float = 0.998,
                 classes: Sequence | None = None, seed: int = 0, device: str = "auto",
                 amp="auto", channels_last: bool = True, progress: bool = False):
        self.tail = tail
        self.lr = lr
        self.lr_ratio = lr_ratio
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.schedule = schedule
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.dropout = dropout
        self.ema = ema
        self.ema_decay = ema_decay
        self.classes = classes
        self.seed = seed
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.progress = progress

    def _input(self, a, device) -> torch.Tensor:
        x = _as_float(a).to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def fit(self, X, y) -> "PartialFineTuner":
        if not isinstance(self.tail, nn.Module):
            raise ValueError(f"tail must be an nn.Module (see models.backbones.split_at_stage); "
                             f"got {type(self.tail).__name__}")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1; got {self.epochs}, "
                             f"{self.batch_size}")
        views = as_views(X, item_ndim=3)
        n_views, n = views.shape[:2]
        self.classes_, y_int = check_labels(y, n, None if self.classes is None
                                            else np.asarray(self.classes))
        device = resolve_device(self.device)
        amp_dtype = _autocast_dtype(device, self.amp)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            tail = copy.deepcopy(self.tail).float()
            with torch.no_grad():
                n_features = tail.eval()(_as_float(views[0, :1])).shape[1]
            head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(n_features, len(self.classes_)))
            model = nn.Sequential(tail, head).to(device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            groups = discriminative_param_groups([list(tail.parameters()), list(head.parameters())],
                                                 self.lr, self.lr_ratio, self.weight_decay)
            opt = torch.optim.AdamW(groups, lr=self.lr)
            steps_per_epoch = math.ceil(n / int(self.batch_size))
            sched = make_schedule(opt, steps_per_epoch * int(self.epochs), self.schedule)
            weight = class_weights(self.class_weight, y_int, len(self.classes_))
            loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device),
                                          label_smoothing=float(self.label_smoothing))
            ema = _make_ema(model, self.ema_decay) if self.ema else None
            gen = torch.Generator().manual_seed(self.seed)
            target_all = torch.as_tensor(y_int)
            self.loss_curve_, self.epoch_seconds_ = [], []
            step = 0
            for _ in _progress(range(int(self.epochs)), self.progress, desc="partial", unit="ep"):
                t0 = time.perf_counter()
                model.train()
                order = torch.randperm(n, generator=gen).numpy()
                pick = torch.randint(n_views, (n,), generator=gen).numpy()
                total = 0.0
                for start in range(0, n, int(self.batch_size)):
                    idx = order[start:start + int(self.batch_size)]
                    x = self._input(views[pick[idx], idx], device)
                    with _autocast(device, amp_dtype):
                        loss = loss_fn(model(x).float(), target_all[idx].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    step += 1
                    if ema is not None:
                        ema.update(model, step=step)
                    total += loss.item() * len(idx)
                self.loss_curve_.append(total / n)
                self.epoch_seconds_.append(time.perf_counter() - t0)
        self.model_ = (ema.module if ema is not None else model).eval()
        self.n_features_ = n_features
        self._amp_dtype = amp_dtype
        return self

    @torch.no_grad()
    def predict_proba(self, X, batch_size: int | None = None) -> np.ndarray:
        """Probabilities [N, C]; for ``[V, N, C, H, W]`` input, the mean over the V views."""
        self._check_fitted()
        views = as_views(X, item_ndim=3)
        device = next(self.model_.parameters()).device
        bs = int(batch_size or max(256, self.batch_size))
        out = []
        for view in views:
            parts = []
            for start in range(0, view.shape[0], bs):
                x = self._input(view[start:start + bs], device)
                with _autocast(device, self._amp_dtype):
                    parts.append(torch.softmax(self.model_(x).float(), 1).cpu().numpy())
            out.append(np.concatenate(parts))
        return tta_mean(out)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _as_float(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a)).float() if not isinstance(a, torch.Tensor) \
        else a.float()


# ---------------------------------------------------------------------------------- full


@dataclasses.dataclass
class LRFindResult:
    """An LR range test: the learning rates tried, the smoothed losses, and the suggestion.

    ``suggestion`` is the rate at the smoothed-loss minimum divided by 10 (the conservative
    fast.ai rule); ``steepest`` the rate where the smoothed loss fell fastest.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    steepest: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _ImageDataset(torch.utils.data.Dataset):
    """uint8 ``[N, S, S, 3]`` arrays or image paths, through a PIL transform."""

    def __init__(self, images, labels: np.ndarray | None, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        item = self.images[i]
        if isinstance(item, np.ndarray):
            im = Image.fromarray(item)
        else:
            from competition.images import load_rgb

            im = load_rgb(item)
        x = self.transform(im)
        return x, (-1 if self.labels is None else int(self.labels[i]))


def _check_images(X, name: str = "X"):
    """uint8 ``[N, H, W, 3]`` array, or a sequence of paths."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 4 or X.shape[-1] != 3 or X.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 [N, H, W, 3] images or a list of paths; got "
                             f"{X.dtype} array of shape {X.shape}")
        return X
    items = [str(p) for p in X]
    return np.array(items, dtype=object)


class FineTuner(_NotFitted, ClassifierMixin, BaseEstimator):
    """Full fine-tuning of a backbone on images, with the staged recipe as options.

    ``X``: uint8 images ``[N, H, W, 3]`` (e.g. from ``models.images.DecodedCache``) or image paths.

    The run: an optional LR range test (when ``lr`` is None, `lr_find` over ``lr_find_steps``
    batches, and its suggestion becomes ``lr_``);
    ``frozen_epochs`` epochs training only the new head; then ``epochs`` epochs with every layer
    trainable, layer groups (``n_groups``, from timm's ``group_matcher``) at
    ``lr * lr_ratio ** k`` for the k-th group below the head, under timm's ``CosineLRScheduler``
    with ``cycles`` warm restarts whose length grows by ``cycle_mult``.

    ``batch_size`` is the effective batch; ``micro_batch_size`` (default: the whole batch) is what
    goes through the model at once, with gradient accumulation in between. On
    ``torch.OutOfMemoryError`` the micro batch halves and the step is retried: the effective batch
    stays the same, ``oom_events_`` counts it, and a run only fails if one image does not fit.

    With ``checkpoint_dir`` the state is saved atomically after every epoch
    (``checkpoint_dir/last.pt``) and, when ``resume`` is true, a later ``fit`` with the same
    parameters and data continues from it (a finished run just loads the final weights).

    ``seed`` makes a CPU run repeatable. Each epoch reseeds Python's, NumPy's and torch's global
    generators from ``(seed, epoch)`` (augmentation draws from them), so ``fit`` changes them.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", *, weights: str = "auto",
                 weights_checkpoint: str | None = None, image_size: int = 224,
                 lr: float | None = 1e-3, lr_find_steps: int = 60, lr_ratio: float = 1 / 3,
                 n_groups: int = 3,
                 weight_decay: float = 1e-2, epochs: int = 5, frozen_epochs: int = 1,
                 cycles: int = 1, cycle_mult: float = 1.0, warmup_frac: float = 0.05,
                 aug: str = "rand", randaug_magnitude: int = 9, crop_pct: float | None = None,
                 mixup: float = 0.0, cutmix: float = 0.0,
                 label_smoothing: float = 0.1, class_weight=None, drop_rate: float = 0.2,
                 batch_size: int = 32, micro_batch_size: int | None = None,
                 ema: bool = False, ema_decay: float = 0.999, amp="auto",
                 channels_last="auto", grad_checkpointing: bool = False,
                 num_workers="auto", checkpoint_dir: str | os.PathLike | None = None,
                 resume: bool = True, classes: Sequence | None = None, seed: int = 0,
                 device: str = "auto", progress: bool = False,
                 on_epoch_end: Callable[[dict], None] | None = None):
        self.backbone = backbone
        self.weights = weights
        self.weights_checkpoint = weights_checkpoint
        self.image_size = image_size
        self.lr = lr
        self.lr_find_steps = lr_find_steps
        self.lr_ratio = lr_ratio
        self.n_groups = n_groups
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.frozen_epochs = frozen_epochs
        self.cycles = cycles
        self.cycle_mult = cycle_mult
        self.warmup_frac = warmup_frac
        self.aug = aug
        self.randaug_magnitude = randaug_magnitude
        self.crop_pct = crop_pct
        self.mixup = mixup
        self.cutmix = cutmix
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.drop_rate = drop_rate
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.ema = ema
        self.ema_decay = ema_decay
        self.amp = amp
        self.channels_last = channels_last
        self.grad_checkpointing = grad_checkpointing
        self.num_workers = num_workers
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.classes = classes
        self.seed = seed
        self.device = device
        self.progress = progress
        self.on_epoch_end = on_epoch_end

    # -- validation and set-up --------------------------------------------------------------

    def _validate_params(self) -> None:
        if self.aug not in AUGMENTATIONS:
            raise ValueError(f"aug must be one of {AUGMENTATIONS}; got {self.aug!r}")
        for name in ("epochs", "frozen_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if int(self.epochs) + int(self.frozen_epochs) < 1:
            raise ValueError("epochs + frozen_epochs must be >= 1")
        for name in ("batch_size", "cycles", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.micro_batch_size is not None and not 1 <= int(self.micro_batch_size) <= int(self.batch_size):
            raise ValueError(f"micro_batch_size must be in 1..batch_size ({self.batch_size}); "
                             f"got {self.micro_batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 or None (run the LR range test); got {self.lr}")
        if not 0 < self.lr_ratio <= 1:
            raise ValueError(f"lr_ratio must be in (0, 1]; got {self.lr_ratio}")
        if self.cycle_mult < 1:
            raise ValueError(f"cycle_mult must be >= 1; got {self.cycle_mult}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup and cutmix are Beta alphas >= 0; got {self.mixup}, {self.cutmix}")

    def _build_model(self, n_classes: int) -> nn.Module:
        """The backbone with a fresh ``n_classes`` head (seeded). Tests override this."""
        try:
            from models.backbones import create_backbone
        except ImportError:  # pragma: no cover - backbones.py is part of this package
            create_backbone = None
        torch.manual_seed(self.seed)
        if create_backbone is None:
            import timm

            model = timm.create_model(self.backbone, pretrained=self.weights != "random",
                                      num_classes=n_classes)
        else:
            model = create_backbone(self.backbone, weights=self.weights,
                                    checkpoint=self.weights_checkpoint, num_classes=n_classes)
            if hasattr(model, "reset_classifier"):
                torch.manual_seed(self.seed)  # the new head's init depends on our seed only
                model.reset_classifier(n_classes)
        if self.drop_rate and hasattr(model, "drop_rate"):
            model.drop_rate = float(self.drop_rate)
        if self.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    def _data_config(self, model: nn.Module) -> dict:
        try:
            from models.backbones import data_config

            return data_config(self.backbone, model)
        except Exception:  # a model outside the registry (tests): timm's resolution
            from timm.data import resolve_data_config

            return dict(resolve_data_config({}, model=model))

    def _transforms(self, cfg: dict):
        """(train, eval) PIL transforms. Eval resizes the shorter side to the feature cache's
        stored size (``image_size / crop_pct``, even margin) and centre-crops ``image_size``: on
        squares decoded at that size (``models.images``) it is a pure crop, the "plain" view."""
        import timm.data
        from torchvision import transforms as T
        from models.features import stored_size

        size = int(self.image_size)
        interp = cfg.get("interpolation", "bilinear")
        crop_pct = float(self.crop_pct or cfg.get("crop_pct") or 1.0)
        mode = T.InterpolationMode(interp if interp in ("bilinear", "bicubic", "nearest")
                                   else "bilinear")
        evaluate = T.Compose([T.Resize(stored_size(size, crop_pct), interpolation=mode),
                              T.CenterCrop(size), T.ToTensor(),
                              T.Normalize(cfg["mean"], cfg["std"])])
        if self.aug == "none":
            return evaluate, evaluate
        if self.aug == "flip":
            return T.Compose([T.RandomHorizontalFlip(), evaluate]), evaluate
        rand = self.aug == "rand" and int(self.randaug_magnitude) > 0
        train = timm.data.create_transform(
            size, is_training=True, scale=(0.5, 1.0) if self.aug == "light" else (0.25, 1.0),
            hflip=0.5, color_jitter=0.0 if self.aug == "light" else 0.3,
            auto_augment=f"rand-m{int(self.randaug_magnitude)}-mstd0.5" if rand else None,
            interpolation=interp, mean=cfg["mean"], std=cfg["std"])
        return train, evaluate

    def _loader(self, images, labels, transform, *, shuffle: bool, batch_size: int,
                epoch: int = 0, drop_last: bool = False):
        device = resolve_device(self.device)
        workers = self.num_workers
        if workers == "auto":  # CPU runs stay single-process: the cores are the model's
            workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.utils.data.DataLoader(
            _ImageDataset(images, labels, transform), batch_size=batch_size, shuffle=shuffle,
            num_workers=int(workers), pin_memory=device.type == "cuda", drop_last=drop_last,
            generator=gen, persistent_workers=False)

    def _use_channels_last(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last == "auto" else bool(self.channels_last)

    # -- the training step, with out-of-memory back-off --------------------------------------

    def _step(self, model, opt, scaler, loss_fn, x, target, device, amp_dtype) -> float:
        """One optimiser step over the batch (in micro batches); retried smaller on OOM."""
        n = x.shape[0]
        while True:
            micro = min(self.micro_batch_size_, n)
            oom = False
            try:
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for start in range(0, n, micro):
                    xb, tb = x[start:start + micro], target[start:start + micro]
                    with _autocast(device, amp_dtype):
                        loss = loss_fn(model(xb).float(), tb) * (xb.shape[0] / n)
                    scaler.scale(loss).backward()
                    total += float(loss.detach())
            except torch.OutOfMemoryError:
                oom = True  # handled outside the except block so the traceback's tensors are freed
            if not oom:
                break
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if micro <= 1:
                raise torch.OutOfMemoryError(
                    "out of memory with a micro batch of 1 image; lower image_size or enable "
                    "grad_checkpointing")
            self.micro_batch_size_ = max(1, micro // 2)
            self.oom_events_ += 1
            self.oom_log_.append({"epoch": self._epoch, "step": self._global_step,
                                  "micro_batch_size": self.micro_batch_size_})
            log.warning("out of memory at micro batch %d: retrying the step with %d "
                        "(accumulating %d micro batches per step of %d)", micro,
                        self.micro_batch_size_, math.ceil(n / self.micro_batch_size_), n)
        scaler.step(opt)
        scaler.update()
        return total

    # -- optimisers and schedules per phase ---------------------------------------------------

    def _set_frozen(self, model: nn.Module, frozen: bool) -> None:
        head = {id(p) for p in model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad_(not frozen or id(p) in head)

    def _phase_optimizer(self, model: nn.Module, phase: str, lr: float) -> torch.optim.Optimizer:
        if phase == "frozen":
            groups = discriminative_param_groups([list(model.get_classifier().parameters())],
                                                 lr, 1.0, self.weight_decay)
        else:
            groups = discriminative_param_groups(layer_groups(model, int(self.n_groups)), lr,
                                                 float(self.lr_ratio), self.weight_decay)
        return torch.optim.AdamW(groups, lr=lr)

    def _phase_scheduler(self, opt, phase: str, steps: int):
        from timm.scheduler import CosineLRScheduler

        steps = max(1, steps)
        cycles = 1 if phase == "frozen" else int(self.cycles)
        mult = 1.0 if phase == "frozen" else float(self.cycle_mult)
        # Cycle lengths t0, t0*m, t0*m^2 ... fill the phase: t0 = steps / sum(m^k).
        t0 = max(1, int(round(steps / sum(mult**k for k in range(cycles)))))
        warmup = int(round(float(self.warmup_frac) * t0))
        return CosineLRScheduler(opt, t_initial=t0, lr_min=0.0, cycle_mul=mult, cycle_limit=cycles,
                                 warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=False,
                                 t_in_epochs=False)

    # -- fit ----------------------------------------------------------------------------------

    def _prepare(self, X, y):
        self._validate_params()
        images = _check_images(X)
        classes, y_int = check_labels(y, len(images), None if self.classes is None
                                      else np.asarray(self.classes))
        return images, classes, y_int

    def _loss_fn(self, y_int, n_classes, device):
        weight = class_weights(self.class_weight, y_int, n_classes)
        weight = None if weight is None else weight.to(device)
        hard = nn.CrossEntropyLoss(weight=weight, label_smoothing=float(self.label_smoothing))

        def loss_fn(logits, target):
            if target.ndim == 2:  # soft targets from mixup/cutmix
                logp = torch.log_softmax(logits, dim=1)
                per = -(target * logp * (1 if weight is None else weight)).sum(1)
                return per.mean()
            return hard(logits, target)

        return loss_fn

    def _mixup(self, n_classes):
        if not (self.mixup > 0 or self.cutmix > 0):
            return None
        from timm.data import Mixup

        return Mixup(mixup_alpha=float(self.mixup), cutmix_alpha=float(self.cutmix),
                     label_smoothing=float(self.label_smoothing), num_classes=n_classes)

    def _fingerprint(self, y_int: np.ndarray, images) -> str:
        params = {k: v for k, v in self.get_params(deep=False).items()
                  if k not in ("checkpoint_dir", "resume", "progress", "on_epoch_end",
                               "num_workers", "device")}
        h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(y_int).tobytes())
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            h.update(str(images.shape).encode())
            h.update(images[:: max(1, len(images) // 64)].tobytes())  # a sample: cheap, telling
        else:
            h.update("\n".join(images.tolist()).encode())
        return h.hexdigest()

    def fit(self, X, y) -> "FineTuner":
        images, self.classes_, y_int = self._prepare(X, y)
        n_classes = len(self.classes_)
        device = resolve_device(self.device)
        amp_dtype = _autocast_dtype(device, self.amp)
        channels_last = self._use_channels_last(device)
        fingerprint = self._fingerprint(y_int, images)
        ckpt_path = Path(self.checkpoint_dir) / CHECKPOINT_NAME if self.checkpoint_dir else None
        state = self._load_checkpoint(ckpt_path, fingerprint)

        self.lr_find_ = None if state is None else state["lr_find"]
        if state is not None:
            self.lr_ = state["lr"]
        elif self.lr is None:
            self.lr_find_ = self.lr_find(images, self.classes_[y_int],
                                         num_steps=int(self.lr_find_steps)).to_dict()
            self.lr_ = float(self.lr_find_["suggestion"])
        else:
            self.lr_ = float(self.lr)

        model = self._build_model(n_classes).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        ema = _make_ema(model, self.ema_decay) if self.ema else None
        train_tf, eval_tf = self._transforms(self._data_config(model))
        self._eval_tf, self._device_, self._amp_dtype, self._channels_last = \
            eval_tf, device, amp_dtype, channels_last
        loss_fn = self._loss_fn(y_int, n_classes, device)
        mixup = self._mixup(n_classes)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        batch = min(int(self.batch_size), len(images))
        if mixup is not None:  # timm's Mixup pairs images within a batch: it needs an even size
            batch = max(2, batch - batch % 2)
        steps_per_epoch = len(images) // batch if mixup else math.ceil(len(images) / batch)
        steps_per_epoch = max(1, steps_per_epoch)
        n_frozen, n_total = int(self.frozen_epochs), int(self.frozen_epochs) + int(self.epochs)
        self.micro_batch_size_ = int(self.micro_batch_size or batch)
        self.oom_events_, self.oom_log_, self.history_ = 0, [], []
        start_epoch = 0
        if state is not None:
            model.load_state_dict(state["model"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            self.micro_batch_size_ = state["micro_batch_size"]
            self.oom_events_, self.oom_log_ = state["oom_events"], state["oom_log"]
            self.history_ = state["history"]
            start_epoch = state["epoch"]
            log.info("resuming from %s at epoch %d of %d", ckpt_path, start_epoch, n_total)

        phase, opt, sched = None, None, None
        labels_t = torch.as_tensor(y_int)
        epochs = _progress(range(start_epoch, n_total), self.progress, desc="fine-tune",
                           unit="ep", initial=start_epoch, total=n_total)
        for epoch in epochs:
            self._epoch = epoch
            new_phase = "frozen" if epoch < n_frozen else "unfrozen"
            if new_phase != phase:
                phase = new_phase
                self._set_frozen(model, phase == "frozen")
                opt = self._phase_optimizer(model, phase, self.lr_)
                phase_epochs = n_frozen if phase == "frozen" else n_total - n_frozen
                sched = self._phase_scheduler(opt, phase, phase_epochs * steps_per_epoch)
                if state is not None and state.get("phase") == phase and state["epoch"] == epoch:
                    opt.load_state_dict(state["optimizer"])
                    scaler.load_state_dict(state["scaler"])
            phase_start = 0 if phase == "frozen" else n_frozen
            seed_everything(_epoch_seed(self.seed, epoch))
            loader = self._loader(images, y_int, train_tf, shuffle=True, batch_size=batch,
                                  epoch=epoch, drop_last=mixup is not None)
            model.train()
            t0, seen, total = time.perf_counter(), 0, 0.0
            for i, (x, target) in enumerate(loader):
                self._global_step = (epoch - phase_start) * steps_per_epoch + i
                sched.step_update(self._global_step)
                x = x.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if mixup is not None:
                    x, target = mixup(x, target)
                loss = self._step(model, opt, scaler, loss_fn, x, target, device, amp_dtype)
                if ema is not None:
                    ema.update(model, step=epoch * steps_per_epoch + i)
                total += loss * x.shape[0]
                seen += x.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "phase": phase, "loss": total / max(1, seen),
                      "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9),
                      "lr": max(g["lr"] for g in opt.param_groups),
                      "micro_batch_size": self.micro_batch_size_,
                      "oom_events": self.oom_events_}
            self.history_.append(record)
            if ckpt_path is not None:
                self._save_checkpoint(ckpt_path, fingerprint, epoch + 1, phase, model, ema, opt,
                                      scaler)
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(record))
        self._set_frozen(model, False)
        self.model_ = (ema.module if ema is not None else model).eval()
        self.loss_curve_ = [r["loss"] for r in self.history_]
        return self

    # -- checkpoints --------------------------------------------------------------------------

    def _save_checkpoint(self, path: Path, fingerprint, epoch, phase, model, ema, opt, scaler):
        from competition.io import atomic_path

        state = {"fingerprint": fingerprint, "epoch": epoch, "phase": phase,
                 "model": model.state_dict(), "ema": None if ema is None else ema.state_dict(),
                 "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                 "micro_batch_size": self.micro_batch_size_, "oom_events": self.oom_events_,
                 "oom_log": self.oom_log_, "history": self.history_, "lr": self.lr_,
                 "lr_find": self.lr_find_}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self, path: Path | None, fingerprint: str) -> dict | None:
        if path is None or not self.resume or not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"checkpoint {path} was written by a run with other parameters or "
                             "data; use another checkpoint_dir, delete it, or pass resume=False")
        return state

    # -- LR range test ------------------------------------------------------------------------

    def lr_find(self, X, y, *, start_lr: float = 1e-6, end_lr: float = 1.0, num_steps: int = 60,
                beta: float = 0.9, diverge: float = 4.0) -> LRFindResult:
        """LR range test on a fresh model: raise the rate exponentially from ``start_lr`` to
        ``end_lr`` over ``num_steps`` batches, smoothing the loss; stop when it diverges.

        It sweeps the phase the run starts in (head only when ``frozen_epochs > 0``, else every
        layer group at its discriminative share). The model is thrown away afterwards.
        """
        if not 0 < start_lr < end_lr:
            raise ValueError(f"need 0 < start_lr < end_lr; got {start_lr}, {end_lr}")
        if num_steps < 5:
            raise ValueError(f"num_steps must be >= 5; got {num_steps}")
        images, classes, y_int = self._prepare(X, y)
        device = resolve_device(self.device)
        amp_dtype = _autocast_dtype(device, self.amp)
        seed_everything(_epoch_seed(self.seed, -1))
        model = self._build_model(len(classes)).to(device)
        channels_last = self._use_channels_last(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        phase = "frozen" if int(self.frozen_epochs) > 0 else "unfrozen"
        self._set_frozen(model, phase == "frozen")
        opt = self._phase_optimizer(model, phase, start_lr)
        base = [g["lr"] / start_lr for g in opt.param_groups]  # each group's share of the top lr
        train_tf, _ = self._transforms(self._data_config(model))
        batch = min(int(self.batch_size), len(images))
        loader = self._loader(images, y_int, train_tf, shuffle=True, batch_size=batch, epoch=-1)
        loss_fn = self._loss_fn(y_int, len(classes), device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.micro_batch_size_ = int(self.micro_batch_size or batch)
        self.oom_events_, self.oom_log_, self._epoch, self._global_step = 0, [], -1, 0

        lrs, raw, smooth, avg, best = [], [], [], 0.0, math.inf
        model.train()
        batches = _cycle(loader)
        for i in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            for g, share in zip(opt.param_groups, base):
                g["lr"] = lr * share
            x, target = next(batches)
            x, target = x.to(device), target.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self._global_step = i
            loss = self._step(model, opt, scaler, loss_fn, x, target, device, amp_dtype)
            if not math.isfinite(loss):
                break
            avg = beta * avg + (1 - beta) * loss
            value = avg / (1 - beta ** (i + 1))  # bias-corrected running mean
            lrs.append(lr)
            raw.append(loss)
            smooth.append(value)
            best = min(best, value)
            if i >= 5 and value > diverge * best:
                break
        return _suggest(lrs, smooth, raw, start_lr)

    # -- prediction ---------------------------------------------------------------------------

    @torch.no_grad()
    def predict_views(self, X, views: Sequence[str] = TTA_VIEWS,
                      batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Probabilities [N, C] per TTA view ("plain", "flip"), in ``classes_`` order."""
        self._check_fitted()
        bad = [v for v in views if v not in TTA_VIEWS]
        if bad or not views:
            raise ValueError(f"views must be a non-empty subset of {TTA_VIEWS}; got {list(views)}")
        images = _check_images(X)
        device = self._device_
        loader = self._loader(images, None, self._eval_tf, shuffle=False,
                              batch_size=int(batch_size or max(64, 2 * self.batch_size)))
        out = {v: [] for v in views}
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for v in views:
                xv = torch.flip(x, dims=[3]) if v == "flip" else x
                out[v].append(self._predict_batch(xv, device))
        return {v: np.concatenate(p).astype(np.float64) for v, p in out.items()}

    def _predict_batch(self, x: torch.Tensor, device: torch.device) -> np.ndarray:
        """Softmax over ``x`` in chunks; a chunk that runs out of memory is halved and retried."""
        chunk = getattr(self, "_predict_chunk", None) or x.shape[0]
        while True:
            try:
                parts = []
                for start in range(0, x.shape[0], chunk):
                    with _autocast(device, self._amp_dtype):
                        logits = self.model_(x[start:start + chunk])
                    parts.append(torch.softmax(logits.float(), 1).cpu().numpy())
                return np.concatenate(parts)
            except torch.OutOfMemoryError:
                if chunk <= 1:
                    raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            chunk = self._predict_chunk = max(1, chunk // 2)
            self.oom_events_ += 1
            log.warning("out of memory while predicting: chunks of %d images now", chunk)

    def predict_proba(self, X, tta: Sequence[str] = TTA_VIEWS) -> np.ndarray:
        """Mean of the ``tta`` views' probabilities [N, C]."""
        return tta_mean(list(self.predict_views(X, tta).values()))

    def predict(self, X, tta: Sequence[str] = TTA_VIEWS) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X, tta), axis=1)]


def _cycle(loader):
    while True:
        yield from loader


def _suggest(lrs, smooth, raw, start_lr) -> LRFindResult:
    """Suggest min-loss rate / 10 and the steepest-descent rate; always finite."""
    if len(lrs) < 2:
        guess = float(lrs[0] if lrs else start_lr)
        return LRFindResult(lrs, smooth, raw, guess, guess)
    k = int(np.argmin(smooth))
    suggestion = lrs[k] / 10.0
    grads = np.gradient(np.asarray(smooth), np.log(np.asarray(lrs)))
    steepest = lrs[int(np.argmin(grads[: max(1, k + 1)]))]
    suggestion = float(max(suggestion, lrs[0]))
    return LRFindResult([float(v) for v in lrs], [float(v) for v in smooth],
                        [float(v) for v in raw], suggestion, float(steepest))


