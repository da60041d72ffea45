"""Catalogue of bad and unusual image files, each through load_metadata, make_dataset and predict_image.

Unusable files are excluded by ``load_metadata`` and counted (with the reason) in its validation report; a
dataset or prediction that still meets one fails with a message naming the file and what to do. Unusual but
valid files (any colour mode, bit depth, orientation, shape or size) are decoded like what they show.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from robustness_utils import without_root

from helpers.classes import CLASS_NAMES
from helpers.data import ValidationReport, check_image, load_metadata
from helpers.pipeline import decode_image, make_dataset
from helpers.predict import load_image, predict_image

SIZE = 32
RED, BLUE = (230, 20, 20), (20, 20, 230)


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2], arr[:, width // 2 :] = RED, BLUE
    return Image.fromarray(arr)


def _noise_jpeg(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8)).save(path)
    return path


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the red left half ends up on top
    _halves(64, 32).save(path, exif=exif, quality=95)


def _truncated(path: Path) -> None:
    data = _noise_jpeg(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _unreadable(path: Path) -> None:
    _noise_jpeg(path).chmod(0)


# kind -> (file name, writer)
UNUSABLE: dict[str, tuple[str, Callable[[Path], object]]] = {
    "zero_bytes": ("case.jpg", lambda p: p.write_bytes(b"")),
    "truncated_jpeg": ("case.jpg", _truncated),
    "random_bytes_named_jpg": ("case.jpg", lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000))),
    "unreadable_permissions": ("case.jpg", _unreadable),
}
# kind -> (reason in the validation report, make_dataset message, predict_image message), after the file name
UNUSABLE_MESSAGES = {
    "zero_bytes": (
        "empty file (0 bytes)",
        "cannot identify image file.*Remove it from the metadata",
        r"is empty \(0 bytes\).*Copy it again",
    ),
    "truncated_jpeg": (
        "image file is truncated",
        "image file is truncated.*Remove it from the metadata",
        "image file is truncated.*Pass a JPEG or PNG file",
    ),
    "random_bytes_named_jpg": (
        "cannot identify image file",
        "cannot identify image file.*Remove it from the metadata",
        "cannot identify image file.*Pass a JPEG or PNG file",
    ),
    "unreadable_permissions": (
        "permission denied (make it readable: chmod a+r)",
        r"permission denied.*chmod a\+r",
        r"permission denied.*chmod a\+r",
    ),
}

ODD: dict[str, tuple[str, Callable[[Path], object]]] = {
    "png_named_jpg": ("case.jpg", lambda p: Image.new("RGB", (40, 30), RED).save(p, format="PNG")),
    "grayscale_jpeg": ("case.jpg", lambda p: Image.new("L", (80, 60), 90).save(p, quality=95)),
    "grayscale_alpha_png": ("case.png", lambda p: Image.new("LA", (40, 30), (90, 255)).save(p)),
    "cmyk_jpeg": ("case.jpg", lambda p: Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(p, quality=95)),
    "png_16bit": (
        "case.png",
        lambda p: Image.fromarray(np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)).save(p),
    ),
    "rgba_png": ("case.png", lambda p: Image.new("RGBA", (50, 40), (10, 200, 30, 128)).save(p)),
    "palette_png": ("case.png", lambda p: Image.new("RGB", (45, 45), (200, 100, 50)).quantize(4).save(p)),
    "exif_rotated_jpeg": ("case.jpg", _exif_rotated),
    "extreme_aspect_ratio": ("case.jpg", lambda p: _halves(3000, 4).save(p, quality=95)),
    "tiny_png": ("case.png", lambda p: Image.new("RGB", (5, 5), (40, 90, 200)).save(p)),
    "very_large_jpeg": ("case.jpg", None),  # the module's huge_jpeg, linked
}


def _close_to(colour: tuple) -> Callable[[np.ndarray], bool]:
    return lambda image: np.abs(image.reshape(-1, 3).astype(int) - colour).max() <= 8


def _gray_ramp(image: np.ndarray) -> bool:  # a 0..65535 ramp must stay a ramp, not clip to white
    return 100 < image.mean() < 155 and image[:, 0].max() < 20 and image[:, -1].min() > 235


def _red_then_blue(axis: int) -> Callable[[np.ndarray], bool]:
    """First half red, second half blue along ``axis`` (a few pixels either side of the edge ignored)."""

    def check(image: np.ndarray) -> bool:
        first = image.take(range(2, SIZE // 2 - 2), axis=axis).reshape(-1, 3).astype(int)
        second = image.take(range(SIZE // 2 + 2, SIZE - 2), axis=axis).reshape(-1, 3).astype(int)
        return np.abs(first - RED).max() < 40 and np.abs(second - BLUE).max() < 40

    return check


CONTENT: dict[str, Callable[[np.ndarray], bool]] = {
    "png_named_jpg": _close_to(RED),
    "grayscale_jpeg": _close_to((90, 90, 90)),
    "grayscale_alpha_png": _close_to((90, 90, 90)),
    "cmyk_jpeg": lambda image: np.abs(image.reshape(-1, 3).astype(int) - (255, 0, 0)).max() <= 30,
    "png_16bit": _gray_ramp,
    "rgba_png": _close_to((10, 200, 30)),
    "palette_png": _close_to((200, 100, 50)),
    "exif_rotated_jpeg": _red_then_blue(axis=0),  # top red, bottom blue as displayed
    "extreme_aspect_ratio": _red_then_blue(axis=1),  # squashed whole: left red, right blue
    "tiny_png": _close_to((40, 90, 200)),
    "very_large_jpeg": _close_to((180, 120, 90)),
}


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12000 x 9000 JPEG (a 108-megapixel photo)."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("RGB", (12000, 9000), (180, 120, 90)).save(path, quality=80)
    return path


def _dataset(root: Path, name: str, write: Callable[[Path], object] | None, huge: Path) -> Path:
    """One good 40 x 30 JPEG per class plus the case's file (labelled mel), listed in metadata.csv."""
    images = root / "images"
    images.mkdir(parents=True)
    ids = [f"good_{c}" for c in CLASS_NAMES]
    for image_id in ids:
        Image.new("RGB", (40, 30), (120, 80, 60)).save(images / f"{image_id}.jpg")
    case = images / name
    shutil.copy(huge, case) if write is None else write(case)
    rows = [*zip(ids, CLASS_NAMES, strict=True), ("case", "mel")]
    pd.DataFrame(rows, columns=["image_id", "dx"]).to_csv(root / "metadata.csv", index=False)
    return case


