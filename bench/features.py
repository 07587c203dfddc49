"""Feature-extraction throughput: the whole pipeline against the bare forward pass.

    python bench/features.py --data /path/to/images --limit 600

Three timings over the same images, batch size, device and torch threads, in one run:

- bare:  the model's forward on pre-decoded, pre-normalized tensors (the ceiling);
- cold:  ``FeatureCache.get`` with empty caches: read, decode, resize, crop, normalize, forward, store;
- warm:  the same with the decoded-image cache filled (feature cache empty again).

The model build (a fixed cost, printed apart) is left out of the rates. Targets: cold >= 0.8x
bare, warm >= 0.95x bare. Without ``--data`` a few hundred synthetic JPEGs are generated.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from competition.images import IMAGE_EXTENSIONS  # noqa: E402
from competition.io import sha256_file  # noqa: E402
from models.backbones import create_backbone, data_config  # noqa: E402
from models.features import FeatureCache, preprocess_batch, stored_size  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder of images (recursive); default: synthetic JPEGs")
    p.add_argument("--synthetic", type=int, default=300, help="how many synthetic JPEGs without --data")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="auto")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: FeatureCache's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for the caches (default: a temp folder)")
    return p.parse_args(argv)


def synthetic_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs with smooth gradients and shapes (compressible like real pictures)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(320, 800)), int(rng.integers(240, 600))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * rng.uniform(0.1, 0.5) + yy * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1).astype(np.uint8)
        im = Image.fromarray(base)
        d = ImageDraw.Draw(im)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            d.ellipse([x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))],
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"synthetic_{i:04d}.jpg"
        im.save(path, quality=90)
        out.append(path)
    return out


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def bare_forward(manifest: pd.DataFrame, args, device: torch.device, scratch: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the forward passes alone, over pre-decoded, normalized tensors."""
    cfg = data_config(args.backbone)
    cache = FeatureCache(scratch, device="cpu")
    u8 = cache.images.get(manifest["path"], manifest["sha256"], stored_size(args.size, cfg["crop_pct"]),
                          progress=False, interpolation=cfg["interpolation"])
    cuda = device.type == "cuda"
    batches = []
    for start in range(0, len(u8), args.batch_size):
        x = preprocess_batch(torch.from_numpy(np.array(u8[start : start + args.batch_size])), "plain", args.size,
                             cfg["mean"], cfg["std"])
        batches.append(x.to(device).contiguous(memory_format=torch.channels_last))
    model = create_backbone(args.backbone, weights=args.weights)
    model = model.to(device, memory_format=torch.channels_last).eval()  # as FeatureCache does

    def run(xs) -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            for x in xs:
                model(x).float().cpu()
        if cuda:
            torch.cuda.synchronize()

    run(batches[:1])  # warm-up: kernels, allocator
    started, cpu = time.perf_counter(), time.process_time()
    run(batches)
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="herostack-bench-") as tmp:
        tmp = Path(tmp)
        if args.data is None:
            (tmp / "images").mkdir()
            files = synthetic_jpegs(tmp / "images", args.synthetic)
            source = f"{len(files)} synthetic JPEGs"
        else:
            files = list_images(args.data)
            source = str(args.data)
        files = files[: args.limit] if args.limit else files
        if not files:
            raise SystemExit(f"no images found in {args.data}")
        manifest = pd.DataFrame({"path": [str(f) for f in files], "sha256": [sha256_file(f) for f in files]})
        n = len(manifest)
        work = args.work or tmp / "work"
        if work.exists():
            shutil.rmtree(work)
        cache = FeatureCache(work / "cache", device=args.device, num_workers=args.workers)
        device = cache.device
        print(f"data: {source}  images: {n} ({manifest['sha256'].nunique()} distinct)  backbone: {args.backbone}  "
              f"size: {args.size}  batch: {args.batch_size}  device: {device}  torch threads: "
              f"{torch.get_num_threads()}  decode threads: {cache.num_workers}", flush=True)

        bare_s, bare_cpu = bare_forward(manifest, args, device, work / "bare")
        distinct = manifest["sha256"].nunique()
        rate, cpu_ms = {"bare": distinct / bare_s}, {"bare": 1000 * bare_cpu / distinct}
        print(f"  bare: {distinct} forwards, {bare_s:.1f} s", flush=True)

        def timed(label: str) -> None:
            cpu = time.process_time()
            cache.get(manifest, args.backbone, args.size, weights=args.weights, batch_size=args.batch_size,
                      progress=False)
            st = cache.last_stats
            seconds = st["seconds"] - st["build_s"]
            rate[label] = st["forward_images"] / seconds
            cpu_ms[label] = 1000 * (time.process_time() - cpu) / st["forward_images"]
            print(f"  {label}: {st['forward_images']} forwards, {st['decoded']} decoded, "
                  f"{seconds:.1f} s (+{st['build_s']:.1f} s model build)", flush=True)

        timed("cold")
        shutil.rmtree(work / "cache" / "features")  # features gone, decoded pictures kept
        timed("warm")

        print(f"\n{'pipeline':<26}{'images/s':>9}{'x bare':>8}{'CPU ms/img':>12}  target")
        rows = [("bare forward", "bare", None), ("cold (decode + forward)", "cold", 0.8),
                ("warm decoded cache", "warm", 0.95)]
        ok = True
        for name, key, target in rows:
            ratio = rate[key] / rate["bare"]
            mark = "" if target is None else (f">= {target:.2f}" + (" ok" if ratio >= target else " MISS"))
            ok &= target is None or ratio >= target
            print(f"{name:<26}{rate[key]:>9.1f}{ratio:>8.2f}{cpu_ms[key]:>12.1f}  {mark}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
