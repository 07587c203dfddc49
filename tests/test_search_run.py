"""search/: the space with FixedTrial, and `python -m search.run` end to end on a tiny competition."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import FixedTrial, TrialState

from search.run import main
from search.space import SpaceOptions, suggest_config
from search.study import make_storage
from tests.conftest import write_competition, write_tiny_spec

ROOT = Path(__file__).resolve().parent.parent
LITE = ("efficientnet_lite0", "efficientnet_lite1")
COMMON = {"label_smoothing": 0.1, "weight_decay": 1e-3, "class_weight": "none", "flip": True}


@pytest.mark.parametrize(
    "params, expect",
    [
        ({"backbone": "efficientnet_lite1", "mode": "head", "head": "mlp", "hidden": 512, "dropout": 0.2,
          "lr": 1e-3, "epochs": 30, "train_views": 2, "tta_views": 1},
         {"mode": "head", "image_size": 240, "head": "mlp", "train_views": 2, "tta_views": 1}),
        ({"backbone": "efficientnet_lite0", "mode": "head", "head": "linear", "lr": 1e-2, "epochs": 20,
          "train_views": 0, "tta_views": 0}, {"head": "linear", "image_size": 224}),
        ({"backbone": "efficientnet_lite0", "mode": "partial", "lr": 1e-3, "lr_ratio": 0.2, "epochs": 5,
          "dropout": 0.1, "train_views": 1, "tta_views": 2}, {"mode": "partial", "stage": 6, "epochs": 5, "batch_size": 32}),
    ],
)
def test_space_with_fixed_trial(params, expect):
    config = suggest_config(FixedTrial({**COMMON, **params}), SpaceOptions(backbones=LITE, device="cpu"))
    for key, value in expect.items():
        assert getattr(config, key) == value


def test_space_follows_the_device():
    full = {**COMMON, "backbone": "efficientnet_lite0", "mode": "full", "lr": 1e-3, "lr_ratio": 0.2, "epochs": 5,
            "cycles": 2, "cycle_mult": 2, "frozen_epochs": 1, "randaug_magnitude": 9, "mixup": 0.2, "dropout": 0.1}
    with pytest.raises(ValueError, match="'full' not in"):
        suggest_config(FixedTrial(full), SpaceOptions(backbones=LITE, device="cpu"))
    config = suggest_config(FixedTrial({**full, "size_offset": 64}), SpaceOptions(backbones=LITE, device="cuda"))
    assert (config.mode, config.cycles, config.cycle_mult, config.image_size) == ("full", 2, 2, 288)
    assert suggest_config(FixedTrial(full), SpaceOptions(backbones=LITE, device="cpu", allow_full=True)).mode == "full"
    # CPU partial fine-tuning stays short: more than 8 epochs is outside the CPU space
    partial = {**COMMON, "backbone": "efficientnet_lite0", "mode": "partial", "lr": 1e-3, "lr_ratio": 0.2,
               "epochs": 12, "dropout": 0.1, "train_views": 1, "tta_views": 0}
    with pytest.warns(UserWarning, match="out of the range"):
        suggest_config(FixedTrial(partial), SpaceOptions(backbones=LITE, device="cpu"))


def test_space_options_are_checked():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'; known backbones: .*efficientnet_lite0"):
        SpaceOptions(backbones=("resnet9000",))
    with pytest.raises(ValueError, match=r"unknown training modes \['fast'\]"):
        SpaceOptions(backbones=LITE, modes=("head", "fast"))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_space_keeps_the_same_choices_across_trials(tmp_path, device):
    """Optuna's storages refuse categorical choices that change between trials of one study."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    options = SpaceOptions(backbones=("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
                           device=device, has_extra=True)
    for _ in range(40):
        trial = study.ask()
        suggest_config(trial, options)  # raises "dynamic value space" if choices depended on others
        study.tell(trial, 0.5)
    assert {t.params["backbone"] for t in study.trials} == set(options.backbones)


