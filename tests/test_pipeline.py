"""The whole path on a tiny demo: search → ensemble → submission → local score → final picks."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from competition.demo import make_demo
from ensemble.build import main as ensemble_main
from search.run import main as search_main
from submissions.list import main as list_main
from submissions.make import main as make_main
from submissions.score import main as score_main


def test_demo_path_end_to_end(tmp_path, capsys):
    data = tmp_path / "demo_data"
    make_demo(data, seed=0, n_train=72, n_test=24)
    work = str(tmp_path / "runs")
    common = ["--study", "demo", "--workdir", work]
    assert search_main(["--data", str(data), "--competition", "demo", *common, "--k", "3", "--trials", "4",
                        "--backbones", "test_efficientnet", "--modes", "head", "--random-init", "--no-report"]) == 0
    assert ensemble_main([*common, "--no-progress"]) == 0
    study = Path(work) / "demo"
    chosen = [json.loads(p.read_text()) for p in (study / "ensemble").glob("*/meta.json")]
    assert any(m.get("chosen") for m in chosen)
    assert (study / "audit" / "label_issues.csv").exists()
    capsys.readouterr()
    out = tmp_path / "sub.csv"
    assert make_main([*common, "--from", "auto", "--out", str(out)]) == 0
    sub = pd.read_csv(out, dtype=str)
    sample = pd.read_csv(data / "Superhero_Submission_Format.csv", dtype=str)
    assert list(sub.columns) == ["filename", "Superhero"] and list(sub.filename) == list(sample.filename)
    assert set(sub.Superhero) <= {"ant_man", "aqua_man", "avengers", "bat_man", "black_panther", "captain_america",
                                  "cat_woman", "ghostrider", "hulk", "iron_man", "spider_man", "super_man"}
    assert score_main([str(out), "--labels", str(data / "test_labels.csv"), *common]) == 0
    scored = capsys.readouterr().out
    assert "public" in scored and "private" in scored
    ledger = pd.read_csv(study / "submissions" / "ledger.csv")
    assert len(ledger) == 1 and ledger.public_score.notna().all()
    assert list_main([*common, "--pick", "2"]) == 0
