"""Synthetic studies for tests and benchmarks: folds, spec and trial artefacts that follow the
contract, with OOF probabilities that carry a chosen amount of signal."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from competition.io import atomic_write_csv, atomic_write_json, sha256_file, write_probabilities

__all__ = ["synthetic_probabilities", "make_study", "write_trial"]


def synthetic_probabilities(y: np.ndarray, n_classes: int, signal: float, rng: np.random.Generator,
                            shared: np.ndarray | None = None, noise: float = 1.0) -> np.ndarray:
    """Softmax of Gaussian logits plus ``signal`` on the true class; ``shared`` logits (the same
    for several trials) make their errors correlated. ``signal=0`` gives pure noise."""
    logits = noise * rng.normal(size=(len(y), n_classes))
    if shared is not None:
        logits = logits + shared
    logits[np.arange(len(y)), y] += signal
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def write_trial(study_dir: str | os.PathLike, name: str, ids, folds, labels, oof: np.ndarray,
                test_ids, test: np.ndarray, classes: Sequence[str], folds_hash: str, metric: str,
                fold_scores: Sequence[float] = (0.0,)) -> Path:
    folder = Path(study_dir) / "trials" / str(name)
    write_probabilities(folder / "oof.csv", ids, oof, classes, extra={"fold": folds, "label": labels})
    write_probabilities(folder / "test.csv", test_ids, test, classes)
    atomic_write_json(folder / "meta.json", {
        "kind": "trial", "name": str(name), "config": {}, "folds_hash": folds_hash,
        "classes": list(classes), "metric": metric, "fold_scores": list(fold_scores),
        "score_mean": float(np.mean(fold_scores)), "score_std": float(np.std(fold_scores)),
        "timings": {}, "versions": {}, "git_commit": None,
    })
    return folder


def make_study(root: str | os.PathLike, name: str = "demo", n: int = 300, n_test: int = 50,
               classes: Sequence[str] = ("a", "b", "c"), k: int = 3, signals: Sequence[float] = (1.5, 1.2, 1.0),
               metric: str = "accuracy", seed: int = 0, correlation: float = 0.0) -> Path:
    """Write ``<root>/<name>/`` with competition.json, folds.csv/json and one trial per entry of
    ``signals`` (trial names ``0, 1, ...``); returns the study folder."""
    rng = np.random.default_rng(seed)
    study = Path(root) / name
    classes = list(classes)
    C = len(classes)
    ids = [f"img_{i:05d}" for i in range(n)]
    test_ids = [f"test_{i:05d}" for i in range(n_test)]
    y = rng.integers(0, C, n)
    y_test = rng.integers(0, C, n_test)
    folds = rng.permutation(np.arange(n) % k)
    labels = [classes[i] for i in y]
    atomic_write_json(study / "competition.json", {
        "name": name, "classes": classes, "submission_labels": classes, "metric": metric,
    })
    atomic_write_csv(study / "folds.csv", pd.DataFrame({"image_id": ids, "label": labels, "fold": folds, "group": ids}))
    folds_hash = sha256_file(study / "folds.csv")
    atomic_write_json(study / "folds.json", {"hash": folds_hash, "k": k, "seed": seed})
    shared, shared_test = rng.normal(size=(n, C)) * correlation, rng.normal(size=(n_test, C)) * correlation
    for t, signal in enumerate(signals):
        oof = synthetic_probabilities(y, C, signal, rng, shared)
        test = synthetic_probabilities(y_test, C, signal, rng, shared_test)
        write_trial(study, str(t), ids, folds, labels, oof, test_ids, test, classes, folds_hash, metric)
    return study
