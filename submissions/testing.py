"""Tiny synthetic studies for tests and demos: a study folder with the artefacts this package reads.

``make_study`` writes ``competition.json``, ``folds.json`` and a sample submission;
``add_source`` writes a trial or ensemble (``oof.csv``, ``test.csv``, ``meta.json`` last) whose
OOF predictions hit about a chosen accuracy. Nothing here is used by the commands themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from competition.io import atomic_write_csv, atomic_write_json, write_probabilities
from competition.metrics import get_metric
from competition.spec import CAX_CLASSES, CAX_LABELS  # re-exported for tests

__all__ = ["SyntheticStudy", "make_study", "add_source", "noisy_proba", "CAX_CLASSES", "CAX_LABELS"]


@dataclass(frozen=True)
class SyntheticStudy:
    workdir: Path
    name: str
    dir: Path
    classes: tuple[str, ...]
    train_ids: list[str]
    train_y: np.ndarray
    folds: np.ndarray
    test_ids: list[str]  # in the sample submission's order
    test_y: np.ndarray
    folds_hash: str


def make_study(
    workdir: str | os.PathLike,
    *,
    name: str = "demo",
    classes: Sequence[str] = CAX_CLASSES[:4],
    submission_labels: Sequence[str] = CAX_LABELS[:4],
    n_train: int = 60,
    n_test: int = 20,
    k: int = 3,
    metric: str = "accuracy",
    id_column: str = "filename",
    label_column: str = "Superhero",
    sample_path: str | os.PathLike | None = None,
    seed: int = 0,
) -> SyntheticStudy:
    """A study folder; with ``sample_path`` the test ids are that file's ids (a real layout)."""
    rng = np.random.default_rng(seed)
    workdir = Path(workdir)
    study_dir = workdir / name
    study_dir.mkdir(parents=True, exist_ok=True)
    if sample_path is None:
        data_dir = workdir / f"{name}_data"
        order = rng.permutation(n_test) + 1  # not sorted: the order must come from the sample
        test_ids = [f"test_{i}" for i in order]
        atomic_write_csv(data_dir / "sample_submission.csv", pd.DataFrame({id_column: test_ids, label_column: ""}))
        sample_rel = "sample_submission.csv"
    else:
        sample_path = Path(sample_path).resolve()
        data_dir, sample_rel = sample_path.parent, sample_path.name
        test_ids = pd.read_csv(sample_path, dtype=str, keep_default_na=False)[id_column].tolist()
    folds_hash = f"{seed:04d}" + "ab" * 30
    atomic_write_json(study_dir / "competition.json", {
        "name": name, "classes": list(classes), "submission_labels": list(submission_labels),
        "sample_submission": sample_rel, "test_dir": "test", "id_column": id_column,
        "label_column": label_column, "id_format": "stem", "metric": metric,
    })
    atomic_write_json(study_dir / "folds.json", {
        "hash": folds_hash, "k": k, "seed": seed, "data_dir": str(Path(data_dir).resolve()), "competition": name,
    })
    train_y = rng.integers(0, len(classes), n_train)
    return SyntheticStudy(
        workdir=workdir, name=name, dir=study_dir, classes=tuple(classes),
        train_ids=[f"{classes[y]}/img_{i}" for i, y in enumerate(train_y)], train_y=train_y,
        folds=np.arange(n_train) % k, test_ids=test_ids,
        test_y=rng.integers(0, len(classes), len(test_ids)), folds_hash=folds_hash,
    )


def noisy_proba(y: np.ndarray, n_classes: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose argmax is ``y`` on a ``accuracy`` share of rows and wrong elsewhere."""
    y = np.asarray(y, dtype=int)
    pred = y.copy()
    wrong = rng.random(len(y)) >= accuracy
    pred[wrong] = (y[wrong] + rng.integers(1, n_classes, wrong.sum())) % n_classes
    proba = rng.random((len(y), n_classes)) * 0.5
    proba[np.arange(len(y)), pred] += 1.0
    return proba / proba.sum(axis=1, keepdims=True)


def add_source(
    study: SyntheticStudy,
    kind: str,
    name: str,
    *,
    accuracy: float = 0.7,
    test_accuracy: float | None = None,
    seed: int = 1,
    oof_proba: np.ndarray | None = None,
    test_proba: np.ndarray | None = None,
    test_ids: Sequence[str] | None = None,
    folds_hash: str | None = None,
    score_mean: float | None = None,
    metric: str | None = None,
    components: Sequence[str] | None = None,
    write_meta: bool = True,
    extra_meta: dict | None = None,
) -> Path:
    """Write ``trials/<name>/`` or ``ensemble/<name>/`` with fold scores computed from the OOF."""
    rng = np.random.default_rng(seed)
    n_classes = len(study.classes)
    folder = study.dir / ("trials" if kind == "trial" else "ensemble") / str(name)
    if oof_proba is None:
        oof_proba = noisy_proba(study.train_y, n_classes, accuracy, rng)
    if test_proba is None:
        ids = list(test_ids) if test_ids is not None else study.test_ids
        y = study.test_y if test_ids is None else rng.integers(0, n_classes, len(ids))
        test_proba = noisy_proba(y, n_classes, accuracy if test_accuracy is None else test_accuracy, rng)
    ids = list(test_ids) if test_ids is not None else study.test_ids
    # Shuffle the test rows: readers must join on ids, not trust the order.
    perm = rng.permutation(len(ids))
    write_probabilities(folder / "oof.csv", study.train_ids, oof_proba, study.classes, extra={
        "fold": study.folds, "label": [study.classes[y] for y in study.train_y]})
    write_probabilities(folder / "test.csv", [ids[i] for i in perm], np.asarray(test_proba)[perm], study.classes)
    m = get_metric(metric or _study_metric(study))
    fold_scores = [m(study.train_y[study.folds == f], oof_proba[study.folds == f]) for f in np.unique(study.folds)]
    meta = {
        "kind": kind, "name": str(name), "config": {"synthetic": True, "accuracy": accuracy},
        "folds_hash": folds_hash or study.folds_hash, "classes": list(study.classes),
        "metric": m.name, "fold_scores": fold_scores,
        "score_mean": float(np.mean(fold_scores)) if score_mean is None else score_mean,
        "score_std": float(np.std(fold_scores)), "timings": {}, "versions": {}, "git_commit": None,
    }
    if kind == "ensemble":
        meta["components"] = list(components or [])
    meta.update(extra_meta or {})
    if write_meta:
        atomic_write_json(folder / "meta.json", meta)
    return folder


def _study_metric(study: SyntheticStudy) -> str:
    import json

    return json.loads((study.dir / "competition.json").read_text())["metric"]
