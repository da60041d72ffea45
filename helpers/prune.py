"""Structured (channel) pruning: a genuinely narrower dense model, so that its int8 TFLite file shrinks.

Unstructured sparsity (zeroing single weights, what tensorflow-model-optimization's ``prune_low_magnitude``
does; version 0.8.1 also refuses Keras 3 models, see benchmarks/README.md) leaves a TFLite file as large as
before: every zero is still stored. Removing whole channels removes their slices from every weight they
touch.

Channels go in *channel sets*, the channels that must go together because an ``Add`` (a residual
shortcut) or a ``Multiply`` joins the tensors carrying them. :func:`channel_sets` finds them in the model's
graph: a conv or dense layer writes a new set; BatchNorm, activations, depthwise convs, pooling and dropout
work channel by channel; Add and Multiply merge sets. A channel's importance (:func:`channel_importance`) is
the sum of ``|gamma|`` of every BatchNorm on its set, each layer's divided by its mean (network slimming, Liu
et al. 2017: the BatchNorm scale is how much of a normalised channel goes on, so a channel whose every scale
is small carries little; dividing by the mean gives every layer an equal vote); a set without BatchNorm ranks
by the L1 norm of the kernels that write it. Conv weights are not used otherwise: a BatchNorm follows every
conv here, so its scale, not the conv's weight norm, sets the channel's magnitude.

The narrower model is built by the architecture's own builder and every weight's kept slice is copied in,
so ``keep=1`` gives back the same model. What can be narrowed (:func:`prunable_units`):

- ``dermsep_net``: each stage's width (``stage1`` ...; the residual Add ties the stage's channels; the inner
  channels of its residual unit are ranked on their own but keep the stage's count, as the builder makes
  them) and, at 64 px and more, the stem's ``stem_filters`` (``stem``);
- ``efficientnet_lite0``: each MBConv block's expansion channels (``block1`` ... ``block15``: they only flow
  expand -> depthwise -> project) and the channels of ``top_conv``; the bottleneck channels, tied across each
  stage by its residual Adds, are kept.

A :func:`helpers.models.predictor` wrapper (test-time augmentation, prior shift) is pruned inside and
wrapped again the same way. :func:`fine_tune` then trains the narrower network briefly, selecting on
validation balanced accuracy; :func:`prune_to_size` finds the uniform ``keep`` that meets a size goal.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from helpers.backbones import LITE0_STEM, efficientnet_lite0
from helpers.classes import CLASS_TO_INDEX, NUM_CLASSES
from helpers.export import export_tflite
from helpers.modelio import load_keras_model, model_input_size, save_keras_model
from helpers.models import dermsep_net, predictor, predictor_members, stem_downsamples, uses_metadata
from helpers.pipeline import epoch_steps, make_dataset
from helpers.splits import class_weights
from helpers.train.distill import load_teacher
from helpers.train.recipes import (
    Recipe,
    SmoothedSparseCrossentropy,
    SoftTargetLoss,
    make_optimizer,
    resolve_recipe,
)
from helpers.train.selection import BalancedSelection, ValidationMetrics
from helpers.train.transfer import Phase, set_trainable

SUPPORTED = "dermsep_net and efficientnet_lite0 networks (or a helpers.models.predictor wrapper of them)"

_WRITE = (keras.layers.Conv2D, keras.layers.Dense)
_PER_CHANNEL = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Dropout,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Rescaling,
)
_MERGE = (keras.layers.Add, keras.layers.Multiply)


# ------------------------------------------------------------------------------------------ channel sets
@dataclass(frozen=True)
class ChannelSet:
    """Channels pruned together: ``key`` is the first layer (in model order) whose output carries them,
    ``layers`` every layer whose output does, ``size`` how many there are."""

    key: str
    size: int
    layers: tuple[str, ...]


def _trace(model: keras.Model) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The channel set (a key) of each layer's output and of each of its inputs, following the graph."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent[key] != key:
            key = parent[key]
        return key

    out_of: dict[str, str] = {}
    ins_of: dict[str, list[str]] = {}
    for layer in model.layers:
        inputs = [] if isinstance(layer, keras.layers.InputLayer) else keras.tree.flatten(layer.input)
        ins = [find(out_of[t._keras_history.operation.name]) for t in inputs]  # the producing layers
        ins_of[layer.name] = ins
        if not ins or (isinstance(layer, _WRITE) and getattr(layer, "groups", 1) == 1):
            parent[layer.name] = out_of[layer.name] = layer.name
        elif isinstance(layer, _MERGE):
            for key in ins[1:]:
                parent[find(key)] = find(ins[0])
            out_of[layer.name] = find(ins[0])
        elif isinstance(layer, _PER_CHANNEL) and getattr(layer, "depth_multiplier", 1) == 1:
            out_of[layer.name] = ins[0]
        else:
            raise ValueError(
                f"Cannot prune {model.name}: its layer {layer.name!r} ({type(layer).__name__}) mixes or "
                f"reshapes channels. Pruning supports {SUPPORTED}."
            )
    first = {}
    for name in out_of:
        first.setdefault(find(out_of[name]), name)
    return (
        {name: first[find(key)] for name, key in out_of.items()},
        {name: [first[find(k)] for k in keys] for name, keys in ins_of.items()},
    )


def channel_sets(model: keras.Model) -> dict[str, ChannelSet]:
    """Every channel set of ``model`` (a flat functional model), by key; ValueError for a layer that mixes or
    reshapes channels (e.g. Concatenate, Flatten)."""
    out_of, _ = _trace(model)
    members: dict[str, list[str]] = {}
    for name, key in out_of.items():
        members.setdefault(key, []).append(name)
    return {
        key: ChannelSet(key, int(model.get_layer(key).output.shape[-1]), tuple(names))
        for key, names in members.items()
    }


def channel_importance(model: keras.Model, channels: ChannelSet) -> np.ndarray:
    """Importance of each channel of ``channels``: the sum over its BatchNorm layers of ``|gamma|`` / mean
    ``|gamma|``; without BatchNorm, the summed per-layer-normalised L1 norm of the kernels that write it."""
    layers = [model.get_layer(name) for name in channels.layers]
    scales = [np.abs(keras.ops.convert_to_numpy(layer.gamma)) for layer in layers if _has_scale(layer)]
    if not scales:
        scales = [
            np.abs(keras.ops.convert_to_numpy(layer.kernel)).reshape(-1, channels.size).sum(axis=0)
            for layer in layers
            if isinstance(layer, _WRITE)
        ]
    return sum((s / max(float(s.mean()), 1e-12) for s in scales), np.zeros(channels.size))


def _has_scale(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization) and layer.scale


# ------------------------------------------------------------------------------------------ architectures
def _architecture(network: keras.Model) -> str:
    names = {layer.name for layer in network.layers}
    if uses_metadata(network):
        raise ValueError(
            f"Cannot prune {network.name}: it takes metadata as a second input. Pruning supports {SUPPORTED}."
        )
    if "stage1_res_a_pw" in names:
        return "dermsep_net"
    if {"block1_expand", "top_conv"} <= names:
        return "efficientnet_lite0"
    raise ValueError(f"Cannot prune {network.name}: pruning supports {SUPPORTED}.")


def _stages(network: keras.Model) -> int:
    return sum(bool(re.fullmatch(r"stage\d+_res_a_pw", layer.name)) for layer in network.layers)


def _lite0_blocks(network: keras.Model) -> list[int]:
    return [int(m[1]) for layer in network.layers if (m := re.fullmatch(r"block(\d+)_expand", layer.name))]


def prunable_units(model: keras.Model) -> dict[str, int]:
    """The units :func:`prune` narrows and their widths now, e.g. ``{"stem": 16, "stage1": 32, ...}`` for
    a dermsep_net at 128 px or ``{"block1": 96, ..., "top_conv": 1280}`` for an efficientnet_lite0."""
    network = _network(model)
    width = {layer.name: getattr(layer, "filters", None) for layer in network.layers}
    if _architecture(network) == "dermsep_net":
        stem = {"stem": width["stem"]} if stem_downsamples(model_input_size(network)) else {}
        return stem | {f"stage{s}": width[f"stage{s}_res_a_pw"] for s in range(1, _stages(network) + 1)}
    blocks = {f"block{i}": width[f"block{i}_expand"] for i in _lite0_blocks(network)}
    return blocks | {"top_conv": width["top_conv"]}


def _narrower(network: keras.Model, counts: dict[str, int]) -> keras.Model:
    """``network``'s architecture built (untrained) with ``counts`` channels per unit."""
    names = {layer.name for layer in network.layers}
    common = {
        "img_size": model_input_size(network),
        "num_classes": int(network.output.shape[-1]),
        "dropout": float(network.get_layer("head_drop").rate),
    }
    if _architecture(network) == "efficientnet_lite0":
        expansions = [LITE0_STEM] + [counts[f"block{i}"] for i in _lite0_blocks(network)]
        imagenet = "imagenet_predictions" in names
        return efficientnet_lite0(
            **common,
            pretrained=False,
            imagenet_top=imagenet,
            expansions=expansions,
            head_channels=counts["top_conv"],
        )
    widths = tuple(counts[f"stage{s}"] for s in range(1, _stages(network) + 1))
    stem = counts.get("stem", widths[0])
    if "stage1_entry_pw" in names and stem == widths[0]:  # else the builder would leave the entry conv out
        stem += 1 if stem < network.get_layer("stem").filters else -1
    se = any(name.endswith("_se_reduce") for name in names)
    return dermsep_net(**common, widths=widths, stem_filters=stem, se=se)


