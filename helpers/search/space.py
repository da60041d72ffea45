"""The search space: the settings a trial draws (:data:`SPACE`, :data:`DISTILL_SPACE`), the limits
:class:`~helpers.train.Recipe` and :func:`~helpers.train.train` put on them (:data:`LIMITS`), the network's
width within :data:`PARAM_BUDGET` parameters, and a trial's settings as a recipe and ``train()`` arguments
(:func:`trial_settings`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import optuna

from helpers.augment import AugmentConfig
from helpers.models import build_model, count_params
from helpers.train import RECIPES, Recipe

PARAM_BUDGET = 250_000
"""The most parameters a searched network may have."""
MODEL_NAME = "dermsep_net"
BASE_WIDTHS = (32, 64, 128, 192)
"""``dermsep_net``'s stage widths at width multiplier 1 (each stage rounded to a multiple of 8)."""
BASE_RECIPE = RECIPES["tuned"]
BASE_AUGMENT = AugmentConfig()


class SearchError(ValueError):
    """A bad input of the search (its space, storage, study name, or a setting), with what to do."""


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float range (``low``-``high``, ``log`` scale, optional ``step``) or a set of
    ``choices`` (one choice: a fixed value)."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def to_json(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}

    @property
    def values(self) -> tuple[float, ...]:
        """The values its bounds must keep within limits (the choices, or low and high)."""
        return tuple(self.choices) if self.choices is not None else (self.low, self.high)

    def suggest(self, trial: optuna.Trial, name: str) -> object:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: object) -> bool:
        if self.choices is not None:
            return value in self.choices
        return _is_number(value) and self.low <= value <= self.high


