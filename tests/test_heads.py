"""models.heads: the HeadClassifier estimator on cached features."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from models.heads import HeadClassifier, class_weights, make_schedule


def blobs(n=240, d=32, c=4, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 2
    y = np.arange(n) % c
    X = (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def split(X, y, k=180):
    return X[:k], y[:k], X[k:], y[k:]


@pytest.mark.parametrize("kind, params", [
    ("linear", {}),
    ("mlp", {"hidden": 64, "dropout": 0.2}),
    ("linear", {"class_weight": "balanced", "standardize": False, "num_threads": 2}),
])
def test_head_beats_chance_on_separable_data(kind, params):
    X, y = blobs()
    Xtr, ytr, Xva, yva = split(X, y)
    head = HeadClassifier(kind, epochs=15, device="cpu", **params).fit(Xtr, ytr)
    assert head.score(Xva, yva) > 0.9  # chance is 0.25
    proba = head.predict_proba(Xva)
    assert proba.shape == (len(yva), 4)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert head.loss_curve_[-1] < head.loss_curve_[0]


def test_string_labels_and_classes_order():
    X, y = blobs(c=3)
    names = np.array(["Hulk", "Batman", "Ant-Man"])[y]
    head = HeadClassifier(epochs=10, classes=["Hulk", "Batman", "Ant-Man", "Iron Man"],
                          device="cpu").fit(X, names)
    assert list(head.classes_) == ["Hulk", "Batman", "Ant-Man", "Iron Man"]
    assert head.predict_proba(X).shape == (len(X), 4)  # an absent class still has its column
    assert set(head.predict(X)) <= {"Hulk", "Batman", "Ant-Man"}


def test_views_train_on_all_and_predict_the_mean():
    X, y = blobs()
    rng = np.random.default_rng(1)
    views = np.stack([X, X + 0.1 * rng.normal(size=X.shape).astype(np.float32), X[:, ::-1]])
    head = HeadClassifier(epochs=5, device="cpu").fit(views, y)
    per_view = [head.predict_proba(v) for v in views]
    np.testing.assert_allclose(head.predict_proba(views), np.mean(per_view, axis=0), atol=1e-12)


def test_same_seed_same_outputs_and_other_seed_differs():
    X, y = blobs()
    a = HeadClassifier("mlp", hidden=32, epochs=3, seed=7, device="cpu").fit(X, y).predict_proba(X)
    b = HeadClassifier("mlp", hidden=32, epochs=3, seed=7, device="cpu").fit(X, y).predict_proba(X)
    c = HeadClassifier("mlp", hidden=32, epochs=3, seed=8, device="cpu").fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_estimator_manners():
    head = HeadClassifier("mlp", hidden=16, lr=0.01)
    assert not any(k.endswith("_") for k in vars(head))  # __init__ only stores parameters
    with pytest.raises(NotFittedError, match="not fitted"):
        head.predict_proba(np.zeros((2, 3)))
    twin = clone(head)
    assert twin.get_params() == head.get_params()
    X, y = blobs(n=40, d=3)
    assert head.set_params(epochs=2, device="cpu").fit(X, y) is head
    with pytest.raises(ValueError, match="fitted on 3"):
        head.predict_proba(np.zeros((2, 5)))


@pytest.mark.parametrize("params, X, y, match", [
    ({"kind": "tree"}, np.zeros((4, 2)), [0, 1, 0, 1], "kind must be one of"),
    ({"epochs": 0}, np.zeros((4, 2)), [0, 1, 0, 1], "epochs must be >= 1"),
    ({"dropout": 1.0}, np.zeros((4, 2)), [0, 1, 0, 1], "dropout"),
    ({}, np.zeros((4, 2)), [0, 1, 0], "X has 4 samples"),
    ({}, np.zeros(4), [0, 1, 0, 1], "shape"),
    ({}, np.full((4, 2), np.nan), [0, 1, 0, 1], "NaN"),
    ({}, np.zeros((4, 2)), [0, 0, 0, 0], "at least 2 classes"),
    ({"classes": [0, 1]}, np.zeros((4, 2)), [0, 1, 2, 1], "not in classes"),
    ({"class_weight": "heavy"}, np.zeros((4, 2)), [0, 1, 0, 1], "class_weight"),
    ({"class_weight": [1.0]}, np.zeros((4, 2)), [0, 1, 0, 1], "2 finite"),
])
def test_bad_input_is_refused(params, X, y, match):
    with pytest.raises(ValueError, match=match):
        HeadClassifier(device="cpu", **params).fit(X, y)


def test_balanced_weights_match_sklearn_rule():
    y = np.array([0, 0, 0, 1])
    w = class_weights("balanced", y, 3).numpy()
    np.testing.assert_allclose(w, [4 / (3 * 3), 4 / (3 * 1), 1.0], rtol=1e-6)
    assert class_weights(None, y, 3) is None


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "constant"])
def test_schedules_survive_tiny_runs(kind):
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = make_schedule(opt, 2, kind)
    lrs = []
    for _ in range(2):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(np.isfinite(lrs)) and all(0 <= v <= 1 for v in lrs)
