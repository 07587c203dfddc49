"""make: the right source, the contest's format, and never an invalid file on disk."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition.io import read_json, read_probabilities
from submissions.ledger import ledger_path, read_ledger
from submissions.make import main, make_submission
from submissions.study import SourceError, load_study, resolve_source
from submissions.testing import CAX_CLASSES, CAX_LABELS, add_source, make_study
from submissions.validate import validate_submission

CAX_FORMAT = Path(os.environ.get("HEROSTACK_CAX_DIR", "/work/shared/data/cax_superhero")) / "Superhero_Submission_Format.csv"


@pytest.fixture
def synth(tmp_path):
    return make_study(tmp_path / "runs")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.csv") if p.name != "ledger.csv") if folder.exists() else []


def test_auto_picks_the_best_cv_source_and_writes_a_valid_file(synth):
    add_source(synth, "trial", "0", accuracy=0.55, seed=1)
    add_source(synth, "trial", "1", accuracy=0.95, seed=2)
    add_source(synth, "ensemble", "mean", accuracy=0.75, seed=3, components=["0", "1"])
    study = load_study(synth.workdir, synth.name)
    made = make_submission(study, "auto")

    assert made.source.ref == "trial:1"
    assert "best CV accuracy" in made.reason
    sub = pd.read_csv(made.path, dtype=str)
    assert list(sub.columns) == ["filename", "Superhero"]
    assert sub["filename"].tolist() == synth.test_ids  # the sample's order, not test.csv's
    validate_submission(made.path, study.sample, study.submission_labels, "filename", "Superhero")
    # labels are the argmax class of the source's test probabilities, in the contest's spelling
    test = read_probabilities(synth.dir / "trials/1/test.csv", synth.classes).set_index("image_id")
    expected = [CAX_LABELS[i] for i in test.loc[synth.test_ids, list(synth.classes)].to_numpy().argmax(1)]
    assert sub["Superhero"].tolist() == expected
    assert made.path.parent == synth.dir / "submissions"
    assert made.path.name.startswith("demo_trial-1_")
    proba = read_probabilities(made.proba_path, synth.classes)
    assert made.proba_path.name == made.path.stem + ".proba.csv"
    assert proba["image_id"].tolist() == synth.test_ids


def test_auto_follows_the_metric_direction(tmp_path):
    synth = make_study(tmp_path / "runs", metric="log_loss")
    for kind, name, score in [("trial", "0", 0.50), ("trial", "1", 0.40), ("ensemble", "stack", 0.35),
                              ("trial", "2", 0.60)]:
        add_source(synth, kind, name, accuracy=0.9, seed=len(name), score_mean=score)
    source, why = resolve_source(load_study(synth.workdir, synth.name), "auto")
    assert source.ref == "ensemble:stack"  # the lowest log loss
    assert "next trial:1 0.4000" in why


def test_from_kind_and_named_source(synth):
    add_source(synth, "trial", "3", accuracy=0.9, seed=1)
    add_source(synth, "trial", "12", accuracy=0.6, seed=2)
    add_source(synth, "ensemble", "a", accuracy=0.5, seed=3)
    add_source(synth, "ensemble", "b", accuracy=0.7, seed=4)
    study = load_study(synth.workdir, synth.name)
    assert resolve_source(study, "ensemble")[0].ref == "ensemble:b"
    assert resolve_source(study, "trial:12")[0].ref == "trial:12"
    assert resolve_source(study, "trial:012")[0].ref == "trial:12"
    with pytest.raises(SourceError, match=r"no finished trial '7'.*trial:3"):
        resolve_source(study, "trial:7")
    with pytest.raises(ValueError, match="--from must be"):
        resolve_source(study, "best")


def test_from_ensemble_follows_the_stacker_ensemble_build_chose(synth):
    add_source(synth, "ensemble", "lgbm", accuracy=0.9, seed=1, extra_meta={"chosen": False})
    add_source(synth, "ensemble", "mean", accuracy=0.7, seed=2, extra_meta={"chosen": True})
    study = load_study(synth.workdir, synth.name)
    source, why = resolve_source(study, "ensemble")
    assert source.ref == "ensemble:mean" and "marked chosen" in why
    assert resolve_source(study, "auto")[0].ref == "ensemble:lgbm"


def test_incomplete_source_without_meta_is_ignored(synth):
    add_source(synth, "trial", "0", accuracy=0.6, seed=1)
    add_source(synth, "trial", "1", accuracy=0.99, seed=2, write_meta=False)
    source, _ = resolve_source(load_study(synth.workdir, synth.name), "auto")
    assert source.ref == "trial:0"


def test_other_folds_are_refused_and_skipped_by_auto(synth):
    add_source(synth, "trial", "0", accuracy=0.6, seed=1)
    add_source(synth, "trial", "1", accuracy=0.99, seed=2, folds_hash="f" * 64)
    study = load_study(synth.workdir, synth.name)
    source, why = resolve_source(study, "auto")
    assert source.ref == "trial:0" and "skipped 1 not comparable" in why
    with pytest.raises(SourceError, match=r"trial:1 was cross-validated on folds ffffffffffff… but the study's"):
        make_submission(study, "trial:1")
    assert files_in(synth.dir / "submissions") == []


@pytest.mark.parametrize("ids, message", [
    (lambda ids: ids[:-3], r"lacks 3 of 20 sample ids, e\.g\. \["),
    (lambda ids: ids + ["stray_1", "stray_2"], r"has 2 ids not in the sample, e\.g\. \['stray_1', 'stray_2'\]"),
    (lambda ids: [i + ".jpg" for i in ids], r"has 20 ids not in the sample.*with a file extension"),
])
def test_test_ids_must_cover_the_sample_exactly(synth, ids, message):
    test_ids = ids(list(synth.test_ids))
    add_source(synth, "trial", "0", accuracy=0.7, seed=1, test_ids=test_ids)
    with pytest.raises(SourceError, match=message):
        make_submission(load_study(synth.workdir, synth.name), "auto")
    assert files_in(synth.dir / "submissions") == []
    assert not ledger_path(synth.dir / "submissions").exists()


def test_broken_probabilities_never_write_a_file(synth, tmp_path):
    folder = add_source(synth, "trial", "0", accuracy=0.7, seed=1)
    test = pd.read_csv(folder / "test.csv")
    test.loc[0, synth.classes[0]] = np.nan
    test.to_csv(folder / "test.csv", index=False)
    out = tmp_path / "mine.csv"
    with pytest.raises(SourceError, match="not finite"):
        make_submission(load_study(synth.workdir, synth.name), "trial:0", out)
    assert not out.exists()


def test_two_makes_in_one_second_keep_both_files(synth):
    add_source(synth, "trial", "0", accuracy=0.7, seed=1)
    study = load_study(synth.workdir, synth.name)
    first, second = make_submission(study, "auto"), make_submission(study, "auto")
    assert first.path != second.path and first.path.exists() and second.path.exists()
    assert first.row["sha256"] == second.row["sha256"]


def test_ledger_row_records_source_cv_and_interval(synth):
    add_source(synth, "ensemble", "mean", accuracy=0.8, seed=1, components=["0", "1"])
    study = load_study(synth.workdir, synth.name)
    made = make_submission(study, "ensemble:mean")
    ledger = read_ledger(ledger_path(study.submissions_dir))
    assert len(ledger) == 1
    row = ledger.iloc[0]
    meta = read_json(synth.dir / "ensemble/mean/meta.json")
    assert row["file"] == made.path.name and row["source"] == "ensemble:mean"
    assert row["components"] == "0;1" and row["metric"] == "accuracy"
    assert row["cv_mean"] == pytest.approx(meta["score_mean"], abs=1e-6)
    assert row["cv_ci_low"] <= row["cv_oof"] <= row["cv_ci_high"]
    assert row["n_oof"] == len(synth.train_ids) and row["n_rows"] == len(synth.test_ids)
    assert row["created_at"].endswith("+00:00")
    assert pd.isna(row["public_score"])


def test_cli_reports_errors_without_traceback(synth, capsys):
    add_source(synth, "trial", "0", accuracy=0.7, seed=1, folds_hash="0" * 64)
    code = main(["--workdir", str(synth.workdir), "--study", synth.name, "--from", "trial:0"])
    assert code == 2
    assert "error: cannot make a submission from this source" in capsys.readouterr().err
    assert main(["--workdir", str(synth.workdir), "--study", "nope"]) == 2


def test_cli_writes_to_out(synth, tmp_path, capsys):
    add_source(synth, "trial", "0", accuracy=0.7, seed=1)
    out = tmp_path / "final" / "sub.csv"
    assert main(["--workdir", str(synth.workdir), "--study", synth.name, "--out", str(out)]) == 0
    assert out.exists() and (out.parent / "sub.proba.csv").exists()
    assert f"wrote    {out}" in capsys.readouterr().out
    assert read_ledger(ledger_path(synth.dir / "submissions"))["file"].iloc[0] == str(out.resolve())


@pytest.mark.skipif(not CAX_FORMAT.exists(), reason="CAX submission format file not available")
def test_real_cax_layout(tmp_path):
    """Random probabilities over the real format file's ids: 1,086 rows in its order, valid."""
    synth = make_study(tmp_path / "runs", name="cax", classes=CAX_CLASSES, submission_labels=CAX_LABELS,
                       sample_path=CAX_FORMAT)
    add_source(synth, "trial", "0", accuracy=0.5, seed=7)
    study = load_study(synth.workdir, "cax")
    made = make_submission(study, "auto")
    fmt = pd.read_csv(CAX_FORMAT, dtype=str)
    sub = pd.read_csv(made.path, dtype=str, keep_default_na=False)
    assert len(sub) == 1086 and list(sub.columns) == ["filename", "Superhero"]
    assert sub["filename"].tolist() == fmt["filename"].tolist()
    assert set(sub["Superhero"]) <= set(CAX_LABELS)
    validate_submission(made.path, study.sample, CAX_LABELS, "filename", "Superhero")