def _check_same_layers(network: keras.Model, narrow: keras.Model) -> None:
    def layers(model: keras.Model) -> list[tuple[str, str]]:
        return [(layer.name, type(layer).__name__) for layer in model.layers]

    extra = sorted(set(layers(network)) ^ set(layers(narrow)))
    if extra:
        raise ValueError(
            f"Cannot prune {network.name}: it differs from the {narrow.name} its builder makes in layers "
            f"{[name for name, _ in extra[:4]]}. Prune the trained network before the finishing steps (a "
            "multi-scale re-trained classifier adds pooled stages), then run them on the pruned network."
        )


# ------------------------------------------------------------------------------------------ pruning
def _load(model_or_path: keras.Model | str | os.PathLike) -> keras.Model:
    if not isinstance(model_or_path, keras.Model | str | os.PathLike):
        raise ValueError(f"Expected a keras.Model or a .keras path, got {type(model_or_path).__name__}.")
    return load_keras_model(model_or_path)


def _network(model: keras.Model) -> keras.Model:
    """The one network of ``model`` (itself, or the network inside a predictor wrapper)."""
    members = predictor_members(model)
    if len(members) > 1:
        raise ValueError(
            f"{model.name} is an ensemble of {len(members)} networks; pass one of them "
            "(helpers.models.predictor_members)."
        )
    return members[0]


