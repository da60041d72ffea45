"""Image pipeline: decode and resize each image once, cache it as uint8, then augment, batch and prefetch.

Images are decoded with Pillow (JPEG DCT-domain downscaling via ``Image.draft``, EXIF orientation applied,
any colour mode converted to RGB) and resized to ``img_size`` x ``img_size`` by *squashing* the whole image
(no crop, like the original project), so lesion borders near the edge are kept. The decoded uint8 array is
kept in memory and saved under :func:`helpers.paths.cache_dir` as an ``.npy`` file keyed by a hash of the
files (path, size, mtime) and ``img_size``, so later runs skip decoding entirely. The cache folder is kept
under a size budget (:func:`cache_budget`): writing a new cache file deletes the least recently used ones.

Datasets yield ``(images, labels)``: float32 pixels in 0..255 of shape ``(batch, img_size, img_size, 3)`` (the
models rescale inside themselves) and int32 class ids in :data:`helpers.classes.CLASS_NAMES` order.
"""

from __future__ import annotations

import contextlib
import hashlib
import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from helpers.augment import AugmentConfig, augment_images
from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX
from helpers.clinical import encode_metadata
from helpers.files import atomic_write, free_bytes, megabytes, remove_stale_temporaries
from helpers.mixing import MixConfig, mix_batch
from helpers.paths import cache_dir

CACHE_VERSION = 2
"""Bump when decoding/resizing changes so old cache files are no longer used."""

HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""Pillow modes of 16-bit grayscale images: scaled from 0..65535 to 0..255 (Pillow's convert would clip)."""

CACHE_SPACE_MARGIN = 256 * 2**20
"""Free space (bytes) left on the cache's disk after writing a cache file; otherwise no cache is written."""

CACHE_BUDGET = 5 * 2**30
"""Default size budget (bytes) of the image-cache folder; ``DERM_CACHE_MAX_GB`` overrides it."""

_CACHE_GLOB = "images_*px_n*_*.npy"
_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------- decoding
def decode_image(path: str | Path, img_size: int) -> np.ndarray:
    """Decode one image file to a uint8 RGB array of shape ``(img_size, img_size, 3)``.

    JPEGs are downscaled in the DCT domain first (``Image.draft``), so even a 12000 x 9000 photo decodes at
    a fraction of its size; then the EXIF orientation is applied, 16-bit grayscale is scaled to 8 bits, any
    other mode is converted to RGB, and the image is squashed to a square with bilinear (antialiased)
    resampling. Raises FileNotFoundError for a missing file and ValueError naming the file and what to do
    when it cannot be read or decoded.
    """
    img_size = _check_positive_int(img_size, "img_size")
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.draft("RGB", (img_size, img_size))
            im = ImageOps.exif_transpose(im)
            if im.mode in HIGH_BIT_DEPTH_MODES:
                im = im.point(lambda v: v / 257).convert("L")
            rgb = im.convert("RGB").resize((img_size, img_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {path}") from None
    except PermissionError as err:
        raise ValueError(
            f"Cannot read image {path}: permission denied. Make it readable (chmod a+r) or remove it from "
            "the metadata (helpers.data.load_metadata excludes unreadable files)."
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"Cannot decode image {path}: {err}. Remove it from the metadata (helpers.data.load_metadata "
            "excludes unreadable files) or replace the file."
        ) from err


def decode_mask(path: str | Path, img_size: int) -> np.ndarray:
    """Decode one lesion mask to a uint8 ``(img_size, img_size)`` array of 0 (background) and 255 (lesion).

    The mask is resized exactly as :func:`decode_image` resizes its image (squashed to the square, bilinear),
    whatever its own size, then thresholded at 128 (the official masks are 0/255; scaled ones are
    anti-aliased). Raises ValueError naming the file when it cannot be decoded."""
    img_size = _check_positive_int(img_size, "img_size")
    try:
        with Image.open(path) as im:
            grey = (
                ImageOps.exif_transpose(im)
                .convert("L")
                .resize((img_size, img_size), Image.Resampling.BILINEAR)
            )
            return np.where(np.asarray(grey) >= 128, 255, 0).astype(np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"Mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot decode lesion mask {path}: {err}. Replace the file or remove it.") from err


def _decode_all(
    paths: Sequence[str], img_size: int, workers: int, progress: bool, masks: bool = False
) -> np.ndarray:
    """Decode ``paths`` (images, or lesion masks) into one preallocated uint8 array, using a thread pool
    (Pillow releases the GIL)."""
    decoder = decode_mask if masks else decode_image
    out = np.empty((len(paths), img_size, img_size, *(() if masks else (3,))), dtype=np.uint8)
    what = "masks" if masks else "images"
    bar = tqdm(total=len(paths), desc=f"Decoding {what} to {img_size}px", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        for i, arr in enumerate(pool.map(lambda p: decoder(p, img_size), paths)):
            out[i] = arr
            bar.update()
    return out


# --------------------------------------------------------------------------------------------- caching
def cache_file(paths: Sequence[str | Path], img_size: int, cache: bool | str | Path = True) -> Path | None:
    """Return the ``.npy`` cache path for these files at ``img_size`` (None when ``cache`` is False).

    The name holds a hash of every unique path with its size and mtime, ``img_size`` and the cache version,
    so editing, replacing or adding a file, or changing the size, selects a different file.
    """
    img_size = _check_positive_int(img_size, "img_size")
    if cache is False:
        return None
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise ValueError(f"cache must be True, False or a folder path, got {cache!r}.")
    folder = cache_dir() if cache is True else Path(cache)
    unique = sorted({str(p) for p in paths})
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{img_size}".encode())
    for p in unique:
        st = _stat(p)
        digest.update(f"|{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return folder / f"images_{img_size}px_n{len(unique)}_{digest.hexdigest()[:20]}.npy"


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Image file not found: {path}. Re-run helpers.data.load_metadata so missing files are excluded."
        ) from None


def _read_cache(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray | None:
    """Load a cache file, or return None when it is missing, unreadable, truncated or of the wrong shape."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != expected_shape or arr.dtype != np.uint8:
        return None
    with contextlib.suppress(OSError):  # mark it recently used (a read-only cache is still read)
        os.utime(path)
    return arr


def _write_cache(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` atomically (see :func:`helpers.files.atomic_write`); warn and go on when it fails."""
    try:
        with atomic_write(path) as f:
            np.save(f, arr, allow_pickle=False)
    except OSError as err:
        warnings.warn(f"{err} Continuing without a disk cache.", stacklevel=3)


def _cache_fits(path: Path, n_bytes: int) -> bool:
    """Whether a cache file of ``n_bytes`` leaves :data:`CACHE_SPACE_MARGIN` free; warns when it does not."""
    free = free_bytes(path.parent)
    if free >= n_bytes + CACHE_SPACE_MARGIN:
        return True
    warnings.warn(
        f"Not writing the image cache {path}: it needs {megabytes(n_bytes)} and only {megabytes(free)} are "
        f"free there (keeping {megabytes(CACHE_SPACE_MARGIN)} for checkpoints). Images are decoded in memory "
        "instead; free disk space or set DERM_CACHE_DIR to a folder on a larger disk to cache them.",
        stacklevel=4,
    )
    return False


def _load_unique(
    paths: Sequence[str],
    img_size: int,
    cache: bool | str | Path,
    workers: int | None,
    progress: bool,
    masks: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, rows)``: uint8 images (or ``masks``, :func:`decode_mask`) of the sorted unique paths, and
    each input path's row in them."""
    unique, rows = np.unique(np.asarray(paths, dtype=str), return_inverse=True)
    target = cache_file(unique, img_size, cache)
    budget = cache_budget() if target is not None else None  # a bad DERM_CACHE_MAX_GB fails before decoding
    shape = (len(unique), img_size, img_size, *(() if masks else (3,)))
    images = _read_cache(target, shape) if target is not None else None
    if images is None:
        if target is not None:
            remove_stale_temporaries(target.parent)  # left by writers that were killed
            target = target if _cache_fits(target, int(np.prod(shape))) else None
        workers = workers or min(os.cpu_count() or 1, 8)
        images = _decode_all(list(unique), img_size, workers, progress, masks)
        if target is not None:
            _write_cache(target, images)
            prune_cache(target.parent, budget, keep=target)
    return images, rows.astype(np.int32)


def cache_budget() -> int:
    """The image-cache folder's size budget in bytes: ``DERM_CACHE_MAX_GB`` (GiB) or :data:`CACHE_BUDGET`."""
    value = os.environ.get("DERM_CACHE_MAX_GB")
    if value is None:
        return CACHE_BUDGET
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if not 0 <= budget < float("inf"):
        raise ValueError(
            f"DERM_CACHE_MAX_GB={value!r} is not a size: set it to the image cache's budget in GiB (e.g. 5), "
            "or unset it for the default."
        )
    return int(budget * 2**30)


def prune_cache(
    folder: str | Path | None = None, max_bytes: int | None = None, keep: Path | None = None
) -> list[Path]:
    """Delete the least recently used image-cache files in ``folder`` (default :func:`cache_dir`) until the
    rest take at most ``max_bytes`` (default :func:`cache_budget`); ``keep`` is never deleted. Returns the
    deleted paths. ``prune_cache(max_bytes=0)`` empties the cache; other files in the folder are untouched.
    """
    folder = cache_dir() if folder is None else Path(folder)
    max_bytes = cache_budget() if max_bytes is None else max_bytes
    files = []
    for path in folder.glob(_CACHE_GLOB):
        with contextlib.suppress(OSError):  # deleted meanwhile by another process
            st = path.stat()
            files.append((st.st_mtime_ns, st.st_size, path))
    total = sum(size for _, size, _ in files)
    deleted = []
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        if keep is not None and path == keep:
            continue
        try:
            path.unlink()
            deleted.append(path)
        except FileNotFoundError:  # deleted meanwhile by another process
            pass
        except OSError:  # e.g. a read-only cache folder: leave the file
            continue
        total -= size
    return deleted


def load_images(
    paths: Sequence[str | Path],
    img_size: int,
    cache: bool | str | Path = True,
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Decoded uint8 images ``(len(paths), img_size, img_size, 3)`` in the given order, via the disk cache.

    ``cache``: True uses :func:`helpers.paths.cache_dir`, a path that folder, False decodes without saving.
    """
    img_size = _check_positive_int(img_size, "img_size")
    if len(paths) == 0:
        raise ValueError("load_images got no paths.")
    images, rows = _load_unique([str(p) for p in paths], img_size, cache, workers, progress)
    return images if np.array_equal(rows, np.arange(len(rows))) else images[rows]


def load_masks(
    paths: Sequence[str | Path], img_size: int, cache: bool | str | Path = True, progress: bool = True
) -> np.ndarray:
    """Lesion masks as booleans ``(len(paths), img_size, img_size)`` (True: lesion), each resized exactly as
    its image is (:func:`decode_mask`), via the same disk cache as the images. Masks are never images."""
    img_size = _check_positive_int(img_size, "img_size")
    if len(paths) == 0:
        raise ValueError("load_masks got no paths.")
    masks, rows = _load_unique([str(p) for p in paths], img_size, cache, None, progress, masks=True)
    return masks[rows] > 0


# --------------------------------------------------------------------------------------------- dataset
def make_dataset(
    df: pd.DataFrame,
    img_size: int,
    batch_size: int,
    training: bool,
    seed: int = 42,
    cache: bool | str | Path = True,
    augment: bool | AugmentConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    with_masks: bool = False,
    metadata: bool = False,
    missing_metadata: bool = False,
    class_sampling: float = 1.0,
    first_epoch: int | None = None,
    mix: MixConfig | None = None,
    teacher: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Batched ``tf.data.Dataset`` of ``(float32 images 0..255, int32 labels)`` for the rows of ``df``.

    ``df`` needs columns ``path`` and ``dx`` (a class code). Images are decoded once and cached (see
    :func:`load_images`; ``cache`` True/folder/False). ``training=True`` reshuffles every epoch and augments
    (``augment=None`` means "augment when training"; pass False, True or an :class:`AugmentConfig`).
    ``training=False`` keeps the row order of ``df``. Training drops the last partial batch (so every step has
    the same shape); evaluation keeps every row. Shuffle order and augmentations are reproducible for a given
    ``seed`` (and TF global seed, if one is set). ``class_sampling`` other than 1 (training only) draws each
    batch with replacement so that a class gets a share of the draws proportional to its image count to this
    power (0.5: square-root, 0: class-balanced); an epoch has as many batches as a shuffled pass would.

    ``first_epoch`` (training only): an endless stream of epochs from that one on, each epoch's shuffle and
    augmentation keyed by its number alone (stateless), instead of one epoch that reshuffles on every new
    iterator. Copies of the dataset (one per replica or worker of a ``tf.distribute`` strategy) and a resumed
    run then read exactly the same batches; ``epoch_steps`` gives the batches per epoch.

    ``metadata=True`` yields ``({"image": images, "metadata": vectors}, labels)`` for a metadata model: each
    row's age, sex and body site encoded by :func:`helpers.clinical.encode_metadata` (``missing_metadata``:
    absent columns count as missing instead of an error). ``with_masks=True`` (every row needs a
    ``mask_path``) yields dicts ``{"image", "mask", "label"}`` instead: each lesion mask (bool ``(S, S)``)
    resized and geometrically augmented exactly as its image (not for ``fit``; for studying where a model
    looks).

    Soft targets (training only): ``mix`` (:class:`helpers.mixing.MixConfig`) mixes each augmented batch by
    Mixup or CutMix and yields float32 ``(batch, 7)`` soft labels instead of class ids; ``teacher`` (a model
    from 0..255 images to class probabilities, e.g. a trained ``.keras``) sees exactly the image the student
    sees, mixed or not, and its probabilities are appended: labels ``(batch, 14)``, the soft label first.
    The mixing draws are keyed like the augmentation's (by ``seed``, and by epoch with ``first_epoch``).
    """
    img_size = _check_positive_int(img_size, "img_size")
    batch_size = _check_positive_int(batch_size, "batch_size")
    labels = _labels(df)
    config = _augment_config(augment, training)
    soft = _check_soft_targets(mix, teacher, training, metadata, with_masks)
    vectors = tf.constant(encode_metadata(df, missing_metadata)) if metadata else None
    images, rows = _load_unique(df["path"].astype(str).tolist(), img_size, cache, workers, progress)
    pixels = tf.constant(images)
    del images
    masks = (
        tf.constant(_masks_of(df, img_size, cache, progress).astype(np.uint8) * 255) if with_masks else None
    )

    index = np.arange(len(rows), dtype=np.int32)
    keyed = training and first_epoch is not None
    if keyed:
        ds = _keyed_epochs(rows, labels, batch_size, seed, class_sampling, first_epoch)
    elif training and class_sampling != 1.0:
        ds = _class_sampled_batches(rows, labels, batch_size, seed, class_sampling)
    else:
        ds = tf.data.Dataset.from_tensor_slices((rows, labels, index))
        if training:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=training and len(rows) >= batch_size)

    def gather(r: tf.Tensor, y: tf.Tensor, i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        x = tf.gather(pixels, r)
        return (x if masks is None else tf.concat([x, tf.gather(masks, i)[..., None]], axis=-1)), y, i

    if keyed:  # batches of (rows, labels, index, augmentation seed)
        ds = ds.map(lambda r, y, i, s: (*gather(r, y, i), s), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    if config is None:
        ds = ds.map(
            lambda *batch: (tf.cast(batch[0], tf.float32), *batch[1:3]), num_parallel_calls=tf.data.AUTOTUNE
        )
    elif keyed:
        ds = ds.map(
            lambda x, y, i, s: (augment_images(x, s, config), y, i), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (augment_images(batch[0], s, config), *batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if soft:
        ds = _soft_targets(
            ds, mix, teacher, seed, epoch_steps(len(rows), batch_size) * first_epoch if keyed else None
        )
    if masks is not None:
        ds = ds.map(lambda x, y, i: {"image": x[..., :3], "mask": x[..., 3] > 127.5, "label": y})
    elif vectors is not None:
        ds = ds.map(lambda x, y, i: ({"image": x, "metadata": tf.gather(vectors, i)}, y))
    else:
        ds = ds.map(lambda x, y, i: (x, y))
    return ds.prefetch(tf.data.AUTOTUNE)


def _check_soft_targets(
    mix: MixConfig | None, teacher: Callable | None, training: bool, metadata: bool, with_masks: bool
) -> bool:
    """Whether the dataset yields soft targets; ValueError for a combination that cannot."""
    if mix is not None and not isinstance(mix, MixConfig):
        raise ValueError(f"mix must be None or a helpers.mixing.MixConfig, got {mix!r}.")
    if teacher is not None and not callable(teacher):
        raise ValueError(f"teacher must be None or a Keras model, got {type(teacher).__name__}.")
    soft = (mix is not None and mix.active) or teacher is not None
    if soft and (not training or metadata or with_masks):
        raise ValueError(
            "Mixup/CutMix and a teacher apply to image-only training datasets (training=True, "
            "metadata=False, with_masks=False)."
        )
    return soft


def _soft_targets(
    ds: tf.data.Dataset,
    mix: MixConfig | None,
    teacher: Callable[[tf.Tensor], tf.Tensor] | None,
    seed: int,
    first_step: int | None,
) -> tf.data.Dataset:
    """``(x, class ids, index)`` batches to ``(x, soft targets, index)``: one-hot labels, mixed by ``mix``,
    with the ``teacher``'s probabilities of the mixed images appended. Mixing seeds: ``(seed + 2, step)``
    from step ``first_step`` on (epochs keyed by number), else a seeded stream that moves on each epoch."""
    if first_step is None:
        seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
    else:
        seeds = tf.data.Dataset.counter(first_step, dtype=tf.int64).map(
            lambda k: tf.stack([tf.constant(seed + 2, tf.int64), k])
        )
    classes = len(CLASS_NAMES)

    def targets(batch: tuple, s: tf.Tensor) -> tuple:
        x, y, i = batch
        t = tf.one_hot(y, classes, dtype=tf.float32)
        if mix is not None:
            x, t = mix_batch(x, t, s, mix)
        if teacher is not None:
            t = tf.concat([t, teacher_probabilities(teacher, x)], axis=-1)
        return x, t, i

    return tf.data.Dataset.zip(ds, seeds).map(targets, num_parallel_calls=tf.data.AUTOTUNE)


def teacher_probabilities(teacher: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor) -> tf.Tensor:
    """The teacher's class probabilities for a batch of 0..255 images, resized to its input size when that
    differs."""
    size = getattr(teacher, "inputs", None) and teacher.inputs[0].shape[1]
    if size and size != images.shape[1]:
        images = tf.image.resize(images, (size, size))
    return tf.cast(teacher(images, training=False), tf.float32)


def epoch_steps(n_rows: int, batch_size: int) -> int:
    """Batches in a training epoch of ``n_rows`` rows (the last partial batch dropped, unless it is the only
    one)."""
    return max(1, n_rows // batch_size)


def _keyed_epochs(
    rows: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, power: float, first_epoch: int
) -> tf.data.Dataset:
    """Endless training batches ``(rows, labels, row index, augmentation seed)`` from epoch ``first_epoch``
    on; epoch ``e`` is a function of ``(seed, e)`` only: a stateless shuffle (or, for ``power`` other than 1,
    stateless class-weighted draws as :func:`_class_sampled_batches`)."""
    steps, size = epoch_steps(len(rows), batch_size), min(batch_size, len(rows))
    rows_t, labels_t = tf.constant(rows), tf.constant(labels)
    logits = _row_logits(labels, power)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        step_keys = e * steps + tf.range(steps, dtype=tf.int64)
        if power == 1.0:
            order = tf.random.experimental.stateless_shuffle(
                tf.range(len(rows), dtype=tf.int32), tf.stack([tf.constant(seed, tf.int64), e])
            )
            index = tf.reshape(order[: steps * size], (steps, size))
        else:
            index = tf.map_fn(
                lambda k: tf.random.stateless_categorical(
                    logits, size, tf.stack([tf.constant(seed + 7919, tf.int64), k]), dtype=tf.int32
                )[0],
                step_keys,
                fn_output_signature=tf.int32,
            )
        augment_seeds = tf.stack([tf.fill([steps], tf.constant(seed + 1, tf.int64)), step_keys], axis=1)
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(rows_t, index), tf.gather(labels_t, index), index, augment_seeds)
        )

    return tf.data.Dataset.counter(first_epoch, dtype=tf.int64).flat_map(epoch)


def _row_logits(labels: np.ndarray, power: float) -> tf.Tensor:
    """Log-probabilities ``(1, n)`` of drawing each row, so that class ``c`` gets a share of the draws
    proportional to ``n_c ** power``."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(np.float64)
    weights = counts[labels] ** (power - 1.0)
    return tf.constant(np.log(weights / weights.sum())[None, :], dtype=tf.float32)


def _class_sampled_batches(
    rows: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, power: float
) -> tf.data.Dataset:
    """Batches of ``(rows, labels, row index)`` drawn with replacement, class ``c`` getting a share of the
    draws proportional to ``n_c ** power``; as many batches per epoch as a shuffled pass over the rows."""
    logits = _row_logits(labels, power)
    rows_t, labels_t = tf.constant(rows), tf.constant(labels)

    def draw(s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        index = tf.random.stateless_categorical(logits, batch_size, s, dtype=tf.int32)[0]
        return tf.gather(rows_t, index), tf.gather(labels_t, index), index

    seeds = tf.data.Dataset.random(seed=seed + 7919, rerandomize_each_iteration=True).batch(2)
    return seeds.take(max(1, len(rows) // batch_size)).map(draw)


def _masks_of(df: pd.DataFrame, img_size: int, cache: bool | str | Path, progress: bool) -> np.ndarray:
    """The lesion masks of every row of ``df``; ValueError naming the rows without one."""
    if "mask_path" not in df.columns or df["mask_path"].isna().any():
        rows = df.index[df["mask_path"].isna()].tolist()[:5] if "mask_path" in df.columns else "all"
        raise ValueError(
            f"with_masks=True needs a lesion mask for every row; rows without one: {rows}. Put the masks "
            "(<image_id>_segmentation.png) below the data folder, or keep only rows with a mask_path."
        )
    return load_masks(df["mask_path"].astype(str).tolist(), img_size, cache, progress)


def make_split_datasets(
    df: pd.DataFrame,
    img_size: int,
    batch_size: int,
    seed: int = 42,
    cache: bool | str | Path = True,
    augment: bool | AugmentConfig | None = None,
    progress: bool = True,
) -> dict[str, tf.data.Dataset]:
    """One :func:`make_dataset` per split in ``df["split"]``, keyed ``"train"``, ``"val"``, ``"test"``.

    Train is shuffled and augmented (``augment`` as in make_dataset); val and test keep their row order and
    are never augmented.
    """
    if not isinstance(df, pd.DataFrame) or "split" not in df.columns:
        raise ValueError("df needs a 'split' column: call helpers.splits.split_by_lesion(df) first.")
    unknown = sorted(set(df["split"].astype(str)) - set(_SPLITS))
    if unknown:
        raise ValueError(f"df has unknown split value(s) {unknown}; expected {list(_SPLITS)}.")
    return {
        name: make_dataset(
            df[df["split"] == name].reset_index(drop=True),
            img_size,
            batch_size,
            training=name == "train",
            seed=seed,
            cache=cache,
            augment=augment if name == "train" else False,
            progress=progress,
        )
        for name in _SPLITS
        if (df["split"] == name).any()
    }


def _augment_config(augment: bool | AugmentConfig | None, training: bool) -> AugmentConfig | None:
    if isinstance(augment, AugmentConfig):
        return augment
    if augment is None:
        augment = training
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be None, True, False or an AugmentConfig, got {augment!r}.")
    return AugmentConfig() if augment else None


def _labels(df: pd.DataFrame) -> np.ndarray:
    """Validate ``df`` and return its int32 class ids."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame (from helpers.data.load_metadata), got {type(df)}.")
    missing = [c for c in ("path", "dx") if c not in df.columns]
    if missing:
        raise ValueError(
            f"df is missing column(s) {missing}; expected the helpers.data.load_metadata columns."
        )
    if df.empty:
        raise ValueError("df has no rows: nothing to build a dataset from (check the split / max_images).")
    if df["path"].isna().any():
        raise ValueError(f"df has empty 'path' values in rows {df.index[df['path'].isna()].tolist()[:5]}.")
    unknown = sorted(set(df["dx"].astype(str)) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"df has unknown dx value(s) {unknown}; expected one of {list(CLASS_NAMES)}.")
    return df["dx"].map(CLASS_TO_INDEX).to_numpy(dtype=np.int32)


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------------------------- benchmark
def measure_throughput(ds: tf.data.Dataset, batches: int = 50) -> float:
    """Images per second ``ds`` delivers over ``batches`` batches (after one warm-up batch; repeats ds)."""
    batches = _check_positive_int(batches, "batches")
    it = iter(ds.repeat())
    next(it)
    n = 0
    start = time.perf_counter()
    for _ in range(batches):
        images, _labels_batch = next(it)
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def time_cache(paths: Sequence[str | Path], img_size: int) -> tuple[float, float]:
    """Seconds to prepare ``paths`` by decoding (into a fresh temporary cache), then again from that cache."""
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(2):
            start = time.perf_counter()
            load_images(paths, img_size, cache=folder)
            seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]
