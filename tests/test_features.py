"""models.images (decoded-image cache) and models.features (feature cache), on tiny PNGs."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import models.features as features
from competition.io import sha256_file
from models.backbones import BACKBONES, BackboneSpec, create_backbone, split_at_stage
from models.features import FeatureCache, augment_params, augment_views, check_views, stored_size
from models.images import DecodedCache, decode_square

NET = "test_efficientnet"
SIZE = 32


def _png(path, seed: int, size=(48, 40)) -> str:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)  # blocks: not pure noise
    Image.fromarray(a).resize(size, Image.Resampling.NEAREST).save(path)
    return str(path)


def _manifest(paths) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in paths], "sha256": [sha256_file(p) for p in paths]})


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    return [_png(folder / f"i{k}.png", k) for k in range(5)]


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(tmp_path / "cache", device="cpu", commit_every_s=0.0)


def _get(cache, manifest, views=("plain",), **kw):
    return cache.get(manifest, NET, SIZE, views, weights="random", progress=False, **kw)


def _no_model(*args, **kwargs):
    raise AssertionError("the backbone was built although every row was cached")


def test_hit_computes_nothing(cache, images, monkeypatch):
    m = _manifest(images)
    first = _get(cache, m, ("plain", "aug0"))
    assert first["plain"].shape == (5, create_backbone(NET, weights="random").num_features)
    assert first["plain"].dtype == np.float32
    assert cache.last_stats["computed"] == {"plain": 5, "aug0": 5} and cache.last_stats["decoded"] == 5
    monkeypatch.setattr(features, "create_backbone", _no_model)
    again = _get(cache, m, ("plain", "aug0"))
    assert cache.last_stats["forward_images"] == 0
    for v in first:
        np.testing.assert_array_equal(first[v], again[v])
    shuffled = _get(cache, m.iloc[[4, 2, 0]])  # manifest order, not cache order
    np.testing.assert_array_equal(shuffled["plain"], first["plain"][[4, 2, 0]])


def test_miss_computes_only_the_new_image(cache, images, tmp_path):
    before = _get(cache, _manifest(images[:4]))
    after = _get(cache, _manifest(images))
    assert cache.last_stats["computed"] == {"plain": 1}
    assert cache.last_stats["forward_images"] == 1 and cache.last_stats["decoded"] == 1
    np.testing.assert_array_equal(after["plain"][:4], before["plain"])


def test_changed_bytes_are_recomputed(cache, images, tmp_path):
    m = _manifest(images)
    old = _get(cache, m)["plain"]
    _png(images[2], seed=99)  # same path, new content
    m2 = _manifest(images)
    new = _get(cache, m2)["plain"]
    assert cache.last_stats["computed"] == {"plain": 1}
    assert not np.allclose(new[2], old[2])
    fresh = FeatureCache(tmp_path / "fresh", device="cpu")
    np.testing.assert_allclose(new, _get(fresh, m2)["plain"], atol=1e-5)


def test_views_differ_and_are_deterministic(cache, images, tmp_path):
    m = _manifest(images)
    views = ("plain", "flip") + augment_views(2)
    out = _get(cache, m, views)
    for i, a in enumerate(views):
        for b in views[i + 1:]:
            assert not np.allclose(out[a], out[b], atol=1e-4), (a, b)
    other = _get(FeatureCache(tmp_path / "other", device="cpu"), m, views)
    for v in views:
        np.testing.assert_allclose(out[v], other[v], atol=1e-5)
    sha = m["sha256"][0]
    assert augment_params(sha, "aug0", 40) == augment_params(sha, "aug0", 40)
    assert augment_params(sha, "aug0", 40) != augment_params(sha, "aug1", 40)
    p = augment_params(sha, "aug3", 40)
    assert 0.6 * 40 * 40 * 0.95 <= p.height * p.width <= 40 * 40 and 0.9 <= p.brightness <= 1.1


def test_flip_view_equals_features_of_the_mirrored_image(cache, images, tmp_path):
    mirrored = str(tmp_path / "mirror.png")
    Image.open(images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    out = _get(cache, _manifest([images[0], mirrored]), ("plain", "flip"))
    np.testing.assert_allclose(out["flip"][0], out["plain"][1], atol=1e-4)
    np.testing.assert_allclose(out["plain"][0], out["flip"][1], atol=1e-4)


def test_stage_activations(cache, images):
    m = _manifest(images)
    model = create_backbone(NET, weights="random")
    act = _get(cache, m, stage=2)["plain"]
    trunk, tail = split_at_stage(model, 2)
    with torch.no_grad():
        expected_shape = trunk(torch.zeros(1, 3, SIZE, SIZE)).shape[1:]
        pooled = tail(torch.from_numpy(act.astype(np.float32))).numpy()
    assert act.dtype == np.float16 and act.shape == (5, *expected_shape)
    np.testing.assert_allclose(pooled, _get(cache, m)["plain"], atol=2e-2, rtol=2e-2)


def test_stage_pass_also_fills_pooled_features(tmp_path, images, monkeypatch):
    m = _manifest(images)
    reference = _get(FeatureCache(tmp_path / "ref", device="cpu", commit_every_s=0.0), m, ("plain", "flip"))
    cache = FeatureCache(tmp_path / "c", device="cpu", commit_every_s=0.0)
    _get(cache, m, ("plain", "flip"), stage=3)
    monkeypatch.setattr(features, "create_backbone", _no_model)  # the pooled rows are there already
    pooled = _get(cache, m, ("plain", "flip"))
    for v in ("plain", "flip"):
        np.testing.assert_allclose(pooled[v], reference[v], atol=1e-4, rtol=1e-4)


def test_deadline_stops_extraction_and_keeps_finished_rows(tmp_path, images):
    m = _manifest(images)
    cache = FeatureCache(tmp_path / "c", device="cpu", commit_every_s=0.0, deadline=time.time() - 1)
    with pytest.raises(features.DeadlineReached, match="stopped at the deadline"):
        cache.get(m, NET, SIZE, ("plain",), weights="random", progress=False, batch_size=2)
    later = FeatureCache(tmp_path / "c", device="cpu", commit_every_s=0.0)
    later.get(m, NET, SIZE, ("plain",), weights="random", progress=False, batch_size=2)
    assert later.last_stats["computed"]["plain"] == 5  # nothing was half-written before


def test_an_interrupted_run_keeps_its_finished_rows(cache, images, tmp_path, monkeypatch):
    m = _manifest(images)
    calls = {"n": 0}

    def dying_backbone(*args, **kwargs):
        model = create_backbone(*args, **kwargs)

        def hook(module, inputs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("killed")

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(features, "create_backbone", dying_backbone)
    with pytest.raises(RuntimeError, match="killed"):
        _get(cache, m, batch_size=2)
    monkeypatch.setattr(features, "create_backbone", create_backbone)
    out = _get(cache, m, batch_size=2)["plain"]
    assert cache.last_stats["computed"] == {"plain": 3}  # the first batch of 2 survived
    np.testing.assert_allclose(out, _get(FeatureCache(tmp_path / "fresh", device="cpu"), m)["plain"], atol=1e-5)


def test_a_killed_write_leaves_a_consistent_cache(cache, images, tmp_path):
    """A writer killed after writing rows but before publishing the index: garbage after the
    committed rows and a stale temporary index. Neither may be read as data."""
    before = _get(cache, _manifest(images[:4]))["plain"]
    for rows_file in sorted((tmp_path / "cache").rglob("rows.bin")):
        size = rows_file.stat().st_size
        with open(rows_file, "ab") as fh:
            fh.write(np.random.default_rng(0).integers(0, 256, size // 4 + 7, dtype=np.uint8).tobytes())
        (rows_file.parent / ".index.npy.dead.tmp").write_bytes(b"half an index")
    out = _get(cache, _manifest(images))["plain"]
    assert cache.last_stats["computed"] == {"plain": 1} and cache.last_stats["decoded"] == 1
    np.testing.assert_array_equal(out[:4], before)
    np.testing.assert_allclose(out, _get(FeatureCache(tmp_path / "fresh", device="cpu"), _manifest(images))["plain"],
                               atol=1e-5)


def test_second_backbone_at_the_same_size_skips_decoding(cache, images, monkeypatch):
    monkeypatch.setitem(BACKBONES, "test_efficientnet_twin", BackboneSpec("test_efficientnet_twin", NET, hub=False))
    m = _manifest(images)
    _get(cache, m)
    cache.get(m, "test_efficientnet_twin", SIZE, weights="random", progress=False)
    assert cache.last_stats["decoded"] == 0 and cache.last_stats["computed"] == {"plain": 5}
    assert len(cache.images.store(stored_size(SIZE, 0.95))) == 5


def test_duplicate_images_are_computed_once(cache, images):
    m = _manifest([images[0], images[1], images[0]])
    out = _get(cache, m)["plain"]
    assert cache.last_stats["forward_images"] == 2
    np.testing.assert_array_equal(out[0], out[2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(views=("plain", "mirror")), r"each one of \('plain', 'flip'\) or 'aug<k>'"),
        (dict(views=("aug01",)), r"'aug<k>'"),
        (dict(views=("plain", "plain")), r"must not repeat"),
        (dict(size=4), r"size must be an integer >= 8"),
        (dict(batch_size=0), r"batch_size must be >= 1"),
    ],
)
def test_bad_arguments(cache, images, kwargs, match):
    m = _manifest(images[:1])
    args = dict(views=("plain",), size=SIZE)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cache.get(m, NET, args.pop("size"), args.pop("views"), weights="random", progress=False, **args)
    with pytest.raises(ValueError, match=r"manifest lacks columns \['sha256'\]"):
        cache.get(m[["path"]], NET, SIZE, weights="random", progress=False)
    assert check_views("flip") == ("flip",)


# ---------------------------------------------------------------------------------- decoded cache


def test_decoded_geometry_is_the_centre_square(tmp_path):
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, 20:40] = 255  # the centre square of a 3:1 picture is white
    Image.fromarray(a).save(tmp_path / "wide.png")
    sq = decode_square(tmp_path / "wide.png", 10, "bilinear")
    assert sq.shape == (10, 10, 3)
    assert sq[:, 1:-1].min() == 255 and sq.min() > 128  # edges blend a little, as in resize-then-crop


def test_decoded_cache_hits_and_batches(tmp_path, images):
    dc = DecodedCache(tmp_path / "dec")
    shas = [sha256_file(p) for p in images]
    arr = dc.get(images[:3], shas[:3], 24, progress=False)
    assert arr.shape == (3, 24, 24, 3) and arr.dtype == np.uint8
    assert len(dc.store(24)) == 3
    batches = list(dc.iter_batches(images, shas, 24, batch_size=2, progress=False))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    got = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(got[:3], arr)
    np.testing.assert_array_equal(got[4], decode_square(images[4], 24))
    assert len(dc.store(24)) == 5
    with pytest.raises(ValueError, match=r"differ in length: 2 vs 1"):
        dc.get(images[:2], shas[:1], 24)


def test_row_store_survives_a_hard_kill(tmp_path):
    """A process killed (os._exit, no cleanup) after writing uncommitted rows."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, numpy as np
        from models.images import RowStore
        store = RowStore({str(tmp_path / "rs")!r}, np.float32)
        with store.writing((3,), commit_every_s=1e9) as w:
            w.add("a", np.full(3, 1.0))
            w.commit()
            w.add("b", np.full(3, 2.0))  # written, never published
            os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path.parent), env=_pythonpath_env())
    assert proc.returncode == 9
    from models.images import RowStore

    store = RowStore(tmp_path / "rs", np.float32)
    assert store.lookup(["a", "b"]).tolist() == [0, -1]
    with store.writing((3,)) as w:
        w.add("c", np.full(3, 3.0))
    np.testing.assert_array_equal(store.take(store.lookup(["a", "c"])), [[1, 1, 1], [3, 3, 3]])


