"""Training augmentation: random geometry (flips, rotations, resized crops) and colour and device changes
(white balance, gamma, brightness, contrast, saturation, hue, blur, the dermoscope's dark frame), drawn per
image from stateless random numbers and XLA-compiled into one fused step, far cheaper than the training."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

_LUMA = (0.299, 0.587, 0.114)
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (each image gets its own random draw).

    ``dihedral`` picks one of the 8 flips / 90-degree rotations (random transpose, horizontal and vertical
    flip: dermoscopic images have no "up"). ``rotation_degrees`` > 0 adds a uniform rotation in +-degrees
    with bilinear resampling and reflect padding. ``brightness`` shifts by up to +-that fraction of 255;
    ``contrast`` and ``saturation`` scale by a factor drawn from [1 - v, 1 + v].

    Device changes, all off by default: ``scale`` (min, max) is a random resized crop showing that fraction
    of the image's area (above 1 zooms out, borders mirrored), ``aspect`` jitters its shape (log width /
    height uniform in +-aspect) and ``max_shift`` how far its centre may move (a fraction of the room the
    crop leaves); ``gains`` multiplies each channel by exp(U(-gains, gains)) (white balance); ``gamma``
    raises pixels to exp(U(-gamma, gamma)); ``hue`` rotates the chroma plane by up to +-hue radians;
    ``blur`` blurs (or, up to half as much, sharpens) with a 3x3 kernel by up to that amount; ``vignette`` is
    the probability of a dark circular dermoscope frame of random radius, centre, softness and darkness.
    """

    dihedral: bool = True
    rotation_degrees: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.15
    saturation: float = 0.15
    scale: tuple[float, float] = (1.0, 1.0)
    aspect: float = 0.0
    max_shift: float = 1.0
    gains: float = 0.0
    hue: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    vignette: float = 0.0

    @property
    def resamples(self) -> bool:
        """Whether the geometry needs a resampling pass (an arbitrary rotation or a resized crop)."""
        return bool(self.rotation_degrees) or self.scale != (1.0, 1.0) or self.aspect > 0

    @property
    def device(self) -> bool:
        """Whether any of the white balance, gamma, hue, blur or frame changes is on."""
        return bool(self.gains or self.hue or self.gamma or self.blur or self.vignette)


def augment_images(
    images: tf.Tensor | np.ndarray, seed: tf.Tensor | Sequence[int], config: AugmentConfig | None = None
) -> tf.Tensor:
    """Randomly augment a batch ``(B, S, S, 3)`` (or one image ``(S, S, 3)``) of 0..255 pixels; float32 out.

    Each image gets its own draw from stateless random ops keyed by ``seed`` (two integers), so the same seed
    gives the same result. The work is XLA-compiled (fused), which keeps it far cheaper than training. A
    fourth channel (a lesion mask, 0..255) gets the same geometric changes as its image and no colour ones.
    """
    x = tf.convert_to_tensor(images)
    x = x if x.dtype == tf.uint8 else tf.cast(x, tf.float32)
    if x.shape.rank not in (3, 4) or x.shape[-1] not in (3, 4) or x.shape[-2] != x.shape[-3]:
        raise ValueError(
            f"augment_images expects square RGB images (B, S, S, 3) or (S, S, 3) (a 4th channel: a mask), "
            f"got {x.shape}."
        )
    config = config or AugmentConfig()
    fn = _compiled_augment(rotate=config.resamples, device=config.device)
    strengths = tf.constant(
        [0.5 if config.dihedral else 0.0, np.deg2rad(config.rotation_degrees)]
        + [config.brightness * 255.0, config.contrast, config.saturation]
        + [config.scale[0], config.scale[1], config.aspect, config.max_shift]
        + [config.gains, config.hue, config.gamma, config.blur, config.vignette],
        dtype=tf.float32,
    )
    seed = tf.cast(seed, tf.int64)
    return fn(x[tf.newaxis], seed, strengths)[0] if x.shape.rank == 3 else fn(x, seed, strengths)


@functools.cache
def _compiled_augment(rotate: bool, device: bool) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """The XLA-compiled augmentation, with or without the (costlier) resampling and device changes."""
    fn = functools.partial(_augment, rotate=rotate, device=device)
    return tf.function(fn, jit_compile=True, autograph=False)


