"""score: public, private and all-rows scores against hand-computed values, beside the CV."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from submissions.ledger import ledger_path, read_ledger
from submissions.make import make_submission
from submissions.score import main, read_labels, score_submission
from submissions.study import load_study
from submissions.testing import CAX_LABELS, add_source, make_study
from submissions.validate import SubmissionError

PRED = np.array([0, 1, 2, 3, 0, 1, 2, 3])  # predicted class per sample row
TRUTH = np.array([0, 1, 2, 0, 0, 1, 0, 0])  # public rows 0-3: 3/4 right; private rows 4-7: 2/4 right
SPLIT = ["public"] * 4 + ["private"] * 4


@pytest.fixture
def made(tmp_path):
    synth = make_study(tmp_path / "runs", n_test=8)
    proba = np.full((8, 4), 0.1)
    proba[np.arange(8), PRED] = 0.7
    add_source(synth, "trial", "0", accuracy=0.7, seed=1, test_proba=proba)
    study = load_study(synth.workdir, synth.name)
    return synth, study, make_submission(study, "trial:0")


def write_labels(path, synth, labels, split=SPLIT, columns=("filename", "label", "split")):
    data = {columns[0]: synth.test_ids, columns[1]: labels}
    if split is not None:
        data[columns[2]] = split
    pd.DataFrame(data).to_csv(path, index=False)
    return path


def test_scores_match_hand_computed_values(made, tmp_path):
    synth, study, sub = made
    labels = write_labels(tmp_path / "test_labels.csv", synth, [synth.classes[y] for y in TRUTH])
    result = score_submission(study, sub.path, labels)
    assert result.splits["public"].score == 0.75 and result.splits["public"].n == 4
    assert result.splits["private"].score == 0.5 and result.splits["private"].n == 4
    assert result.splits["all"].score == 0.625 and result.splits["all"].n == 8
    assert result.cv["source"] == "trial:0"
    assert result.ledger_rows_updated == 1
    row = read_ledger(ledger_path(study.submissions_dir)).iloc[0]
    assert (row["public_score"], row["private_score"], row["all_score"]) == (0.75, 0.5, 0.625)


def test_user_labels_in_contest_spelling_without_split(made, tmp_path):
    synth, study, sub = made
    labels = write_labels(tmp_path / "mine.csv", synth, [CAX_LABELS[y] for y in TRUTH], split=None,
                          columns=("id", "Superhero"))
    result = score_submission(study, sub.path, labels)
    assert set(result.splits) == {"all"} and result.splits["all"].score == 0.625


def test_kaggle_style_usage_column(made, tmp_path):
    synth, study, sub = made
    labels = write_labels(tmp_path / "solution.csv", synth, [CAX_LABELS[y] for y in TRUTH],
                          split=[s.title() for s in SPLIT], columns=("image_id", "class", "Usage"))
    result = score_submission(study, sub.path, labels)
    assert result.splits["public"].score == 0.75 and result.splits["private"].score == 0.5


def test_labels_file_is_checked(made, tmp_path):
    synth, study, sub = made
    bad = write_labels(tmp_path / "bad.csv", synth, ["Spooderman"] + [CAX_LABELS[y] for y in TRUTH[1:]])
    with pytest.raises(ValueError, match=r"1 labels are neither submission labels nor class names, e\.g\. \['Spooderman'\]"):
        score_submission(study, sub.path, bad)
    other = pd.read_csv(write_labels(tmp_path / "other.csv", synth, [CAX_LABELS[y] for y in TRUTH]))
    other.loc[0, "filename"] = "elsewhere_1"
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match=r"1 of 8 labelled ids are not in the sample submission"):
        score_submission(study, sub.path, tmp_path / "other.csv")


def test_partial_labels_score_what_is_known(made, tmp_path):
    synth, study, sub = made
    labels = write_labels(tmp_path / "l.csv", synth, [CAX_LABELS[y] for y in TRUTH])
    pd.read_csv(labels).iloc[:6].to_csv(labels, index=False)
    result = score_submission(study, sub.path, labels)
    assert result.splits["private"].score == 1.0 and result.splits["private"].n == 2  # rows 4, 5: both right
    assert any("2 sample ids have no label" in w for w in result.warnings)


def test_invalid_submission_is_not_scored(made, tmp_path):
    synth, study, sub = made
    labels = write_labels(tmp_path / "l.csv", synth, [CAX_LABELS[y] for y in TRUTH])
    df = pd.read_csv(sub.path, dtype=str)
    df.iloc[::-1].to_csv(tmp_path / "reversed.csv", index=False)
    with pytest.raises(SubmissionError, match="not in the sample's order"):
        score_submission(study, tmp_path / "reversed.csv", labels)
    assert main([str(tmp_path / "reversed.csv"), "--labels", str(labels), "--workdir", str(synth.workdir)]) == 2


def test_shake_up_warning_and_side_by_side_output(tmp_path, capsys):
    synth = make_study(tmp_path / "runs", n_test=400, n_train=200, seed=3)
    truth = synth.test_y
    pred = truth.copy()
    pred[200:][::2] = (truth[200:][::2] + 1) % 4  # public rows all right, private half wrong
    add_source(synth, "trial", "0", accuracy=0.75, seed=1, test_proba=np.eye(4)[pred] * 0.6 + 0.1)
    study = load_study(synth.workdir, synth.name)
    sub = make_submission(study, "auto")
    labels = write_labels(tmp_path / "l.csv", synth, [synth.classes[y] for y in truth],
                          split=["public"] * 200 + ["private"] * 200)
    assert main([str(sub.path), "--labels", str(labels), "--workdir", str(synth.workdir)]) == 0
    out = capsys.readouterr().out
    assert "public − private +0.5000" in out
    assert "WARNING: public and private differ by +0.5000, more than the bootstrap 95% interval" in out
    cv = read_ledger(ledger_path(study.submissions_dir))["cv_mean"].iloc[0]
    public_line = next(line for line in out.splitlines() if line.startswith("public"))
    assert public_line.split()[1:3] == ["200", "1.0000"]
    assert public_line.split()[-1] == f"{1.0 - cv:+.4f}"  # the gap to CV
    assert out.splitlines()[4].split()[0] == "CV"


def test_no_warning_when_public_and_private_agree(made, tmp_path):
    synth, study, sub = made
    truth = TRUTH.copy()
    truth[4:] = [0, 1, 2, 0]  # private now 3/4 as well
    labels = write_labels(tmp_path / "l.csv", synth, [CAX_LABELS[y] for y in truth])
    result = score_submission(study, sub.path, labels)
    assert not any("public and private differ" in w for w in result.warnings)


def test_log_loss_uses_the_saved_probabilities(tmp_path):
    synth = make_study(tmp_path / "runs", n_test=8, metric="log_loss")
    proba = np.full((8, 4), 0.1)
    proba[np.arange(8), PRED] = 0.7
    add_source(synth, "trial", "0", accuracy=0.7, seed=1, test_proba=proba)
    study = load_study(synth.workdir, synth.name)
    sub = make_submission(study, "auto")
    labels = write_labels(tmp_path / "l.csv", synth, [CAX_LABELS[y] for y in TRUTH])
    result = score_submission(study, sub.path, labels)
    assert result.splits["all"].score == pytest.approx(log_loss(TRUTH, proba, labels=range(4)), abs=1e-6)
    sub.proba_path.unlink()
    with pytest.raises(SubmissionError, match="needs probabilities"):
        score_submission(study, sub.path, labels)


def test_read_labels_maps_both_spellings(made, tmp_path):
    synth, study, _ = made
    path = write_labels(tmp_path / "l.csv", synth, ["Ant-Man", "ant_man", "AQUAMAN", "bat-man"] * 2,
                        split=["Public", "private", "", "ignored"] * 2)
    labels = read_labels(path, study)
    assert list(labels.columns) == ["id", "y", "split"]
    assert labels["y"].tolist() == [0, 0, 1, 3] * 2
    assert labels["split"].tolist() == ["public", "private", "", ""] * 2