def test_concurrent_writers_do_not_interleave(tmp_path, images):
    import threading

    shas = [sha256_file(p) for p in images]
    results = {}

    def work(k):
        results[k] = DecodedCache(tmp_path / "dec").get(images[k:] + images[:k], shas[k:] + shas[:k], 16, progress=False)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = DecodedCache(tmp_path / "dec").store(16)
    assert len(store) == 5
    for k, arr in results.items():
        np.testing.assert_array_equal(arr, np.stack([decode_square(p, 16) for p in images[k:] + images[:k]]))


def _pythonpath_env():
    import os
    from pathlib import Path

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_precision_is_part_of_the_key_and_bf16_stays_close_to_fp32(tmp_path, images):
    m = _manifest(images)
    fp32 = FeatureCache(tmp_path / "c", device="cpu", commit_every_s=0.0, precision="fp32")
    ref = _get(fp32, m, batch_size=2)["plain"]  # 5 rows, batches of 2: the last one is smaller
    bf16 = FeatureCache(tmp_path / "c", device="cpu", commit_every_s=0.0, precision="bf16")
    got = _get(bf16, m, batch_size=2)["plain"]
    assert bf16.last_stats["computed"]["plain"] == 5  # fp32 rows are not served as bf16 rows
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(got, ref)


