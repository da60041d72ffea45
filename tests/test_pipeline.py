"""Tests for helpers.pipeline: decoding, the on-disk cache, augmentation, ordering and bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import pipeline
from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX
from helpers.pipeline import (
    AugmentConfig,
    augment_images,
    decode_image,
    epoch_steps,
    load_images,
    make_dataset,
)
from helpers.plots import pipeline as pipeline_plots

SIZE = 16
BATCH = 8
NO_AUGMENT = AugmentConfig(dihedral=False, rotation_degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0)


def _write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (60, 45)) -> None:
    pixels = rng.integers(0, 256, (size[1] // 5, size[0] // 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize(size, Image.Resampling.NEAREST).save(path, quality=95)


@pytest.fixture()
def tiny_df(tmp_path: Path) -> pd.DataFrame:
    """24 small random JPEGs (60x45), classes cycling through CLASS_NAMES."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i in range(24):
        path = folder / f"img_{i:02d}.jpg"
        _write_jpeg(path, rng)
        rows.append({"image_id": path.stem, "dx": CLASS_NAMES[i % len(CLASS_NAMES)], "path": str(path)})
    return pd.DataFrame(rows)


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _npy_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


# ------------------------------------------------------------------------------------------ labels and shapes
def test_labels_follow_class_order(tiny_df, cache):
    _, labels = _collect(make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False))
    expected = [CLASS_TO_INDEX[d] for d in tiny_df["dx"]]
    assert labels.tolist() == expected
    assert labels[:7].tolist() == [0, 1, 2, 3, 4, 5, 6]  # akiec .. vasc
    assert labels.dtype == np.int32


def test_shapes_dtypes_and_batching(tiny_df, cache):
    df = tiny_df.iloc[:20]
    eval_ds = make_dataset(df, SIZE, BATCH, training=False, cache=cache, progress=False)
    assert [x.shape[0] for x, _ in eval_ds] == [8, 8, 4]
    x, y = next(iter(eval_ds))
    assert x.shape == (BATCH, SIZE, SIZE, 3) and x.dtype.name == "float32"
    assert y.shape == (BATCH,) and y.dtype.name == "int32"
    train_ds = make_dataset(df, SIZE, BATCH, training=True, cache=cache, progress=False)
    assert [x.shape[0] for x, _ in train_ds] == [8, 8]  # training drops the partial last batch
    x, _ = next(iter(train_ds))
    assert x.dtype.name == "float32" and float(x.numpy().min()) >= 0.0 and float(x.numpy().max()) <= 255.0


def test_eval_yields_exactly_the_decoded_pixels_in_df_order(tiny_df, cache):
    images, _ = _collect(make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False))
    decoded = np.stack([decode_image(p, SIZE) for p in tiny_df["path"]]).astype(np.float32)
    np.testing.assert_array_equal(images, decoded)
    again, _ = _collect(make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False))
    np.testing.assert_array_equal(again, images)


def test_row_order_and_duplicates_are_respected(tiny_df, cache):
    shuffled = pd.concat([tiny_df.iloc[::-1], tiny_df.iloc[:3]], ignore_index=True)
    images = load_images(shuffled["path"], SIZE, cache=cache, progress=False)
    reference = load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    np.testing.assert_array_equal(images[:24], reference[::-1])
    np.testing.assert_array_equal(images[24:], reference[:3])
    assert len(_npy_files(cache)) == 1  # same set of files -> same cache, whatever the order


# ------------------------------------------------------------------------------------------ decoding
def test_decode_squashes_the_whole_image(tmp_path):
    pixels = np.zeros((45, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "halves.png")
    out = decode_image(tmp_path / "halves.png", 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :9], np.broadcast_to([255, 0, 0], (20, 9, 3)))
    np.testing.assert_array_equal(out[:, 11:], np.broadcast_to([0, 0, 255], (20, 9, 3)))


def test_real_sample_images_decode(ham_dir, tmp_path):
    paths = sorted((ham_dir / "HAM10000_images_sample").glob("*.jpg"))[:4]
    if not paths:
        pytest.skip("no sample images")
    with Image.open(paths[0]) as im:
        reference = np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    images = load_images(paths, 64, cache=tmp_path, progress=False)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert 20 < images.mean() < 235 and images.std() > 5
    # DCT-domain downscaling changes pixels only slightly compared with a full decode + resize.
    assert np.abs(images[0].astype(float) - reference).mean() < 6


