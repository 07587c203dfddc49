"""Stackers: ways to turn K trials' probabilities into one probability matrix.

Every stacker takes a probability tensor ``P`` of shape (n_rows, K trials, C classes) and follows
scikit-learn's manners: ``__init__`` stores parameters, ``fit(P, y)`` returns ``self``, learned
state ends in ``_``, and ``predict_proba(P)`` before ``fit`` raises ``NotFittedError``.

``refit_for_test`` tells the cross-validation driver how to predict the test set: True means one
more fit on all OOF rows; False means the average of the fold models' test predictions.

The registry ``STACKERS`` is in simplicity order (best single < mean < hill < logreg < lgbm), the
order ``auto`` uses to prefer the simpler of two methods within one standard error.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from competition.metrics import get_metric

__all__ = [
    "Stacker",
    "BestSingle",
    "MeanStack",
    "HillClimb",
    "LogRegStack",
    "LGBMStack",
    "STACKERS",
    "SIMPLICITY",
    "make_stacker",
    "features",
]

_EPS = 1e-6


def features(P: np.ndarray, log_odds: bool = False) -> np.ndarray:
    """Flatten (n, K, C) to (n, K*C), trial-major: the column order of ``<trial>_<class>``."""
    X = P.reshape(len(P), -1)
    if log_odds:
        X = np.clip(X, _EPS, 1 - _EPS)
        X = np.log(X) - np.log1p(-X)
    return X


def _check_tensor(P: np.ndarray, n_models: int | None = None) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 3:
        raise ValueError(f"expected probabilities of shape (rows, trials, classes) but got shape {P.shape}")
    if n_models is not None and P.shape[1] != n_models:
        raise ValueError(f"fitted on {n_models} trials but got {P.shape[1]}")
    return P


class Stacker:
    name: ClassVar[str] = ""
    refit_for_test: ClassVar[bool] = True

    def fit(self, P: np.ndarray, y: np.ndarray) -> "Stacker":
        raise NotImplementedError

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_params(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def details(self) -> dict:
        """Learned state worth saving in meta.json (JSON-friendly)."""
        return {}

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(P, y) first")


@dataclass(eq=False)
class BestSingle(Stacker):
    """The single trial with the best score on the rows it is fitted on."""

    metric: str = "accuracy"
    name: ClassVar[str] = "best"

    def fit(self, P, y):
        P = _check_tensor(P)
        metric = get_metric(self.metric)
        scores = np.array([metric(y, P[:, k]) for k in range(P.shape[1])])
        self.scores_ = scores
        self.index_ = int(np.argmax(scores) if metric.greater_is_better else np.argmin(scores))
        self.n_models_ = P.shape[1]
        return self

    def predict_proba(self, P):
        self._check_fitted("index_")
        return _check_tensor(P, self.n_models_)[:, self.index_]

    def details(self):
        return {"index": self.index_}


@dataclass(eq=False)
class MeanStack(Stacker):
    """The plain average of the candidates' probabilities."""

    name: ClassVar[str] = "mean"

    def fit(self, P, y):
        self.n_models_ = _check_tensor(P).shape[1]
        return self

    def predict_proba(self, P):
        self._check_fitted("n_models_")
        return _check_tensor(P, self.n_models_).mean(axis=1)


@dataclass(eq=False)
class HillClimb(Stacker):
    """Caruana et al. (2004) greedy ensemble selection with replacement, as in auto-sklearn and
    AutoGluon: start empty, add the trial whose inclusion gives the best metric (ties: the lower
    index), ``n_iter`` times; the weights are the selection counts of the best-scoring step,
    normalised to sum to one."""

    metric: str = "accuracy"
    n_iter: int = 50
    name: ClassVar[str] = "hill"

    def __post_init__(self):
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be at least 1 but got {self.n_iter}")

    def fit(self, P, y):
        P = _check_tensor(P)
        metric = get_metric(self.metric)
        sign = 1.0 if metric.greater_is_better else -1.0
        n_models = P.shape[1]
        counts = np.zeros(n_models, dtype=int)
        running = np.zeros(P[:, 0].shape)
        best_score, best_counts, trace = -np.inf, None, []
        for step in range(1, self.n_iter + 1):
            scores = np.array([sign * metric(y, (running + P[:, k]) / step) for k in range(n_models)])
            k = int(np.argmax(scores))
            running += P[:, k]
            counts[k] += 1
            trace.append(float(sign * scores[k]))
            if scores[k] > best_score:
                best_score, best_counts = scores[k], counts.copy()
        self.counts_ = best_counts
        self.weights_ = best_counts / best_counts.sum()
        self.trace_ = trace
        return self

    def predict_proba(self, P):
        self._check_fitted("weights_")
        P = _check_tensor(P, len(self.weights_))
        return np.einsum("nkc,k->nc", P, self.weights_)

    def details(self):
        return {"weights": self.weights_.round(6).tolist(), "counts": self.counts_.tolist()}


