"""GPU check: fine-tune efficientnet_lite0 (offline weights) on the demo competition, one fold.

Prints, on a CUDA machine:
1. training-step throughput (images/s) of the model alone on a fixed batch, fp32 vs
   autocast + channels-last, with peak GPU memory of each;
2. the out-of-memory back-off on the real CUDA path (one simulated OOM: the micro batch must
   halve and the epoch finish);
3. one fold of full fine-tuning through ``models.fit.fit_predict_fold`` (frozen head epoch, then
   every layer with discriminative rates), end to end with the data loader: images/s per epoch,
   validation accuracy, back-off events, peak GPU memory.

Exits with status 2 and a one-line message when there is no CUDA device. Usage:
``python bench/gpu_check.py [--work DIR] [--epochs 4] [--batch-size 64]`` (or bench/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp folder)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="epochs after the frozen-head epoch")
    p.add_argument("--n-train", type=int, default=1000, help="demo train images")
    p.add_argument("--step-iters", type=int, default=20, help="timed steps per throughput setting")
    p.add_argument("--weights", default="auto", help="weight source (models.backbones)")
    p.add_argument("--device", default="cuda",
                   help="'cpu' only dry-runs the flow (with a tiny backbone); no timings mean much")
    return p.parse_args(argv)


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_throughput(backbone: str, size: int, batch: int, iters: int, *, amp: bool,
                    channels_last: bool, weights: str, device: torch.device) -> tuple[float, float]:
    """Images/s of forward + backward + AdamW on one fixed GPU batch, and peak memory (GiB)."""
    from models.backbones import create_backbone

    reset_peak()
    model = create_backbone(backbone, weights=weights, num_classes=12).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 12, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = amp and device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    rate = iters * batch / (time.perf_counter() - t0)
    del model, opt, x, y
    return rate, peak_gib()


def oom_backoff_check(images: np.ndarray, labels: np.ndarray, args) -> dict:
    """One simulated CUDA OOM in the first training forward: the step must be retried smaller."""
    from models.finetune import FineTuner

    class OomOnce(FineTuner):
        def _build_model(self, n_classes):
            model = super()._build_model(n_classes)
            forward, raised = model.forward, []

            def wrapped(x):
                if not raised and torch.is_grad_enabled():
                    raised.append(1)
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated by gpu_check)")
                return forward(x)

            model.forward = wrapped
            return model

    n = min(len(images), 4 * args.batch_size)
    model = OomOnce(args.backbone, weights=args.weights, image_size=args.image_size, epochs=1,
                    frozen_epochs=0, batch_size=args.batch_size, aug="light", device=args.device,
                    classes=np.arange(12)).fit(images[:n], labels[:n])
    return {"oom_events": model.oom_events_, "micro_batch_size": model.micro_batch_size_,
            "batch_size": args.batch_size, "epochs_done": len(model.history_)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a GPU machine", file=sys.stderr)
        return 2
    from competition.scan import scan
    from competition.spec import load_spec
    from models.fit import FitConfig, decode_geometry, fit_predict_fold
    from models.images import DecodedCache
    from sklearn.model_selection import StratifiedKFold

    t_start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device: {name}; torch {torch.__version__}; work: {work}")

    # The demo competition, written by its own module (the same command a person would run).
    subprocess.run([sys.executable, "-m", "competition.demo", str(work / "demo"),
                    "--n-train", str(args.n_train)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env={**os.environ, "HEROSTACK_NO_PROGRESS": "1"})
    spec = load_spec("demo")
    manifest = scan(work / "demo", spec, progress=False, num_workers=8).manifest
    train = np.flatnonzero(manifest.split.to_numpy() == "train")
    test = np.flatnonzero(manifest.split.to_numpy() == "test")
    classes = list(spec.classes)
    y = np.array([classes.index(v) for v in manifest.label.to_numpy()[train]])
    fold_train, fold_val = next(StratifiedKFold(5, shuffle=True, random_state=0).split(train, y))
    print(f"demo: {len(train)} train / {len(test)} test images; fold: {len(fold_train)} train, "
          f"{len(fold_val)} val ({time.perf_counter() - t_start:.0f} s)")

    print("\n1. training-step throughput, model only (fixed batch "
          f"{args.batch_size}x{args.image_size}px)")
    for amp, cl in ((False, False), (True, True)):
        rate, peak = step_throughput(args.backbone, args.image_size, args.batch_size,
                                     args.step_iters, amp=amp, channels_last=cl,
                                     weights=args.weights, device=device)
        label = "autocast + channels_last" if amp else "fp32, NCHW"
        print(f"   {label:<26} {rate:8.0f} images/s   peak {peak:5.2f} GiB")

    print("\n2. out-of-memory back-off (one simulated CUDA OOM)")
    size, interp = decode_geometry(FitConfig(backbone=args.backbone, image_size=args.image_size))
    rows = manifest.iloc[train]
    images = np.asarray(DecodedCache(work / "cache" / "decoded").get(
        rows.path.tolist(), rows.sha256.tolist(), size, progress=False, interpolation=interp))
    reset_peak()
    check = oom_backoff_check(images, y, args)
    ok = check["oom_events"] == 1 and check["micro_batch_size"] == args.batch_size // 2
    print(f"   {'ok' if ok else 'FAILED'}: {check}")

    print(f"\n3. one fold of full fine-tuning ({args.backbone}, 1 frozen + {args.epochs} epochs, "
          "autocast + channels_last, RandAugment)")
    reset_peak()
    config = FitConfig(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                       mode="full",
                       epochs=args.epochs, frozen_epochs=1, batch_size=args.batch_size, lr=1e-3)
    t0 = time.perf_counter()
    result = fit_predict_fold(config, manifest, train[fold_train], train[fold_val], test,
                              classes=classes, cache_root=work / "cache", device=args.device,
                              work_dir=work / "fold0")
    for r in result.info["history"]:
        print(f"   epoch {r['epoch']} ({r['phase']:<8}) loss {r['loss']:.3f}  "
              f"{r['images_per_s']:7.0f} images/s  {r['seconds']:5.1f} s")
    acc = float((result.val_proba.argmax(1) == y[fold_val]).mean())
    print(f"   val accuracy {acc:.3f}; back-off events {result.info['oom_events']} "
          f"(micro batch {result.info['micro_batch_size']}); peak GPU memory {peak_gib():.2f} GiB")
    print(f"   timings: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
          + f"; fold wall {time.perf_counter() - t0:.0f} s")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
