"""Budget presets: ``python -m search.run --budget cpu-2h`` and friends.

A preset is a documented bundle of search settings for a stated amount of compute: the search's
share of the time (``--timeout``; the rest is left for ``ensemble.build`` and
``submissions.make``), the partial fine-tuning stages the space may propose, and the first trials
(``optuna.Study.enqueue_trial``): configurations that did well on real contest data, so the
first hour is not spent on random exploration. Flags given on the command line win over the
preset's values. The enqueued trials are ordinary trials: same folds, same objective, scored on
the same validation rows as every other trial, so the CV stays honest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Budget", "BUDGETS", "get_budget", "enqueue_first_trials"]

# One recipe, several backbones: the last two stages (stage 5 onwards) trained on cached
# stage-4 activations, one augmented view besides plain and mirrored, one TTA crop.
_PARTIAL = {"mode": "partial", "stage": 5, "lr": 3e-3, "lr_ratio": 1 / 3, "epochs": 6, "dropout": 0.2,
            "label_smoothing": 0.1, "weight_decay": 1e-2, "class_weight": "none", "train_views": 1,
            "tta_views": 1, "flip": True}
# Full fine-tuning on a GPU: the staged recipe at native + 64 px, two cosine cycles (4 + 8 epochs).
_FULL = {"mode": "full", "size_offset": 64, "lr": 1e-3, "lr_ratio": 1 / 3, "epochs": 12, "cycles": 2,
         "cycle_mult": 2, "frozen_epochs": 1, "randaug_magnitude": 9, "mixup": 0.2, "dropout": 0.2,
         "label_smoothing": 0.1, "weight_decay": 1e-2, "class_weight": "none", "flip": True}
_HEAD = {"mode": "head", "head": "linear", "lr": 3e-3, "epochs": 30, "label_smoothing": 0.1,
         "weight_decay": 1e-3, "class_weight": "none", "train_views": 2, "tta_views": 2, "flip": True}


@dataclass(frozen=True)
class Budget:
    name: str
    description: str
    device: str  # "cpu" or "cuda": the preset is refused elsewhere
    timeout_s: float | None  # the search's share of the budget; None: run the --trials asked for
    partial_stages: tuple[int, ...] = ()
    modes: tuple[str, ...] = ()
    first_trials: tuple[dict, ...] = field(default=())

    def trials_for(self, backbones: tuple[str, ...]) -> list[dict]:
        """The first trials whose backbone is searched, in order."""
        return [dict(t) for t in self.first_trials if t.get("backbone") in backbones]


BUDGETS: dict[str, Budget] = {
    "cpu-2h": Budget(
        name="cpu-2h",
        description="two hours on a 2-core CPU in all: 105 min of search, the rest for ensemble "
                    "and submission; partial fine-tuning of the last one or two stages",
        device="cpu",
        timeout_s=105 * 60,
        partial_stages=(5, 6),
        modes=("head", "partial"),
        first_trials=(
            {"backbone": "efficientnet_lite0", **_PARTIAL},
            {"backbone": "efficientnet_lite2", **_PARTIAL},
            {"backbone": "efficientnet_lite1", **_PARTIAL},
            {"backbone": "efficientnet_lite0", **_HEAD},
            {"backbone": "efficientnet_lite2", **_HEAD},
            {"backbone": "efficientnet_lite0", **{**_PARTIAL, "stage": 6, "epochs": 8, "train_views": 1,
                                                   "lr": 5e-3}},
        ),
    ),
    "gpu-100": Budget(
        name="gpu-100",
        description="one modern GPU, `--trials 100`: full fine-tuning of every backbone first, then TPE "
                    "over full, partial and head trials (estimated 1.5-4 h for 100 trials on CAX; not yet "
                    "measured on a GPU)",
        device="cuda",
        timeout_s=None,
        modes=("head", "partial", "full"),
        first_trials=(
            {"backbone": "efficientnet_lite2", **_FULL},
            {"backbone": "efficientnet_lite0", **_FULL},
            {"backbone": "efficientnet_lite1", **_FULL},
            {"backbone": "efficientnet_lite2", **{**_PARTIAL, "size_offset": 64, "epochs": 10, "train_views": 4,
                                                   "tta_views": 2}},
        ),
    ),
}


def get_budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ValueError(f"unknown --budget {name!r}; presets: {', '.join(sorted(BUDGETS))}") from None


def enqueue_first_trials(study, budget: Budget, backbones: tuple[str, ...]) -> int:
    """Enqueue the preset's first trials once (a rerun of the same command does not repeat them)."""
    trials = budget.trials_for(backbones)
    for params in trials:
        study.enqueue_trial(params, skip_if_exists=True)
    return len(trials)
