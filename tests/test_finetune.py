"""models.finetune: partial and full fine-tuning on tiny models and images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from models.backbones import create_backbone, num_stages, split_at_stage
from models.finetune import (FineTuner, PartialFineTuner, align_proba, discriminative_param_groups,
                             layer_groups, tta_mean)

SIZE = 32


def tiny_images(n=16, c=3, seed=0):
    """uint8 [n, 36, 36, 3]: class k has a bright vertical band at a class-specific place."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.integers(0, 80, size=(n, 36, 36, 3), dtype=np.uint8)
    for i, k in enumerate(y):
        X[i, :, 4 + 10 * k: 12 + 10 * k] = 230
    return X, y


def tuner(**params) -> FineTuner:
    base = dict(weights="random", image_size=SIZE, epochs=1, frozen_epochs=0, batch_size=8,
                aug="light", seed=0, device="cpu")
    return FineTuner("test_efficientnet", **{**base, **params})


# ---------------------------------------------------------------------------------- partial


@pytest.fixture(scope="module")
def activations():
    """Stage activations of tiny images through test_efficientnet's trunk, plain and flipped."""
    model = create_backbone("test_efficientnet", weights="random")
    stage = num_stages(model) - 2
    trunk, tail = split_at_stage(model, stage)
    X, y = tiny_images(n=48)
    x = torch.from_numpy(X[:, 2:34, 2:34]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        plain, flip = trunk(x), trunk(x.flip(-1))
    return np.stack([plain.numpy(), flip.numpy()]).astype(np.float16), y, tail


def test_partial_fine_tuning_lowers_the_training_loss(activations):
    views, y, tail = activations
    before = {k: v.clone() for k, v in tail.state_dict().items()}
    model = PartialFineTuner(tail, lr=5e-3, epochs=5, batch_size=16, device="cpu").fit(views, y)
    assert model.loss_curve_[-1] < 0.8 * model.loss_curve_[0]
    assert len(model.epoch_seconds_) == 5
    proba = model.predict_proba(views)
    assert proba.shape == (48, 3)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    for k, v in tail.state_dict().items():  # the caller's tail is copied, never trained
        torch.testing.assert_close(v, before[k])


def test_partial_tta_is_the_mean_over_views_and_ema_runs(activations):
    views, y, tail = activations
    model = PartialFineTuner(tail, epochs=1, batch_size=16, ema=True, ema_decay=0.9,
                             classes=[0, 1, 2, 3], device="cpu").fit(views[0], y)
    per_view = [model.predict_proba(v) for v in views]
    np.testing.assert_allclose(model.predict_proba(views), np.mean(per_view, axis=0), atol=1e-12)
    assert model.predict_proba(views).shape == (48, 4)


def test_partial_refuses_a_missing_tail(activations):
    views, y, _ = activations
    with pytest.raises(ValueError, match="tail must be an nn.Module"):
        PartialFineTuner(None).fit(views, y)
    with pytest.raises(NotFittedError):
        PartialFineTuner(None).predict_proba(views)


# ---------------------------------------------------------------------------------- full


def test_one_cpu_epoch_runs_and_the_seed_repeats():
    X, y = tiny_images()
    a = tuner().fit(X, y)
    b = tuner().fit(X, y)
    assert len(a.history_) == 1 and np.isfinite(a.history_[0]["loss"])
    assert a.history_[0]["images_per_s"] > 0
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert pa.shape == (16, 3)
    np.testing.assert_allclose(pa.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(pa, pb)


def test_staged_recipe_with_restarts_mixup_and_ema():
    X, y = tiny_images()
    model = tuner(frozen_epochs=1, epochs=2, cycles=2, cycle_mult=2.0, aug="rand", mixup=0.4,
                  cutmix=1.0, ema=True, ema_decay=0.9).fit(X, y)
    assert [r["phase"] for r in model.history_] == ["frozen", "unfrozen", "unfrozen"]
    assert all(np.isfinite(r["loss"]) for r in model.history_)
    assert model.history_[0]["lr"] != model.history_[-1]["lr"]


def test_tta_is_the_mean_of_the_views_and_paths_work(tmp_path):
    from PIL import Image

    X, y = tiny_images(n=6)
    model = tuner().fit(X, y)
    views = model.predict_views(X, ("plain", "flip"))
    np.testing.assert_allclose(model.predict_proba(X, tta=("plain", "flip")),
                               tta_mean([views["plain"], views["flip"]]), atol=1e-12)
    paths = []
    for i, im in enumerate(X):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    np.testing.assert_allclose(model.predict_proba(paths, tta=("plain",)), views["plain"],
                               atol=1e-5)


def test_lr_find_gives_a_finite_suggestion_that_feeds_the_run():
    X, y = tiny_images()
    result = tuner().lr_find(X, y, num_steps=12, start_lr=1e-5, end_lr=1.0)
    assert 5 <= len(result.lrs) == len(result.losses) == len(result.raw_losses) <= 12
    assert np.all(np.diff(result.lrs) > 0)
    assert np.isfinite(result.suggestion) and 1e-5 <= result.suggestion <= 1.0
    assert np.isfinite(result.steepest)
    model = tuner(lr=None, lr_find_steps=10).fit(X, y)
    assert model.lr_ == model.lr_find_["suggestion"] > 0


def test_out_of_memory_halves_the_micro_batch_and_training_completes():
    class OomOnce(FineTuner):
        def _build_model(self, n_classes):
            model = super()._build_model(n_classes)
            forward, raised = model.forward, set()

            def wrapped(x):  # once while training, once while predicting
                mode = torch.is_grad_enabled()
                if mode not in raised:
                    raised.add(mode)
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                return forward(x)

            model.forward = wrapped
            return model

    X, y = tiny_images()
    base = dict(weights="random", image_size=SIZE, epochs=1, frozen_epochs=0, batch_size=8,
                aug="light", device="cpu")
    model = OomOnce("test_efficientnet", **base).fit(X, y)
    assert model.oom_events_ == 1
    assert model.micro_batch_size_ == 4
    assert model.oom_log_ == [{"epoch": 0, "step": 0, "micro_batch_size": 4}]
    assert len(model.history_) == 1 and np.isfinite(model.history_[0]["loss"])
    proba = model.predict_proba(X, tta=("plain",))
    assert model.oom_events_ == 2 and proba.shape == (16, 3)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)


def test_resume_from_the_epoch_checkpoint_matches_an_unbroken_run(tmp_path):
    X, y = tiny_images()
    params = dict(frozen_epochs=1, epochs=2, ema=True, ema_decay=0.9)
    unbroken = tuner(**params).fit(X, y).predict_proba(X)

    class Killed(Exception):
        pass

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        tuner(**params, checkpoint_dir=tmp_path, on_epoch_end=kill_after_two).fit(X, y)
    assert (tmp_path / "last.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"]  # no temporary leftovers
    ran = []
    resumed = tuner(**params, checkpoint_dir=tmp_path, on_epoch_end=ran.append).fit(X, y)
    assert [r["epoch"] for r in ran] == [3]
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3]
    np.testing.assert_allclose(resumed.predict_proba(X), unbroken, atol=1e-6)
    with pytest.raises(ValueError, match="other parameters or data"):
        tuner(**{**params, "epochs": 3}, checkpoint_dir=tmp_path).fit(X, y)