def _fractions(keep: float | Mapping[str, float], units: dict[str, int]) -> dict[str, float]:
    """``keep`` as a fraction per unit (units a mapping leaves out keep every channel)."""
    given = keep if isinstance(keep, Mapping) else dict.fromkeys(units, keep)
    unknown = sorted(set(given) - set(units))
    if unknown:
        raise ValueError(f"keep names unknown unit(s) {unknown}; this model's units are {list(units)}.")
    for unit, fraction in given.items():
        number = isinstance(fraction, int | float | np.integer | np.floating) and not isinstance(
            fraction, bool
        )
        if not number or not 0 < fraction <= 1:
            raise ValueError(
                f"keep must be a number in (0, 1] (the fraction of channels to keep), got {fraction!r}"
                + (f" for {unit!r}." if isinstance(keep, Mapping) else ".")
            )
    return {unit: float(given.get(unit, 1.0)) for unit in units}


def prune(model_or_path: keras.Model | str | Path, keep: float | Mapping[str, float] = 0.5) -> keras.Model:
    """A narrower copy of a trained network (or ``.keras`` file) keeping the most important channels.

    ``keep``: the fraction of channels to keep in every unit of :func:`prunable_units`, or a mapping
    ``{unit: fraction}`` (units left out keep all; counts round to the nearest channel, at least one). The
    original model is left untouched. A predictor wrapper comes back wrapped the same way (same views, same
    prior shift), around its pruned network(s)."""
    model = _load(model_or_path)
    members = predictor_members(model)
    if members == [model]:
        return _prune_network(model, keep)
    return _rewrap(model, [_prune_network(member, keep) for member in members])


def _prune_network(network: keras.Model, keep: float | Mapping[str, float]) -> keras.Model:
    units = prunable_units(network)
    fractions = _fractions(keep, units)
    counts = {unit: max(1, round(fractions[unit] * width)) for unit, width in units.items()}
    narrow = _narrower(network, counts)
    _check_same_layers(network, narrow)
    old_sets, new_sets = channel_sets(network), channel_sets(narrow)
    kept = {
        key: np.sort(np.argsort(-channel_importance(network, s), kind="stable")[: new_sets[key].size])
        for key, s in old_sets.items()
    }
    out_of, ins_of = _trace(network)
    for layer in narrow.layers:
        if layer.weights:
            old = network.get_layer(layer.name)
            keep_in = kept[ins_of[layer.name][0]]
            layer.set_weights(_sliced(old, old.get_weights(), keep_in, kept[out_of[layer.name]]))
    return narrow


