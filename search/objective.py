"""The objective: one config over the study's K folds, reported after each fold, with artefacts.

A trial's artefacts are written into a temporary folder and renamed to ``trials/<n>/`` only when
complete, so a killed trial never leaves a half-written folder that a reader could take.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import pandas as pd

from competition.io import atomic_write_json, read_json, write_probabilities
from competition.metrics import get_metric
from folds.make import Study

__all__ = ["Objective", "BudgetExhausted", "PseudoLabels", "load_pseudo_labels", "trial_dir", "package_versions",
           "git_commit"]

TEST_FOLDS = "test_folds.npy"  # [k, n_test, C] float32: each fold model's test probabilities


class BudgetExhausted(RuntimeError):
    """The run's --timeout was reached in the middle of a trial."""


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / "trials" / str(number)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "optuna", "lightgbm", "scikit-learn", "numpy", "pandas", "herostack"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass(frozen=True)
class PseudoLabels:
    """A teacher trial's per-fold test probabilities, for pseudo-labelling without leakage.

    Fold k's student trains on the test images that fold k's *teacher* model (fit without fold
    k's rows) predicts with probability >= ``threshold``, labelled with that prediction. No label
    of a validation row reaches its own fold's student, so the student's CV stays honest.
    """

    teacher: int
    threshold: float
    proba: np.ndarray  # [k, n_test, C]
    test_ids: tuple[str, ...]

    def rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(test row numbers, class indices) of fold ``fold``'s confident predictions."""
        p = self.proba[fold]
        keep = np.flatnonzero(p.max(axis=1) >= self.threshold)
        return keep, p[keep].argmax(axis=1)


