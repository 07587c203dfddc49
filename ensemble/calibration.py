"""Temperature scaling of each trial's probabilities before stacking.

``TemperatureScaled`` wraps any stacker: ``fit`` learns one temperature per trial from the rows it
is given (under cross-validation: the fold's training part only) and fits the inner stacker on
the rescaled probabilities; ``predict_proba`` applies the same temperatures.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ensemble.stackers import Stacker

__all__ = ["fit_temperature", "apply_temperature", "TemperatureScaled"]

_EPS = 1e-12
_BOUNDS = (0.05, 20.0)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` over the last axis."""
    return softmax(np.log(np.clip(proba, _EPS, 1.0)) / temperature, axis=-1)


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of ``y``."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return -log_softmax(logp / np.exp(log_t), axis=1)[rows, y].mean()

    res = minimize_scalar(nll, bounds=np.log(_BOUNDS), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


class TemperatureScaled(Stacker):
    """``stacker`` applied to temperature-scaled trials."""

    def __init__(self, stacker: Stacker):
        self.stacker = stacker

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.stacker.name

    @property
    def refit_for_test(self) -> bool:  # type: ignore[override]
        return self.stacker.refit_for_test

    def get_params(self) -> dict:
        return {**self.stacker.get_params(), "temperature": True}

    def _scale(self, P: np.ndarray) -> np.ndarray:
        return np.stack([apply_temperature(P[:, k], t) for k, t in enumerate(self.temperatures_)], axis=1)

    def fit(self, P, y):
        P = np.asarray(P, dtype=np.float64)
        self.temperatures_ = [fit_temperature(P[:, k], y) for k in range(P.shape[1])]
        self.stacker.fit(self._scale(P), y)
        return self

    def predict_proba(self, P):
        self._check_fitted("temperatures_")
        return self.stacker.predict_proba(self._scale(np.asarray(P, dtype=np.float64)))

    def details(self) -> dict:
        return {**self.stacker.details(), "temperatures": [round(t, 4) for t in self.temperatures_]}
