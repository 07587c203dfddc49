"""Benchmark: ensemble stacker fit time on synthetic OOF probabilities.

    python bench/ensemble.py [--trials 100] [--classes 12] [--rows 5000] [--top-k 10] [--n-jobs 2]

Times candidate selection, then the full 5-fold cross-validated fit (fold models + test
prediction) of each stacker on the top-K candidates' K x C meta-features, and the LightGBM stacker
on all trials' features (100 x 12 = 1,200) for comparison. Trials share part of their logits, so
they are correlated the way trials of one study are.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from competition.metrics import get_metric  # noqa: E402
from ensemble.candidates import MetaFeatures, Trial, fold_scores, select_candidates  # noqa: E402
from ensemble.cv import cross_validate  # noqa: E402
from ensemble.stackers import make_stacker  # noqa: E402
from ensemble.synthetic import synthetic_probabilities  # noqa: E402


def synthetic_trials(n_trials, n_classes, n_rows, n_test, k, seed):
    rng = np.random.default_rng(seed)
    y, y_test = rng.integers(0, n_classes, n_rows), rng.integers(0, n_classes, n_test)
    folds = rng.permutation(np.arange(n_rows) % k)
    shared, shared_test = rng.normal(size=(n_rows, n_classes)), rng.normal(size=(n_test, n_classes))
    metric = get_metric("accuracy")
    trials = []
    for t in range(n_trials):
        signal, mix = rng.uniform(0.8, 2.5), rng.uniform(0.3, 1.0)
        oof = synthetic_probabilities(y, n_classes, signal, rng, shared * mix)
        test = synthetic_probabilities(y_test, n_classes, signal, rng, shared_test * mix)
        trials.append(Trial(str(t), {}, oof, np.arange(n_test).astype(str), test, fold_scores(metric, y, oof, folds)))
    return y, folds, trials


def meta_of(trials, y, folds, n_classes):
    return MetaFeatures(ids=np.arange(len(y)).astype(str), y=y, folds=folds, trials=[t.name for t in trials],
                        classes=tuple(f"c{i}" for i in range(n_classes)),
                        oof=np.stack([t.oof for t in trials], 1), test_ids=trials[0].test_ids,
                        test=np.stack([t.test for t in trials], 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--n-jobs", type=int, default=1, help="LightGBM threads (1 is fastest on busy cores)")
    p.add_argument("--skip-all", action="store_true", help="skip the LightGBM fit on all trials' features")
    a = p.parse_args(argv)
    metric = get_metric("accuracy")
    y, folds, trials = synthetic_trials(a.trials, a.classes, a.rows, a.test_rows, a.folds, 0)
    print(f"{a.trials} trials x {a.classes} classes x {a.rows} rows, {a.folds} folds, {a.n_jobs} threads")
    print(f"best single trial CV accuracy {max(t.score_mean for t in trials):.4f}")

    t0 = time.perf_counter()
    chosen = select_candidates(trials, a.top_k, metric)
    print(f"candidate selection (top-{a.top_k} of {a.trials}): {time.perf_counter() - t0:.2f} s")
    top = meta_of(chosen, y, folds, a.classes)
    runs = [(m, top) for m in ("best", "mean", "hill", "logreg", "lgbm")]
    if not a.skip_all:
        runs.append(("lgbm", meta_of(trials, y, folds, a.classes)))
    for method, meta in runs:
        make = lambda: make_stacker(method, metric="accuracy", seed=0, n_jobs=a.n_jobs)  # noqa: E731
        r = cross_validate(make, meta, metric, progress=False)
        n_feat = meta.oof.shape[1] * meta.oof.shape[2]
        extra = f", iterations {[d['best_iteration'] for d in r.details['folds']]}" if method == "lgbm" else ""
        print(f"{method:>6} on {n_feat:>5} features: {r.fit_seconds:7.1f} s for {a.folds} folds + test, "
              f"CV accuracy {r.score_mean:.4f} ± {r.score_std:.4f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