def _dataset_images(df: pd.DataFrame) -> np.ndarray:
    ds = make_dataset(df, SIZE, 16, training=False, cache=False, progress=False)
    return np.concatenate([x.numpy() for x, _ in ds]).astype(np.uint8)


# ------------------------------------------------------------------------------------------ unusable files
@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_unusable_image_is_excluded_counted_and_named(kind, open_tmp_path, model_files, huge_jpeg):
    case = _dataset(open_tmp_path, *UNUSABLE[kind], huge_jpeg)
    reason, dataset_message, predict_message = UNUSABLE_MESSAGES[kind]
    named = re.escape(str(case))
    with without_root():
        excluded = (
            f"Excluded 1 unreadable image file.*{named} \\(.*{re.escape(reason)}.*Re-download or replace"
        )
        with pytest.warns(UserWarning, match=excluded):
            df = load_metadata(open_tmp_path, verbose=False)
        report = df.attrs["validation"]
        assert "case" not in set(df["image_id"]) and report["usable_images"] == 7
        assert [(c["image_id"], c["path"]) for c in report["corrupt_images"]] == [("case", str(case))]
        assert reason in report["corrupt_images"][0]["reason"]
        assert f"Excluded: 1 unreadable/corrupt image files: {case}" in ValidationReport(**report).summary()
        unchecked = load_metadata(open_tmp_path, check_images=False, verbose=False)
        with pytest.raises(ValueError, match=f"{named}.*{dataset_message}"):
            make_dataset(unchecked, SIZE, 16, training=False, cache=False, progress=False)
        with pytest.raises(ValueError, match=f"{named}.*{predict_message}"):
            predict_image(model_files["keras"], case)


def test_unreadable_image_folder_is_reported_and_its_images_counted_missing(open_tmp_path, huge_jpeg):
    _dataset(open_tmp_path, "case.jpg", lambda p: Image.new("RGB", (40, 30)).save(p), huge_jpeg)
    locked = open_tmp_path / "images" / "locked"
    locked.mkdir()
    shutil.move(open_tmp_path / "images" / "good_vasc.jpg", locked / "good_vasc.jpg")
    locked.chmod(0)
    with without_root(), pytest.warns(UserWarning, match=f"Could not read 1 folder.*{locked}.*chmod a\\+rx"):
        df = load_metadata(open_tmp_path, verbose=False)
    report = df.attrs["validation"]
    assert report["unreadable_folders"] == [str(locked)]
    assert report["missing_images"] == ["good_vasc"] and report["classes_without_images"] == ["vasc"]
    assert f"Skipped:  1 folders that cannot be read: {locked}" in ValidationReport(**report).summary()


# ------------------------------------------------------------------------------------------ unusual files
@pytest.mark.parametrize("kind", list(ODD))
def test_unusual_image_is_used_and_decoded_as_displayed(kind, tmp_path, model_files, huge_jpeg):
    case = _dataset(tmp_path, *ODD[kind], huge_jpeg)
    df = load_metadata(tmp_path, verbose=False)
    assert df.attrs["validation"]["corrupt_images"] == [] and len(df) == 8
    row = df.index[df["image_id"] == "case"][0]
    assert CONTENT[kind](_dataset_images(df)[row]), "make_dataset"
    keras_result = predict_image(model_files["keras"], case, top_k=3)
    tflite_result = predict_image(model_files["tflite"], case, top_k=3)
    assert CONTENT[kind](keras_result.image), "predict_image"
    np.testing.assert_array_equal(keras_result.image, tflite_result.image)
    assert keras_result.label == tflite_result.label
    np.testing.assert_allclose(
        [p for *_, p in keras_result.top_k], [p for *_, p in tflite_result.top_k], atol=1e-4
    )


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_very_large_jpeg_decodes_without_exhausting_memory(huge_jpeg):
    """12000 x 9000 x 3 bytes would be 324 MB decoded; JPEG DCT scaling decodes it at 1/8 of each side."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident memory (VmHWM)
    except OSError:
        pytest.skip("the peak memory counter cannot be reset here (needs Linux /proc/self/clear_refs)")
    before = _rss_kb("VmRSS")
    assert check_image(huge_jpeg) is None
    images = [decode_image(huge_jpeg, SIZE), load_image(huge_jpeg, SIZE)]
    growth_mb = (_rss_kb("VmHWM") - before) / 1024
    assert growth_mb < 60, f"decoding took {growth_mb:.0f} MB at its peak"
    assert all(CONTENT["very_large_jpeg"](image) for image in images)
