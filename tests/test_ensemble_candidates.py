"""Joining trials on image_id and refusing trials that do not match the study."""
import json

import numpy as np
import pandas as pd
import pytest

from competition.io import ArtefactError
from ensemble.candidates import (
    CandidateError,
    join_trials,
    load_candidates,
    load_study,
    load_trial,
    select_candidates,
)
from ensemble.synthetic import make_study


@pytest.fixture
def study_dir(tmp_path):
    return make_study(tmp_path, n=120, n_test=20, signals=(2.0, 1.5, 1.0), seed=1)


def _edit_meta(study_dir, trial, **changes):
    path = study_dir / "trials" / trial / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _edit_csv(study_dir, trial, file, edit):
    path = study_dir / "trials" / trial / file
    df = pd.read_csv(path, dtype={"image_id": str, "label": str})
    edit(df).to_csv(path, index=False)


# (how to break trial 1, message the refusal must carry)
BREAKAGES = [
    (lambda d: _edit_meta(d, "1", folds_hash="0" * 64), r"trial 1: folds hash"),
    (lambda d: _edit_meta(d, "1", classes=["c", "b", "a"]), r"trial 1: class order"),
    (lambda d: _edit_csv(d, "1", "oof.csv", lambda df: df[["image_id", "fold", "label", "b", "a", "c"]]),
     r"trial 1: .*class columns"),
    (lambda d: _edit_csv(d, "1", "oof.csv", lambda df: df.iloc[7:]), r"trial 1: 7 of 120 train ids missing"),
    (lambda d: _edit_csv(d, "1", "oof.csv", lambda df: df.assign(fold=(df["fold"] + 1) % 3)), r"trial 1: \d+ ids carry another fold"),
    (lambda d: _edit_csv(d, "1", "oof.csv", lambda df: df.assign(label="a")), r"trial 1: \d+ ids carry another label"),
]


@pytest.mark.parametrize("breakage,message", BREAKAGES)
def test_explicit_trials_refuse_a_mismatch_naming_the_trial(study_dir, breakage, message):
    breakage(study_dir)
    study = load_study(study_dir.parent, study_dir.name)
    with pytest.raises(CandidateError, match=message):
        load_candidates(study, ["0", "1"])


@pytest.mark.parametrize("breakage,message", BREAKAGES[:2])
def test_automatic_selection_skips_a_mismatch_and_warns(study_dir, breakage, message, caplog):
    breakage(study_dir)
    study = load_study(study_dir.parent, study_dir.name)
    trials, skipped = load_candidates(study)
    assert [t.name for t in trials] == ["0", "2"]
    assert list(skipped) == ["1"]
    assert "trial 1" in caplog.text


def test_test_ids_that_differ_are_refused(study_dir):
    _edit_csv(study_dir, "2", "test.csv", lambda df: df.iloc[:-2])
    study = load_study(study_dir.parent, study_dir.name)
    trials, _ = load_candidates(study)
    with pytest.raises(CandidateError, match=r"trial 2: test ids differ .*\(2 missing"):
        join_trials(study, trials)


def test_rows_are_joined_by_image_id_not_position(study_dir):
    study = load_study(study_dir.parent, study_dir.name)
    before = join_trials(study, load_candidates(study)[0])
    shuffle = lambda df: df.sample(frac=1.0, random_state=0)  # noqa: E731
    _edit_csv(study_dir, "1", "oof.csv", shuffle)
    _edit_csv(study_dir, "1", "test.csv", shuffle)
    after = join_trials(study, load_candidates(study)[0])
    np.testing.assert_allclose(after.oof, before.oof, atol=1e-7)
    np.testing.assert_allclose(after.test, before.test, atol=1e-7)


def test_meta_feature_names_are_trial_class(study_dir):
    study = load_study(study_dir.parent, study_dir.name)
    meta = join_trials(study, load_candidates(study, ["2", "0"])[0])
    frame = meta.frame("oof")
    assert list(frame.columns) == ["2_a", "2_b", "2_c", "0_a", "0_b", "0_c"]
    assert frame.index.name == "image_id" and list(frame.index) == list(study.ids)
    trial0 = pd.read_csv(study_dir / "trials/0/oof.csv", dtype={"image_id": str}).set_index("image_id")
    np.testing.assert_allclose(frame["0_b"], trial0.loc[frame.index, "b"], atol=1e-7)
    assert np.isfinite(meta.frame("test", log_odds=True).to_numpy()).all()


def test_folds_csv_edited_after_hashing_is_refused(study_dir):
    with open(study_dir / "folds.csv", "a") as fh:
        fh.write("extra,a,0,extra\n")
    with pytest.raises(ArtefactError, match="differs from folds.json"):
        load_study(study_dir.parent, study_dir.name)


def test_incomplete_trial_is_ignored_and_refused_when_named(study_dir):
    (study_dir / "trials" / "2" / "meta.json").unlink()
    study = load_study(study_dir.parent, study_dir.name)
    assert [t.name for t in load_candidates(study)[0]] == ["0", "1"]
    with pytest.raises(CandidateError, match="trial 2: .*meta.json is missing"):
        load_trial(study, "2")


def test_selection_takes_the_best_then_the_least_correlated(tmp_path):
    # trials 0 and 1 share most of their logits; 2 is independent and slightly weaker
    study_dir = make_study(tmp_path, n=300, signals=(3.0, 2.9, 2.5), seed=2)
    study = load_study(study_dir.parent, study_dir.name)
    trials, _ = load_candidates(study)
    trials[1].oof = 0.9 * trials[0].oof + 0.1 * trials[1].oof  # near-duplicate of trial 0
    trials[1].fold_scores = [s + 1.0 for s in trials[0].fold_scores]  # ...and ranked best
    chosen = select_candidates(trials, 2, study.metric)
    assert [t.name for t in chosen] == ["1", "2"]
    with pytest.raises(ValueError, match="at least 1"):
        select_candidates(trials, 0, study.metric)
