"""Near-duplicate groups and stratified group folds.

The rule for "the same picture": identical file bytes, or a 64-bit pHash AND a 64-bit dHash both
within a small Hamming distance. Two hashes must agree because on real product photos a single
pHash at distance ≤ 4 links thousands of *different* products shot on the same white background
(see ``docs/folds.md``); requiring dHash to agree as well keeps re-encoded or resized copies
together without chaining unrelated images into giant groups.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["GroupRule", "near_duplicate_groups", "make_folds", "FoldsError"]


class FoldsError(ValueError):
    pass


@dataclass(frozen=True)
class GroupRule:
    phash_max: int = 2
    dhash_max: int = 2

    def __post_init__(self):
        for name in ("phash_max", "dhash_max"):
            v = getattr(self, name)
            if not 0 <= v <= 64:
                raise FoldsError(f"{name} must be between 0 and 64 but got {v}")


def _hex_to_u64(values) -> np.ndarray:
    return np.array([int(v, 16) for v in values], dtype=np.uint64)


def _close_pairs(hashes: np.ndarray, max_dist: int, chunk: int = 512):
    """Yield (i, j) index arrays with i < j and Hamming distance ≤ max_dist."""
    n = len(hashes)
    for start in range(0, n, chunk):
        block = hashes[start:start + chunk, None] ^ hashes[None, :]
        dist = np.bitwise_count(block)
        i, j = np.nonzero(dist <= max_dist)
        i = i + start
        keep = i < j
        yield i[keep], j[keep]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(df: pd.DataFrame, rule: GroupRule = GroupRule()) -> np.ndarray:
    """Group id per row of ``df`` (needs ``sha256``; ``phash``/``dhash`` hex columns when present).

    Group ids are the smallest row index in the group, so they are stable for a fixed row order.
    """
    n = len(df)
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for idx, sha in enumerate(df["sha256"]):
        if sha in first:
            uf.union(first[sha], idx)
        else:
            first[sha] = idx
    if "phash" in df.columns and "dhash" in df.columns and n > 1:
        ph, dh = _hex_to_u64(df["phash"]), _hex_to_u64(df["dhash"])
        for i, j in _close_pairs(ph, rule.phash_max):
            close = np.bitwise_count(dh[i] ^ dh[j]) <= rule.dhash_max
            for a, b in zip(i[close], j[close]):
                uf.union(int(a), int(b))
    return np.array([uf.find(i) for i in range(n)])


def make_folds(labels, groups, k: int, seed: int) -> np.ndarray:
    """Stratified K folds in which no group straddles two folds. Returns the fold of each row."""
    labels = pd.Series(np.asarray(labels), dtype=str)
    if k < 2:
        raise FoldsError(f"k must be at least 2 but got {k}")
    counts = labels.value_counts()
    small = counts[counts < k]
    if len(small):
        raise FoldsError(
            f"classes with fewer images than folds (k={k}): "
            + ", ".join(f"{c!r} ({n})" for c, n in small.items())
        )
    n_groups = len(set(groups))
    if n_groups < k:
        raise FoldsError(f"only {n_groups} distinct image groups for k={k} folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=int)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[val] = fold
    return folds
