"""Decoded-image cache: each picture decoded, resized and square-cropped once, kept as uint8.

Stored geometry (one store per side ``size`` and resampling filter): the largest centred square
of the picture (after EXIF orientation) is resampled to ``size x size`` in one PIL ``resize``
call with a ``box`` (JPEG files are first scaled down in the DCT domain with ``Image.draft``,
keeping at least ``size`` pixels). This is timm's eval geometry - resize the shorter side to
``size``, then centre-crop a square - done in continuous coordinates, so it is exactly
mirror-symmetric. The feature cache stores at ``size = input_size / crop_pct`` (rounded to an
even margin): the model's centre crop is then a pure crop of the stored square, and augmented
crops can be taken from the rest of it.

Storage (``RowStore``): rows of one fixed shape appended to one file, keyed by the image content
sha256, with an index of the committed keys. Rows are written and flushed first, then the index
is replaced atomically (temporary file + rename); a row counts only once the index lists it, so
a run killed mid-write leaves at most unlisted bytes after the last committed row, which the
next writer overwrites. Writers take an exclusive file lock, so parallel workers sharing a cache
do not interleave rows. Rows of images that changed are never deleted, only no longer asked for.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from competition.images import load_rgb
from competition.io import ArtefactError, atomic_path, atomic_write_json

try:
    import fcntl
except ImportError:  # Windows: single-writer use only
    fcntl = None

__all__ = ["DecodedCache", "RowStore", "decode_square", "progress_bar"]

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def progress_bar(total: int, desc: str, enabled: bool = True):
    """tqdm, silenced when ``enabled`` is False or HEROSTACK_NO_PROGRESS is set."""
    from tqdm.auto import tqdm

    disable = not enabled or bool(os.environ.get("HEROSTACK_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit="img", disable=disable, dynamic_ncols=True)


def decode_square(path: str | os.PathLike, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """``[size, size, 3]`` uint8: the centred largest square of the picture, resampled to ``size``."""
    im = load_rgb(path, draft_size=size)
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    out = im.resize((size, size), RESAMPLE[interpolation], box=box)
    return np.asarray(out, dtype=np.uint8)


# ---------------------------------------------------------------------------------- row store


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


class RowStore:
    """Fixed-shape rows keyed by ASCII strings in one growing file, with an atomically replaced index.

    Files in ``folder``: ``meta.json`` (row shape, dtype and the caller's description),
    ``rows.bin`` (row i at byte i * row_bytes), ``index.npy`` (the key of each committed row).
    """

    def __init__(self, folder: str | os.PathLike, dtype, *, meta: dict | None = None):
        self.folder = Path(folder)
        self.dtype = np.dtype(dtype)
        self.meta = dict(meta or {})
        self.row_shape: tuple[int, ...] | None = None
        self._keys = np.empty(0, dtype="S1")
        self._pos: dict[bytes, int] = {}
        self._stamp = None
        self._mm: np.memmap | None = None
        self._read_meta()

    # -- files
    @property
    def rows_path(self) -> Path:
        return self.folder / "rows.bin"

    @property
    def index_path(self) -> Path:
        return self.folder / "index.npy"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * self.dtype.itemsize

    def _read_meta(self) -> None:
        path = self.folder / "meta.json"
        if not path.exists():
            return
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArtefactError(f"{path}: not valid JSON ({exc}); delete {self.folder} to rebuild it") from exc
        if np.dtype(meta["dtype"]) != self.dtype:
            raise ArtefactError(f"{self.folder}: rows are {meta['dtype']} but {self.dtype} was asked for")
        for k, v in self.meta.items():
            if k in meta and meta[k] != v:
                raise ArtefactError(f"{self.folder}: meta {k!r} is {meta[k]!r} on disk but {v!r} here")
        self.row_shape = tuple(meta["row_shape"])

    def _refresh(self) -> None:
        """Reload the index when another writer (or process) replaced it."""
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        if self.row_shape is None:
            self._read_meta()
            if self.row_shape is None:  # an index without meta.json: nothing can be read safely
                return
        keys = np.load(self.index_path, allow_pickle=False)
        # Only rows wholly inside the data file count (guards against a tampered/truncated file).
        n_file = self.rows_path.stat().st_size // self.row_bytes if self.rows_path.exists() else 0
        keys = keys[: min(len(keys), n_file)]
        self._keys = keys
        self._pos = {k: i for i, k in enumerate(keys.tolist())}
        self._stamp = stamp

    def __len__(self) -> int:
        self._refresh()
        return len(self._keys)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Row of each key, -1 where missing."""
        self._refresh()
        return np.fromiter((self._pos.get(k.encode("ascii"), -1) for k in keys), dtype=np.int64, count=len(keys))

    def _mapped(self, need_rows: int) -> np.memmap:
        if self._mm is None or len(self._mm) < need_rows:
            n = self.rows_path.stat().st_size // self.row_bytes
            self._mm = np.memmap(self.rows_path, dtype=self.dtype, mode="r", shape=(n, *self.row_shape))
        return self._mm

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows, as a read-only memory-mapped view when they are consecutive, else a copy."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, *(self.row_shape or ())), dtype=self.dtype)
        if rows.min() < 0:
            raise KeyError(f"{self.folder}: {int((rows < 0).sum())} requested rows are not in the store")
        mm = self._mapped(int(rows.max()) + 1)
        first = int(rows[0])
        if np.array_equal(rows, np.arange(first, first + len(rows))):
            return mm[first : first + len(rows)]
        return mm[rows]

    @contextlib.contextmanager
    def writing(self, row_shape: Sequence[int], *, commit_every_s: float = 10.0) -> Iterator["RowWriter"]:
        """Hold the store's lock; rows added are committed every ``commit_every_s`` and on exit."""
        row_shape = tuple(int(v) for v in row_shape)
        self.folder.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.folder / ".lock"):
            self._read_meta()
            if self.row_shape is None:
                atomic_write_json(
                    self.folder / "meta.json",
                    {"row_shape": list(row_shape), "dtype": self.dtype.str, **self.meta},
                )
                self.row_shape = row_shape
            elif self.row_shape != row_shape:
                raise ArtefactError(f"{self.folder}: rows are {self.row_shape} on disk but {row_shape} here")
            self._stamp = None
            self._refresh()
            fd = os.open(self.rows_path, os.O_RDWR | os.O_CREAT, 0o644)
            writer = RowWriter(self, fd, commit_every_s)
            try:
                yield writer
            finally:
                # Every row in `pending` was written whole, so committing them is safe even when the
                # caller failed; a hard kill skips this and loses only the uncommitted rows.
                try:
                    writer.commit()
                finally:
                    os.close(fd)