@pytest.mark.parametrize("params, match", [
    ({"aug": "heavy"}, "aug must be one of"),
    ({"epochs": 0, "frozen_epochs": 0}, "must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr_ratio": 2.0}, "lr_ratio"),
    ({"cycle_mult": 0.5}, "cycle_mult"),
    ({"micro_batch_size": 99}, "micro_batch_size"),
])
def test_bad_parameters_are_refused(params, match):
    X, y = tiny_images(n=4)
    with pytest.raises(ValueError, match=match):
        tuner(**params).fit(X, y)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        tuner().fit(np.zeros((4, 8, 8, 3), np.float32), [0, 1, 0, 1])


# ---------------------------------------------------------------------------------- helpers


def test_layer_groups_get_discriminative_learning_rates():
    model = create_backbone("test_efficientnet", weights="random", num_classes=3)
    groups = layer_groups(model, 3)
    assert len(groups) == 3
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for p in groups[0]} >= {id(p) for p in model.conv_stem.parameters()}
    param_groups = discriminative_param_groups(groups, 9e-3, 1 / 3, 0.01)
    assert sorted({round(g["lr"], 9) for g in param_groups}) == [1e-3, 3e-3, 9e-3]
    assert all(g["weight_decay"] == 0 for g in param_groups if g["params"][0].ndim == 1)


def test_cosine_restarts_grow_by_cycle_mult():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = tuner(cycles=2, cycle_mult=2.0, warmup_frac=0.0)._phase_scheduler(opt, "unfrozen", 30)
    lrs = []
    for step in range(30):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)  # restart after 10
    assert lrs[9] < 0.1 and lrs[29] < 0.1


def test_align_proba_puts_columns_in_class_order():
    proba = np.array([[0.2, 0.8], [0.6, 0.4]])
    out = align_proba(proba, ["Hulk", "Batman"], ["Batman", "Hulk", "Ant-Man"])
    np.testing.assert_allclose(out, [[0.8, 0.2, 0.0], [0.4, 0.6, 0.0]])
    with pytest.raises(ValueError, match="not in classes"):
        align_proba(proba, ["Hulk", "Thor"], ["Hulk"])
