"""folds/: invariants of the split, near-duplicate grouping, and the once-per-study rule."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from folds.grouping import FoldsError, GroupRule, make_folds, near_duplicate_groups
from folds.make import StudyMismatch, load_folds, main, prepare_study
from tests.conftest import write_competition, write_tiny_spec


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("k", [3, 5])
def test_fold_invariants(seed, k):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array([f"c{i}" for i in range(12)]), rng.integers(10, 60, 12))
    groups = np.arange(len(labels))
    groups[1] = groups[0]  # a duplicate pair in one class
    groups[40] = groups[39]
    folds = make_folds(labels, groups, k, seed)
    table = pd.crosstab(labels, folds)
    assert table.shape[1] == k
    assert (table.max(axis=1) - table.min(axis=1)).max() <= 1
    assert folds[0] == folds[1] and folds[39] == folds[40]
    assert np.array_equal(folds, make_folds(labels, groups, k, seed))


def test_small_class_is_an_error():
    labels = ["a"] * 10 + ["b"] * 3
    with pytest.raises(FoldsError, match=r"fewer images than folds \(k=5\): 'b' \(3\)"):
        make_folds(labels, np.arange(13), 5, 0)


def _hashes(values):
    return [f"{v:016x}" for v in values]


def test_near_duplicate_rule_needs_both_hashes():
    df = pd.DataFrame({
        "sha256": ["a", "b", "c", "d", "a"],
        "phash": _hashes([0b0, 0b1, 0b1, 0xFFFF, 0xF0F0]),
        "dhash": _hashes([0b0, 0b11, 0xFF00, 0xFFFF, 0x1234]),
    })
    groups = near_duplicate_groups(df, GroupRule(phash_max=2, dhash_max=2))
    assert groups[0] == groups[1] == groups[4]  # 1: both hashes close; 4: identical bytes
    assert groups[2] != groups[0]  # pHash close, dHash far apart: a different product
    assert groups[3] not in (groups[0], groups[2])


def test_prepare_study_writes_and_refuses_changes(tmp_path, capsys):
    data = write_competition(tmp_path / "data", per_class=(10, 10, 10))
    # an exact duplicate must land in one fold
    shutil.copy(data / "CAX_Superhero_Train/Hulk/Hul_0.jpg", data / "CAX_Superhero_Train/Hulk/Hul_0_again.jpg")
    spec = tmp_path / "tiny.json"
    write_tiny_spec(spec)
    work = tmp_path / "runs"
    assert main(["--data", str(data), "--competition", str(spec), "--workdir", str(work), "--study", "s", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "per-fold class counts" in out and "exact duplicate groups in train: 1" in out
    folds, h = load_folds(work / "s")
    assert len(folds) == 31 and set(folds.fold) == {0, 1, 2}
    dup = folds[folds.image_id.isin(["Hulk/Hul_0", "Hulk/Hul_0_again"])]
    assert dup.fold.nunique() == 1 and dup.group.nunique() == 1
    for name in ("competition.json", "manifest.csv", "scan_report.json", "folds.csv", "folds.json"):
        assert (work / "s" / name).exists()
    # the same call again reuses the study without rescanning
    again = prepare_study(data, spec, work, "s", k=3, log=lambda *a: None)
    assert again.folds_hash == h
    # another k refuses, naming what changed
    with pytest.raises(StudyMismatch, match="k was 3, now 5"):
        prepare_study(data, spec, work, "s", k=5, log=lambda *a: None)
    # changed data under the same study refuses
    shutil.copy(data / "CAX_Superhero_Train/Batman/Bat_0.jpg", data / "CAX_Superhero_Train/Batman/Bat_new.jpg")
    with pytest.raises(StudyMismatch, match="1 images new or changed"):
        prepare_study(data, spec, work, "s", k=3, log=lambda *a: None, progress=False)
    # a hand-edited folds.csv is refused by every reader
    text = (work / "s" / "folds.csv").read_text()
    (work / "s" / "folds.csv").write_text(text.replace(",0,", ",1,", 1))
    with pytest.raises(StudyMismatch, match="the folds were edited"):
        load_folds(work / "s")


def test_folds_make_cli_reports_errors(tmp_path, capsys):
    data = write_competition(tmp_path / "data")
    (data / "CAX_Superhero_Test" / "superhero_test_3.jpg").unlink()
    rc = main(["--data", str(data), "--competition", "cax-superhero", "--workdir", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no folder for classes ['Aquaman'" in err
