"""Feature cache: backbone outputs computed once per image and view (fast.ai's ``precompute=True``).

``FeatureCache(root).get(manifest, backbone, size, views)`` returns, per view, an array in
manifest row order: pooled embeddings ``[N, D]`` float32, or the activations after
``blocks[:stage]`` ``[N, C, H, W]`` float16 when ``stage`` is given. Each (backbone, weights,
size, preprocessing, view, stage) has its own ``RowStore`` keyed by the image's content sha256,
so only rows for new or changed images are computed, and a killed run keeps what it committed.

Views:
- ``"plain"``: the model's eval crop (centre ``size`` square of the stored ``size/crop_pct``
  square; see ``models.images`` for the stored geometry).
- ``"flip"``: the plain crop mirrored left-right.
- ``"aug0"``, ``"aug1"``, ...: a random-resized crop of the stored square (area 60-100 %, aspect
  3/4-4/3), a coin-flip mirror and mild colour jitter (brightness, contrast, saturation within
  +-10 %), drawn from a generator seeded by (sha256, view): the same image and view always gets
  the same augmentation, so augmented training and TTA also work on cached features.

Precision (part of every store's key, so rows of different precision never mix): fp16 autocast
on CUDA; on a CPU with native bfloat16 (AVX512-BF16 or AMX) bf16 autocast through a traced,
frozen graph (oneDNN fuses conv+BN+activation): 6-7x the fp32 eager rate on the 2-core dev box
(`bench/features.py --precision`), features within cosine 0.9999 of fp32. ``HEROSTACK_PRECISION``
(auto|fp32|bf16) or ``FeatureCache(precision=...)`` overrides.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from models.backbones import create_backbone, data_config, split_at_stage, weights_info
from models.images import DecodedCache, RowStore, progress_bar

__all__ = [
    "FeatureCache",
    "VIEW_NAMES",
    "AugmentParams",
    "augment_views",
    "augment_params",
    "check_views",
    "stored_size",
    "preprocess_batch",
]

# The fixed views; "aug<k>" for any k >= 0 is also valid (see augment_views).
VIEW_NAMES = ("plain", "flip")
_AUG = re.compile(r"aug(0|[1-9][0-9]*)")

AUG_SCALE = (0.6, 1.0)
AUG_RATIO = (3 / 4, 4 / 3)
AUG_JITTER = 0.1
AUG_VERSION = 1  # bump when the augmentation recipe changes: it is part of every store's key


def augment_views(n: int) -> tuple[str, ...]:
    """``("aug0", ..., "aug<n-1>")``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of augmented views must be an integer >= 0 but got {n!r}")
    return tuple(f"aug{k}" for k in range(n))


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    if isinstance(views, str):
        views = (views,)
    views = tuple(views)
    bad = [v for v in views if v not in VIEW_NAMES and not _AUG.fullmatch(str(v))]
    if bad or not views:
        raise ValueError(f"views must be non-empty, each one of {VIEW_NAMES} or 'aug<k>' (k >= 0); got {list(views)}")
    if len(set(views)) != len(views):
        raise ValueError(f"views must not repeat; got {list(views)}")
    return views


