"""Wall time of `python -m search.run --trials N` on the demo, and where the time goes.

    python bench/search.py [--trials 100] [--workdir runs-bench-search] [-- extra search.run args]

Runs the real command in a fresh work folder (so the demo is generated and every feature is
extracted, as on a new machine), then reads the study: wall time, trials per minute, and the
split between feature extraction, fitting and prediction summed over trials (from each trial's
recorded timings), plus how many trials were complete, pruned and failed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--workdir", default="runs-bench-search")
    p.add_argument("--keep", action="store_true", help="reuse the work folder (warm caches) instead of starting fresh")
    p.add_argument("extra", nargs="*", help="more search.run arguments (after --)")
    a = p.parse_args()
    work = Path(a.workdir)
    if work.exists() and not a.keep:
        shutil.rmtree(work)
    cmd = [sys.executable, "-m", "search.run", "--trials", str(a.trials), "--workdir", str(work), *a.extra]
    print("running:", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HEROSTACK_NO_PROGRESS": "1"},
                   stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    storage = f"sqlite:///{(work / 'demo' / 'study.db').resolve()}"
    trials = optuna.load_study(study_name="demo", storage=storage).get_trials(deepcopy=False)
    rows = [{"state": t.state.name, "mode": t.params.get("mode"), "backbone": t.params.get("backbone"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else 0.0,
             **t.user_attrs.get("timings", {})} for t in trials]
    df = pd.DataFrame(rows).fillna(0.0)
    done = (df.state == "COMPLETE").sum()
    print(f"\nwall time {wall:.0f} s for {len(df)} trials ({done} complete, {(df.state == 'PRUNED').sum()} pruned, "
          f"{(df.state == 'FAIL').sum()} failed): {60 * len(df) / wall:.1f} trials/min")
    total = df.seconds.sum()
    for key in ("features_s", "fit_s", "predict_s"):
        if key in df:
            print(f"  {key[:-2]:<9} {df[key].sum():7.0f} s  ({100 * df[key].sum() / max(total, 1e-9):4.1f} % of trial time)")
    print(f"  trial time {total:.0f} s; the rest of the wall time is start-up, demo generation, scanning and the report")
    print("\nmedian seconds per trial by mode and backbone:")
    print(df.groupby(["mode", "backbone"]).seconds.agg(["count", "median", "max"]).round(1).to_string())
    first = df.seconds.iloc[:10].sum()
    print(f"\nfirst 10 trials {first:.0f} s (features extracted here); later trials median {df.seconds.iloc[10:].median():.1f} s")


if __name__ == "__main__":
    main()
