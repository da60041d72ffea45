"""Image shifts a change of device or clinic brings: colour cast, brightness, gamma, the dermoscope's dark
circular frame, zoom, JPEG re-compression and defocus. Pure numpy / Pillow functions of a uint8 batch
``(N, S, S, 3)``, each at a named strength, so :func:`helpers.evaluate.shift_report` can show what a model
loses under each before anyone trusts it on their own images."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

STRENGTHS = ("mild", "strong")


def colour_cast(images: np.ndarray, strength: float) -> np.ndarray:
    """A warm white balance: red gain ``1 + strength``, blue gain ``1 - strength`` (green unchanged)."""
    gains = np.array([1 + strength, 1.0, 1 - strength], dtype=np.float32)
    return _to_uint8(images.astype(np.float32) * gains)


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
    """Every pixel times ``factor`` (an under- or over-exposed photograph)."""
    return _to_uint8(images.astype(np.float32) * factor)


def gamma(images: np.ndarray, value: float) -> np.ndarray:
    """``255 * (x / 255) ** value``: > 1 darkens the mid-tones, < 1 lightens them (another tone curve)."""
    return _to_uint8(255.0 * (images.astype(np.float32) / 255.0) ** value)


def circular_frame(images: np.ndarray, radius: float) -> np.ndarray:
    """Black outside a centred circle of ``radius`` x the image side: the dark ring of a contact
    dermoscope (0.5 blackens the corners only; smaller radii reach into the image)."""
    side = images.shape[1]
    r = np.arange(side) - (side - 1) / 2
    inside = (r[:, None] ** 2 + r[None, :] ** 2) <= (radius * side) ** 2
    return images * inside[None, :, :, None].astype(images.dtype)


def zoom(images: np.ndarray, factor: float) -> np.ndarray:
    """Magnify by ``factor``: > 1 crops the centre ``1/factor`` of the image and enlarges it (zoom in); < 1
    shrinks the image into the centre and fills the border by mirroring it (zoom out: more skin around)."""
    side = images.shape[1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        if factor >= 1:
            crop = round(side / factor)
            start = (side - crop) // 2
            patch = Image.fromarray(image[start : start + crop, start : start + crop])
            out[i] = np.asarray(patch.resize((side, side), Image.Resampling.BILINEAR))
        else:
            small = round(side * factor)
            shrunk = np.asarray(Image.fromarray(image).resize((small, small), Image.Resampling.BILINEAR))
            before = (side - small) // 2
            pad = ((before, side - small - before), (before, side - small - before), (0, 0))
            out[i] = np.pad(shrunk, pad, mode="symmetric")
    return out


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Each image saved as a JPEG of ``quality`` (1-95) and decoded again."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def defocus(images: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` x the image side (out of focus)."""
    radius = sigma * images.shape[1]
    return np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius))) for x in images])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


SHIFTS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], dict[str, float]]] = {
    "colour cast": (colour_cast, {"mild": 0.1, "strong": 0.2}),
    "darker": (brightness, {"mild": 0.8, "strong": 0.6}),
    "brighter": (brightness, {"mild": 1.15, "strong": 1.3}),
    "gamma": (gamma, {"mild": 1.3, "strong": 1.7}),
    "dermoscope frame": (circular_frame, {"mild": 0.5, "strong": 0.42}),
    "zoom in": (zoom, {"mild": 1.2, "strong": 1.5}),
    "zoom out": (zoom, {"mild": 0.85, "strong": 0.7}),
    "jpeg": (jpeg, {"mild": 30, "strong": 10}),
    "defocus": (defocus, {"mild": 0.008, "strong": 0.016}),
}
"""Every shift of the suite: its function and the parameter of each strength."""


def apply_shift(images: np.ndarray, name: str, strength: str) -> np.ndarray:
    """``images`` (uint8 ``(N, S, S, 3)``) under shift ``name`` of :data:`SHIFTS` at ``strength``."""
    if name not in SHIFTS:
        raise ValueError(f"Unknown shift {name!r}; choose one of {list(SHIFTS)}.")
    function, parameters = SHIFTS[name]
    if strength not in parameters:
        raise ValueError(f"Unknown strength {strength!r}; choose one of {list(parameters)}.")
    images = np.asarray(images)
    square = images.ndim == 4 and images.shape[-1] == 3 and images.shape[1] == images.shape[2]
    if not square or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 batch (N, S, S, 3) of square RGB images, got {images.dtype} "
            f"{images.shape}."
        )
    return function(images, parameters[strength])
