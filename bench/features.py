"""Feature-extraction throughput: the whole pipeline against the bare forward pass.

    python bench/features.py --data /path/to/images --limit 600

Four timings over the same images, batch size, device and torch threads, in one run:

- fp32:  the plain fp32 eager forward on pre-decoded tensors (what a naive loop gets);
- bare:  the pipeline's forward (bf16 + traced on a CPU with native bf16; see models.features)
         on pre-decoded, pre-normalized tensors (the ceiling);
- cold:  ``FeatureCache.get`` with empty caches: read, decode, resize, crop, normalize, forward, store;
- warm:  the same with the decoded-image cache filled (feature cache empty again).

The images are split into rounds of a few batches, and each round is timed all three ways, in
rotating order, so that a load that drifts (a shared machine) weighs on the three alike.

The model build and its tracing (fixed costs, printed apart) are left out of the rates. Targets: cold >= 0.8x
bare, warm >= 0.95x bare. Without ``--data`` a few hundred synthetic JPEGs are generated.
"""
from __future__ import annotations

import argparse
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
from models.features import FeatureCache, _Accelerated, preprocess_batch, stored_size  # noqa: E402


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
    p.add_argument("--chunk-batches", type=int, default=3, help="batches per round (see ORDERS)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto|fp32|bf16 (see models.features)")
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


class BareForward:
    """The model alone on pre-decoded, pre-normalized tensors, as ``FeatureCache`` runs it."""

    def __init__(self, manifest: pd.DataFrame, args, device: torch.device, scratch: Path, precision: str):
        cfg = data_config(args.backbone)
        self.cfg, self.args, self.device = cfg, args, device
        self.cuda = device.type == "cuda"
        # Decoded squares from a cache of their own (not timed), so the pipeline's stays cold.
        self.u8 = FeatureCache(scratch, device="cpu").images.get(
            manifest["path"], manifest["sha256"], stored_size(args.size, cfg["crop_pct"]),
            progress=False, interpolation=cfg["interpolation"])
        model = create_backbone(args.backbone, weights=args.weights)
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.fast = _Accelerated(self.model, device, precision)
        self.naive = _Accelerated(self.model, device, "fp32")
        self.naive.tried = True  # eager
        warm = self.batches(np.arange(min(len(self.u8), args.batch_size)))
        self.run(warm, self.fast)  # warm-up (and tracing)
        self.run(warm, self.naive)

    def batches(self, rows: np.ndarray) -> list[torch.Tensor]:
        out = []
        for start in range(0, len(rows), self.args.batch_size):
            u8 = torch.from_numpy(np.array(self.u8[rows[start : start + self.args.batch_size]]))
            x = preprocess_batch(u8, "plain", self.args.size, self.cfg["mean"], self.cfg["std"])
            out.append(x.to(self.device).contiguous(memory_format=torch.channels_last))
        return out

    def run(self, xs: list[torch.Tensor], forward: _Accelerated) -> None:
        for x in xs:
            forward(x).float().cpu()
        if self.cuda:
            torch.cuda.synchronize()


# Each round times one chunk three ways; the order rotates (cold always before warm, which
# needs cold's decoded squares) so that load drifting on a shared machine hits all three alike.
ORDERS = (("fp32", "bare", "cold", "warm"), ("cold", "fp32", "bare", "warm"), ("cold", "warm", "bare", "fp32"))


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
        manifest = manifest.drop_duplicates("sha256").reset_index(drop=True)  # one forward per picture
        work = args.work or tmp / "work"
        if work.exists():
            shutil.rmtree(work)
        cache = FeatureCache(work / "cache", device=args.device, num_workers=args.workers, precision=args.precision)
        device = cache.device
        chunk = args.chunk_batches * args.batch_size
        print(f"data: {source}  images: {len(files)} ({len(manifest)} distinct)  backbone: {args.backbone}  "
              f"size: {args.size}  batch: {args.batch_size}  device: {device}  precision: {cache.precision}  torch threads: "
              f"{torch.get_num_threads()}  decode threads: {cache.num_workers}  rounds of {chunk} images",
              flush=True)
        bare = BareForward(manifest, args, device, work / "bare", cache.precision)
        wall = {"fp32": 0.0, "bare": 0.0, "cold": 0.0, "warm": 0.0}
        cpu = dict(wall)
        builds = []
        for r, start in enumerate(range(0, len(manifest), chunk)):
            rows = np.arange(start, min(start + chunk, len(manifest)))
            part = manifest.iloc[rows].reset_index(drop=True)
            for step in ORDERS[r % len(ORDERS)]:
                if step == "warm":  # features gone, decoded squares kept
                    shutil.rmtree(work / "cache" / "features")
                if step in ("bare", "fp32"):
                    xs = bare.batches(rows)
                    t0, c0 = time.perf_counter(), time.process_time()
                    bare.run(xs, bare.fast if step == "bare" else bare.naive)
                    wall[step] += time.perf_counter() - t0
                    cpu[step] += time.process_time() - c0
                    continue
                c0 = time.process_time()
                cache.get(part, args.backbone, args.size, weights=args.weights, batch_size=args.batch_size,
                          progress=False)
                st = cache.last_stats
                assert st["forward_images"] == len(rows) and st["decoded"] == (len(rows) if step == "cold" else 0)
                wall[step] += st["seconds"] - st["build_s"] - st["trace_s"]  # fixed costs per get(), left out
                cpu[step] += time.process_time() - c0
                builds.append(st["build_s"] + st["trace_s"])
            print(f"  round {r + 1}: {len(rows)} images; so far fp32 {wall['fp32']:.1f} s, bare {wall['bare']:.1f} s, "
                  f"cold {wall['cold']:.1f} s, "
                  f"warm {wall['warm']:.1f} s", flush=True)

        n = len(manifest)
        print(f"\nmodel build + trace per get(): {np.mean(builds):.2f} s (a fixed cost, not in the rates)")
        print(f"{'pipeline':<26}{'images/s':>9}{'x bare':>8}{'CPU ms/img':>12}  target")
        ok = True
        for name, key, target in [("fp32 eager forward", "fp32", None),
                                  (f"bare forward ({cache.precision})", "bare", None),
                                  ("cold (decode + forward)", "cold", 0.8),
                                  ("warm decoded cache", "warm", 0.95)]:
            ratio = wall["bare"] / wall[key]
            mark = "" if target is None else (f">= {target:.2f}" + (" ok" if ratio >= target else " MISS"))
            ok &= target is None or ratio >= target
            print(f"{name:<26}{n / wall[key]:>9.1f}{ratio:>8.2f}{1000 * cpu[key] / n:>12.1f}  {mark}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