def stored_size(size: int, crop_pct: float) -> int:
    """Side of the stored square: ``size / crop_pct``, rounded so the margin around the centre crop is even."""
    return size + 2 * max(0, round((size / crop_pct - size) / 2))


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One augmented view of one image, in stored-square pixel coordinates."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def augment_params(sha256: str, view: str, stored: int) -> AugmentParams:
    """Deterministic per (sha256, view): torchvision's RandomResizedCrop sampling, then flip and jitter."""
    if not _AUG.fullmatch(view):
        raise ValueError(f"augment_params needs an 'aug<k>' view but got {view!r}")
    seed = int.from_bytes(hashlib.sha256(f"{sha256}:{view}:v{AUG_VERSION}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    area = stored * stored
    log_ratio = (math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1]))
    top, left, h, w = 0, 0, stored, stored  # fallback: the whole square
    for _ in range(10):
        target = area * rng.uniform(*AUG_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= stored and 0 < ch <= stored:
            top, left, h, w = int(rng.integers(0, stored - ch + 1)), int(rng.integers(0, stored - cw + 1)), ch, cw
            break
    flip = bool(rng.random() < 0.5)
    b, c, s = (float(v) for v in rng.uniform(1 - AUG_JITTER, 1 + AUG_JITTER, size=3))
    return AugmentParams(top, left, h, w, flip, b, c, s)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def preprocess_batch(
    images: torch.Tensor,
    view: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    sha256s: Sequence[str] | None = None,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """``[B, R, R, 3]`` uint8 stored squares (on any device) -> normalized ``[B, 3, size, size]`` float32."""
    x = images.permute(0, 3, 1, 2)
    stored = x.shape[-1]
    if stored < size:
        raise ValueError(f"stored squares of {stored}px are smaller than the input size {size}")
    if view in VIEW_NAMES:
        off = (stored - size) // 2
        x = x[:, :, off : off + size, off : off + size].float().div_(255.0)
        if view == "flip":
            x = x.flip(-1)
    else:
        if sha256s is None or len(sha256s) != x.shape[0]:
            raise ValueError("augmented views need one sha256 per image")
        mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        params = [augment_params(s, view, stored) for s in sha256s]
        crops = []
        for img, p in zip(x, params):
            crop = img[None, :, p.top : p.top + p.height, p.left : p.left + p.width].float()
            crop = F.interpolate(crop, size=(size, size), mode=mode, align_corners=False, antialias=True)
            crops.append(crop.flip(-1) if p.flip else crop)
        x = torch.cat(crops).clamp_(0, 255).div_(255.0)
        shape = (-1, 1, 1, 1)
        b = torch.tensor([p.brightness for p in params], device=x.device).view(shape)
        c = torch.tensor([p.contrast for p in params], device=x.device).view(shape)
        s = torch.tensor([p.saturation for p in params], device=x.device).view(shape)
        x = (x * b).clamp_(0, 1)
        m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m).clamp_(0, 1)
        g = _gray(x)
        x = ((x - g) * s + g).clamp_(0, 1)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _resolve_device(device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_bf16_supported() -> bool:
    """True where oneDNN runs bfloat16 natively (AVX512-BF16 or AMX), so bf16 is a speed-up."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an old or unusual build without the probe: stay in fp32
        return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision feature extraction runs at on ``device``: "fp16" (CUDA), "bf16" or "fp32"."""
    precision = os.environ.get("HEROSTACK_PRECISION", precision) if precision == "auto" else precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r} "
                         "(from HEROSTACK_PRECISION or FeatureCache(precision=...))")
    if device.type == "cuda":
        return "fp32" if precision == "fp32" else "fp16"
    if precision == "fp16":
        raise ValueError("precision 'fp16' needs CUDA; on the CPU use 'bf16' or 'fp32'")
    if precision == "auto":
        return "bf16" if cpu_bf16_supported() else "fp32"
    return precision


class _Accelerated:
    """``module`` run in inference at ``precision``; on the CPU traced and frozen on first use.

    torch.jit's trace + freeze lets oneDNN fuse each conv with its BN and activation (measured
    1.6x over eager bf16 autocast, 2.9x in fp32, on the dev box). torch.compile was no faster
    here and costs ~40 s per shape. Tracing is checked against the eager output on the first
    batch; any failure or mismatch falls back to eager, with a log line, never to wrong rows.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str):
        self.module, self.device = module, device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.traced = None
        self.setup_s = 0.0  # tracing and checking it on the first call: a fixed cost per model
        # A traced graph drops Python hooks: a module someone hooks into stays eager.
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
        self.tried = device.type != "cpu" or hooked or os.environ.get("HEROSTACK_NO_JIT") == "1"

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            if not self.tried:
                self.tried = True
                eager = self.module(x)
                started = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        traced = torch.jit.freeze(torch.jit.trace(self.module, x, check_trace=False))
                        got = traced(x)
                    cos = F.cosine_similarity(got.float().flatten(1), eager.float().flatten(1)).min().item()
                    if got.shape != eager.shape or not cos > 0.999:
                        raise RuntimeError(f"traced output differs from eager (min cosine {cos:.5f})")
                    self.traced = traced
                except Exception as e:  # noqa: BLE001 - any tracing problem means: run eager
                    logging.getLogger(__name__).info("running %s eagerly: tracing failed (%s)",
                                                     type(self.module).__name__, e)
                self.setup_s = time.perf_counter() - started
                return eager
            return (self.traced or self.module)(x)


def _short(key: str) -> str:
    return key[:16] if re.fullmatch(r"[0-9a-f]{64}", key) else hashlib.sha256(key.encode()).hexdigest()[:16]


class DeadlineReached(TimeoutError):
    """Extraction stopped at the caller's deadline; the rows finished so far are kept."""