def _full_proba(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Place the columns of the classes a model saw into all ``n_classes`` columns."""
    if len(seen) == n_classes:
        return proba
    out = np.zeros((len(proba), n_classes))
    out[:, seen] = proba
    return out


@dataclass(eq=False)
class LogRegStack(Stacker):
    """Multinomial logistic regression on standardised ``<trial>_<class>`` features (L2, ``C``).

    BLAS runs single-threaded during fit and predict: on these small matrices threads only add
    start-up and, on shared cores, spinning (measured 15-20x slower with 2 OpenBLAS threads)."""

    C: float = 1.0
    log_odds: bool = False
    max_iter: int = 2000
    name: ClassVar[str] = "logreg"

    def fit(self, P, y):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        P = _check_tensor(P)
        self.n_models_, self.n_classes_ = P.shape[1], P.shape[2]
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
        with threadpool_limits(limits=1):  # see the class docstring
            self.model_.fit(features(P, self.log_odds), y)
        return self

    def predict_proba(self, P):
        self._check_fitted("model_")
        P = _check_tensor(P, self.n_models_)
        with threadpool_limits(limits=1):
            proba = self.model_.predict_proba(features(P, self.log_odds))
        return _full_proba(proba, self.model_.classes_, self.n_classes_)


@dataclass(eq=False)
class LGBMStack(Stacker):
    """LightGBM multiclass on the ``<trial>_<class>`` features, with conservative defaults for a
    few thousand rows: shallow trees, large leaves, L2, feature and row subsampling.

    Early stopping watches ``multi_logloss`` on an inner validation split (``inner_valid`` of the
    rows given to ``fit``, stratified), so a CV fold's validation rows are never looked at.
    ``feature_fraction=None`` picks ``min(0.5, 100 / n_features)``: each tree sees at most about
    a hundred features, which keeps 100 trials x 12 classes fast and decorrelates the trees.
    Test predictions are the average of the fold models (``refit_for_test = False``): each fold
    has its own early-stopped iteration count, and the average is a small bagging ensemble.

    ``n_jobs=1`` by default: a stacker's data is small, and OpenMP threads on busy cores cost
    more than they bring (measured 4-5x slower with 2 threads on 2 shared cores). ``max_bin=31``
    halves the fit time against 63 with the same accuracy on probability features.
    """

    learning_rate: float = 0.1
    num_leaves: int = 7
    max_depth: int = 3
    min_data_in_leaf: int = 40
    feature_fraction: float | None = None
    bagging_fraction: float = 0.8
    lambda_l2: float = 10.0
    max_bin: int = 31
    num_boost_round: int = 500
    early_stopping_rounds: int = 30
    inner_valid: float = 0.15
    log_odds: bool = False
    seed: int = 0
    n_jobs: int = 1  # -1: every core
    name: ClassVar[str] = "lgbm"
    refit_for_test: ClassVar[bool] = False

    def __post_init__(self):
        if not 0.0 < self.inner_valid < 0.5:
            raise ValueError(f"inner_valid must be in (0, 0.5) but got {self.inner_valid}")
        if self.feature_fraction is not None and not 0.0 < self.feature_fraction <= 1.0:
            raise ValueError(f"feature_fraction must be in (0, 1] but got {self.feature_fraction}")

    def _params(self, n_features: int, n_classes: int) -> dict:
        ff = self.feature_fraction or min(0.5, 100.0 / n_features)
        return {
            "objective": "multiclass",
            "num_class": n_classes,
            "metric": "multi_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": max(ff, 1.0 / n_features),
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin,
            "num_threads": self.n_jobs if self.n_jobs > 0 else (os.cpu_count() or 1),
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }

    def fit(self, P, y):
        import lightgbm as lgb
        from sklearn.model_selection import train_test_split

        P = _check_tensor(P)
        y = np.asarray(y, dtype=int)
        X = features(P, self.log_odds)
        self.n_models_, self.n_classes_ = P.shape[1], P.shape[2]
        counts = np.bincount(y, minlength=self.n_classes_)
        n_valid = int(np.ceil(self.inner_valid * len(y)))
        present = int((counts > 0).sum())
        # Stratify when every class can be on both sides; tiny folds split at random instead.
        stratify = y if counts[counts > 0].min() >= 2 and n_valid >= present and len(y) - n_valid >= present else None
        tr, va = train_test_split(np.arange(len(y)), test_size=self.inner_valid,
                                  random_state=self.seed, stratify=stratify)
        params = self._params(X.shape[1], self.n_classes_)
        train = lgb.Dataset(X[tr], y[tr], params={"max_bin": self.max_bin}, free_raw_data=True)
        valid = lgb.Dataset(X[va], y[va], reference=train)
        self.booster_ = lgb.train(
            params, train, num_boost_round=self.num_boost_round, valid_sets=[valid],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        return self

    def predict_proba(self, P):
        self._check_fitted("booster_")
        X = features(_check_tensor(P, self.n_models_), self.log_odds)
        return self.booster_.predict(X, num_iteration=self.best_iteration_)

    def importance(self, names: Sequence[str] | None = None, top: int = 15) -> dict[str, float]:
        """Total gain per feature, largest first."""
        self._check_fitted("booster_")
        gain = self.booster_.feature_importance("gain", iteration=self.best_iteration_)
        names = list(names) if names is not None else [f"f{i}" for i in range(len(gain))]
        order = np.argsort(-gain)[:top]
        return {names[i]: round(float(gain[i]), 3) for i in order if gain[i] > 0}

    def details(self):
        return {"best_iteration": self.best_iteration_}


STACKERS: dict[str, type[Stacker]] = {
    cls.name: cls for cls in (BestSingle, MeanStack, HillClimb, LogRegStack, LGBMStack)
}
SIMPLICITY: tuple[str, ...] = tuple(STACKERS)


def make_stacker(name: str, **options) -> Stacker:
    """Create the stacker ``name``. Options it does not take are left out, so one set of options
    (``metric``, ``log_odds``, ``seed``, ...) configures every stacker; an option no stacker
    takes is an error."""
    try:
        cls = STACKERS[name]
    except KeyError:
        raise ValueError(f"unknown stacker {name!r}; known stackers: {list(STACKERS)}") from None
    known = {f.name for c in STACKERS.values() for f in dataclasses.fields(c)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown stacker options {unknown}; known options: {sorted(known)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in fields})
