"""Label-noise audit: planted mislabels are found; CSV, contact sheet and report."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition.io import ArtefactError
from ensemble.audit import find_label_issues, main, run_audit
from ensemble.candidates import load_study
from ensemble.synthetic import make_study, synthetic_probabilities, write_trial


def _planted(n=200, C=3, flips=10, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, C, n)
    proba = synthetic_probabilities(truth, C, 3.0, rng)  # a decent model of the true labels
    given = truth.copy()
    flipped = rng.choice(n, flips, replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, C, flips)) % C
    return given, proba, flipped


def test_audit_finds_most_planted_mislabels():
    given, proba, flipped = _planted()
    ids = np.array([f"img_{i}" for i in range(len(given))])
    issues = find_label_issues(ids, given, proba, ["a", "b", "c"])
    found = set(issues["image_id"]) & set(ids[flipped])
    assert len(found) >= 8, f"found {len(found)} of 10"
    assert len(issues) <= 25  # and not much else
    assert list(issues["rank"]) == list(range(1, len(issues) + 1))
    assert issues["given_prob"].is_monotonic_increasing
    assert (issues["given_label"] != issues["suggested_label"]).all()


@pytest.fixture
def study_with_images(tmp_path):
    """A study whose only trial's OOF knows the true labels while folds.csv has 10 flipped."""
    study_dir = make_study(tmp_path, n=200, signals=(), seed=0)
    folds = pd.read_csv(study_dir / "folds.csv", dtype={"image_id": str})
    given, proba, flipped = _planted()
    folds["label"] = np.array(["a", "b", "c"])[given]
    folds.to_csv(study_dir / "folds.csv", index=False)
    from competition.io import atomic_write_json, sha256_file

    folds_hash = sha256_file(study_dir / "folds.csv")
    atomic_write_json(study_dir / "folds.json", {"hash": folds_hash, "k": 3})
    write_trial(study_dir, "0", folds["image_id"], folds["fold"], folds["label"], proba,
                ["t0"], np.full((1, 3), 1 / 3), ["a", "b", "c"], folds_hash, "accuracy", [0.9])
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    paths = []
    for i, image_id in enumerate(folds["image_id"]):
        path = img_dir / f"{image_id}.png"
        if i % 2 == 0:  # half the files exist: a missing image must not break the sheet
            Image.new("RGB", (16, 12), (i % 255, 100, 50)).save(path)
        paths.append(str(path))
    pd.DataFrame({"image_id": folds["image_id"], "split": "train", "path": paths, "label": folds["label"],
                  "sha256": "x"}).to_csv(study_dir / "manifest.csv", index=False)
    return study_dir, set(folds["image_id"].to_numpy()[flipped])


def test_run_audit_writes_csv_with_paths_sheet_and_report(study_with_images):
    study_dir, flipped = study_with_images
    result = run_audit(load_study(study_dir.parent, study_dir.name), source="trial:0")
    csv = pd.read_csv(study_dir / "audit" / "label_issues.csv", dtype={"image_id": str})
    assert {"image_id", "given_label", "suggested_label", "given_prob", "suggested_prob", "rank",
            "fold", "path"} <= set(csv.columns)
    assert len(set(csv["image_id"]) & flipped) >= 8
    assert result.sheet is not None and result.sheet.exists()
    sections = json.loads((study_dir / "report" / "sections.json").read_text())
    assert sections["audit"]["items"] and "likely label issues" in sections["audit"]["text"]


def test_audit_cli_top_and_auto_source_without_manifest(study_with_images):
    study_dir, _ = study_with_images
    (study_dir / "manifest.csv").unlink()
    rc = main(["--workdir", str(study_dir.parent), "--study", study_dir.name, "--top", "5"])
    assert rc == 0
    csv = pd.read_csv(study_dir / "audit" / "label_issues.csv")
    assert len(csv) == 5 and "path" not in csv.columns
    assert not (study_dir / "audit" / "label_issues.png").exists()


@pytest.mark.parametrize("source,message", [
    ("trial:9", "missing"),
    ("model:0", "source must be"),
])
def test_bad_sources_are_refused(study_with_images, source, message):
    study_dir, _ = study_with_images
    with pytest.raises((ArtefactError, ValueError), match=message):
        run_audit(load_study(study_dir.parent, study_dir.name), source=source, publish_report=False)