def test_missing_image_gives_file_not_found(tiny_df, cache):
    gone = Path(tiny_df.loc[2, "path"])
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=gone.name):
        make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False)


# ------------------------------------------------------------------------------------------ cache
def test_second_call_reads_the_cache_not_the_images(tiny_df, cache):
    first = load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    assert len(_npy_files(cache)) == 1
    for p in tiny_df["path"]:  # corrupt every source but keep size and mtime: only a decode would notice
        st = os.stat(p)
        Path(p).write_bytes(b"\0" * st.st_size)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    images, _ = _collect(make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False))
    np.testing.assert_array_equal(images, first.astype(np.float32))
    assert not list(cache.glob("*.tmp")), "temporary files must be renamed or removed"


def test_cache_rebuilt_when_a_file_changes(tiny_df, cache):
    first = load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    path = tiny_df.loc[0, "path"]
    Image.new("RGB", (60, 45), (0, 255, 0)).save(path)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
    second = load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    assert len(_npy_files(cache)) == 2
    np.testing.assert_allclose(second[0].reshape(-1, 3).mean(axis=0), (0, 255, 0), atol=3)
    np.testing.assert_array_equal(second[1:], first[1:])


def test_cache_rebuilt_when_only_mtime_changes(tiny_df, cache):
    load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    path = tiny_df.loc[4, "path"]
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
    load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    assert len(_npy_files(cache)) == 2


def test_cache_keyed_by_img_size(tiny_df, cache):
    load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    other = load_images(tiny_df["path"], 12, cache=cache, progress=False)
    assert other.shape == (24, 12, 12, 3)
    assert [np.load(p).shape[1] for p in _npy_files(cache)] in ([12, SIZE], [SIZE, 12])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_damaged_cache_file_is_rebuilt(tiny_df, cache, damage):
    first = load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    (target,) = _npy_files(cache)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not numpy at all")
    else:
        np.save(target, np.zeros((3, SIZE, SIZE, 3), dtype=np.uint8))
    again = load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(np.load(target), first)  # repaired on disk


def test_cache_true_uses_cache_dir_and_false_writes_nothing(tiny_df, tmp_path, monkeypatch):
    monkeypatch.setenv("DERM_CACHE_DIR", str(tmp_path / "default_cache"))
    load_images(tiny_df["path"], SIZE, cache=True, progress=False)
    assert len(_npy_files(tmp_path / "default_cache")) == 1
    monkeypatch.setenv("DERM_CACHE_DIR", str(tmp_path / "unused"))
    load_images(tiny_df["path"], SIZE, cache=False, progress=False)
    assert not (tmp_path / "unused").exists()
    assert pipeline.cache_file(tiny_df["path"], SIZE, cache=False) is None


