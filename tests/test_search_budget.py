"""search.budget: the presets' first trials fit the space they run in, and --budget wires them in."""
from __future__ import annotations

import warnings

import optuna
import pytest

import search.budget as budget_mod
from search.budget import BUDGETS, Budget, enqueue_first_trials, get_budget
from search.run import main
from search.space import SpaceOptions, suggest_config
from tests.test_search_run import _tiny

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_every_first_trial_is_a_point_of_the_presets_space(name):
    budget = BUDGETS[name]
    options = SpaceOptions(backbones=LITES, device=budget.device, partial_stages=budget.partial_stages,
                           modes=budget.modes)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    n = enqueue_first_trials(study, budget, LITES)
    assert n == len(budget.first_trials) > 0
    for params in budget.first_trials:
        trial = study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an out-of-range value warns in Optuna
            config = suggest_config(trial, options)
        unused = set(params) - set(trial.params)
        assert not unused, f"{name}: {unused} are not parameters of this trial's space (typo?)"
        assert {k: trial.params[k] for k in params} == params
        assert config.mode == params["mode"] and config.backbone == params["backbone"]
        study.tell(trial, 0.5)


def test_first_trials_are_enqueued_once_and_only_for_searched_backbones():
    study = optuna.create_study()
    budget = BUDGETS["cpu-2h"]
    n = enqueue_first_trials(study, budget, ("efficientnet_lite0",))
    assert n == sum(t["backbone"] == "efficientnet_lite0" for t in budget.first_trials)
    enqueue_first_trials(study, budget, ("efficientnet_lite0",))  # a rerun of the same command
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == n


def test_unknown_budget_names_the_presets(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown --budget 'cpu-3d'; presets: cpu-2h"):
        get_budget("cpu-3d")
    assert main([*_tiny(tmp_path), "--budget", "cpu-3d", "--trials", "1"]) == 2
    assert "presets: cpu-2h" in capsys.readouterr().err


def test_budget_sets_timeout_and_runs_its_first_trials(tmp_path, capsys, monkeypatch):
    first = {"backbone": "test_efficientnet", "mode": "head", "head": "linear", "lr": 0.02, "epochs": 10,
             "label_smoothing": 0.05, "weight_decay": 1e-4, "class_weight": "balanced", "train_views": 0,
             "tta_views": 0, "flip": False}
    tiny = Budget(name="tiny", description="a test preset", device="cpu", timeout_s=600,
                  modes=("head",), first_trials=(first,))
    monkeypatch.setitem(budget_mod.BUDGETS, "tiny", tiny)
    args = [*_tiny(tmp_path), "--budget", "tiny", "--no-report"]
    assert main([*args, "--trials", "1"]) == 0
    assert "budget tiny: a test preset; timeout 600 s; 1 first trials" in capsys.readouterr().out
    assert main([*args, "--trials", "1"]) == 0  # continuing: the preset's trial is not run again
    storage = f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}"
    trials = optuna.load_study(study_name="t", storage=storage).trials
    assert trials[0].params == first and trials[1].params != first
    assert len(trials) == 2


def test_sizes_come_from_the_flag_or_the_competition(tmp_path, capsys):
    from competition.spec import load_spec

    assert load_spec("demo").image_sizes == (192,) and load_spec("cax-superhero").image_sizes == ()
    args = _tiny(tmp_path)
    assert main([*args, "--sizes", "32,x", "--trials", "1"]) == 2
    assert "--sizes must be comma-separated integers, got '32,x'" in capsys.readouterr().err
    assert main([*args, "--sizes", "40", "--trials", "1", "--no-report"]) == 0
    storage = f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}"
    study = optuna.load_study(study_name="t", storage=storage)
    assert study.user_attrs["space"]["sizes"] == [40]
    import json

    meta = json.loads((tmp_path / "runs" / "t" / "trials" / "0" / "meta.json").read_text())
    assert meta["config"]["image_size"] == 40
    assert main([*args, "--sizes", "48", "--trials", "1"]) == 2  # another size: another space
    assert "sizes were [40], now [48]" in capsys.readouterr().err


def test_pseudo_from_best_runs_end_to_end(tmp_path, capsys):
    import json

    args = [*_tiny(tmp_path), "--no-report"]
    assert main([*args, "--pseudo-from", "best", "--trials", "1"]) == 2
    assert "no complete trial with per-fold test probabilities" in capsys.readouterr().err
    assert main([*args, "--trials", "1"]) == 0
    assert main([*args, "--pseudo-from", "best", "--pseudo-threshold", "0.01", "--trials", "1"]) == 0
    assert "pseudo-labels from trial 0 at p >= 0.01: 4-4 of 4 test images per fold" in capsys.readouterr().out
    meta = json.loads((tmp_path / "runs" / "t" / "trials" / "1" / "meta.json").read_text())
    assert meta["pseudo"] == {"teacher": 0, "threshold": 0.01, "rows_per_fold": [4, 4]}


def test_gpu_preset_is_refused_without_cuda(tmp_path, capsys):
    assert main([*_tiny(tmp_path), "--budget", "gpu-100", "--device", "cpu", "--trials", "1"]) == 2
    assert "--budget gpu-100 is a GPU preset and torch sees no CUDA device" in capsys.readouterr().err