def test_empty_submission_labels_mean_class_names(synth):
    spec = read_json(synth.dir / "competition.json")
    spec["submission_labels"] = []
    (synth.dir / "competition.json").write_text(json.dumps(spec))
    add_source(synth, "trial", "0", accuracy=0.7, seed=1)
    made = make_submission(load_study(synth.workdir, synth.name), "auto")
    assert set(pd.read_csv(made.path)["Superhero"]) <= set(synth.classes)


def test_unreadable_test_images_get_the_class_prior(synth, capsys):
    """A test image the scan could not decode has no prediction: it gets the training prior, loudly."""
    broken = list(synth.test_ids[:2])
    add_source(synth, "trial", "0", accuracy=0.7, seed=1, test_ids=list(synth.test_ids[2:]))
    report = {"unreadable": [{"path": f"/data/test/{i}.jpg", "split": "test", "error": "OSError: truncated"}
                             for i in broken]}
    (synth.dir / "scan_report.json").write_text(json.dumps(report))
    labels = [synth.classes[1]] * 5 + [synth.classes[0]] * 2
    pd.DataFrame({"image_id": [f"t{i}" for i in range(7)], "fold": 0, "label": labels}).to_csv(
        synth.dir / "folds.csv", index=False)
    made = make_submission(load_study(synth.workdir, synth.name), "auto")
    assert "2 test images could not be decoded (scan_report.json) and get the training class prior" in \
        capsys.readouterr().err
    sub = pd.read_csv(made.path, dtype=str)
    assert len(sub) == len(synth.test_ids)
    assert set(sub.set_index("filename").loc[broken, "Superhero"]) == {CAX_LABELS[1]}  # the majority class
    # an id missing for any other reason is still an error
    add_source(synth, "trial", "1", accuracy=0.9, seed=2, test_ids=list(synth.test_ids[3:]))
    with pytest.raises(SourceError, match="lacks 1 of 20 sample ids"):
        make_submission(load_study(synth.workdir, synth.name), "trial:1")