def _augment(x: tf.Tensor, seed: tf.Tensor, strengths: tf.Tensor, rotate: bool, device: bool) -> tf.Tensor:
    """``strengths``: flip probability, max angle (rad), brightness (0..255), contrast, saturation, crop scale
    min and max, aspect, max shift, gains, hue, gamma, blur, vignette probability."""
    (p_flip, max_angle, brightness, contrast, saturation, s_lo, s_hi, aspect, max_shift,
     gains, hue, gamma, blur, vignette) = tf.unstack(strengths)  # fmt: skip
    x = tf.cast(x, tf.float32)
    batch = tf.shape(x)[0]
    geo_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    geo = tf.random.stateless_uniform([batch, 4], geo_seed)
    flips = geo[:, :3] < p_flip  # transpose, horizontal flip, vertical flip
    # the device draws come from a folded-in seed, so the default's stream of random numbers is unchanged
    more = tf.random.stateless_uniform([batch, 16], tf.random.experimental.stateless_fold_in(seed, 19))
    if rotate:
        area = s_lo + (s_hi - s_lo) * more[:, 0]
        log_ratio = aspect * (2.0 * more[:, 1] - 1.0)
        sx, sy = tf.sqrt(area * tf.exp(log_ratio)), tf.sqrt(area * tf.exp(-log_ratio))  # of the source side
        shift_x = max_shift * tf.maximum(1.0 - sx, 0.0) * (2.0 * more[:, 2] - 1.0) / 2.0
        shift_y = max_shift * tf.maximum(1.0 - sy, 0.0) * (2.0 * more[:, 3] - 1.0) / 2.0
        x = _resample(x, max_angle * (2.0 * geo[:, 3] - 1.0), flips, (sx, sy, shift_x, shift_y))
    else:
        x = _where(flips[:, 0], tf.transpose(x, [0, 2, 1, 3]), x)
        x = _where(flips[:, 1], tf.reverse(x, axis=[2]), x)
        x = _where(flips[:, 2], tf.reverse(x, axis=[1]), x)
    x, carried = x[..., :3], x[..., 3:]  # a mask channel gets the geometry only
    if device:  # white balance and gamma act on the raw colours, before brightness and contrast
        x = x * tf.exp(gains * (2.0 * more[:, 4:7] - 1.0))[:, None, None, :]
        power = tf.exp(gamma * (2.0 * more[:, 7] - 1.0))
        x = 255.0 * tf.pow(tf.clip_by_value(x, 0.0, 255.0) / 255.0 + 1e-6, _per_image(power))
    colour = tf.random.stateless_uniform([batch, 3], colour_seed, minval=-1.0, maxval=1.0)
    x = x + _per_image(brightness * colour[:, 0])
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = (x - mean) * _per_image(1.0 + contrast * colour[:, 1]) + mean
    gray = tf.reduce_sum(x * tf.constant(_LUMA), axis=-1, keepdims=True)
    x = (x - gray) * _per_image(1.0 + saturation * colour[:, 2]) + gray
    if device:
        x = _hue_rotate(x, hue * (2.0 * more[:, 8] - 1.0))
        amount = blur * (1.5 * more[:, 9] - 0.5)  # -blur / 2 (sharpen) .. blur
        x = x + _per_image(amount) * (_blur3(x) - x)
        x = _vignette(x, more[:, 10] < vignette, more[:, 11:16])
    return tf.concat([tf.clip_by_value(x, 0.0, 255.0), carried], axis=-1)


def _per_image(v: tf.Tensor) -> tf.Tensor:
    return v[:, None, None, None]


def _where(mask: tf.Tensor, yes: tf.Tensor, no: tf.Tensor) -> tf.Tensor:
    return tf.where(_per_image(mask), yes, no)