def _sliced(layer: keras.layers.Layer, weights: list[np.ndarray], keep_in, keep_out) -> list[np.ndarray]:
    """``layer``'s weights restricted to the kept input and output channels."""
    if isinstance(layer, _WRITE):  # kernel (..., in, out), bias (out,)
        return [weights[0][..., keep_in, :][..., keep_out]] + [w[keep_out] for w in weights[1:]]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # kernel (kh, kw, channels, 1), bias (channels,)
        return [weights[0][:, :, keep_in]] + [w[keep_in] for w in weights[1:]]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [w[keep_in] for w in weights]
    return weights


def _rewrap(wrapper: keras.Model, members: list[keras.Model]) -> keras.Model:
    """``members`` wrapped as ``wrapper`` wraps its networks: same views, same prior shift."""
    names = {layer.name for layer in wrapper.layers}
    views = wrapper.get_layer("tta_views").views if "tta_views" in names else 1
    shift = wrapper.get_layer("prior_shift").class_weights if "prior_shift" in names else None
    rebuilt = predictor(members if len(members) > 1 else members[0], views, shift)
    old = {layer.name for layer in wrapper.layers if not isinstance(layer, keras.Model)}
    new = {layer.name for layer in rebuilt.layers if not isinstance(layer, keras.Model)}
    if old != new:
        raise ValueError(
            f"Cannot wrap the pruned network as {wrapper.name} was: it has layers {sorted(old - new)} that "
            "helpers.models.predictor does not make. Prune its network (helpers.models.unwrap_predictor) "
            "and wrap that again."
        )
    return rebuilt


# ------------------------------------------------------------------------------------------ size goal
def int8_size(model: keras.Model, images: np.ndarray | None = None) -> int:
    """Bytes of ``model``'s int8 TFLite file (:func:`helpers.export.export_tflite`). The file's size does not
    depend on the calibration ``images``: by default 4 random ones."""
    if images is None:
        size = model_input_size(model)
        images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        return export_tflite(model, Path(tmp) / "m.tflite", "int8", images).stat().st_size


