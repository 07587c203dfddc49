"""list --pick: finals by CV, the second one chosen for errors that differ from the first."""
import numpy as np
import pytest

from submissions.ledger import ledger_path, read_ledger, update_scores
from submissions.list import main, oof_error_correlation, pick_finals, label_disagreement
from submissions.make import make_submission
from submissions.study import load_study
from submissions.testing import add_source, make_study, noisy_proba


@pytest.fixture
def synth(tmp_path):
    return make_study(tmp_path / "runs", n_train=300, n_test=200)


def submit(synth, name, oof, test, score):
    add_source(synth, "trial", name, oof_proba=oof, test_proba=test, score_mean=score)
    return make_submission(load_study(synth.workdir, synth.name), f"trial:{name}")


def perturb(proba, share, seed):
    """The same predictions with a ``share`` of rows moved to another class."""
    rng = np.random.default_rng(seed)
    out = proba.copy()
    rows = rng.random(len(out)) < share
    out[rows] = np.roll(out[rows], 1, axis=1)
    return out


def independent(synth, seed, accuracy=0.8):
    rng = np.random.default_rng(seed)
    return noisy_proba(synth.train_y, 4, accuracy, rng), noisy_proba(synth.test_y, 4, accuracy, rng)


def picks_of(synth, k=2):
    study = load_study(synth.workdir, synth.name)
    return pick_finals(study, read_ledger(ledger_path(study.submissions_dir)), k)


def test_second_pick_prefers_different_errors_over_a_copy(synth):
    oof_a, test_a = independent(synth, 1)
    submit(synth, "0", oof_a, test_a, 0.800)  # best
    submit(synth, "1", oof_a, test_a, 0.799)  # the same labels again: the same file, counted once
    submit(synth, "2", *independent(synth, 2), 0.790)  # different errors, within one SE
    submit(synth, "3", *independent(synth, 3), 0.600)  # far below
    picks, notes = picks_of(synth)
    assert [p.row["source"] for p in picks] == ["trial:0", "trial:2"]
    assert picks[0].reason.startswith("best CV: trial:0 CV 0.8000")
    assert picks[1].reason.startswith("the only other submission within one SE")
    assert picks[1].disagreement > 0.2 and abs(picks[1].error_correlation) < 0.3


def test_among_diverse_candidates_the_best_cv_wins(synth):
    oof_a, test_a = independent(synth, 1)
    submit(synth, "0", oof_a, test_a, 0.800)
    submit(synth, "1", perturb(oof_a, 0.1, 5), perturb(test_a, 0.1, 6), 0.799)  # close copy, better CV
    submit(synth, "2", *independent(synth, 2), 0.780)  # diverse
    submit(synth, "3", *independent(synth, 3), 0.790)  # diverse, better CV than trial:2
    picks, _ = picks_of(synth)
    assert picks[1].row["source"] == "trial:3"
    assert "3 submissions within one SE" in picks[1].reason and "of the 2 whose" in picks[1].reason


def test_no_candidate_within_one_se_falls_back_to_next_cv(synth):
    oof_a, test_a = independent(synth, 1, accuracy=0.95)
    submit(synth, "0", oof_a, test_a, 0.95)
    submit(synth, "1", *independent(synth, 2, accuracy=0.6), 0.60)
    submit(synth, "2", *independent(synth, 3, accuracy=0.5), 0.50)
    picks, _ = picks_of(synth)
    assert [p.row["source"] for p in picks] == ["trial:0", "trial:1"]
    assert "no other submission is within one SE" in picks[1].reason


def test_public_score_does_not_drive_the_pick(synth):
    oof_a, test_a = independent(synth, 1)
    submit(synth, "0", oof_a, test_a, 0.80)
    submit(synth, "1", *independent(synth, 2), 0.79)
    lucky = submit(synth, "2", *independent(synth, 3, accuracy=0.6), 0.60)
    path = ledger_path(load_study(synth.workdir, synth.name).submissions_dir)
    update_scores(path, lucky.row["sha256"], {"public_score": 0.95})
    picks, notes = picks_of(synth)
    assert "trial:2" not in [p.row["source"] for p in picks]
    assert any("has the best public score 0.9500 but CV 0.6000" in n for n in notes)


def test_identical_files_count_once_and_missing_files_are_left_out(synth):
    oof_a, test_a = independent(synth, 1)
    first = submit(synth, "0", oof_a, test_a, 0.80)
    study = load_study(synth.workdir, synth.name)
    make_submission(study, "trial:0")  # same content again
    gone = submit(synth, "1", *independent(synth, 2), 0.79)
    gone.path.unlink()
    picks, notes = picks_of(synth, k=3)
    assert [p.row["file"] for p in picks] == [first.path.name]
    assert any("1 ledger files no longer exist" in n for n in notes)


def test_diversity_measures():
    import pandas as pd

    a = pd.Series(["x", "y", "z", "x"], index=list("abcd"))
    b = pd.Series(["z", "x", "x"], index=list("cba"))
    assert label_disagreement(a, b) == pytest.approx(1 / 3)  # joined on ids: only b differs; d is not shared
    e = pd.Series([1.0, 0, 1, 0], index=list("abcd"))
    assert oof_error_correlation(e, e) == pytest.approx(1.0)
    assert oof_error_correlation(e, 1 - e) == pytest.approx(-1.0)
    assert np.isnan(oof_error_correlation(e, e * 0))


def test_cli_prints_ledger_picks_and_publishes_plot(synth, capsys):
    oof_a, test_a = independent(synth, 1)
    made = submit(synth, "0", oof_a, test_a, 0.80)
    submit(synth, "1", *independent(synth, 2), 0.79)
    study = load_study(synth.workdir, synth.name)
    update_scores(ledger_path(study.submissions_dir), made.row["sha256"],
                  {"public_score": 0.81, "private_score": 0.76})
    capsys.readouterr()
    assert main(["--workdir", str(synth.workdir), "--study", synth.name, "--pick", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].split()[:3] == ["1", made.path.name, "trial:0"]  # best CV first
    assert "Recommended finals (by CV, not public score):" in out
    assert (synth.dir / "report" / "submissions_cv_vs_board.png").stat().st_size > 1000
    assert "submissions_cv_vs_board.png" in (synth.dir / "report" / "index.html").read_text()


def test_cli_on_an_empty_ledger(synth, capsys):
    assert main(["--workdir", str(synth.workdir), "--study", synth.name, "--pick", "2"]) == 0
    assert "the ledger is empty" in capsys.readouterr().out