def _fake_cache_file(folder: Path, name: str, n_bytes: int, age_s: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"images_{SIZE}px_n3_{name}.npy"
    path.write_bytes(b"x" * n_bytes)
    then = path.stat().st_mtime - age_s
    os.utime(path, (then, then))
    return path


def test_prune_cache_deletes_least_recently_used_first(cache):
    oldest, old, newer, newest = (
        _fake_cache_file(cache, n, 1000, age) for n, age in zip("abcd", (40, 30, 20, 10), strict=True)
    )
    other = cache / "notes.txt"
    other.write_text("not a cache file")
    deleted = pipeline.prune_cache(cache, max_bytes=2500, keep=oldest)
    assert deleted == [old, newer]  # the kept file counts towards the budget but is never deleted
    assert sorted(cache.iterdir()) == sorted([oldest, newest, other])
    assert pipeline.prune_cache(cache, max_bytes=0) == [oldest, newest]
    assert list(cache.iterdir()) == [other]


def test_writing_a_cache_prunes_the_folder_to_its_budget(tiny_df, cache, monkeypatch):
    older = _fake_cache_file(cache, "older", 10_000, 120)
    newer = _fake_cache_file(cache, "newer", 10_000, 60)
    monkeypatch.setenv("DERM_CACHE_MAX_GB", str(30_000 / 2**30))
    load_images(tiny_df["path"], SIZE, cache=cache, progress=False)  # writes a new file of ~18 KB
    assert not older.exists() and newer.exists() and len(_npy_files(cache)) == 2


def test_reading_a_cache_file_marks_it_recently_used(tiny_df, cache):
    load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    (target,) = _npy_files(cache)
    os.utime(target, (1_000_000, 1_000_000))
    load_images(tiny_df["path"], SIZE, cache=cache, progress=False)
    assert target.stat().st_mtime > 1_000_000 + 86_400


@pytest.mark.parametrize("value", ["lots", "-1", "inf", "nan"])
def test_bad_cache_budget_names_the_variable(tiny_df, cache, monkeypatch, value):
    monkeypatch.setenv("DERM_CACHE_MAX_GB", value)
    monkeypatch.setattr(pipeline, "_decode_all", lambda *args: pytest.fail("decoded before the check"))
    with pytest.raises(ValueError, match=r"DERM_CACHE_MAX_GB=.*budget in GiB"):
        load_images(tiny_df["path"], SIZE, cache=cache, progress=False)


# ------------------------------------------------------------------------------------------ augmentation
def test_training_augments_and_shuffles_eval_does_not(tiny_df, cache):
    cached = load_images(tiny_df["path"], SIZE, cache=cache, progress=False).astype(np.float32)
    plain, plain_labels = _collect(
        make_dataset(tiny_df, SIZE, BATCH, training=True, augment=False, cache=cache, progress=False)
    )
    match = [int(np.flatnonzero((cached == img).all(axis=(1, 2, 3)))[0]) for img in plain]
    assert sorted(match) == list(range(24)) and match != list(range(24))  # same images, shuffled
    assert plain_labels.tolist() == [CLASS_TO_INDEX[tiny_df["dx"][i]] for i in match]
    augmented, _ = _collect(make_dataset(tiny_df, SIZE, BATCH, training=True, cache=cache, progress=False))
    assert not any((cached == img).all(axis=(1, 2, 3)).any() for img in augmented)


def test_same_seed_same_stream_different_seed_differs(tiny_df, cache):
    def two_epochs(seed: int) -> list[np.ndarray]:
        ds = make_dataset(tiny_df, SIZE, BATCH, training=True, seed=seed, cache=cache, progress=False)
        return [_collect(ds)[0] for _ in range(2)]

    a, b, c = two_epochs(1), two_epochs(1), two_epochs(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # a new shuffle and new augmentations every epoch
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("class_sampling", [1.0, 0.0])
def test_epochs_keyed_by_number_are_the_same_from_any_start(tiny_df, cache, class_sampling: float):
    """first_epoch: an endless stream whose epoch k is the same whether the stream starts at 0 or at k (how a
    resumed run, and every copy a tf.distribute strategy makes, reads the data); every epoch differs."""

    def epochs(first: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        ds = make_dataset(
            tiny_df,
            SIZE,
            BATCH,
            True,
            seed=3,
            cache=cache,
            progress=False,
            first_epoch=first,
            class_sampling=class_sampling,
        )
        steps = epoch_steps(len(tiny_df), BATCH)
        batches = list(ds.take(n * steps).as_numpy_iterator())
        return [
            tuple(np.concatenate(part) for part in zip(*batches[i * steps : (i + 1) * steps], strict=True))
            for i in range(n)
        ]

    from_start, from_two = epochs(0, 3), epochs(2, 1)
    np.testing.assert_array_equal(from_two[0][0], from_start[2][0])
    np.testing.assert_array_equal(from_two[0][1], from_start[2][1])
    assert not np.array_equal(from_start[0][0], from_start[1][0])
    again = epochs(0, 1)  # a new iterator of the same settings: the same epoch 0
    np.testing.assert_array_equal(again[0][0], from_start[0][0])


def test_augment_images_is_reproducible_and_in_range():
    x = np.random.default_rng(1).integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    a = augment_images(x, (3, 4)).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, augment_images(x, (3, 4)).numpy())
    assert not np.array_equal(a, augment_images(x, (3, 5)).numpy())
    single = augment_images(x[0], (3, 4)).numpy()
    assert single.shape == (SIZE, SIZE, 3)


def test_augment_without_any_change_is_identity():
    x = np.random.default_rng(2).integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augment_images(x, (0, 1), NO_AUGMENT).numpy(), x.astype(np.float32))


def test_dihedral_gives_flips_and_right_angle_rotations():
    x = np.random.default_rng(3).integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    config = AugmentConfig(rotation_degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
    out = augment_images(x, (7, 7), config).numpy()
    found = set()
    for img, src in zip(out, x, strict=True):
        variants = [np.rot90(t, k) for t in (src, src[:, ::-1]) for k in range(4)]
        hits = [i for i, v in enumerate(variants) if np.array_equal(img, v.astype(np.float32))]
        assert hits, "each output must be one of the 8 flips/rotations of its input"
        found.add(hits[0])
    assert len(found) >= 3


def test_rotation_path_matches_dihedral_path_at_zero_angle():
    x = np.random.default_rng(4).integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    colourless = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    exact = augment_images(x, (5, 6), AugmentConfig(rotation_degrees=0.0, **colourless)).numpy()
    rotated = augment_images(x, (5, 6), AugmentConfig(rotation_degrees=1e-4, **colourless)).numpy()
    np.testing.assert_allclose(rotated, exact, atol=0.5)
    tilted = augment_images(x, (5, 6), AugmentConfig(rotation_degrees=30.0, **colourless)).numpy()
    assert np.abs(tilted - exact).mean() > 5


def test_augment_rejects_non_square_images():
    with pytest.raises(ValueError, match="square RGB"):
        augment_images(np.zeros((2, 8, 10, 3), dtype=np.uint8), (0, 0))


def test_measure_throughput_counts_images(tiny_df, cache):
    ds = make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False)
    assert pipeline.measure_throughput(ds, batches=5) > 0


def test_split_datasets_train_augmented_others_in_order(tiny_df, cache):
    df = tiny_df.assign(split=["train"] * 16 + ["val"] * 4 + ["test"] * 4)
    datasets = pipeline.make_split_datasets(df, SIZE, BATCH, seed=3, cache=cache, progress=False)
    assert list(datasets) == ["train", "val", "test"]
    val_images, val_labels = _collect(datasets["val"])
    np.testing.assert_array_equal(
        val_images, load_images(df["path"][16:20], SIZE, cache=cache).astype(np.float32)
    )
    assert val_labels.tolist() == [CLASS_TO_INDEX[d] for d in df["dx"][16:20]]
    assert sum(len(y) for _, y in datasets["train"]) == 16
    with pytest.raises(ValueError, match="split_by_lesion"):
        pipeline.make_split_datasets(tiny_df, SIZE, BATCH, cache=cache)
    with pytest.raises(ValueError, match="unknown split"):
        pipeline.make_split_datasets(df.assign(split="holdout"), SIZE, BATCH, cache=cache)


def test_time_cache_first_pass_decodes_second_reads(tiny_df, monkeypatch):
    decoded = []
    monkeypatch.setattr(pipeline, "decode_image", lambda p, size: decoded.append(p) or decode_image(p, size))
    first_s, second_s = pipeline.time_cache(tiny_df["path"], SIZE)
    assert sorted(decoded) == sorted(tiny_df["path"])  # each image decoded once, the second pass is cached
    assert first_s > 0 and second_s > 0


def test_pipeline_figures_are_drawn_and_saved(tiny_df, cache, tmp_path):
    open_before = plt.get_fignums()
    images, labels = next(
        iter(make_dataset(tiny_df, SIZE, BATCH, training=False, cache=cache, progress=False))
    )
    fig = pipeline_plots.plot_batch(images, labels, save_path=tmp_path / "batch.png")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["akiec", "bcc", "bkl"]
    fig = pipeline_plots.plot_augmentation_grid(
        images[0], augment_images, n=BATCH - 1, save_path=tmp_path / "g.png"
    )
    assert sum(bool(ax.images) for ax in fig.axes) == BATCH
    pipeline_plots.plot_cache_timing(2.0, 0.1, 24, save_path=tmp_path / "cache.png")
    pipeline_plots.plot_throughput({"train": 3000.0, "val": 9000.0}, save_path=tmp_path / "tp.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("batch.png", "g.png", "cache.png", "tp.png"))
    assert plt.get_fignums() == open_before, "figures are not left open in pyplot"


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.iloc[0:0], "no rows"),
        (lambda df: df.drop(columns=["dx"]), "missing column"),
        (lambda df: df.drop(columns=["path"]), "missing column"),
        (lambda df: df.assign(dx=["melanoma"] + list(df["dx"][1:])), "unknown dx"),
        (lambda df: df.assign(path=[None] + list(df["path"][1:])), "empty 'path'"),
        (lambda df: df.to_dict(), "pandas DataFrame"),
    ],
)
def test_bad_dataframe(tiny_df, cache, change, message):
    with pytest.raises(ValueError, match=message):
        make_dataset(change(tiny_df), SIZE, BATCH, training=False, cache=cache, progress=False)
