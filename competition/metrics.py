"""Metrics in one registry. Every metric takes integer labels and a probability matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss

__all__ = ["Metric", "METRICS", "get_metric"]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool

    @property
    def direction(self) -> str:
        """Optuna's spelling of the direction."""
        return "maximize" if self.greater_is_better else "minimize"

    def __call__(self, y_true, proba) -> float:
        y_true = np.asarray(y_true, dtype=int)
        proba = np.asarray(proba, dtype=np.float64)
        if proba.ndim != 2 or len(y_true) != len(proba):
            raise ValueError(
                f"metric {self.name}: {len(y_true)} labels but probabilities of shape {proba.shape}"
            )
        return float(self.fn(y_true, proba))

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly better than ``b``."""
        return a > b if self.greater_is_better else a < b


def _accuracy(y, p):
    return accuracy_score(y, p.argmax(1))


def _macro_f1(y, p):
    return f1_score(y, p.argmax(1), average="macro", labels=np.arange(p.shape[1]), zero_division=0)


def _weighted_f1(y, p):
    return f1_score(y, p.argmax(1), average="weighted", labels=np.arange(p.shape[1]), zero_division=0)


def _log_loss(y, p):
    p = np.clip(p, 1e-15, 1.0)
    return log_loss(y, p / p.sum(1, keepdims=True), labels=np.arange(p.shape[1]))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", _accuracy, True),
        Metric("macro_f1", _macro_f1, True),
        Metric("weighted_f1", _weighted_f1, True),
        Metric("log_loss", _log_loss, False),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}") from None
