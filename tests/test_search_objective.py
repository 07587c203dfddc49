"""search/: the objective's artefact contract, failures, pruning and deadlines, with a fake fit."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import optuna
import pytest

from competition.io import read_probabilities
from folds.make import prepare_study
from search.objective import BudgetExhausted, Objective
from search.study import open_study
from tests.conftest import write_competition, write_tiny_spec


@dataclass
class FakeResult:
    val_proba: np.ndarray
    test_proba: np.ndarray
    timings: dict


def fake_fit(config, manifest, train_idx, val_idx, test_idx, *, classes, cache_root, device, progress, extra_train_idx,
             deadline=None):
    """Probabilities that favour the true class by ``config['skill']``; raises when asked to."""
    if config.get("explode"):
        raise RuntimeError("boom: this config cannot be fitted")
    assert not set(train_idx) & set(val_idx), "a validation row leaked into training"
    assert (manifest.split.to_numpy()[train_idx] == "train").all()
    rng = np.random.default_rng(len(train_idx))
    labels = manifest.label.to_numpy()[val_idx]
    onehot = np.array([[c == lab for c in classes] for lab in labels], dtype=float)
    val = rng.random((len(val_idx), len(classes))) + config["skill"] * onehot
    test = rng.random((len(test_idx), len(classes)))
    time.sleep(config.get("sleep", 0))
    return FakeResult(val / val.sum(1, keepdims=True), test / test.sum(1, keepdims=True), {"fit_s": 0.01})


@pytest.fixture
def study(tmp_path):
    data = write_competition(tmp_path / "data", per_class=(9, 8, 7), n_test=5)
    spec = tmp_path / "tiny.json"
    write_tiny_spec(spec)
    return prepare_study(data, spec, tmp_path / "runs", "s", k=3, log=lambda *a: None, progress=False)


def _objective(study, tmp_path, **kw):
    return Objective(study=study, suggest=lambda t: {"skill": t.suggest_float("skill", 0.0, 2.0),
                                                      **({"explode": True} if t.number == 1 else {})},
                     cache_root=tmp_path / "cache", fit_fn=fake_fit, **kw)


def test_trial_artefact_contract(study, tmp_path):
    ostudy = open_study(study, None, heartbeat=1)
    ostudy.optimize(_objective(study, tmp_path), n_trials=3, catch=(Exception,))
    states = [t.state for t in ostudy.trials]
    assert states[1] == optuna.trial.TrialState.FAIL  # a raising trial is recorded as failed...
    assert states[0] == states[2] == optuna.trial.TrialState.COMPLETE  # ...and the study goes on
    assert "boom" in ostudy.trials[1].user_attrs["error"]
    classes = list(study.spec.classes)
    folder = study.dir / "trials" / "0"
    oof = read_probabilities(folder / "oof.csv", classes)
    test = read_probabilities(folder / "test.csv", classes)
    meta = json.loads((folder / "meta.json").read_text())
    assert list(oof.columns) == ["image_id", "fold", "label", *classes]
    assert sorted(oof.image_id) == sorted(study.folds.image_id)
    merged = oof.merge(study.folds, on="image_id", suffixes=("", "_f"))
    assert (merged.fold == merged.fold_f).all() and (merged.label == merged.label_f).all()
    assert list(test.image_id) == list(study.manifest[study.manifest.split == "test"].image_id)
    assert meta["folds_hash"] == study.folds_hash and meta["classes"] == classes
    assert len(meta["fold_scores"]) == 3 and meta["score_mean"] == pytest.approx(np.mean(meta["fold_scores"]))
    assert {"config", "timings", "versions", "git_commit", "metric"} <= set(meta)
    assert not (study.dir / "trials" / "1").exists()  # the failed trial leaves no folder
    assert not list((study.dir / "trials").glob(".*tmp*"))


def test_deadline_stops_between_folds(study, tmp_path):
    obj = Objective(study=study, suggest=lambda t: {"skill": 1.0, "sleep": 0.3}, cache_root=tmp_path / "c",
                    fit_fn=fake_fit, deadline=time.time() + 0.4)
    trial = optuna.create_study().ask()
    with pytest.raises(BudgetExhausted, match="--timeout reached before fold 2"):
        obj(trial)


def test_excluded_images_stay_out_of_training(study, tmp_path):
    excluded = frozenset(study.folds.image_id[:4])
    seen = []

    def spy(config, manifest, train_idx, val_idx, test_idx, **kw):
        seen.append(set(manifest.image_id.to_numpy()[train_idx]))
        return fake_fit(config, manifest, train_idx, val_idx, test_idx, **kw)

    obj = Objective(study=study, suggest=lambda t: {"skill": 1.0}, cache_root=tmp_path / "c", fit_fn=spy,
                    exclude_ids=excluded)
    obj(optuna.create_study().ask())
    assert all(not (s & excluded) for s in seen)
    meta = json.loads((study.dir / "trials" / "0" / "meta.json").read_text())
    assert meta["excluded"] == {"n": 4, "from_validation": False}
    oof = read_probabilities(study.dir / "trials" / "0" / "oof.csv", list(study.spec.classes))
    assert excluded <= set(oof.image_id)  # still scored in validation: CV stays comparable


def test_study_refuses_other_data(study, tmp_path):
    ostudy = open_study(study, None)
    ostudy.set_user_attr("folds_hash", "somethingelse")
    with pytest.raises(ValueError, match="belongs to other data: folds_hash"):
        open_study(study, None)


def test_pseudo_labels_come_from_the_same_folds_teacher(study, tmp_path):
    from search.objective import TEST_FOLDS, load_pseudo_labels

    ostudy = open_study(study, None, heartbeat=1)
    ostudy.enqueue_trial({"skill": 1.0})
    ostudy.optimize(_objective(study, tmp_path), n_trials=1)
    folder = study.dir / "trials" / "0"
    per_fold = np.load(folder / TEST_FOLDS)
    classes = list(study.spec.classes)
    test = read_probabilities(folder / "test.csv", classes)
    assert per_fold.shape == (3, 5, len(classes))
    np.testing.assert_allclose(per_fold.mean(0), test[classes].to_numpy(), atol=1e-6)

    threshold = float(np.median(per_fold.max(axis=2)))
    pseudo = load_pseudo_labels(study, 0, threshold)
    seen = []

    def spy_fit(config, manifest, train_idx, val_idx, test_idx, **kw):
        split = manifest.split.to_numpy()
        rows = manifest.iloc[[i for i in train_idx if split[i] == "pseudo"]]
        seen.append((rows.image_id.str.removeprefix("pseudo:").tolist(), rows.label.tolist()))
        assert not set(manifest.image_id.to_numpy()[train_idx]) & set(manifest.image_id.to_numpy()[val_idx])
        return fake_fit({"skill": 1.0}, manifest.assign(split=np.where(split == "pseudo", "train", split)),
                        train_idx, val_idx, test_idx, **kw)

    objective = Objective(study=study, suggest=lambda t: {"skill": t.suggest_float("skill", 0.0, 2.0)},
                          cache_root=tmp_path / "cache", fit_fn=spy_fit, pseudo=pseudo)
    ostudy.optimize(objective, n_trials=1)
    test_ids = test.image_id.tolist()
    for fold, (ids, labels) in enumerate(seen):
        p = per_fold[fold]
        want = [i for i, row in zip(test_ids, p) if row.max() >= threshold]
        assert ids == want and labels == [classes[p[test_ids.index(i)].argmax()] for i in ids]
    assert 0 < sum(len(ids) for ids, _ in seen) < 3 * 5  # the threshold left some out
    meta = json.loads((study.dir / "trials" / "1" / "meta.json").read_text())
    assert meta["pseudo"] == {"teacher": 0, "threshold": threshold, "rows_per_fold": [len(i) for i, _ in seen]}


def test_pseudo_teacher_mismatches_are_refused(study, tmp_path):
    from search.objective import TEST_FOLDS, load_pseudo_labels

    with pytest.raises(FileNotFoundError, match="teacher trial 7 has no artefacts"):
        load_pseudo_labels(study, 7, 0.9)
    ostudy = open_study(study, None, heartbeat=1)
    ostudy.enqueue_trial({"skill": 1.0})
    ostudy.optimize(_objective(study, tmp_path), n_trials=1)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\], got 0.0"):
        load_pseudo_labels(study, 0, 0.0)
    (study.dir / "trials" / "0" / TEST_FOLDS).unlink()
    with pytest.raises(FileNotFoundError, match="has no test_folds.npy"):
        load_pseudo_labels(study, 0, 0.9)
