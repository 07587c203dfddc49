"""Stackers, honest cross-validation, temperature scaling and the one-SE choice."""
import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from competition.metrics import get_metric
from ensemble.calibration import TemperatureScaled, apply_temperature, fit_temperature
from ensemble.candidates import MetaFeatures
from ensemble.cv import choose_method, comparison_table, cross_validate
from ensemble.stackers import STACKERS, SIMPLICITY, HillClimb, LGBMStack, make_stacker
from ensemble.synthetic import synthetic_probabilities

ACC = get_metric("accuracy")


def _meta(signals, n=600, C=3, k=3, seed=0, n_test=40) -> MetaFeatures:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    y_test = rng.integers(0, C, n_test)
    oof = np.stack([synthetic_probabilities(y, C, s, rng) for s in signals], axis=1)
    test = np.stack([synthetic_probabilities(y_test, C, s, rng) for s in signals], axis=1)
    return MetaFeatures(ids=np.array([f"i{i}" for i in range(n)]), y=y, folds=np.arange(n) % k,
                        trials=[str(t) for t in range(len(signals))], classes=tuple("abc"[:C]),
                        oof=oof, test_ids=np.array([f"t{i}" for i in range(n_test)]), test=test)


def _make(name, **kw):
    return lambda: make_stacker(name, metric="accuracy", n_iter=20, seed=0, **kw)


@pytest.mark.parametrize("name", list(STACKERS))
def test_stacker_over_random_probabilities_scores_at_chance(name):
    meta = _meta([0.0] * 6, seed=3)
    majority = np.bincount(meta.y).max() / len(meta.y)
    result = cross_validate(_make(name), meta, ACC, progress=False)
    assert result.score_mean < majority + 0.06, (name, result.score_mean, majority)
    assert np.allclose(result.oof.sum(1), 1) and np.allclose(result.test.sum(1), 1)


def test_lgbm_stacker_learns_from_signal():
    meta = _meta([1.5, 1.0, 0.5], seed=4)
    best_single = max(ACC(meta.y, meta.oof[:, k]) for k in range(3))
    result = cross_validate(_make("lgbm"), meta, ACC, progress=False)
    assert result.score_mean > best_single + 0.03
    assert result.test.shape == (40, 3)


def test_caruana_weights_sum_to_one_and_favour_the_best_trial():
    meta = _meta([2.0, 0.3, 0.2, 1.0], seed=5)
    hill = HillClimb(metric="accuracy", n_iter=25).fit(meta.oof, meta.y)
    assert hill.weights_.sum() == pytest.approx(1.0)
    assert (hill.weights_ >= 0).all() and hill.counts_.sum() >= 1
    assert hill.weights_.argmax() == 0
    np.testing.assert_allclose(hill.predict_proba(meta.oof).sum(1), 1.0)


def test_same_seed_same_result_and_seed_matters():
    meta = _meta([1.2, 1.0, 0.8], seed=6)
    a = cross_validate(_make("lgbm"), meta, ACC, progress=False)
    b = cross_validate(_make("lgbm"), meta, ACC, progress=False)
    np.testing.assert_array_equal(a.oof, b.oof)
    np.testing.assert_array_equal(a.test, b.test)
    c = cross_validate(lambda: make_stacker("lgbm", seed=1), meta, ACC, progress=False)
    assert not np.array_equal(a.oof, c.oof)


def test_predicting_before_fit_raises_not_fitted():
    P = np.full((4, 2, 3), 1 / 3)
    for name in STACKERS:
        with pytest.raises(NotFittedError, match="not fitted"):
            make_stacker(name).predict_proba(P)


@pytest.mark.parametrize("name,options,message", [
    ("nope", {}, "unknown stacker 'nope'"),
    ("lgbm", {"learning_rat": 0.1}, "unknown stacker options"),
    ("hill", {"n_iter": 0}, "n_iter must be at least 1 but got 0"),
    ("lgbm", {"inner_valid": 0.7}, r"inner_valid must be in \(0, 0.5\) but got 0.7"),
])
def test_bad_stacker_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_stacker(name, **options)


def test_fold_models_average_for_lgbm_and_refit_for_the_rest():
    assert not LGBMStack.refit_for_test
    assert all(STACKERS[m].refit_for_test for m in ("best", "mean", "hill", "logreg"))


def test_temperature_recovers_an_overconfident_scale():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 3000)
    calibrated = synthetic_probabilities(y, 4, 1.0, rng)
    overconfident = apply_temperature(calibrated, 1 / 3)  # logits x3
    assert fit_temperature(overconfident, y) == pytest.approx(3.0, rel=0.15)


def test_temperature_scaled_stacking_is_fitted_per_fold():
    meta = _meta([1.0, 0.8], seed=8)
    ll = get_metric("log_loss")
    make = lambda: TemperatureScaled(make_stacker("mean"))  # noqa: E731
    result = cross_validate(make, meta, ll, progress=False)
    assert len(result.details["folds"]) == 3 and "temperatures" in result.details["final"]
    assert result.params["temperature"] is True


def _table(rows):
    return pd.DataFrame(rows, columns=["method", "score_mean", "score_se"])


@pytest.mark.parametrize("metric,rows,expected", [
    # lgbm best, mean within one SE of it: the simpler wins
    ("accuracy", [("best", 0.80, 0.01), ("mean", 0.895, 0.01), ("lgbm", 0.90, 0.01)], "mean"),
    # lgbm clearly ahead
    ("accuracy", [("best", 0.80, 0.01), ("mean", 0.85, 0.01), ("lgbm", 0.90, 0.01)], "lgbm"),
    # the SE is the best method's, not the simpler one's
    ("accuracy", [("hill", 0.88, 0.05), ("logreg", 0.90, 0.005)], "logreg"),
    # lower is better for log loss
    ("log_loss", [("best", 0.50, 0.01), ("hill", 0.41, 0.02), ("lgbm", 0.40, 0.02)], "hill"),
    ("log_loss", [("best", 0.30, 0.01), ("lgbm", 0.40, 0.02)], "best"),
])
def test_auto_prefers_the_simpler_within_one_standard_error(metric, rows, expected):
    assert choose_method(_table(rows), get_metric(metric)) == expected


def test_simplicity_order():
    assert SIMPLICITY == ("best", "mean", "hill", "logreg", "lgbm")


def test_comparison_table_has_per_fold_scores():
    meta = _meta([1.0, 0.8], seed=9)
    results = {m: cross_validate(_make(m), meta, ACC, progress=False) for m in ("best", "mean")}
    table = comparison_table(results)
    assert list(table["method"]) == ["best", "mean"]
    assert {"score_mean", "score_std", "score_se", "fold_0", "fold_1", "fold_2"} <= set(table.columns)
    assert table.loc[0, "score_mean"] == pytest.approx(table[["fold_0", "fold_1", "fold_2"]].iloc[0].mean())
