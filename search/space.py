"""The search space: one function from an Optuna trial to a ``models.fit.FitConfig``.

It follows the device: on a CPU it only proposes what finishes in seconds to minutes (heads on
cached features, partial fine-tuning of the last stages on cached activations); full fine-tuning
is proposed on CUDA, or on a CPU only when asked for. Conditional parameters are suggested only
where they apply, so Optuna's importance and history plots stay meaningful. Testable without a
study: ``suggest_config(optuna.trial.FixedTrial({...}), SpaceOptions(...))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import optuna

__all__ = ["SpaceOptions", "suggest_config", "default_backbones", "check_space"]


def default_backbones() -> tuple[str, ...]:
    from models.backbones import offline_backbones

    return tuple(offline_backbones())


@dataclass(frozen=True)
class SpaceOptions:
    backbones: tuple[str, ...]
    device: str = "cpu"
    allow_full: bool = False  # full fine-tuning on a CPU: hours per trial, only on request
    sizes: tuple[int, ...] = ()  # empty: each backbone's native size (CPU) or a ladder (GPU)
    partial_stages: tuple[int, ...] = ()  # EfficientNet stages trained again; empty: (6,) on CPU, (5, 6) on GPU
    max_aug_views: int = -1  # augmented cached views at most; -1: 2 on CPU (each view is a pass), 4 on GPU
    has_extra: bool = False
    modes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not self.backbones:
            raise ValueError("the search space needs at least one backbone with weights on this machine")
        from models.backbones import get_spec

        for name in self.backbones:
            get_spec(name)  # an unknown name fails here, naming the known ones
        unknown = sorted(set(self.modes) - {"head", "partial", "full"})
        if unknown:
            raise ValueError(f"unknown training modes {unknown}; modes are head, partial, full")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def aug_views(self) -> int:
        return self.max_aug_views if self.max_aug_views >= 0 else (4 if self.on_gpu else 2)

    def stages(self) -> tuple[int, ...]:
        return self.partial_stages or ((5, 6) if self.on_gpu else (6,))

    def allowed_modes(self) -> tuple[str, ...]:
        if self.modes:
            return self.modes
        full = self.device.startswith("cuda") or self.allow_full
        return ("head", "partial", "full") if full else ("head", "partial")


def _native_size(backbone: str) -> int:
    from models.backbones import data_config

    return int(data_config(backbone)["input_size"][-1])


def suggest_config(trial: optuna.trial.BaseTrial, options: SpaceOptions, *, weights: str = "auto"):
    from models.fit import FitConfig

    backbone = trial.suggest_categorical("backbone", list(options.backbones))
    if options.sizes:  # the user's own sizes, the same for every backbone
        sizes = options.sizes
        image_size = trial.suggest_categorical("image_size", list(sizes)) if len(sizes) > 1 else sizes[0]
    else:  # the weights' native size, and on a GPU also 64 px more (an offset: the same choices for all)
        offset = trial.suggest_categorical("size_offset", [0, 64]) if options.on_gpu else 0
        image_size = _native_size(backbone) + offset
    mode = trial.suggest_categorical("mode", list(options.allowed_modes()))
    p: dict = {"backbone": backbone, "image_size": int(image_size), "mode": mode, "weights": weights}
    p["label_smoothing"] = trial.suggest_float("label_smoothing", 0.0, 0.2)
    p["weight_decay"] = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    p["class_weight"] = trial.suggest_categorical("class_weight", ["none", "balanced"])
    if mode == "head":
        # An MLP head's cost grows with epochs × views: on a CPU an 80-epoch head took a minute a
        # trial on the demo, and the best CAX heads used 20-40 epochs. (Categorical choices stay
        # the same on every device: Optuna refuses a study whose choices change between trials.)
        p["head"] = trial.suggest_categorical("head", ["linear", "mlp"])
        if p["head"] == "mlp":
            p["hidden"] = trial.suggest_categorical("hidden", [256, 512, 1024])
            p["dropout"] = trial.suggest_float("dropout", 0.0, 0.6)
        p["lr"] = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        p["epochs"] = trial.suggest_int("epochs", 10, 80 if options.on_gpu else 50, step=10)
    elif mode == "partial":
        # On a CPU one epoch over the last stage costs seconds per thousand image views, so the
        # space keeps epochs and trained views small there; a GPU gets the deeper, longer range.
        stages = options.stages()
        p["stage"] = trial.suggest_categorical("stage", list(stages)) if len(stages) > 1 else stages[0]
        p["lr"] = trial.suggest_float("lr", 3e-4, 1e-2, log=True)
        p["lr_ratio"] = trial.suggest_float("lr_ratio", 1 / 9, 1 / 3, log=True)
        p["epochs"] = trial.suggest_int("epochs", 3, 10) if options.on_gpu else trial.suggest_int("epochs", 4, 8)
        p["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
        # a fresh head and the last stage need a few hundred steps: small batches on small data
        p["batch_size"] = 64 if options.on_gpu else 32
    else:  # full fine-tuning, the staged recipe
        p["lr"] = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
        p["lr_ratio"] = trial.suggest_float("lr_ratio", 1 / 9, 1 / 3, log=True)
        p["epochs"] = trial.suggest_int("epochs", 4, 30)
        p["cycles"] = trial.suggest_int("cycles", 1, 3)
        p["cycle_mult"] = trial.suggest_categorical("cycle_mult", [1, 2])
        p["frozen_epochs"] = trial.suggest_int("frozen_epochs", 0, 2)
        p["randaug_magnitude"] = trial.suggest_int("randaug_magnitude", 0, 12)
        p["mixup"] = trial.suggest_float("mixup", 0.0, 0.4)
        p["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    if mode != "full":
        # augmentation and TTA as cached views: 0..K seeded crops, plus the mirror
        max_train = options.aug_views if (mode == "head" or options.on_gpu) else min(1, options.aug_views)
        p["train_views"] = trial.suggest_int("train_views", 0, max_train)
        p["tta_views"] = trial.suggest_int("tta_views", 0, options.aug_views)
    p["flip"] = trial.suggest_categorical("flip", [True, False])
    if options.has_extra:
        p["use_extra"] = trial.suggest_categorical("use_extra", [True, False])
    return FitConfig.from_dict(p)


def check_space(study: optuna.Study, options: SpaceOptions) -> None:
    """Refuse to continue a study with other backbones or training modes.

    Optuna fails every trial whose categorical choices differ from the study's earlier trials
    ("CategoricalDistribution does not support dynamic value space"); saying so up front, with
    what differs, beats a study full of failed trials.
    """
    space = {"backbones": list(options.backbones), "modes": list(options.allowed_modes()),
             "partial_stages": list(options.stages()), "sizes": list(options.sizes)}
    recorded = study.user_attrs.get("space")
    for key in ("partial_stages", "sizes"):
        if recorded is not None and key not in recorded:  # a study recorded before these were
            space.pop(key)
    if recorded is None:
        study.set_user_attr("space", space)
    elif recorded != space:
        diff = "; ".join(f"{k} were {recorded.get(k)}, now {v}" for k, v in space.items() if recorded.get(k) != v)
        raise ValueError(f"study {study.study_name!r} searches another space: {diff}. Run with the same "
                         "--budget/--backbones/--modes/--sizes (and --allow-full or device), or use another --study.")
