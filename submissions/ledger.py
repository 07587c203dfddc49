"""The ledger: one row per submission file made, ``runs/<study>/submissions/ledger.csv``.

Each row records what the file is (path, sha256), where it came from (source, components,
git commit) and what we expect of it (CV mean ± std over folds, and a bootstrap 95 % interval
over OOF rows). The leaderboard columns stay empty until ``submissions.score`` fills them.

Two processes may append at once (a make while a score runs): every read-modify-write holds an
exclusive ``fcntl.flock`` on ``ledger.csv.lock`` and replaces the file atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from competition.io import atomic_write_csv
from competition.metrics import Metric

__all__ = [
    "LEDGER_COLUMNS",
    "SCORE_COLUMNS",
    "NUMERIC_COLUMNS",
    "ledger_path",
    "read_ledger",
    "append_row",
    "update_scores",
    "bootstrap_interval",
    "resample_scores",
    "git_commit",
    "utc_now",
]

SCORE_COLUMNS = ["public_score", "private_score", "all_score", "scored_at"]
LEDGER_COLUMNS = [
    "file", "sha256", "source", "kind", "metric",
    "cv_mean", "cv_std", "cv_se", "cv_oof", "cv_ci_low", "cv_ci_high", "cv_boot_se", "n_oof",
    "components", "n_rows", "proba_file", "source_dir", "created_at", "git_commit",
    *SCORE_COLUMNS,
]
NUMERIC_COLUMNS = [
    "cv_mean", "cv_std", "cv_se", "cv_oof", "cv_ci_low", "cv_ci_high", "cv_boot_se", "n_oof", "n_rows",
    "public_score", "private_score", "all_score",
]
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def ledger_path(submissions_dir: str | os.PathLike) -> Path:
    return Path(submissions_dir) / "ledger.csv"


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of ``path`` (blocks until it is free)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_ledger(path: str | os.PathLike) -> pd.DataFrame:
    """The ledger with numbers as floats and everything else as text; empty if there is none."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=float if c in NUMERIC_COLUMNS else object) for c in LEDGER_COLUMNS})
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    for col in LEDGER_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
    extra = [c for c in df.columns if c not in LEDGER_COLUMNS]  # columns a user added are kept
    return df[LEDGER_COLUMNS + extra]


def append_row(path: str | os.PathLike, row: dict) -> pd.DataFrame:
    """Append one row under the lock and return the ledger as written."""
    unknown = set(row) - set(LEDGER_COLUMNS)
    if unknown:
        raise ValueError(f"unknown ledger columns {sorted(unknown)}; known: {LEDGER_COLUMNS}")
    with locked(path):
        ledger = read_ledger(path)
        new = pd.DataFrame([{c: row.get(c, np.nan if c in NUMERIC_COLUMNS else "") for c in ledger.columns}])
        ledger = new if ledger.empty else pd.concat([ledger, new], ignore_index=True)
        _write(path, ledger)
    return ledger


def update_scores(path: str | os.PathLike, sha256: str, scores: dict[str, float | None]) -> int:
    """Fill the leaderboard columns of every row whose file has this sha256; return how many."""
    unknown = set(scores) - set(SCORE_COLUMNS)
    if unknown:
        raise ValueError(f"unknown score columns {sorted(unknown)}; known: {SCORE_COLUMNS}")
    if not Path(path).exists():
        return 0
    with locked(path):
        ledger = read_ledger(path)
        hit = ledger["sha256"].eq(sha256)
        if not hit.any():
            return 0
        ledger["scored_at"] = ledger["scored_at"].astype(object)
        for col, value in {**scores, "scored_at": utc_now()}.items():
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                ledger.loc[hit, col] = value
        _write(path, ledger)
        return int(hit.sum())


def bootstrap_interval(
    y: np.ndarray,
    proba: np.ndarray,
    metric: Metric,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float, float]:
    """(point, low, high, standard error) of ``metric`` over rows resampled with replacement."""
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if len(y) == 0:
        raise ValueError("bootstrap over zero rows")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_resamples, len(y)))
    point = metric(y, proba)
    stats = resample_scores(metric, y, proba, idx)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(point), float(low), float(high), float(stats.std(ddof=1))


def resample_scores(metric: Metric, y: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on each row of resample indices ``idx`` (shape resamples × rows).

    Accuracy and log loss are means of per-row values, so all resamples take one indexing step;
    other metrics are recomputed on each resample.
    """
    if metric.name == "accuracy":
        per_row = (proba.argmax(1) == y).astype(np.float64)
    elif metric.name == "log_loss":
        p = np.clip(proba, 1e-15, 1.0)  # as competition.metrics does before sklearn's log_loss
        per_row = -np.log(p[np.arange(len(y)), y] / p.sum(1))
    else:
        return np.array([metric(y[i], proba[i]) for i in idx])
    return per_row[idx].mean(axis=1)


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The herostack checkout's HEAD, or "" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write(path: str | os.PathLike, ledger: pd.DataFrame) -> None:
    atomic_write_csv(path, ledger, float_format="%.6g")