class RowWriter:
    """Appends rows to a locked ``RowStore``; see ``RowStore.writing``."""

    def __init__(self, store: RowStore, fd: int, commit_every_s: float):
        self.store = store
        self.fd = fd
        self.commit_every_s = commit_every_s
        self.pending: list[bytes] = []
        self._pending_set: set[bytes] = set()
        self._last_commit = time.monotonic()

    def __contains__(self, key: str) -> bool:
        k = key.encode("ascii")
        return k in self.store._pos or k in self._pending_set

    def add(self, key: str, row: np.ndarray) -> None:
        """Write ``row`` for ``key`` (ignored when ``key`` is already stored)."""
        if key in self:
            return
        store = self.store
        row = np.ascontiguousarray(row, dtype=store.dtype)
        if row.shape != store.row_shape:
            raise ValueError(f"{store.folder}: row for {key} has shape {row.shape}, expected {store.row_shape}")
        n = len(store._keys) + len(self.pending)
        data = row.tobytes()
        written = os.pwrite(self.fd, data, n * store.row_bytes)
        if written != len(data):
            raise OSError(f"{store.rows_path}: short write ({written} of {len(data)} bytes)")
        k = key.encode("ascii")
        self.pending.append(k)
        self._pending_set.add(k)
        if time.monotonic() - self._last_commit >= self.commit_every_s:
            self.commit()

    def commit(self) -> None:
        """Flush the rows, then publish them by replacing the index (temp file + rename)."""
        self._last_commit = time.monotonic()
        if not self.pending:
            return
        store = self.store
        os.fsync(self.fd)
        keys = np.concatenate([store._keys.astype("S64"), np.array(self.pending, dtype="S64")])
        with atomic_path(store.index_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, keys, allow_pickle=False)
        self.pending.clear()
        self._pending_set.clear()
        store._refresh()


# ---------------------------------------------------------------------------------- decoded cache