def _hue_rotate(x: tf.Tensor, angles: tf.Tensor) -> tf.Tensor:
    """Rotate each image's chroma (I, Q of YIQ) by its angle: a hue shift that keeps the luma."""
    cos, sin = tf.cos(angles), tf.sin(angles)
    one, zero = tf.ones_like(cos), tf.zeros_like(cos)
    rotation = tf.stack(
        [tf.stack([one, zero, zero], -1), tf.stack([zero, cos, -sin], -1), tf.stack([zero, sin, cos], -1)],
        axis=1,
    )
    rgb_to_rgb = tf.constant(np.linalg.inv(_YIQ)) @ rotation @ tf.constant(_YIQ)  # (B, 3, 3)
    return tf.einsum("bhwc,bdc->bhwd", x, rgb_to_rgb)


def _blur3(x: tf.Tensor) -> tf.Tensor:
    """The [1, 2, 1] x [1, 2, 1] / 16 blur, borders mirrored."""
    k = tf.constant([1.0, 2.0, 1.0]) / 4.0
    p = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    h = k[0] * p[:, :, :-2] + k[1] * p[:, :, 1:-1] + k[2] * p[:, :, 2:]
    return k[0] * h[:, :-2] + k[1] * h[:, 1:-1] + k[2] * h[:, 2:]


def _vignette(x: tf.Tensor, on: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Darken outside a circle (a contact dermoscope's frame) where ``on``: radius 0.45-0.75 of the side,
    centre within +-8%, a soft edge of 2-8% of the side, a dark level of 0-40."""
    side = tf.cast(tf.shape(x)[1], tf.float32)
    r = tf.range(side) / side - 0.5
    yy, xx = r[None, :, None], r[None, None, :]
    cx, cy = (0.16 * (u[:, 0] - 0.5))[:, None, None], (0.16 * (u[:, 1] - 0.5))[:, None, None]
    radius = (0.45 + 0.3 * u[:, 2])[:, None, None]
    soft = (0.02 + 0.06 * u[:, 3])[:, None, None]
    outside = tf.sigmoid((tf.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) - radius) / soft)[..., None]
    outside = outside * _per_image(tf.cast(on, tf.float32))
    return x * (1.0 - outside) + _per_image(40.0 * u[:, 4]) * outside


def _resample(x: tf.Tensor, angles: tf.Tensor, flips: tf.Tensor, crop) -> tf.Tensor:
    """Flip, rotate by ``angles`` (radians) and crop (``crop``: the fraction of the source side each axis
    spans and the centre's shift, per image) each square image in one bilinear resampling pass.

    Output pixel (u, v) relative to the centre samples the source at ``crop(R(angle) @ transpose(flip(u,
    v)))``; coordinates falling outside are reflected about the border (half-sample symmetric).
    """
    b, s = tf.shape(x)[0], tf.shape(x)[1]
    size = tf.cast(s, tf.float32)
    r = tf.range(size) - (size - 1.0) / 2.0
    v, u = tf.meshgrid(r, r, indexing="ij")
    transpose, flip_h, flip_v = (flips[:, i, None, None] for i in range(3))
    u, v = tf.where(flip_h, -u, u), tf.where(flip_v, -v, v)
    u, v = tf.where(transpose, v, u), tf.where(transpose, u, v)
    cos, sin = tf.cos(angles)[:, None, None], tf.sin(angles)[:, None, None]
    u, v = cos * u - sin * v, sin * u + cos * v
    sx, sy, shift_x, shift_y = (c[:, None, None] for c in crop)
    u, v = sx * u + shift_x * size, sy * v + shift_y * size
    src_x = _reflect(u + (size - 1.0) / 2.0, size)
    src_y = _reflect(v + (size - 1.0) / 2.0, size)
    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, s - 1), tf.minimum(y0 + 1, s - 1)
    channels = x.shape[-1]
    flat = tf.reshape(x, [b, s * s, channels])

    def pick(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        indices = tf.reshape(yi * s + xi, [b, -1])
        return tf.reshape(tf.gather(flat, indices, batch_dims=1), [b, s, s, channels])

    top = pick(y0, x0) * (1.0 - wx) + pick(y0, x1) * wx
    bottom = pick(y1, x0) * (1.0 - wx) + pick(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


def _reflect(coord: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Fold pixel coordinates into [0, size - 1] by mirroring about the image border."""
    folded = tf.math.floormod(coord + 0.5, 2.0 * size)
    folded = tf.where(folded >= size, 2.0 * size - folded, folded) - 0.5
    return tf.clip_by_value(folded, 0.0, size - 1.0)
