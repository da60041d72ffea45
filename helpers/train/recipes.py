"""Recipes: how the weights are optimised (schedule, weight decay, label smoothing, class-weight strength,
weight averaging), the loss, and the optimizer built from them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from helpers.augment import AugmentConfig
from helpers.files import write_json
from helpers.mixing import MixConfig
from helpers.models import PRETRAINED_MODELS, resolve_model_name

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
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    head_epochs: int = 0
    fine_tune_lr_scale: float = 1.0
    fine_tune_from: str | None = None
    freeze_batchnorm: bool = False

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
            ("mixup_alpha", self.mixup_alpha, is_number(self.mixup_alpha) and 0 <= self.mixup_alpha <= 10),
            (
                "cutmix_alpha",
                self.cutmix_alpha,
                is_number(self.cutmix_alpha) and 0 <= self.cutmix_alpha <= 10,
            ),
            ("mix_prob", self.mix_prob, is_number(self.mix_prob) and 0 <= self.mix_prob <= 1),
            (
                "distill_alpha",
                self.distill_alpha,
                is_number(self.distill_alpha) and 0 <= self.distill_alpha <= 1,
            ),
            (
                "distill_temperature",
                self.distill_temperature,
                is_number(self.distill_temperature) and 0 < self.distill_temperature <= 100,
            ),
            ("head_epochs", self.head_epochs, is_int(self.head_epochs) and self.head_epochs >= 0),
            (
                "fine_tune_lr_scale",
                self.fine_tune_lr_scale,
                is_number(self.fine_tune_lr_scale) and 0 < self.fine_tune_lr_scale <= 10,
            ),
            (
                "fine_tune_from",
                self.fine_tune_from,
                self.fine_tune_from is None or (isinstance(self.fine_tune_from, str) and self.fine_tune_from),
            ),
            ("freeze_batchnorm", self.freeze_batchnorm, isinstance(self.freeze_batchnorm, bool)),
            ("head_epochs", self.head_epochs, self.head_epochs == 0 or self.schedule == "cosine"),
        )
        for name, value, ok in checks:
            if not ok:
                hint = " (a warm-up phase needs schedule='cosine')" if name == "head_epochs" else ""
                raise ValueError(
                    f"Recipe.{name} got {value!r}{hint}; see help(helpers.train.Recipe) for valid values."
                )

    @property
    def mix(self) -> MixConfig | None:
        """The Mixup/CutMix settings, or None when off."""
        config = MixConfig(self.mixup_alpha, self.cutmix_alpha, self.mix_prob)
        return config if config.active else None

    def settings(self) -> dict:
        """The recipe as JSON values for a run's identity and manifest; the options added after the first
        ones only when not at their defaults, so runs recorded before they existed keep their identity."""
        settings, defaults = asdict(self), asdict(Recipe())
        for name in _LATER_OPTIONS:
            if settings[name] == defaults[name]:
                del settings[name]
        return settings

    def weights(self, balanced: dict[int, float]) -> dict[int, float]:
        """The class weights to train with: the balanced ones raised to ``class_weight_power``."""
        return {k: float(v**self.class_weight_power) for k, v in balanced.items()}


_LATER_OPTIONS = (
    "augment",
    "class_sampling",
    "mixup_alpha",
    "cutmix_alpha",
    "mix_prob",
    "distill_alpha",
    "distill_temperature",
    "head_epochs",
    "fine_tune_lr_scale",
    "fine_tune_from",
    "freeze_batchnorm",
)


def default_recipe(model_key: str) -> str:
    """The name of the recipe a model (a registered name) trains with when none is given: "transfer" for a
    pretrained backbone, else "plain"."""
    return "transfer" if model_key in PRETRAINED_MODELS else "plain"


def resolve_recipe(recipe: Recipe | str | Path | None, model_name: str | None = None) -> Recipe:
    """The :class:`Recipe` for ``recipe``: itself, the named one in :data:`RECIPES`, one saved as a ``.json``
    file (:func:`save_recipe`, e.g. by :mod:`helpers.search`), or for None the model's own
    (:func:`default_recipe`; the plain one without ``model_name``); ValueError naming the choices
    otherwise."""
    if recipe is None:
        return RECIPES[default_recipe(resolve_model_name(model_name))] if model_name else Recipe()
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    if isinstance(recipe, str | Path) and str(recipe).endswith(".json"):
        return load_recipe(recipe)[0]
    if not isinstance(recipe, Recipe):
        raise ValueError(
            f"recipe must be None, a helpers.train.Recipe, a recipe .json file or one of {sorted(RECIPES)}, "
            f"got {recipe!r}."
        )
    return recipe


def recipe_from_settings(settings: dict) -> Recipe:
    """The :class:`Recipe` of :meth:`Recipe.settings` (or :func:`dataclasses.asdict`) values; ValueError
    naming an unknown or bad field."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"Unknown recipe field(s) {unknown}; valid fields: {sorted(fields)}.")
    values = dict(settings)
    if isinstance(values.get("augment"), dict):
        augment = {k: tuple(v) if isinstance(v, list) else v for k, v in values["augment"].items()}
        values["augment"] = AugmentConfig(**augment)
    return Recipe(**values)


