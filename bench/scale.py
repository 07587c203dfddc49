"""Trials per minute with 1, 2 and 3 local workers on one study (the demo by default).

    python bench/scale.py [--workdir runs-bench] [--trials 12] [--workers 1,2,3]

Each worker count gets its own study on the same data and feature cache; a warm-up run fills
the cache first, so the figures compare scheduling, not feature extraction. Also checks that
nothing is lost: every study ends with exactly --trials complete trials and as many artefact
folders. On a 2-core machine expect little gain from more workers: the point is the figure.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> float:
    env = {**os.environ, "HEROSTACK_NO_PROGRESS": "1"}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "search.run", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs-bench")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--workers", default="1,2,3")
    p.add_argument("--backbones", default="efficientnet_lite0")
    p.add_argument("--modes", default="head")
    a = p.parse_args()
    common = ["--workdir", a.workdir, "--backbones", a.backbones, "--modes", a.modes, "--no-report", "--pruner", "none"]
    print("warm-up (demo generation, folds, feature cache) ...", flush=True)
    warm = run([*common, "--study", "bench-warmup", "--trials", "2"])
    print(f"warm-up: {warm:.0f} s")
    rows = []
    for n in [int(x) for x in a.workers.split(",")]:
        study = f"bench-{n}w-{int(time.time())}"
        seconds = run([*common, "--study", study, "--trials", str(a.trials), "--workers", str(n)])
        storage = f"sqlite:///{(Path(a.workdir) / study / 'study.db').resolve()}"
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        folders = [d for d in (Path(a.workdir) / study / "trials").iterdir() if (d / "meta.json").exists()]
        rows.append((n, seconds, len(complete), len(folders), len(trials)))
    base = rows[0][2] / rows[0][1]
    print(f"\n{'workers':>7} {'seconds':>8} {'complete':>8} {'folders':>7} {'trials/min':>10} {'vs 1':>6}")
    for n, seconds, complete, folders, total in rows:
        rate = complete / seconds
        print(f"{n:>7} {seconds:>8.1f} {complete:>8} {folders:>7} {60 * rate:>10.1f} {rate / base:>5.2f}x")
        if complete != a.trials or folders != a.trials:
            print(f"  LOST WORK: {complete} complete, {folders} folders for {a.trials} trials ({total} in all)")


if __name__ == "__main__":
    main()
