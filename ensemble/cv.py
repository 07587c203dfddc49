"""Cross-validated stacking over the study's folds, and the one-standard-error choice.

For fold ``f`` a fresh stacker is fitted on the OOF rows of the other folds and predicts fold
``f``'s rows, so the stacked OOF predictions, and the per-fold scores computed from them, are as
honest as the trials' own: no row is predicted by a model that saw its label.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from competition.metrics import Metric
from ensemble.candidates import MetaFeatures, fold_scores
from ensemble.stackers import SIMPLICITY, Stacker

__all__ = ["StackResult", "cross_validate", "comparison_table", "choose_method", "format_table"]


@dataclass
class StackResult:
    method: str
    oof: np.ndarray  # (n_train, C) honest stacked OOF probabilities
    test: np.ndarray  # (n_test, C)
    fold_scores: list[float]
    fit_seconds: float
    params: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def score_mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def score_std(self) -> float:
        """Standard deviation over the folds, ``np.std`` (ddof=0) as in the trials' meta.json."""
        return float(np.std(self.fold_scores))

    @property
    def score_se(self) -> float:
        """Standard error of the mean fold score: sample std (ddof=1) / sqrt(k)."""
        k = len(self.fold_scores)
        return float(np.std(self.fold_scores, ddof=1) / np.sqrt(k)) if k > 1 else 0.0


def _normalise(proba: np.ndarray) -> np.ndarray:
    proba = np.clip(proba, 0.0, None)
    return proba / proba.sum(axis=1, keepdims=True)


def cross_validate(make: Callable[[], Stacker], meta: MetaFeatures, metric: Metric,
                   progress: bool = True) -> StackResult:
    """Fit ``make()`` once per fold on the other folds' rows; predict the test set by a refit on
    all rows or by the fold models' average, as the stacker's ``refit_for_test`` says."""
    start = time.perf_counter()
    folds = np.unique(meta.folds)
    n_classes = meta.oof.shape[2]
    oof = np.full((len(meta.ids), n_classes), np.nan)
    test = np.zeros((len(meta.test_ids), n_classes))
    stacker = make()
    fold_details = []
    bar = tqdm(folds, desc=f"stack {stacker.name}", leave=False, disable=not progress)
    for f in bar:
        va = meta.folds == f
        s = make().fit(meta.oof[~va], meta.y[~va])
        oof[va] = s.predict_proba(meta.oof[va])
        bar.set_postfix(fold_score=f"{metric(meta.y[va], oof[va]):.4f}")
        fold_details.append(s.details())
        if not s.refit_for_test:
            test += s.predict_proba(meta.test) / len(folds)
    if stacker.refit_for_test:
        stacker.fit(meta.oof, meta.y)
        test = stacker.predict_proba(meta.test)
        details = {"final": stacker.details(), "folds": fold_details}
    else:
        details = {"folds": fold_details}
    oof, test = _normalise(oof), _normalise(test)
    return StackResult(
        method=stacker.name,
        oof=oof,
        test=test,
        fold_scores=fold_scores(metric, meta.y, oof, meta.folds),
        fit_seconds=time.perf_counter() - start,
        params=stacker.get_params(),
        details=details,
    )


def comparison_table(results: Mapping[str, StackResult]) -> pd.DataFrame:
    rows = []
    for name, r in results.items():
        row = {"method": name, "score_mean": r.score_mean, "score_std": r.score_std,
               "score_se": r.score_se, "fit_seconds": round(r.fit_seconds, 2)}
        row.update({f"fold_{i}": s for i, s in enumerate(r.fold_scores)})
        rows.append(row)
    return pd.DataFrame(rows)


def choose_method(table: pd.DataFrame, metric: Metric) -> str:
    """The one-standard-error rule: find the best mean score, then take the simplest method (in
    ``SIMPLICITY`` order) whose mean is within one standard error (of the best) of it."""
    if table.empty:
        raise ValueError("no methods to choose from")
    sign = 1.0 if metric.greater_is_better else -1.0
    best = table.loc[(sign * table["score_mean"]).idxmax()]
    within = table[sign * (best["score_mean"] - table["score_mean"]) <= best["score_se"] + 1e-12]
    rank = {m: i for i, m in enumerate(SIMPLICITY)}
    return str(min(within["method"], key=lambda m: rank.get(m, len(rank))))


def format_table(table: pd.DataFrame, metric: Metric, chosen: str | None = None, note: str = "") -> str:
    """A fixed-width text table: method, CV mean ± std, SE, per-fold scores, fit time."""
    fold_cols = [c for c in table.columns if c.startswith("fold_")]
    lines = [f"{'method':<8} {metric.name + ' mean ± std':>24} {'se':>8}  "
             + " ".join(f"{c:>8}" for c in fold_cols) + f" {'fit s':>7}"]
    for _, r in table.iterrows():
        mark = " *" if r["method"] == chosen else ""
        lines.append(
            f"{r['method']:<8} {r['score_mean']:>14.5f} ± {r['score_std']:<7.5f} {r['score_se']:>8.5f}  "
            + " ".join(f"{r[c]:>8.4f}" for c in fold_cols) + f" {r['fit_seconds']:>7.1f}{mark}"
        )
    lines.append(f"({'higher' if metric.greater_is_better else 'lower'} is better"
                 + (f"; * chosen, {note}" if chosen and note else "; * chosen" if chosen else "") + ")")
    return "\n".join(lines).rstrip() + "\n"