def save_recipe(recipe: Recipe, path: str | Path, train_args: dict | None = None) -> Path:
    """Write ``recipe`` as JSON (``{"recipe": ..., "train_args": ...}``): ``train(recipe=path)`` reads it
    back; ``train_args`` (e.g. ``learning_rate``, ``batch_size``, ``model_options``) go with it for
    :func:`load_recipe`."""
    return write_json({"recipe": dataclasses.asdict(recipe), "train_args": train_args or {}}, path)


def load_recipe(path: str | Path) -> tuple[Recipe, dict]:
    """The recipe and the ``train()`` arguments saved by :func:`save_recipe`; ValueError naming the file
    when it cannot be read."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text())
        return recipe_from_settings(saved.get("recipe", saved)), dict(saved.get("train_args", {}))
    except FileNotFoundError:
        raise FileNotFoundError(f"Recipe file not found: {path}") from None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"Cannot read the recipe {path}: {err}. Save it with save_recipe.") from err


def is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


RECIPES: dict[str, Recipe] = {
    "plain": Recipe(),
    "tuned": Recipe(schedule="cosine", weight_decay=1e-4, label_smoothing=0.1, class_weight_power=0.5),
    "transfer": Recipe(
        schedule="cosine",
        warmup_epochs=1,
        weight_decay=1e-4,
        label_smoothing=0.1,
        head_epochs=1,
        fine_tune_lr_scale=0.3,
        freeze_batchnorm=True,
    ),
}
"""Named recipes (``train(recipe="tuned")``): "tuned" is what ``benchmarks/dermamnist.py`` measured best on
DermaMNIST's validation split; use it with more epochs (45) and a higher ``learning_rate`` (2e-3). Weight
averaging (``ema``) is left out: the benchmark measured it and it did not help there. "transfer" fine-tunes
a pretrained backbone (the default for those models): one epoch of the new classifier on the frozen backbone
at ``learning_rate`` (1e-3), then every layer at 0.3 of it (3e-4) with a warm-up and cosine decay,
BatchNorm frozen, balanced class weights (``benchmarks/transfer.py``)."""


def make_optimizer(
    learning_rate: float, recipe: Recipe, total_steps: int, steps_per_epoch: int, constant: bool = False
) -> keras.optimizers.Optimizer:
    """Adam (AdamW with weight decay) at ``learning_rate``, under the recipe's schedule over
    ``total_steps`` unless ``constant``."""
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if recipe.schedule == "cosine" and not constant:
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


@keras.saving.register_keras_serializable(package="helpers")
class SoftTargetLoss(keras.losses.Loss):
    """Cross-entropy against soft targets ``(B, K)`` (Mixup/CutMix labels), each image weighted by its soft
    label's mix of ``class_weights``; targets ``(B, 2K)`` carry a teacher's probabilities after the label,
    and the loss is then ``alpha * CE(label) + (1 - alpha) * T**2 * KL(teacher_T || student_T)``, where
    ``p_T`` is ``softmax(log p / T)`` (Hinton et al. 2015; the T**2 keeps the gradients' scale)."""

    def __init__(
        self,
        class_weights: list[float],
        label_smoothing: float = 0.0,
        distill_alpha: float = 0.5,
        temperature: float = 2.0,
        name: str = "soft_target_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)
        self.distill_alpha = float(distill_alpha)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        ops = keras.ops
        classes = y_pred.shape[-1]
        label = y_true[:, :classes]
        weight = ops.sum(label * ops.convert_to_tensor(self.class_weights, dtype=label.dtype), axis=-1)
        loss = keras.losses.categorical_crossentropy(label, y_pred, label_smoothing=self.label_smoothing)
        if y_true.shape[-1] == 2 * classes:
            t = self.temperature
            teacher = ops.softmax(ops.log(ops.clip(y_true[:, classes:], 1e-7, 1.0)) / t)
            student = ops.log_softmax(ops.log(ops.clip(y_pred, 1e-7, 1.0)) / t)
            kl = ops.sum(teacher * (ops.log(ops.clip(teacher, 1e-7, 1.0)) - student), axis=-1)
            loss = self.distill_alpha * loss + (1.0 - self.distill_alpha) * t * t * kl
        return weight * loss

    def get_config(self) -> dict:
        config = {
            "class_weights": self.class_weights,
            "label_smoothing": self.label_smoothing,
            "distill_alpha": self.distill_alpha,
            "temperature": self.temperature,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="helpers")
def label_accuracy(y_true, y_pred):
    """Whether the top class of the (soft) label, the first ``K`` columns of ``y_true``, is predicted."""
    label = y_true[:, : y_pred.shape[-1]]
    return keras.ops.cast(keras.ops.argmax(label, axis=-1) == keras.ops.argmax(y_pred, axis=-1), y_pred.dtype)