SPACE: dict[str, Dimension] = {
    "learning_rate": Dimension(5e-4, 5e-3, log=True),
    "weight_decay": Dimension(1e-5, 1e-3, log=True),
    "label_smoothing": Dimension(0.0, 0.2),
    "dropout": Dimension(0.0, 0.5),
    "augment": Dimension(0.0, 2.0),
    "mixup_alpha": Dimension(0.0, 0.4),
    "cutmix_alpha": Dimension(0.0, 1.0),
    "batch_size": Dimension(choices=(32, 64, 128)),
    "width": Dimension(0.5, 1.2, step=0.05),
}
"""The default search space. ``augment`` multiplies the default colour jitter (brightness 0.1, contrast and
saturation 0.15; random flips/rotations by 90 degrees always on); ``width`` multiplies ``dermsep_net``'s stage
widths :data:`BASE_WIDTHS` (1.2: ~246k parameters, within :data:`PARAM_BUDGET`)."""
DISTILL_SPACE: dict[str, Dimension] = {
    "distill_alpha": Dimension(0.1, 0.9),
    "distill_temperature": Dimension(1.0, 8.0),
}
"""Searched too when a teacher is given."""
BASELINE = {
    "learning_rate": 2e-3,
    "weight_decay": BASE_RECIPE.weight_decay,
    "label_smoothing": BASE_RECIPE.label_smoothing,
    "dropout": 0.3,
    "augment": 1.0,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "batch_size": 64,
    "width": 1.0,
    "distill_alpha": BASE_RECIPE.distill_alpha,
    "distill_temperature": BASE_RECIPE.distill_temperature,
}
"""Today's tuned recipe as the search's settings (``benchmarks/dermamnist.py``): the first trial."""
LIMITS: dict[str, tuple[float, float, str]] = {
    "learning_rate": (1e-7, 1.0, "a positive learning rate, at most 1"),
    "weight_decay": (0.0, 1.0, "AdamW's decoupled weight decay, 0 to 1"),
    "label_smoothing": (0.0, 0.99, "Recipe.label_smoothing, 0 to below 1"),
    "dropout": (0.0, 0.95, "the classifier's dropout rate, 0 to below 1"),
    "augment": (0.0, 6.0, "a multiple of the default colour jitter, 0 to 6 (contrast stays below 1)"),
    "mixup_alpha": (0.0, 10.0, "Recipe.mixup_alpha, 0 (off) to 10"),
    "cutmix_alpha": (0.0, 10.0, "Recipe.cutmix_alpha, 0 (off) to 10"),
    "batch_size": (1, 4096, "whole numbers of images per batch, 1 to 4096"),
    "width": (0.125, 8.0, f"a width multiplier whose network has at most {PARAM_BUDGET:,} parameters"),
    "distill_alpha": (0.0, 1.0, "Recipe.distill_alpha, 0 to 1"),
    "distill_temperature": (0.05, 100.0, "Recipe.distill_temperature, above 0 up to 100"),
}
"""What :class:`~helpers.train.Recipe` and :func:`~helpers.train.train` accept for each searched setting."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def as_dimension(name: str, spec: object) -> Dimension:
    """``spec`` as a :class:`Dimension`: itself, a tuple ``(low, high)`` or ``(low, high, "log")``, a list of
    choices, one number (fixed), or the dict of :meth:`Dimension.to_json`."""
    if isinstance(spec, Dimension):
        return spec
    if isinstance(spec, dict):
        try:
            choices = spec.get("choices")
            return Dimension(**{**spec, "choices": tuple(choices) if choices is not None else None})
        except TypeError:
            pass
    elif isinstance(spec, list) and spec:
        return Dimension(choices=tuple(spec))
    elif isinstance(spec, tuple) and len(spec) in (2, 3) and all(_is_number(v) for v in spec[:2]):
        if len(spec) == 2 or spec[2] == "log":
            return Dimension(float(spec[0]), float(spec[1]), log=len(spec) == 3)
    elif _is_number(spec):
        return Dimension(choices=(spec,))
    raise SearchError(
        f"Search space entry {name}={spec!r} is not understood; give (low, high), (low, high, 'log'), a "
        "list of choices or one fixed value."
    )


def check_space(space: dict | None = None, teacher: bool = False, img_size: int = 64) -> dict[str, Dimension]:
    """The search space: :data:`SPACE` (and :data:`DISTILL_SPACE` with a teacher) updated by ``space``;
    SearchError naming an unknown setting, a range outside :data:`LIMITS` or a width over the budget."""
    full = {**SPACE, **(DISTILL_SPACE if teacher else {})}
    given = space or {}
    if not isinstance(given, dict):
        raise SearchError(f"space must be a dict of setting -> range, got {type(given).__name__}.")
    unknown = sorted(set(given) - set(full))
    if unknown:
        hint = (
            " (the distillation settings are searched only with a teacher)"
            if set(unknown) & set(DISTILL_SPACE)
            else ""
        )
        raise SearchError(f"Unknown search setting(s) {unknown}{hint}; the space has {sorted(full)}.")
    full.update({name: as_dimension(name, spec) for name, spec in given.items()})
    for name, dimension in full.items():
        _check_dimension(name, dimension)
    _check_width_budget(full["width"], img_size)
    return full


def _check_dimension(name: str, dim: Dimension) -> None:
    low_limit, high_limit, meaning = LIMITS[name]
    if dim.choices is not None:
        bad = not dim.choices or not all(_is_number(v) for v in dim.choices)
        bad = bad or (name == "batch_size" and not all(isinstance(v, int) for v in dim.choices))
    elif name == "batch_size":
        raise SearchError(f"Search setting batch_size: give a list of whole numbers, got {dim.to_json()}.")
    else:
        bad = not (_is_number(dim.low) and _is_number(dim.high) and dim.low <= dim.high)
    if bad:
        raise SearchError(f"Search setting {name}: {dim.to_json()} is not a range or a list of numbers.")
    if not all(low_limit <= v <= high_limit for v in dim.values):
        raise SearchError(
            f"Search setting {name}: {dim.to_json()} is outside its range [{low_limit:g}, {high_limit:g}] "
            f"({meaning}); narrow it."
        )
    if dim.choices is None and dim.log and (dim.low <= 0 or dim.step is not None):
        raise SearchError(
            f"Search setting {name}: a log range needs low > 0 and no step, got {dim.to_json()}."
        )
    if dim.step is not None and not (dim.step > 0 and _on_grid(dim.high - dim.low, dim.step)):
        raise SearchError(f"Search setting {name}: step {dim.step} must be > 0 and divide high - low.")


def _on_grid(span: float, step: float) -> bool:
    return abs(span / step - round(span / step)) < 1e-6


def width_channels(multiplier: float) -> list[int]:
    """``dermsep_net``'s stage widths for a width multiplier: :data:`BASE_WIDTHS` scaled, each rounded to a
    multiple of 8 (at least 8)."""
    return [max(8, int(round(base * multiplier / 8)) * 8) for base in BASE_WIDTHS]


@functools.cache
def width_params(multiplier: float, img_size: int) -> int:
    """Parameters of ``dermsep_net`` at ``img_size`` with :func:`width_channels` of ``multiplier``."""
    return count_params(build_model(MODEL_NAME, img_size, widths=width_channels(multiplier)))


def _check_width_budget(dim: Dimension, img_size: int) -> None:
    widest = max(dim.values)
    if width_params(widest, img_size) > PARAM_BUDGET:
        raise SearchError(
            f"Search setting width: {widest:g} gives {width_params(widest, img_size):,} parameters at "
            f"{img_size} px, over the budget of {PARAM_BUDGET:,}; the widest within it is "
            f"{widest_within_budget(img_size, widest):g}."
        )


def widest_within_budget(img_size: int, above: float = 8.0) -> float:
    """The largest width multiplier below ``above``, in steps of 0.05, whose network keeps within
    :data:`PARAM_BUDGET`."""
    low, high = (
        1,
        max(1, math.ceil(above * 20) - 1),
    )  # in twentieths; the parameter count grows with the width
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (
            (middle, high) if width_params(middle / 20, img_size) <= PARAM_BUDGET else (low, middle - 1)
        )
    return low / 20


class _JsonPair(tuple):
    """A pair equal to the list JSON makes of it. Workaround: ``train`` compares a run's saved (JSON)
    identity with the new one, in which ``AugmentConfig.scale`` is a tuple, so a run with a changed
    augmentation would not resume (a retried trial must)."""

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, list | tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__


def trial_settings(params: dict, teacher: str | None = None) -> tuple[Recipe, dict]:
    """The :class:`~helpers.train.Recipe` and ``train()`` arguments of a trial's settings (missing ones from
    :data:`BASELINE`)."""
    p = {**BASELINE, **params}
    scale = float(p["augment"])
    augment = replace(
        BASE_AUGMENT,
        brightness=BASE_AUGMENT.brightness * scale,
        contrast=BASE_AUGMENT.contrast * scale,
        saturation=BASE_AUGMENT.saturation * scale,
        scale=_JsonPair(BASE_AUGMENT.scale),
    )
    recipe = replace(
        BASE_RECIPE,
        weight_decay=float(p["weight_decay"]),
        label_smoothing=float(p["label_smoothing"]),
        augment=augment,
        mixup_alpha=float(p["mixup_alpha"]),
        cutmix_alpha=float(p["cutmix_alpha"]),
        distill_alpha=float(p["distill_alpha"]),
        distill_temperature=float(p["distill_temperature"]),
    )
    train_args = {
        "model_name": MODEL_NAME,
        "learning_rate": float(p["learning_rate"]),
        "batch_size": int(p["batch_size"]),
        "model_options": {"widths": width_channels(float(p["width"])), "dropout": float(p["dropout"])},
    }
    if teacher is not None:
        train_args["teacher"] = str(teacher)
    return recipe, train_args