def test_space_only_suggests_what_applies():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    options = SpaceOptions(backbones=LITE, device="cpu")
    for _ in range(30):
        trial = study.ask()
        config = suggest_config(trial, options)
        names = set(trial.params)
        assert ("hidden" in names) == (config.mode == "head" and config.head == "mlp")
        assert ("lr_ratio" in names) == (config.mode == "partial")
        assert "mixup" not in names and "cycles" not in names
        study.tell(trial, 0.5)


def _tiny(tmp_path):
    data = write_competition(tmp_path / "data", per_class=(8, 8, 8), n_test=4, size=32)
    spec = tmp_path / "tiny.json"
    write_tiny_spec(spec)
    return ["--data", str(data), "--competition", str(spec), "--study", "t", "--workdir", str(tmp_path / "runs"),
            "--k", "2", "--backbones", "test_efficientnet", "--modes", "head", "--random-init", "--heartbeat", "1"]


def test_run_writes_trials_table_and_report(tmp_path, capsys):
    args = _tiny(tmp_path)
    assert main([*args, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "top 2 trials by CV accuracy" in out
    study_dir = tmp_path / "runs" / "t"
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == ["0", "1"]
    assert (study_dir / "report" / "index.html").exists() and (study_dir / "report" / "search_history.png").exists()
    # the same command continues the same study
    assert main([*args, "--trials", "1", "--no-report"]) == 0
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == ["0", "1", "2"]
    # other backbones under the same study are refused up front (Optuna would fail every trial)
    other_space = [a if a != "test_efficientnet" else "test_efficientnet,test_resnet" for a in args]
    assert main([*other_space, "--trials", "1"]) == 2
    assert "searches another space: backbones were ['test_efficientnet']" in capsys.readouterr().err
    # another competition under the same study name is refused
    other = [a if a != "2" else "3" for a in args]  # k=3
    assert main([*other, "--trials", "1"]) == 2
    assert "k was 2, now 3" in capsys.readouterr().err


def test_timeout_is_respected(tmp_path):
    args = _tiny(tmp_path)
    assert main([*args, "--trials", "1", "--no-report"]) == 0  # folds and caches ready
    start = time.time()
    assert main([*args, "--trials", "1000", "--timeout", "8", "--no-report"]) == 0
    assert time.time() - start < 8 * 1.1 + 1.5  # within 10 % plus the start-up of the study


def test_resume_after_kill_mid_trial(tmp_path):
    args = _tiny(tmp_path)
    env = {**os.environ, "HEROSTACK_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    study_dir = tmp_path / "runs" / "t"
    killed, ostudy = None, None
    make_storage(None, study_dir)  # the schema exists before the worker starts: no create race with our polls
    for _attempt in range(5):  # a tiny trial can end between the look and the kill: try again
        proc = subprocess.Popen([sys.executable, "-m", "search.run", *args, "--trials", "50", "--no-report"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
            if not (study_dir / "study.db").exists():
                continue
            try:
                ostudy = optuna.load_study(study_name="t", storage=make_storage(None, study_dir))
            except (KeyError, sqlalchemy.exc.OperationalError):  # not there yet, or its schema is being made
                continue
            trials = ostudy.get_trials(deepcopy=False)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            if len(done) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
        running = [t.number for t in ostudy.get_trials(states=(TrialState.RUNNING,))] if ostudy else []
        if running:  # orphaned by the kill
            killed = running[0]
            break
    assert killed is not None, proc.communicate()[0]
    complete_before = {t.number for t in ostudy.get_trials(states=(TrialState.COMPLETE,))}
    time.sleep(3.5)  # the killed trial's heartbeat goes stale (grace period: 3 heartbeats)
    assert main([*args, "--trials", "2", "--no-report"]) == 0
    ostudy = optuna.load_study(study_name="t", storage=make_storage(None, study_dir))
    trials = {t.number: t for t in ostudy.get_trials()}
    assert trials[killed].state == TrialState.FAIL
    assert complete_before <= {n for n, t in trials.items() if t.state == TrialState.COMPLETE}
    assert any(t.system_attrs.get("failed_trial") == killed for t in trials.values())  # retried
    folders = {p.name for p in (study_dir / "trials").iterdir()}
    assert str(killed) not in folders and not any(f.startswith(".") for f in folders)
    assert all((study_dir / "trials" / f / "meta.json").exists() for f in folders)
