"""models.fit: FitConfig and the one-fold entry point, in each mode, on a tiny competition."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.fit import MODE_DEFAULTS, FitConfig, FoldResult, fit_predict_fold
from tests.conftest import spec_for, write_competition

CLASSES = ("Ant-Man", "Batman", "Hulk")
TINY = dict(backbone="test_efficientnet", weights="random", image_size=32)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(manifest, train positions, val positions, test positions, cache root)."""
    from competition.scan import scan

    root = tmp_path_factory.mktemp("fit")
    data = write_competition(root / "data", classes=CLASSES, per_class=(8, 8, 8), n_test=5)
    manifest = scan(data, spec_for(CLASSES), progress=False, num_workers=1).manifest
    train = np.flatnonzero(manifest.split.to_numpy() == "train")
    test = np.flatnonzero(manifest.split.to_numpy() == "test")
    rng = np.random.default_rng(0)
    val = np.sort(rng.choice(train, 6, replace=False))
    return manifest, np.setdiff1d(train, val), val, test, root / "cache"


def run(study, config, **kwargs) -> FoldResult:
    manifest, train, val, test, cache = study
    return fit_predict_fold(config, manifest, train, val, test, classes=CLASSES,
                            cache_root=cache, device="cpu", **kwargs)


def check(result: FoldResult, study) -> None:
    _, _, val, test, _ = study
    assert result.val_proba.shape == (len(val), len(CLASSES))
    assert result.test_proba.shape == (len(test), len(CLASSES))
    for p in (result.val_proba, result.test_proba):
        assert np.all(np.isfinite(p)) and np.all(p >= 0)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-9)
    assert set(result.timings) >= {"features_s", "fit_s", "predict_s"}


@pytest.mark.parametrize("config", [
    FitConfig(**TINY, mode="head", epochs=20, train_views=1, tta_views=1),
    FitConfig(**TINY, mode="head", head="mlp", hidden=32, epochs=5, flip=False,
              class_weight="balanced"),
    FitConfig(**TINY, mode="partial", epochs=2, batch_size=8),
    FitConfig(**TINY, mode="partial", stage=4, epochs=1, batch_size=8, ema=True),
    FitConfig(**TINY, mode="full", epochs=1, frozen_epochs=0, batch_size=8,
              randaug_magnitude=0),
], ids=["head-linear", "head-mlp", "partial", "partial-stage4-ema", "full"])
def test_each_mode_returns_probabilities_in_class_order(study, config):
    result = run(study, config)
    check(result, study)
    assert result.info["n_train_rows"] == len(study[1])


def test_head_mode_beats_chance_on_the_tiny_competition(study):
    # Even random-init features separate the drawn class shapes better than chance (1/3).
    manifest, train, val, test, cache = study
    result = run(study, FitConfig(**TINY, mode="head", epochs=40))
    truth = np.array([CLASSES.index(v) for v in manifest.label.to_numpy()[val]])
    assert (result.val_proba.argmax(1) == truth).mean() >= 0.5


def test_same_config_same_outputs(study):
    config = FitConfig(**TINY, mode="partial", epochs=1, batch_size=8, seed=3)
    a, b = run(study, config), run(study, config)
    np.testing.assert_array_equal(a.val_proba, b.val_proba)


def test_extra_rows_and_empty_test(study):
    manifest, train, val, test, cache = study
    config = FitConfig(**TINY, mode="head", epochs=3)
    result = fit_predict_fold(config, manifest, train[4:], val, [], classes=CLASSES,
                              cache_root=cache, device="cpu", extra_train_idx=train[:4])
    assert result.info["n_train_rows"] == len(train)
    assert result.test_proba.shape == (0, 3)
    ignored = fit_predict_fold(dataclasses.replace(config, use_extra=False), manifest, train[4:],
                               val, test, classes=CLASSES, cache_root=cache, device="cpu",
                               extra_train_idx=train[:4])
    assert ignored.info["n_train_rows"] == len(train) - 4


def test_full_mode_checkpoints_into_work_dir(study, tmp_path):
    config = FitConfig(**TINY, mode="full", epochs=1, frozen_epochs=0, batch_size=8,
                       randaug_magnitude=0, flip=False)
    first = run(study, config, work_dir=tmp_path)
    assert (tmp_path / "last.pt").is_file()
    again = run(study, config, work_dir=tmp_path)  # finished: loads the weights, trains nothing
    np.testing.assert_allclose(again.val_proba, first.val_proba, atol=1e-6)


@pytest.mark.parametrize("train_idx, val_idx, classes, match", [
    ([0, 1, 2], [2, 3], CLASSES, "both training and validation"),
    ([0, 999], [3], CLASSES, "row positions"),
    ([0, 1.5], [3], CLASSES, "row positions"),
    ([], [3], CLASSES, "train_idx is empty"),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], [20], ("Ant-Man", "Hulk"), "not in classes"),
])
def test_bad_folds_are_refused(study, train_idx, val_idx, classes, match):
    manifest, *_, cache = study
    with pytest.raises(ValueError, match=match):
        fit_predict_fold(FitConfig(**TINY), manifest, train_idx, val_idx, [], classes=classes,
                         cache_root=cache, device="cpu")


def test_config_round_trip_and_defaults():
    config = FitConfig(mode="partial", stage=5, lr=1e-3, class_weight="none")
    assert config.class_weight is None
    d = config.to_dict()
    assert FitConfig.from_dict(d) == config
    resolved = FitConfig(mode="full").resolved()
    assert (resolved.lr, resolved.epochs, resolved.batch_size) == tuple(
        MODE_DEFAULTS["full"][k] for k in ("lr", "epochs", "batch_size"))
    assert FitConfig(train_views=2, tta_views=1).fit_views == ("plain", "flip", "aug0", "aug1")
    assert FitConfig(flip=False, tta_views=1).predict_views == ("plain", "aug0")
    with pytest.raises(ValueError, match="unknown FitConfig fields.*colour"):
        FitConfig.from_dict({**d, "colour": "red"})


@pytest.mark.parametrize("params, match", [
    ({"mode": "knn"}, "mode must be one of"),
    ({"head": "tree"}, "head must be one of"),
    ({"class_weight": "heavy"}, "class_weight"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"lr_ratio": 0}, "lr_ratio"),
    ({"cycle_mult": 0.5}, "cycle_mult"),
    ({"mode": "full", "tta_views": 2}, "tta_views must be 0"),
])
def test_bad_configs_are_refused(params, match):
    with pytest.raises(ValueError, match=match):
        FitConfig(**params)
