"""Transfer learning in phases: a recipe with ``head_epochs`` first trains only the new classifier on the
frozen pretrained backbone, then fine-tunes the backbone (all of it, or from a chosen layer on) at a lower
learning rate with its own warm-up and cosine schedule. Each phase compiles the model with a fresh
optimizer; a resumed run rebuilds the phase of its last completed epoch before restoring it, so a run killed
on either side of the boundary ends with the weights of an uninterrupted one."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from helpers.backbones import backbone_layers
from helpers.train.recipes import Recipe


@dataclass(frozen=True)
class Phase:
    """Epochs ``start`` (0-based) up to ``end`` (exclusive) trained as ``name`` ("all": one phase with every
    layer; "head": the classifier on a frozen backbone; "fine_tune": the backbone too), at
    ``learning_rate``, under the recipe's schedule unless ``constant_rate``."""

    name: str
    start: int
    end: int
    learning_rate: float
    constant_rate: bool = False

    @property
    def epochs(self) -> int:
        return self.end - self.start


def plan_phases(recipe: Recipe, epochs: int, learning_rate: float) -> list[Phase]:
    """The phases of a run of ``epochs`` epochs (one "all" phase unless ``recipe.head_epochs`` > 0)."""
    if recipe.head_epochs == 0:
        return [Phase("all", 0, epochs, learning_rate)]
    head = min(recipe.head_epochs, epochs)
    phases = [Phase("head", 0, head, learning_rate, constant_rate=True)]
    if epochs > head:
        phases.append(Phase("fine_tune", head, epochs, learning_rate * recipe.fine_tune_lr_scale))
    return phases


def phase_at(phases: list[Phase], epoch: int) -> Phase:
    """The phase that trains epoch ``epoch`` (0-based); the last phase once every epoch is done."""
    return next((p for p in phases if p.start <= epoch < p.end), phases[-1])


def set_trainable(model: keras.Model, recipe: Recipe, phase: Phase) -> None:
    """Freeze and unfreeze ``model``'s layers for ``phase``: in "head" the whole backbone is frozen; in
    "fine_tune" (and "all") the layers from ``recipe.fine_tune_from`` on train, with every BatchNorm frozen
    when ``recipe.freeze_batchnorm``. A frozen Keras BatchNorm runs in inference mode."""
    if recipe.head_epochs == 0 and not recipe.freeze_batchnorm and recipe.fine_tune_from is None:
        return  # a from-scratch recipe: every layer trains
    backbone = backbone_layers(model)
    first = _first_tuned(backbone, recipe.fine_tune_from)
    for i, layer in enumerate(backbone):
        trainable = phase.name != "head" and i >= first
        if recipe.freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable


def _first_tuned(backbone: list[keras.layers.Layer], prefix: str | None) -> int:
    if prefix is None:
        return 0
    for i, layer in enumerate(backbone):
        if layer.name.startswith(prefix):
            return i
    names = sorted({layer.name.split("_")[0] for layer in backbone})
    raise ValueError(
        f"Recipe.fine_tune_from={prefix!r} matches no layer of the backbone; use a layer-name prefix such "
        f"as {', '.join(names[:8])}."
    )