class FeatureCache:
    """Backbone features per image content hash and view, memory-mapped on disk under ``root``.

    ``root/decoded/`` holds the decoded-image cache (``self.images``), shared by every backbone
    that stores at the same size; ``root/features/<backbone>/<weights>/<size>px-<prep>/<view>/<stage>/``
    one ``RowStore`` each.
    """

    def __init__(self, root: str | os.PathLike, device: str | torch.device = "auto", *,
                 num_workers: int | None = None, commit_every_s: float = 10.0,
                 deadline: float | None = None, precision: str = "auto"):
        self.root = Path(root)
        self.deadline = deadline  # time.time() after which extraction stops (a search's --timeout)
        self.device = _resolve_device(device)
        self.precision = resolve_precision(self.device, precision)
        self.num_workers = num_workers or max(2, min(8, os.cpu_count() or 2))
        self.commit_every_s = commit_every_s
        self.images = DecodedCache(self.root / "decoded", commit_every_s=commit_every_s)
        self.last_stats: dict = {}

    def _store(self, backbone: str, info: dict, size: int, prep: dict, view: str, stage: int | None) -> RowStore:
        prep_key = hashlib.sha256(json.dumps(prep, sort_keys=True).encode()).hexdigest()[:8]
        folder = (self.root / "features" / backbone / _short(info["key"]) / f"{size}px-{prep_key}"
                  / view / ("pooled" if stage is None else f"stage{stage}"))
        meta = {"backbone": backbone, "weights_key": info["key"], "weights_source": info["source"],
                "size": size, "view": view, "stage": stage, "preprocessing": prep}
        return RowStore(folder, np.float32 if stage is None else np.float16, meta=meta)

    def get(
        self,
        manifest: pd.DataFrame,
        backbone: str,
        size: int,
        views: Sequence[str] = ("plain",),
        *,
        stage: int | None = None,
        weights: str = "auto",
        checkpoint: str | os.PathLike | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> dict[str, np.ndarray]:
        """Per view, features in manifest row order; only rows not in the cache are computed."""
        missing_cols = [c for c in ("path", "sha256") if c not in manifest.columns]
        if missing_cols:
            raise ValueError(f"manifest lacks columns {missing_cols} (has {list(manifest.columns)})")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"size must be an integer >= 8 but got {size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 but got {batch_size}")
        size, views = int(size), check_views(views)
        paths = manifest["path"].astype(str).tolist()
        shas = manifest["sha256"].astype(str).tolist()

        info = weights_info(backbone, weights, checkpoint)
        cfg = data_config(backbone)
        stored = stored_size(size, cfg["crop_pct"])
        prep = {"mean": list(cfg["mean"]), "std": list(cfg["std"]), "interpolation": cfg["interpolation"],
                "stored": stored, "aug_version": AUG_VERSION, "precision": self.precision}
        stores = {v: self._store(backbone, info, size, prep, v, stage) for v in views}
        need = {v: {shas[i] for i in np.flatnonzero(stores[v].lookup(shas) < 0)} for v in views}
        # Stage activations come from the same forward pass as pooled features, which head
        # trials read: store those too while the trunk's work is at hand (the tail is cheap).
        pooled = {v: self._store(backbone, info, size, prep, v, None) for v in views} if stage is not None else {}
        need_pooled = {v: {shas[i] for i in np.flatnonzero(pooled[v].lookup(shas) < 0)} for v in pooled}
        todo = [i for i in _first_index(shas)
                if any(shas[i] in need[v] or shas[i] in need_pooled.get(v, ()) for v in views)]
        self.last_stats = {"computed": {v: 0 for v in views}, "forward_images": 0, "decoded": 0, "build_s": 0.0,
                           "trace_s": 0.0}
        started = time.perf_counter()
        if todo:
            self._compute(todo, paths, shas, backbone, info, size, stored, cfg, views, stores, need,
                          stage=stage, weights=weights, checkpoint=checkpoint, batch_size=batch_size,
                          progress=progress, pooled=pooled, need_pooled=need_pooled)
        out = {v: stores[v].take(stores[v].lookup(shas)) for v in views}
        self.last_stats["seconds"] = time.perf_counter() - started
        return out

    def _compute(self, todo, paths, shas, backbone, info, size, stored, cfg, views, stores, need, *,
                 stage, weights, checkpoint, batch_size, progress, pooled=None, need_pooled=None) -> None:
        pooled, need_pooled = pooled or {}, need_pooled or {}
        device, cuda = self.device, self.device.type == "cuda"
        started = time.perf_counter()
        model = create_backbone(backbone, weights=weights, checkpoint=checkpoint, num_classes=0)
        # channels-last: faster on GPUs and, with oneDNN, ~1.5x on CPUs for these depthwise nets
        model = model.to(device, memory_format=torch.channels_last).eval()
        self.last_stats["build_s"] = time.perf_counter() - started
        net, tail = (model, None) if stage is None else split_at_stage(model, stage)
        dtype = torch.float32 if stage is None else torch.float16
        decoded_before = len(self.images.store(stored, cfg["interpolation"]))
        run_net = _Accelerated(net, device, self.precision)
        run_tail = _Accelerated(tail, device, self.precision) if tail is not None else None

        def forward(x: torch.Tensor, with_pooled: bool = False):
            x = x.contiguous(memory_format=torch.channels_last)
            out = run_net(x)
            pooled_out = run_tail(out).float().cpu().numpy() if with_pooled else None
            self.last_stats["forward_images"] += x.shape[0]
            return out.to(dtype).contiguous().cpu().numpy(), pooled_out

        bar = progress_bar(len(todo), f"features {backbone} {size}px {'+'.join(views)}", progress)
        try:
            with contextlib.ExitStack() as writing:
                writers: dict = {}  # opened with the first rows, when the row shape is known
                batches = self.images.iter_batches(
                    [paths[i] for i in todo], [shas[i] for i in todo], stored, batch_size=batch_size,
                    progress=False, num_workers=self.num_workers, interpolation=cfg["interpolation"],
                )
                writing.callback(batches.close)  # stop the decoder threads first on an error
                for pos, u8 in batches:
                    if self.deadline is not None and time.time() > self.deadline:
                        raise DeadlineReached(f"feature extraction for {backbone} stopped at the deadline "
                                              f"after {self.last_stats['forward_images']} forward images")
                    batch_shas = [shas[todo[j]] for j in pos]
                    images = torch.from_numpy(u8)
                    images = images.pin_memory().to(device, non_blocking=True) if cuda else images
                    results = []
                    for v in views:
                        extra = need_pooled.get(v, ())
                        sel = [k for k, s in enumerate(batch_shas) if s in need[v] or s in extra]
                        if sel:
                            sub = [batch_shas[k] for k in sel]
                            x = preprocess_batch(images[sel], v, size, cfg["mean"], cfg["std"], sha256s=sub,
                                                 interpolation=cfg["interpolation"])
                            rows, pooled_rows = forward(x, with_pooled=any(s in extra for s in sub))
                            results.append((v, sub, rows, pooled_rows))
                    if results and not writers:
                        # Lock every store that gets rows, in one fixed order, so that processes
                        # sharing the cache never wait on each other in a cycle.
                        shapes = {"act": results[0][2].shape[1:]}
                        for v in sorted(v for v in views if need[v]):
                            writers[v] = writing.enter_context(
                                stores[v].writing(shapes["act"], commit_every_s=self.commit_every_s))
                        for v in sorted(v for v in pooled if need_pooled[v]):
                            writers[("pooled", v)] = writing.enter_context(
                                pooled[v].writing((model.num_features,), commit_every_s=self.commit_every_s))
                    for v, sub, rows, pooled_rows in results:
                        for k, (s, row) in enumerate(zip(sub, rows)):
                            if s in need[v]:
                                writers[v].add(s, row)
                            if pooled_rows is not None and s in need_pooled.get(v, ()):
                                writers[("pooled", v)].add(s, pooled_rows[k])
                        self.last_stats["computed"][v] += sum(s in need[v] for s in sub)
                    bar.update(len(pos))
        finally:
            bar.close()
            self.last_stats["trace_s"] = run_net.setup_s + (run_tail.setup_s if run_tail else 0.0)
            self.last_stats["decoded"] = len(self.images.store(stored, cfg["interpolation"])) - decoded_before


def _first_index(keys: Sequence[str]) -> list[int]:
    """Index of the first occurrence of each distinct key, in order."""
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        seen.setdefault(k, i)
    return list(seen.values())
