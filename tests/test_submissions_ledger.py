"""The ledger: safe concurrent appends, score updates by sha256, a seeded bootstrap."""
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

from competition.metrics import Metric, get_metric
from submissions.ledger import (LEDGER_COLUMNS, append_row, bootstrap_interval, git_commit, read_ledger,
                                update_scores)

ROWS_PER_WORKER = 20


def _append_many(path, worker):
    for i in range(ROWS_PER_WORKER):
        append_row(path, {"file": f"w{worker}_{i}.csv", "sha256": f"{worker:02d}{i:062d}", "source": f"trial:{worker}",
                          "cv_mean": 0.5 + worker / 100 + i / 10000, "created_at": "2024-01-01T00:00:00+00:00"})


def test_concurrent_appends_keep_every_row(tmp_path):
    path = tmp_path / "submissions" / "ledger.csv"
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
    assert [p.exitcode for p in workers] == [0] * 4

    ledger = read_ledger(path)
    assert list(ledger.columns) == LEDGER_COLUMNS
    assert len(ledger) == 4 * ROWS_PER_WORKER
    assert set(ledger["file"]) == {f"w{w}_{i}.csv" for w in range(4) for i in range(ROWS_PER_WORKER)}
    # each worker's rows stay in its own order
    for w in range(4):
        mine = ledger[ledger["source"] == f"trial:{w}"]
        assert mine["file"].tolist() == [f"w{w}_{i}.csv" for i in range(ROWS_PER_WORKER)]
    assert ledger["cv_mean"].notna().all()
    assert not list(path.parent.glob("*.tmp"))  # no half-written files left behind


def test_unknown_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown ledger columns \\['cv'\\]"):
        append_row(tmp_path / "ledger.csv", {"file": "a.csv", "cv": 1.0})


def test_scores_fill_rows_with_the_same_sha(tmp_path):
    path = tmp_path / "ledger.csv"
    append_row(path, {"file": "a.csv", "sha256": "aaa", "cv_mean": 0.7})
    append_row(path, {"file": "a_copy.csv", "sha256": "aaa", "cv_mean": 0.7})
    append_row(path, {"file": "b.csv", "sha256": "bbb", "cv_mean": 0.6})
    assert update_scores(path, "aaa", {"public_score": 0.81, "private_score": 0.76, "all_score": None}) == 2
    assert update_scores(path, "zzz", {"public_score": 0.5}) == 0
    ledger = read_ledger(path)
    assert ledger["public_score"].tolist()[:2] == [0.81, 0.81]
    assert ledger["private_score"].tolist()[:2] == [0.76, 0.76]
    assert pd.isna(ledger["public_score"].iloc[2]) and ledger["scored_at"].iloc[2] == ""
    assert ledger["scored_at"].iloc[0].endswith("+00:00")


def test_columns_added_by_a_user_survive(tmp_path):
    path = tmp_path / "ledger.csv"
    append_row(path, {"file": "a.csv", "sha256": "aaa"})
    df = pd.read_csv(path, dtype=str, keep_default_na=False).assign(note="kept")
    df.to_csv(path, index=False)
    append_row(path, {"file": "b.csv", "sha256": "bbb"})
    assert read_ledger(path)["note"].tolist() == ["kept", ""]


def test_bootstrap_of_a_perfect_model_is_a_point():
    y = np.array([0, 1, 2, 1])
    point, low, high, se = bootstrap_interval(y, np.eye(3)[y], get_metric("accuracy"))
    assert (point, low, high, se) == (1.0, 1.0, 1.0, 0.0)


def test_bootstrap_is_seeded_and_brackets_the_score():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    proba = np.eye(3)[np.where(rng.random(400) < 0.75, y, (y + 1) % 3)]
    acc = get_metric("accuracy")
    first = bootstrap_interval(y, proba, acc)
    assert first == bootstrap_interval(y, proba, acc)
    point, low, high, se = first
    assert point == pytest.approx((proba.argmax(1) == y).mean())
    assert low < point < high
    # about 1.96 binomial standard errors either side
    binomial_se = np.sqrt(point * (1 - point) / len(y))
    assert se == pytest.approx(binomial_se, rel=0.15)
    assert high - low == pytest.approx(2 * 1.96 * binomial_se, rel=0.2)


@pytest.mark.parametrize("name", ["accuracy", "log_loss"])
def test_per_row_shortcut_equals_the_general_path(name):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 120)
    proba = rng.dirichlet(np.ones(4), 120)
    metric = get_metric(name)
    general = Metric(f"{name}_general", metric.fn, metric.greater_is_better)
    assert bootstrap_interval(y, proba, metric, n_resamples=200) == pytest.approx(
        bootstrap_interval(y, proba, general, n_resamples=200))


def test_git_commit_is_text():
    commit = git_commit()
    assert commit == "" or len(commit) == 40
