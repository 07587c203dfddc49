"""Optuna storage and study handling, exclusions, the progress bar and the final table."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from tqdm.auto import tqdm

from competition.metrics import get_metric
from folds.make import Study, StudyMismatch

__all__ = ["resolve_device", "make_storage", "open_study", "read_exclusions", "ProgressCallback", "summary_table"]

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats, the retry callback and grouped TPE are marked experimental; they are what we rely on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device on this machine")
    return device


def make_storage(url: str | None, study_dir: Path, heartbeat: int = 10):
    """An Optuna storage with heartbeats, so a killed worker's trial is failed and retried.

    Default: SQLite in the study folder, with a long busy timeout so two local workers never
    fail with "database is locked". ``journal:PATH`` selects Optuna's journal file (no heartbeats).
    """
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    if url and url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if not url:
        study_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat,
        grace_period=max(3 * heartbeat, 2),
        heartbeat_stale_trial_callback=retry,
    )


def open_study(study: Study, storage_url: str | None, *, seed: int = 0, heartbeat: int = 10,
               prune: bool = True) -> optuna.Study:
    """Create or continue the Optuna study; refuse one that was made on other data or folds."""
    metric = get_metric(study.spec.metric)
    storage = make_storage(storage_url, study.dir, heartbeat)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
    # The running mean over folds is reported after each fold. A median pruner on it stops configs
    # that are clearly behind after two folds; Wilcoxon needs more paired steps than K=5 folds give
    # (its smallest one-sided p-value with 3 folds is 0.125) and would never prune here.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    ostudy = optuna.create_study(study_name=study.name, storage=storage, direction=metric.direction,
                                 sampler=sampler, pruner=pruner, load_if_exists=True)
    identity = {"data_dir": str(study.data_dir), "competition": study.spec.name, "folds_hash": study.folds_hash}
    attrs = ostudy.user_attrs
    if attrs:
        diff = {k: (attrs.get(k), v) for k, v in identity.items() if attrs.get(k) != v}
        if diff:
            raise StudyMismatch(
                f"Optuna study {study.name!r} in this storage belongs to other data: "
                + "; ".join(f"{k} is {old!r}, asked {new!r}" for k, (old, new) in diff.items())
                + ". Use another --study name."
            )
    else:
        for key, value in identity.items():
            ostudy.set_user_attr(key, value)
    return ostudy


def read_exclusions(path: str | os.PathLike, study: Study) -> frozenset[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--exclude file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "image_id" not in df.columns:
        raise ValueError(f"{path}: no image_id column (columns: {list(df.columns)})")
    ids = set(df["image_id"])
    unknown = sorted(ids - set(study.folds.image_id))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} ids are not training images of study {study.name!r}, e.g. {unknown[:3]}")
    return frozenset(ids)


class ProgressCallback:
    """tqdm bar over this process's trials with the best score so far; stops at the deadline."""

    def __init__(self, n_trials: int | None, study: optuna.Study, deadline: float | None = None):
        self.deadline = deadline
        self.bar = tqdm(total=n_trials, desc="trials", unit="trial",
                        disable=bool(os.environ.get("HEROSTACK_NO_PROGRESS")))
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state
        key = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}.get(state, "failed")
        self.counts[key] += 1
        if state == optuna.trial.TrialState.FAIL:
            tqdm.write(f"trial {trial.number} failed: {trial.user_attrs.get('error', 'see the log above')}")
        try:
            best = f"{study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "-"
        self.bar.set_postfix_str(f"best {best} ok {self.counts['complete']} pruned {self.counts['pruned']} "
                                 f"failed {self.counts['failed']}")
        self.bar.update(1)
        if self.deadline is not None and time.time() >= self.deadline:
            study.stop()

    def close(self):
        self.bar.close()


def summary_table(ostudy: optuna.Study, study: Study, top: int = 10) -> str:
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = pd.Series([t.state.name for t in ostudy.trials]).value_counts().to_dict()
    head = f"\nstudy {study.name!r}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    if not done:
        return head + "\nno complete trials yet"
    reverse = get_metric(study.spec.metric).greater_is_better
    done.sort(key=lambda t: t.value, reverse=reverse)
    rows = []
    for t in done[:top]:
        p = t.params
        rows.append({
            "trial": t.number,
            study.spec.metric: f"{t.value:.4f} ± {t.user_attrs.get('score_std', float('nan')):.4f}",
            "backbone": p.get("backbone"),
            "size": p.get("image_size", t.user_attrs.get("image_size", "")),
            "mode": p.get("mode", "") + (f"@{t.user_attrs['stage']}" if p.get("mode") == "partial"
                                         and "stage" in t.user_attrs else ""),
            "lr": f"{p['lr']:.2g}" if "lr" in p else "",
            "epochs": p.get("epochs", ""),
            "views": f"{p.get('train_views', '')}/{p.get('tta_views', '')}",
            "seconds": round(t.user_attrs.get("timings", {}).get("total_s", np.nan), 1),
        })
    return head + f"\ntop {len(rows)} trials by CV {study.spec.metric}:\n" + pd.DataFrame(rows).to_string(index=False)
