"""PNG figures for the report page. Uses matplotlib's object API (``Figure``), which renders with
the Agg canvas and never touches pyplot's global state or a display."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["confusion_png", "reliability_png", "contact_sheet_png"]


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    from competition.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def confusion_png(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row), counts in the cells when few classes."""
    n = len(classes)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (np.asarray(y, dtype=int), np.asarray(proba).argmax(1)), 1)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    long = n > 6 or max(len(str(c)) for c in classes) > 6
    ax.set_xticks(range(n), classes, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (OOF)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    return _save(fig, path)


def reliability_png(y: np.ndarray, proba: np.ndarray, path, n_bins: int = 15, title: str = "") -> Path:
    """Top-label reliability diagram: accuracy against confidence per bin, with the expected
    calibration error (ECE) in the title and the bin counts below."""
    proba = np.asarray(proba)
    conf = proba.max(1)
    correct = proba.argmax(1) == np.asarray(y, dtype=int)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    acc = np.bincount(which, weights=correct, minlength=n_bins) / np.maximum(counts, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts * np.abs(acc - mean_conf)) / max(len(conf), 1))
    fig = Figure(figsize=(5, 6))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = (edges[:-1] + edges[1:]) / 2
    seen = counts > 0
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.bar(centers[seen], acc[seen], width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy per bin")
    ax.plot(mean_conf[seen], acc[seen], "o-", color="C3", ms=3, label="accuracy at the bin's mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"reliability (OOF), ECE = {ece:.4f}")
    ax_n.bar(centers, counts, width=1 / n_bins, color="grey")
    ax_n.set_xlabel("confidence of the predicted class")
    ax_n.set_ylabel("images")
    ax_n.set_xlim(0, 1)
    return _save(fig, path)


def contact_sheet_png(images: Sequence[tuple[str, str]], path, load: Callable[[str], "object"],
                      columns: int = 6, thumb: float = 2.0, title: str = "") -> Path:
    """A grid of thumbnails, one per ``(image_path, caption)``; an image that cannot be read
    shows its caption and the reason instead."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(columns * thumb, rows * (thumb + 0.7)))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image_path, caption) in zip(axes, images):
        try:
            img = load(image_path)
            img.thumbnail((256, 256))
            ax.imshow(np.asarray(img))
        except (OSError, ValueError) as exc:
            ax.text(0.5, 0.5, f"unreadable:\n{type(exc).__name__}", ha="center", va="center", fontsize=8)
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