class DecodedCache:
    """Decoded square uint8 pictures keyed by content sha256, one store per (size, filter).

    ``get`` returns them as one array; ``iter_batches`` yields them in batches while worker
    threads decode the next ones (PIL releases the GIL), so a consumer's forward pass overlaps
    with decoding.
    """

    def __init__(self, root: str | os.PathLike, *, commit_every_s: float = 10.0):
        self.root = Path(root)
        self.commit_every_s = commit_every_s
        self._stores: dict[tuple[int, str], RowStore] = {}

    def store(self, size: int, interpolation: str = "bicubic") -> RowStore:
        size = _check_size(size)
        if interpolation not in RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(RESAMPLE)} but got {interpolation!r}")
        key = (size, interpolation)
        if key not in self._stores:
            meta = {"geometry": "centre square, resampled", "size": size, "interpolation": interpolation}
            self._stores[key] = RowStore(self.root / f"{size}px-{interpolation}", np.uint8, meta=meta)
        return self._stores[key]

    def get(
        self,
        paths: Sequence[str | os.PathLike],
        sha256s: Sequence[str],
        size: int,
        *,
        progress: bool = True,
        num_workers: int = 2,
        interpolation: str = "bicubic",
    ) -> np.ndarray:
        """``[N, size, size, 3]`` uint8 in the order given; only images not yet stored are decoded.

        The result is a read-only memory-mapped view when the rows lie consecutively on disk
        (e.g. the same list as when they were decoded), else an in-memory copy.
        """
        paths, sha256s = _check_lists(paths, sha256s)
        store = self.store(size, interpolation)
        missing = np.flatnonzero(store.lookup(sha256s) < 0)
        if len(missing):
            for _ in self.iter_batches(
                [paths[i] for i in missing], [sha256s[i] for i in missing], size,
                progress=progress, num_workers=num_workers, interpolation=interpolation,
            ):
                pass
        return store.take(store.lookup(sha256s))

    def iter_batches(
        self,
        paths: Sequence[str | os.PathLike],
        sha256s: Sequence[str],
        size: int,
        *,
        batch_size: int = 64,
        progress: bool = True,
        num_workers: int = 2,
        interpolation: str = "bicubic",
        prefetch_batches: int = 2,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(positions, images)``: positions into the given lists, images ``[B, size, size, 3]``.

        Stored images are read from the cache; the others are decoded ``prefetch_batches``
        batches ahead by ``num_workers`` threads and stored as they arrive.
        """
        paths, sha256s = _check_lists(paths, sha256s)
        if batch_size < 1 or num_workers < 1:
            raise ValueError(f"batch_size and num_workers must be >= 1 but got {batch_size}, {num_workers}")
        store = self.store(size, interpolation)
        rows = store.lookup(sha256s)
        todo = list(dict.fromkeys(sha256s[i] for i in np.flatnonzero(rows < 0)))  # unique, in order
        if not todo:
            for start in range(0, len(paths), batch_size):
                pos = np.arange(start, min(start + batch_size, len(paths)))
                yield pos, np.array(store.take(rows[pos]))  # a writable copy, as in the decoding path
            return
        first_path = {}
        for p, s in zip(paths, sha256s):
            first_path.setdefault(s, p)

        bar = progress_bar(len(todo), f"decode {size}px", progress)
        with contextlib.ExitStack() as stack:
            stack.callback(bar.close)
            pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode")
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # abandoned: drop queued work
            writer = stack.enter_context(store.writing((size, size, 3), commit_every_s=self.commit_every_s))
            futures: dict[str, Future] = {}
            queue = collections.deque(todo)
            lookahead = max(batch_size * (1 + prefetch_batches), 2 * num_workers)

            def submit_ahead() -> None:
                while queue and len(futures) < lookahead:
                    s = queue.popleft()
                    futures[s] = pool.submit(decode_square, first_path[s], size, interpolation)

            for start in range(0, len(paths), batch_size):
                pos = np.arange(start, min(start + batch_size, len(paths)))
                out = np.empty((len(pos), size, size, 3), dtype=np.uint8)
                for j, i in enumerate(pos):
                    submit_ahead()
                    s = sha256s[i]
                    if rows[i] >= 0:
                        out[j] = store.take(rows[i : i + 1])[0]
                    elif s in futures:
                        out[j] = futures.pop(s).result()
                        writer.add(s, out[j])
                        bar.update(1)
                    else:  # a duplicate of an image decoded earlier in this pass
                        out[j] = _pending_row(store, writer, s)
                submit_ahead()
                yield pos, out


def _pending_row(store: RowStore, writer: RowWriter, key: str) -> np.ndarray:
    """A row written by ``writer`` but maybe not committed yet."""
    k = key.encode("ascii")
    if k in store._pos:
        return store.take(np.array([store._pos[k]]))[0]
    n = len(store._keys) + writer.pending.index(k)
    buf = os.pread(writer.fd, store.row_bytes, n * store.row_bytes)
    return np.frombuffer(buf, dtype=store.dtype).reshape(store.row_shape)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8 but got {size!r}")
    return int(size)


def _check_lists(paths, sha256s) -> tuple[list[str], list[str]]:
    paths = [str(p) for p in paths]
    sha256s = [str(s) for s in sha256s]
    if len(paths) != len(sha256s):
        raise ValueError(f"paths and sha256s differ in length: {len(paths)} vs {len(sha256s)}")
    bad = next((s for s in sha256s if not s or len(s) > 64 or not s.isascii()), None)
    if bad is not None:
        raise ValueError(f"sha256 keys must be non-empty ASCII of at most 64 characters but got {bad!r}")
    return paths, sha256s
