"""Recipes: how the weights are optimised (schedule, weight decay, label smoothing, class-weight strength,
weight averaging), the loss, and the optimizer built from them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import keras
import numpy as np

from helpers.augment import AugmentConfig

SCHEDULES = ("plateau", "cosine")


@dataclass(frozen=True)
class Recipe:
    """How the weights are optimised (the defaults are the plain recipe of :func:`~helpers.train.train`).

    ``schedule``: ``"plateau"`` (Adam at ``learning_rate``, halved by ReduceLROnPlateau on ``val_loss``) or
    ``"cosine"`` (linear warm-up over ``warmup_epochs``, then cosine decay to 1% over the run's ``epochs``;
    ReduceLROnPlateau is off). ``weight_decay`` > 0 uses AdamW (decoupled weight decay).
    ``label_smoothing`` mixes that fraction of a uniform distribution into the targets.
    ``class_weight_power`` raises the balanced class weights to this power: 1 is fully balanced, 0 is no
    weighting, 0.5 is in between (rare classes count more, but less than fully).
    ``ema`` > 0 keeps an exponential moving average of the weights with that momentum (e.g. 0.995, an
    average over the last ~200 steps); validation, model selection and ``best.keras`` then use the averaged
    weights, which move less from epoch to epoch than the last step's. Training itself (and a resume)
    continues from the raw weights. (On DermaMNIST it did not help; see ``benchmarks/dermamnist.py``.)
    ``augment`` is the training augmentation (:class:`helpers.augment.AugmentConfig`). ``class_sampling``
    draws each training batch so that a class gets a share of the draws proportional to its image count to
    this power (1: the natural shuffle, 0.5: square-root, 0: class-balanced; pair it with
    ``class_weight_power=0``).
    """

    schedule: str = "plateau"
    warmup_epochs: int = 2
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    class_weight_power: float = 1.0
    ema: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    class_sampling: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Recipe.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        checks = (
            ("warmup_epochs", self.warmup_epochs, is_int(self.warmup_epochs) and self.warmup_epochs >= 0),
            ("weight_decay", self.weight_decay, is_number(self.weight_decay) and self.weight_decay >= 0),
            (
                "label_smoothing",
                self.label_smoothing,
                is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            ),
            (
                "class_weight_power",
                self.class_weight_power,
                is_number(self.class_weight_power) and self.class_weight_power >= 0,
            ),
            ("ema", self.ema, is_number(self.ema) and 0 <= self.ema < 1),
            ("augment", self.augment, isinstance(self.augment, AugmentConfig)),
            (
                "class_sampling",
                self.class_sampling,
                is_number(self.class_sampling) and self.class_sampling >= 0,
            ),
        )
        for name, value, ok in checks:
            if not ok:
                raise ValueError(
                    f"Recipe.{name} got {value!r}; see help(helpers.train.Recipe) for valid values."
                )

    def settings(self) -> dict:
        """The recipe as JSON values for a run's identity and manifest; ``augment`` and ``class_sampling``
        only when not the defaults, so runs recorded before those options existed keep their identity."""
        settings = asdict(self)
        for name, default in (("augment", asdict(AugmentConfig())), ("class_sampling", 1.0)):
            if settings[name] == default:
                del settings[name]
        return settings

    def weights(self, balanced: dict[int, float]) -> dict[int, float]:
        """The class weights to train with: the balanced ones raised to ``class_weight_power``."""
        return {k: float(v**self.class_weight_power) for k, v in balanced.items()}


def resolve_recipe(recipe: Recipe | str | None) -> Recipe:
    """The :class:`Recipe` for ``recipe``: itself, the named one in :data:`RECIPES`, or the plain one for
    None; ValueError naming the choices otherwise."""
    if recipe is None:
        return Recipe()
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    if not isinstance(recipe, Recipe):
        raise ValueError(
            f"recipe must be None, a helpers.train.Recipe or one of {sorted(RECIPES)}, got {recipe!r}."
        )
    return recipe


def is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


RECIPES: dict[str, Recipe] = {
    "plain": Recipe(),
    "tuned": Recipe(schedule="cosine", weight_decay=1e-4, label_smoothing=0.1, class_weight_power=0.5),
}
"""Named recipes (``train(recipe="tuned")``): "tuned" is what ``benchmarks/dermamnist.py`` measured best on
DermaMNIST's validation split; use it with more epochs (45) and a higher ``learning_rate`` (2e-3). Weight
averaging (``ema``) is left out: the benchmark measured it and it did not help there."""


def make_optimizer(
    learning_rate: float, recipe: Recipe, total_steps: int, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if recipe.schedule == "cosine":
        warmup = min(recipe.warmup_epochs * steps_per_epoch, total_steps - 1)
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else learning_rate,
            decay_steps=total_steps - warmup,
            alpha=0.01,
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    ema = {"use_ema": True, "ema_momentum": recipe.ema} if recipe.ema else {}
    if recipe.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=recipe.weight_decay, **ema)
    return keras.optimizers.Adam(rate, **ema)


@contextlib.contextmanager
def averaged_weights(model: keras.Model) -> Iterator[None]:
    """Inside the block, ``model``'s trainable weights are the optimizer's moving averages (a recipe with
    ``ema`` > 0); on leaving, the raw weights are put back. Does nothing for an optimizer without EMA."""
    averages = getattr(getattr(model, "optimizer", None), "_model_variables_moving_average", None)
    if not averages:  # Keras creates the averages only for an optimizer built with use_ema=True
        yield
        return
    raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    for variable, average in zip(model.trainable_variables, averages, strict=True):
        variable.assign(average)
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, raw, strict=True):
            variable.assign(value)


@keras.saving.register_keras_serializable(package="helpers")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of softmax outputs against integer labels smoothed by ``label_smoothing``."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        target = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)), classes)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
