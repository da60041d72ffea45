"""Batch-level Mixup and CutMix: each training image is blended with, or has a box pasted from, another image
of its batch, and its one-hot label is mixed in the same proportion (soft labels that sum to 1).

Mixup (Zhang et al. 2018): ``x = lam * x_i + (1 - lam) * x_j``, ``lam ~ Beta(alpha, alpha)``.
CutMix (Yun et al. 2019): a box covering ``1 - lam`` of the image is taken from ``x_j``; the label weight is
the share of pixels each image keeps. Draws are stateless, keyed by the batch's seed, so a seed gives the
same mixed batch on every run, replica and resume (as the augmentation does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class MixConfig:
    """``mixup_alpha`` / ``cutmix_alpha``: the Beta distribution's parameter of each (0: off). ``prob``: the
    chance that a batch is mixed at all. With both on, each mixed batch uses one of them, equally often."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 10:
                raise ValueError(f"MixConfig.{name} must be a number in [0, 10] (0: off), got {value!r}.")
        if not _is_number(self.prob) or not 0 <= self.prob <= 1:
            raise ValueError(f"MixConfig.prob must be a number in [0, 1], got {self.prob!r}.")

    @property
    def active(self) -> bool:
        """Whether any batch can be mixed."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """One draw of Beta(alpha, alpha) from two stateless Gamma draws."""
    g = tf.random.stateless_gamma([2], seed, alpha=tf.constant([alpha, alpha], tf.float32))
    return g[0] / tf.maximum(g[0] + g[1], 1e-12)


def _box_keep_map(seed: tf.Tensor, lam: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """``(S, S, 1)`` map: 0 inside a box of about ``1 - lam`` of the area at a uniform random centre (clipped
    at the borders), 1 elsewhere."""
    side = tf.cast(size, tf.float32)
    centre = tf.random.stateless_uniform([2], seed) * side
    half = side * tf.sqrt(1.0 - lam) / 2.0
    r = tf.range(side) + 0.5
    inside_y = tf.abs(r - centre[0]) < half
    inside_x = tf.abs(r - centre[1]) < half
    inside = tf.logical_and(inside_y[:, None], inside_x[None, :])
    return 1.0 - tf.cast(inside, tf.float32)[..., None]


def mix_batch(
    images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, config: MixConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mix a batch: ``images`` ``(B, S, S, C)`` float, ``targets`` ``(B, K)`` one-hot or soft labels; each
    image is paired with another of the batch by a random permutation. Returns the mixed images and targets
    (each row still sums to 1). ``seed``: two integers."""
    images = tf.convert_to_tensor(images, tf.float32)
    targets = tf.convert_to_tensor(targets, tf.float32)
    seed = tf.cast(seed, tf.int64)
    if not config.active:
        return images, targets
    keys = tf.random.experimental.stateless_split(seed, num=5)
    perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(images)[0]), keys[0])
    decide = tf.random.stateless_uniform([2], keys[1])
    size = tf.shape(images)[1]
    ones = tf.ones([size, size, 1], tf.float32)
    if config.mixup_alpha > 0 and config.cutmix_alpha > 0:
        use_cut = decide[1] < 0.5
    else:
        use_cut = tf.constant(config.cutmix_alpha > 0)
    keep = ones
    if config.mixup_alpha > 0:
        keep = ones * _beta(keys[2], config.mixup_alpha)
    if config.cutmix_alpha > 0:
        box = _box_keep_map(keys[4], _beta(keys[3], config.cutmix_alpha), size)
        keep = tf.where(use_cut, box, keep)
    keep = tf.where(decide[0] < config.prob, keep, ones)
    lam = tf.reduce_mean(keep)  # the share of the first image's pixels (exact for a clipped box)
    mixed = keep * images + (1.0 - keep) * tf.gather(images, perm)
    return mixed, lam * targets + (1.0 - lam) * tf.gather(targets, perm)