def prune_to_size(
    model_or_path: keras.Model | str | Path,
    fraction: float,
    size_of: Callable[[keras.Model], float] = int8_size,
    steps: int = 7,
) -> tuple[keras.Model, float]:
    """The pruned model with the largest uniform ``keep`` (to 1/2**``steps``, by bisection) whose
    ``size_of`` (default: int8 TFLite bytes) is at most ``fraction`` of the unpruned model's; returns it and
    its ``keep``. ValueError when even the narrowest tried is too large."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (of the unpruned size), got {fraction!r}.")
    model = _load(model_or_path)
    target = fraction * size_of(model)
    best, low, high = None, 0.0, 1.0
    for _ in range(steps):
        keep = (low + high) / 2
        pruned = prune(model, keep)
        if size_of(pruned) <= target:
            best, low = (pruned, keep), keep
        else:
            high = keep
    if fraction == 1:
        best = (prune(model, 1.0), 1.0)
    if best is None:
        raise ValueError(
            f"Even keep={high:.4f} leaves {model.name} above {fraction:.0%} of its size; ask for a larger "
            "fraction."
        )
    return best


# ------------------------------------------------------------------------------------------ fine-tuning
@dataclass
class FineTuneResult:
    """What :func:`fine_tune` produced: the model (its network holding the best epoch's weights), one row
    per epoch, the best epoch (1-based) and its validation balanced accuracy, where it was saved."""

    model: keras.Model
    history: pd.DataFrame
    best_epoch: int | None
    best_value: float | None
    path: Path | None
    minutes: float


class _BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch :class:`BalancedSelection` last found best (put it after it)."""

    def __init__(self, selection: BalancedSelection):
        super().__init__()
        self.selection = selection
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.selection.improved:
            self.weights = self.model.get_weights()


def fine_tune(
    model: keras.Model,
    df: pd.DataFrame,
    epochs: int = 8,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    recipe: Recipe | str | None = "tuned",
    patience: int | None = None,
    save_path: str | Path | None = None,
    cache: bool | str | Path = True,
    teacher: keras.Model | str | Path | None = None,
    verbose: int = 1,
) -> FineTuneResult:
    """Train a (pruned) network, or the network inside a predictor wrapper, on the ``train`` rows of ``df``
    for up to ``epochs`` epochs with ``recipe`` (its schedule, weight decay, label smoothing, class-weight
    power and augmentation) and keep the epoch with the best balanced accuracy on the ``val`` rows (ties:
    lower val loss; ``patience``: stop after that many epochs without a better one). ``df``: from
    :func:`helpers.train.prepare_data`. The network is trained in place (a wrapper keeps its TTA and prior
    shift) and saved to ``save_path`` (``.keras``) when given. ``teacher`` (a model or ``.keras`` path, e.g.
    the unpruned model; left untouched) is distilled into the network as :func:`helpers.train.train` does:
    it sees each augmented batch, and the loss mixes the labels' cross-entropy with its softened
    probabilities (``recipe.distill_alpha``, ``recipe.distill_temperature``). The recipe's Mixup/CutMix
    applies too, and a transfer recipe's frozen BatchNorm (``freeze_batchnorm``, ``fine_tune_from``); its
    warm-up of a new classifier does not (a pruned network's classifier is trained already)."""
    start = time.perf_counter()
    network = _network(model)
    parts = _splits(df)
    recipe = resolve_recipe(recipe)
    keras.utils.set_random_seed(seed)
    work = _copy(network)  # compiled and trained in place of the network, which stays unsaved
    set_trainable(work, recipe, Phase("all", 0, epochs, learning_rate))  # "transfer": BatchNorm frozen
    teacher_network = None if teacher is None else load_teacher(_copy(_network(_load(teacher))))[0]
    weights = recipe.weights(class_weights(parts["train"]["dx"]))
    soft = recipe.mix is not None or teacher is not None  # soft targets: the class weights go in the loss
    steps = epoch_steps(len(parts["train"]), batch_size)
    work.compile(
        optimizer=make_optimizer(learning_rate, recipe, steps * epochs, steps),
        loss=SoftTargetLoss(
            [weights[k] for k in range(NUM_CLASSES)],
            recipe.label_smoothing,
            recipe.distill_alpha,
            recipe.distill_temperature,
        )
        if soft
        else SmoothedSparseCrossentropy(recipe.label_smoothing),
    )
    work.optimizer.build(work.trainable_variables)  # now, else the first training step is traced twice
    data = {"img_size": model_input_size(network), "batch_size": batch_size, "seed": seed, "cache": cache}
    train_ds = make_dataset(
        parts["train"],
        training=True,
        augment=recipe.augment,
        class_sampling=recipe.class_sampling,
        mix=recipe.mix,
        teacher=teacher_network,
        progress=False,
        **data,
    )
    val_ds = make_dataset(parts["val"], training=False, progress=False, **data)
    selection = BalancedSelection(epochs if patience is None else patience)
    best = _BestWeights(selection)
    labels = parts["val"]["dx"].map(CLASS_TO_INDEX).to_numpy()
    fit = work.fit(
        train_ds.repeat(),
        steps_per_epoch=steps,
        epochs=epochs,
        class_weight=None if soft else weights,
        shuffle=False,  # make_dataset shuffles (seeded) itself
        callbacks=[ValidationMetrics(val_ds, labels), selection, best],
        verbose=verbose,
    )
    network.set_weights(best.weights)
    path = save_keras_model(model, save_path) if save_path is not None else None
    history = pd.DataFrame(fit.history).assign(epoch=lambda h: np.arange(1, len(h) + 1))
    minutes = (time.perf_counter() - start) / 60
    return FineTuneResult(model, history, selection.best_epoch, selection.best_value, path, minutes)


def _copy(network: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    return copy


def _splits(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if not isinstance(df, pd.DataFrame) or not {"path", "dx", "split"} <= set(df.columns):
        raise ValueError("df needs 'path', 'dx' and 'split' columns: use helpers.train.prepare_data(...).")
    parts = {name: df[df["split"] == name] for name in ("train", "val")}
    empty = [name for name, part in parts.items() if part.empty]
    if empty:
        raise ValueError(
            f"df has no {' or '.join(empty)} rows: fine-tuning needs both (train fits, val selects)."
        )
    return parts
