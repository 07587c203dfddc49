"""End to end: python -m ensemble.build on a tiny synthetic study."""
import json

import numpy as np
import pandas as pd
import pytest

from competition.io import read_probabilities
from ensemble.build import BuildConfig, build, main
from ensemble.candidates import CandidateError
from ensemble.stackers import STACKERS
from ensemble.synthetic import make_study


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    study = make_study(root, n=300, n_test=30, signals=(1.5, 1.2, 1.0, 0.8), seed=11, correlation=0.5)
    rc = main(["--workdir", str(root), "--study", "demo", "--top-k", "3", "--no-progress"])
    return rc, study


def test_build_writes_every_method_with_the_trial_contract(built):
    rc, study = built
    assert rc == 0
    folds = pd.read_csv(study / "folds.csv", dtype={"image_id": str})
    fold_hash = json.loads((study / "folds.json").read_text())["hash"]
    for method in STACKERS:
        folder = study / "ensemble" / method
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["kind"] == "ensemble" and meta["method"] == method and meta["name"] == method
        assert meta["folds_hash"] == fold_hash and meta["classes"] == ["a", "b", "c"]
        assert meta["metric"] == "accuracy" and len(meta["fold_scores"]) == 3
        assert meta["score_mean"] == pytest.approx(np.mean(meta["fold_scores"]))
        assert len(meta["components"]) == 3 and "versions" in meta and "git_commit" in meta
        assert len(meta["comparison"]) == len(STACKERS)
        oof = read_probabilities(folder / "oof.csv", ["a", "b", "c"])
        assert list(oof.columns[:3]) == ["image_id", "fold", "label"]
        assert set(oof["image_id"]) == set(folds["image_id"])
        assert len(read_probabilities(folder / "test.csv", ["a", "b", "c"])) == 30


def test_build_saves_the_comparison_and_publishes_the_chosen_plots(built):
    _, study = built
    table = pd.read_csv(study / "ensemble" / "comparison.csv")
    assert list(table["method"]) == list(STACKERS) and table["chosen"].sum() == 1
    chosen = table.loc[table["chosen"], "method"].item()
    assert (study / "ensemble" / chosen / "confusion.png").exists()
    assert (study / "ensemble" / chosen / "reliability.png").exists()
    assert json.loads((study / "ensemble" / chosen / "meta.json").read_text())["chosen"] is True
    assert "± " in (study / "ensemble" / "comparison.txt").read_text()
    sections = json.loads((study / "report" / "sections.json").read_text())
    assert {"ensemble", "audit"} <= set(sections)
    assert len(sections["ensemble"]["items"]) == 2 and "± " in sections["ensemble"]["text"]
    assert (study / "audit" / "label_issues.csv").exists()


def test_explicit_trials_with_other_folds_are_refused(built, capsys):
    _, study = built
    meta_path = study / "trials" / "2" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "folds_hash": "f" * 64}))
    try:
        rc = main(["--workdir", str(study.parent), "--trials", "0,2", "--no-progress", "--no-audit"])
        assert rc == 2 and "trial 2: folds hash" in capsys.readouterr().err
        with pytest.raises(CandidateError, match="trial 2"):
            build(BuildConfig(workdir=str(study.parent), trials=("0", "2"), audit=False, progress=False))
    finally:
        meta_path.write_text(json.dumps(meta))


def test_named_build_with_a_fixed_method_and_options(built):
    _, study = built
    result = build(BuildConfig(workdir=str(study.parent), trials=("0", "1"), method="hill", name="mine",
                               log_odds=True, temperature=True, audit=False, progress=False))
    assert result.chosen == "hill" and result.out_dir.name == "mine"
    meta = json.loads((study / "ensemble" / "mine" / "meta.json").read_text())
    assert meta["method"] == "hill" and meta["components"] == ["0", "1"]
    assert meta["config"]["build"]["temperature"] is True
    assert sum(meta["details"]["final"]["weights"]) == pytest.approx(1.0)
    assert (study / "ensemble" / "mine" / "confusion.png").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "xgb"}, "method must be one of"),
    ({"top_k": 0}, "top-k must be at least 1 but got 0"),
    ({"name": "lgbm", "method": "hill"}, "folder of the lgbm stacker"),
    ({"trials": ()}, "names no trial"),
])
def test_bad_build_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BuildConfig(**kwargs)
