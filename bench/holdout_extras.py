"""Hold back part of a contest's train set to play the role of extra (external) data.

    python bench/holdout_extras.py --data PATH/TO/cax --out /tmp/holdout --fraction 0.3 [--seed 0]

Writes, with symbolic links (no image is copied):
  OUT/contest/  the contest with only (1 - fraction) of each class's train images, same test set
  OUT/extra/    the held-back images, one folder per class — the --extra-train layout
Then compare CV with and without extras on the same folds, for example:
  python -m search.run --data OUT/contest --study holdout --extra-train OUT/extra --trials 40
and read the best trials with use_extra=True against use_extra=False (the search decides).
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

from competition.images import IMAGE_EXTENSIONS
from competition.spec import load_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--competition", default="cax-superhero")
    p.add_argument("--out", required=True)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not 0 < a.fraction < 1:
        raise SystemExit(f"--fraction must be between 0 and 1 but got {a.fraction}")
    spec = load_spec(a.competition)
    data, out = Path(a.data).resolve(), Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    contest, extra = out / "contest", out / "extra"
    contest.mkdir(parents=True)
    os.symlink(data / spec.test_dir, contest / spec.test_dir)
    os.symlink(data / spec.sample_submission, contest / spec.sample_submission)
    rng = np.random.default_rng(a.seed)
    kept = held = 0
    for cls_dir in sorted(p for p in (data / spec.train_dir).iterdir() if p.is_dir()):
        files = sorted(f for f in cls_dir.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        chosen = set(rng.choice(len(files), int(round(a.fraction * len(files))), replace=False).tolist())
        for i, f in enumerate(files):
            target = (extra if i in chosen else contest / spec.train_dir) / cls_dir.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, target)
            held, kept = held + (i in chosen), kept + (i not in chosen)
    print(f"{out}: {kept} train images kept in contest/, {held} held back in extra/")


if __name__ == "__main__":
    main()