def test_traced_fp32_rows_equal_eager_rows(tmp_path, images, monkeypatch):
    m = _manifest(images)
    traced = _get(FeatureCache(tmp_path / "a", device="cpu", commit_every_s=0.0, precision="fp32"), m,
                  batch_size=2)["plain"]
    monkeypatch.setenv("HEROSTACK_NO_JIT", "1")
    eager = _get(FeatureCache(tmp_path / "b", device="cpu", commit_every_s=0.0, precision="fp32"), m,
                 batch_size=2)["plain"]
    np.testing.assert_allclose(traced, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("value, message", [("fp8", "precision must be one of"), ("fp16", "needs CUDA")])
def test_bad_precision_is_refused(tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("HEROSTACK_PRECISION", value)
    with pytest.raises(ValueError, match=message):
        FeatureCache(tmp_path / "c", device="cpu")


def test_a_failed_trace_falls_back_to_eager_rows(tmp_path, images, monkeypatch):
    m = _manifest(images)
    monkeypatch.setenv("HEROSTACK_NO_JIT", "1")
    eager = _get(FeatureCache(tmp_path / "a", device="cpu", commit_every_s=0.0, precision="fp32"), m)["plain"]
    monkeypatch.delenv("HEROSTACK_NO_JIT")

    def broken_trace(*args, **kwargs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    got = _get(FeatureCache(tmp_path / "b", device="cpu", commit_every_s=0.0, precision="fp32"), m)["plain"]
    np.testing.assert_allclose(got, eager, atol=1e-5, rtol=1e-5)