def load_pseudo_labels(study: Study, teacher: int, threshold: float) -> PseudoLabels:
    """Load trial ``teacher``'s per-fold test probabilities, refusing any mismatch by name."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--pseudo-threshold must be in (0, 1], got {threshold}")
    folder = trial_dir(study.dir, teacher)
    path = folder / TEST_FOLDS
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"teacher trial {teacher} has no artefacts in {folder} (not complete?)")
    if not path.is_file():
        raise FileNotFoundError(f"teacher trial {teacher} has no {TEST_FOLDS} (made before per-fold test "
                                f"probabilities were kept); pick a newer trial")
    meta = read_json(folder / "meta.json")
    if meta.get("folds_hash") != study.folds_hash:
        raise ValueError(f"teacher trial {teacher} was made on other folds ({meta.get('folds_hash')} != "
                         f"{study.folds_hash})")
    if list(meta.get("classes", [])) != list(study.spec.classes):
        raise ValueError(f"teacher trial {teacher} has another class order: {meta.get('classes')}")
    proba = np.load(path)
    test_ids = tuple(pd.read_csv(folder / "test.csv", usecols=["image_id"], dtype=str).image_id)
    k = int(study.info["k"])
    if proba.shape != (k, len(test_ids), len(study.spec.classes)) or not np.isfinite(proba).all():
        raise ValueError(f"{path}: shape {proba.shape}, expected {(k, len(test_ids), len(study.spec.classes))} "
                         "with finite values")
    return PseudoLabels(teacher=teacher, threshold=float(threshold), proba=proba, test_ids=test_ids)


@dataclass
class Objective:
    """Callable for ``study.optimize``. ``suggest`` maps a trial to a ``models.fit.FitConfig``."""

    study: Study
    suggest: Callable[[optuna.trial.BaseTrial], object]
    cache_root: Path
    device: str = "cpu"
    deadline: float | None = None  # time.time() after which no new fold starts
    exclude_ids: frozenset[str] = frozenset()
    exclude_from_validation: bool = False
    extra_train: pd.DataFrame | None = None  # rows used only inside training folds
    extra_info: dict | None = None
    pseudo: "PseudoLabels | None" = None  # confident test predictions of a teacher trial, per fold
    fit_fn: Callable | None = None  # models.fit.fit_predict_fold, injectable for tests
    progress: bool = False
    _commit: str | None = field(default=None, init=False)

    def __post_init__(self):
        self._commit = git_commit()
        if self.fit_fn is None:
            from models.fit import fit_predict_fold

            self.fit_fn = fit_predict_fold

    # The rows of the manifest the folds refer to, in folds.csv order.
    def _layout(self):
        manifest = self.study.manifest.reset_index(drop=True)
        folds = self.study.folds
        if self.extra_train is not None and len(self.extra_train):
            manifest = pd.concat([manifest, self.extra_train.assign(split="extra")], ignore_index=True)
        is_train = manifest.split.to_numpy() == "train"
        pos = pd.Series(np.flatnonzero(is_train), index=manifest.image_id[is_train].to_numpy())
        train_pos = pos.reindex(folds.image_id).to_numpy(dtype=float)
        if np.isnan(train_pos).any():
            missing = folds.image_id[np.isnan(train_pos)]
            raise ValueError(f"{len(missing)} fold ids are not in the manifest, e.g. {list(missing[:3])}")
        test_pos = np.flatnonzero(manifest.split.to_numpy() == "test")
        extra_pos = np.flatnonzero(manifest.split.to_numpy() == "extra")
        return manifest, train_pos.astype(int), test_pos, extra_pos

    def __call__(self, trial: optuna.trial.Trial) -> float:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # recorded on the trial (Optuna marks it FAIL), then re-raised
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    def _run(self, trial: optuna.trial.Trial) -> float:
        trial.set_user_attr("worker", {"host": platform.node(), "pid": os.getpid()})
        if self.pseudo is not None:
            trial.set_user_attr("pseudo", {"teacher": self.pseudo.teacher, "threshold": self.pseudo.threshold})
        config = self.suggest(trial)
        for key in ("image_size", "stage"):  # derived, not always a parameter: the summary shows them
            if getattr(config, key, None) is not None:
                trial.set_user_attr(key, int(getattr(config, key)))
        spec, folds = self.study.spec, self.study.folds
        metric = get_metric(spec.metric)
        classes = list(spec.classes)
        manifest, train_pos, test_pos, extra_pos = self._layout()
        y = folds.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
        excluded = folds.image_id.isin(self.exclude_ids).to_numpy()
        k = int(self.study.info["k"])
        oof = np.full((len(folds), len(classes)), np.nan)
        test_folds = np.zeros((k, len(test_pos), len(classes)), dtype=np.float32)
        test_sum = np.zeros((len(test_pos), len(classes)))
        test_ids = manifest.image_id.to_numpy()[test_pos]
        pseudo_rows: list[int] = []
        if self.pseudo is not None and tuple(self.pseudo.test_ids) != tuple(test_ids):
            raise ValueError(f"teacher trial {self.pseudo.teacher}'s test ids differ from this study's")
        fold_scores: list[float] = []
        timings = {"features_s": 0.0, "fit_s": 0.0, "predict_s": 0.0}
        t0 = time.time()
        use_extra = bool(getattr(config, "use_extra", True)) and len(extra_pos) > 0
        for fold in range(k):
            if self.deadline is not None and time.time() > self.deadline:
                raise BudgetExhausted(f"--timeout reached before fold {fold} of trial {trial.number}")
            is_val = folds.fold.to_numpy() == fold
            train_rows = train_pos[~is_val & ~excluded]
            val_mask = is_val & ~excluded if self.exclude_from_validation else is_val
            fold_manifest = manifest
            if self.pseudo is not None:  # this fold's teacher never saw this fold's labels
                keep, cls = self.pseudo.rows(fold)
                extra_rows = manifest.iloc[test_pos[keep]].assign(
                    split="pseudo", label=[classes[c] for c in cls],
                    image_id=["pseudo:" + i for i in test_ids[keep]])
                fold_manifest = pd.concat([manifest, extra_rows], ignore_index=True)
                train_rows = np.concatenate([train_rows, len(manifest) + np.arange(len(keep))])
                pseudo_rows.append(int(len(keep)))
            try:
                result = self.fit_fn(
                    config, fold_manifest, train_rows, train_pos[is_val], test_pos,
                    classes=classes, cache_root=self.cache_root, device=self.device, progress=self.progress,
                    extra_train_idx=extra_pos if use_extra else None, deadline=self.deadline,
                )
            except TimeoutError as exc:  # models.features.DeadlineReached: extraction hit --timeout
                raise BudgetExhausted(f"--timeout reached in fold {fold} of trial {trial.number}: {exc}") from exc
            oof[is_val] = result.val_proba
            test_sum += result.test_proba
            test_folds[fold] = result.test_proba
            for key in timings:
                timings[key] += float(result.timings.get(key, 0.0))
            fold_scores.append(metric(y[val_mask], oof[val_mask]))
            running = float(np.mean(fold_scores))
            trial.report(running, step=fold)
            if trial.should_prune():
                trial.set_user_attr("fold_scores", fold_scores)
                raise optuna.TrialPruned(f"running {spec.metric} {running:.4f} after {fold + 1} folds")
        scored = ~excluded if self.exclude_from_validation else np.ones(len(folds), bool)
        timings["total_s"] = time.time() - t0
        meta = {
            "kind": "trial",
            "name": f"trial_{trial.number}",
            "trial": trial.number,
            "study": self.study.name,
            "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
            "params": dict(trial.params),
            "folds_hash": self.study.folds_hash,
            "classes": classes,
            "metric": spec.metric,
            "fold_scores": fold_scores,
            "score_mean": float(np.mean(fold_scores)),
            "score_std": float(np.std(fold_scores)),
            "score_oof": float(metric(y[scored], oof[scored])),
            "excluded": {"n": int(excluded.sum()), "from_validation": self.exclude_from_validation},
            "extra_train": (self.extra_info or {}) if use_extra else None,
            "pseudo": None if self.pseudo is None else {
                "teacher": self.pseudo.teacher, "threshold": self.pseudo.threshold, "rows_per_fold": pseudo_rows},
            "device": self.device,
            "timings": {k2: round(v, 3) for k2, v in timings.items()},
            "versions": package_versions(),
            "git_commit": self._commit,
        }
        self._write(trial.number, folds, classes, oof, test_ids, test_sum / k, meta, test_folds)
        for key in ("fold_scores", "score_std"):
            trial.set_user_attr(key, meta[key])
        trial.set_user_attr("timings", meta["timings"])
        if meta["pseudo"] is not None:
            trial.set_user_attr("pseudo", meta["pseudo"])
        trial.set_user_attr("artefacts", str(trial_dir(self.study.dir, trial.number)))
        return meta["score_mean"]

    def _write(self, number, folds, classes, oof, test_ids, test_proba, meta, test_folds=None) -> Path:
        final = trial_dir(self.study.dir, number)
        tmp = final.parent / f".{number}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_probabilities(tmp / "oof.csv", folds.image_id, oof, classes,
                            extra={"fold": folds.fold, "label": folds.label})
        write_probabilities(tmp / "test.csv", test_ids, test_proba, classes)
        if test_folds is not None:
            np.save(tmp / TEST_FOLDS, test_folds)
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():  # a leftover from a killed run of the same number: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final
