"""Scale out: several `search.run` workers on one study — PostgreSQL and the embedded default.

These run the real command in subprocesses with a tiny random-init backbone on tiny images.
The PostgreSQL tests need a server: CI starts one on loopback (`.ci/postgres.sh`) and exports
HEROSTACK_TEST_POSTGRES; elsewhere they are skipped unless HEROSTACK_REQUIRE_POSTGRES is set.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from folds.make import prepare_study
from search.study import make_storage, open_study
from tests.conftest import write_competition, write_tiny_spec

PG = os.environ.get("HEROSTACK_TEST_POSTGRES")
needs_pg = pytest.mark.skipif(not PG and not os.environ.get("HEROSTACK_REQUIRE_POSTGRES"),
                              reason="no PostgreSQL server (HEROSTACK_TEST_POSTGRES unset)")
ROOT = Path(__file__).resolve().parent.parent


def _setup(tmp_path, study_name):
    data = write_competition(tmp_path / "data", per_class=(8, 8, 8), n_test=4, size=32)
    spec = tmp_path / "tiny.json"
    write_tiny_spec(spec)
    args = ["--data", str(data), "--competition", str(spec), "--study", study_name,
            "--workdir", str(tmp_path / "runs"), "--k", "2", "--backbones", "test_efficientnet",
            "--modes", "head", "--random-init", "--pruner", "none", "--heartbeat", "1", "--no-report"]
    return data, spec, args


def _run(args, **kw):
    env = {**os.environ, "HEROSTACK_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _check_complete(storage_url, tmp_path, study_name, n):
    storage = make_storage(storage_url, tmp_path / "runs" / study_name)
    ostudy = optuna.load_study(study_name=study_name, storage=storage)
    trials = ostudy.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n, [(t.number, t.state.name) for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    folders = sorted(p.name for p in (tmp_path / "runs" / study_name / "trials").iterdir() if (p / "meta.json").exists())
    assert folders == sorted(str(t.number) for t in complete)
    assert not list((tmp_path / "runs" / study_name / "trials").glob(".*"))  # no half-written folder
    for t in complete:
        meta = json.loads((tmp_path / "runs" / study_name / "trials" / str(t.number) / "meta.json").read_text())
        assert meta["trial"] == t.number and meta["score_mean"] == pytest.approx(t.value)
    return ostudy


def _orphans(ostudy, pid):
    return [t.number for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker", {}).get("pid") == pid]


def _kill_one_mid_trial(storage_url, tmp_path, study_name, victim, respawn):
    """SIGKILL ``victim`` while it runs a trial; returns that trial's number. A tiny trial can end
    between the look and the kill: then no trial is orphaned, and a fresh worker is tried."""
    storage = make_storage(storage_url, tmp_path / "runs" / study_name)
    ostudy = optuna.load_study(study_name=study_name, storage=storage)
    deadline = time.time() + 180
    while time.time() < deadline:
        if _orphans(ostudy, victim.pid):
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            orphaned = _orphans(ostudy, victim.pid)
            if orphaned:
                return orphaned[0]
            victim = respawn()
        time.sleep(0.02)
    raise AssertionError("no worker was caught mid-trial: " + victim.stdout.read())


def _scenario(tmp_path, storage_url, n_workers, n_trials, kill):
    study_name = f"scale_{uuid.uuid4().hex[:8]}"
    data, spec, args = _setup(tmp_path, study_name)
    if storage_url:
        args += ["--storage", storage_url]
    # The launcher's job: make the folds and the study once, then start the workers.
    study = prepare_study(data, spec, tmp_path / "runs", study_name, k=2, log=lambda *a: None, progress=False)
    open_study(study, storage_url, heartbeat=1)
    worker = [*args, "--trials", "1", "--target-complete", str(n_trials)]
    procs = [_run(worker) for _ in range(n_workers)]
    killed = None
    if kill:
        killed = _kill_one_mid_trial(storage_url, tmp_path, study_name, procs[0],
                                     respawn=lambda: procs.append(_run(worker)) or procs[-1])
    for p in procs:
        if p.returncode == -signal.SIGKILL:
            continue
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    ostudy = _check_complete(storage_url, tmp_path, study_name, n_trials)
    if kill:
        dead = ostudy.trials[killed]
        assert dead.state == TrialState.FAIL  # failed by a survivor once its heartbeat went stale
        retried = [t for t in ostudy.trials if t.system_attrs.get("failed_trial") == killed]
        assert retried and retried[0].state == TrialState.COMPLETE
        assert not (tmp_path / "runs" / study_name / "trials" / str(killed)).exists()


@needs_pg
def test_three_workers_postgres(tmp_path):
    _scenario(tmp_path, PG, n_workers=3, n_trials=6, kill=False)


@needs_pg
def test_killed_worker_is_retried_postgres(tmp_path):
    _scenario(tmp_path, PG, n_workers=3, n_trials=5, kill=True)


def test_killed_worker_is_retried_embedded_storage(tmp_path):
    _scenario(tmp_path, None, n_workers=2, n_trials=4, kill=True)


def test_workers_flag_launches_and_summarises(tmp_path):
    study_name = "launch"
    _, _, args = _setup(tmp_path, study_name)
    p = _run([*args, "--trials", "3", "--workers", "2"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "worker 1: pid" in out and "top 3 trials" in out
    _check_complete(None, tmp_path, study_name, 3)
