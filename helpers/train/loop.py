"""The training loop: check the parameters, prepare the data, build or restore the model, fit with
validation scoring, selection and checkpoints, and finish the run."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers.classes import CLASS_TO_INDEX, NUM_CLASSES
from helpers.clinical import METADATA_COLUMNS, METADATA_WIDTH
from helpers.data import load_metadata
from helpers.files import write_json
from helpers.models import (
    ALL_FIELDS_DROPOUT,
    FIELD_DROPOUT,
    FUSIONS,
    MIN_IMG_SIZE,
    MODEL_NAMES,
    PRETRAINED_MODELS,
    build_model,
    count_params,
    resolve_model_name,
)
from helpers.paths import MODELS_DIR, VISUALIZATIONS_DIR
from helpers.pipeline import epoch_steps, make_dataset
from helpers.plots.evaluation import plot_training_history
from helpers.runtime import reproducibility_warning
from helpers.splits import class_weights, data_fingerprint, split_by_lesion, split_by_source, subsample
from helpers.train.checkpoint import (
    CrashSafeCheckpoint,
    remove_temporaries,
    restore,
    resume_point,
)
from helpers.train.distill import load_teacher
from helpers.train.recipes import (
    Recipe,
    SmoothedSparseCrossentropy,
    SoftTargetLoss,
    is_int,
    is_number,
    label_accuracy,
    make_optimizer,
    resolve_recipe,
)
from helpers.train.run import (
    architecture_signature,
    default_run_name,
    ensure_writable,
    new_manifest,
    now,
    open_session,
    recorded_parameters,
)
from helpers.train.selection import SELECTION_METRIC, BalancedSelection, EpochSummary, ValidationMetrics
from helpers.train.transfer import Phase, phase_at, plan_phases, set_trainable
from helpers.train.workers import is_chief, synchronize_batch_norm, writing_dir


@dataclass
class TrainResult:
    """What :func:`train` produced. Epoch numbers are 1-based, as in ``history.csv``."""

    run_dir: Path
    best_model_path: Path
    history: pd.DataFrame
    best_epoch: int | None
    best_value: float | None
    epochs_completed: int
    start_epoch: int
    stopped_early: bool
    figure_path: Path | None
    model: keras.Model = field(repr=False)

    def summary(self) -> str:
        """One readable line."""
        best = f"{self.best_value:.4f} at epoch {self.best_epoch}" if self.best_epoch else "none yet"
        stop = ", stopped early" if self.stopped_early else ""
        return (
            f"{self.epochs_completed} epochs completed ({self.epochs_completed - self.start_epoch} in this "
            f"call{stop}); best {SELECTION_METRIC} {best}; best model: {self.best_model_path}"
        )


def _check_params(
    img_size: object,
    model_name: object,
    epochs: object,
    batch_size: object,
    learning_rate: object,
    max_images: object,
    patience: object,
    lr_patience: object,
    lr_factor: object,
    min_lr: object,
    seeds: dict[str, object],
) -> None:
    """Raise ValueError naming the first bad parameter, before any work is done."""
    if not is_int(img_size) or img_size < MIN_IMG_SIZE:
        raise ValueError(
            f"img_size must be a positive int >= {MIN_IMG_SIZE} (pixels per side), got {img_size!r}."
        )
    try:
        resolve_model_name(model_name)
    except ValueError:
        names = ", ".join(("default", "fast", *MODEL_NAMES))
        raise ValueError(f"Unknown model_name {model_name!r}; choose one of {names}.") from None
    if not is_int(epochs) or epochs < 1:
        raise ValueError(
            f"epochs must be an int >= 1 (the total number of epochs of the run), got {epochs!r}."
        )
    if not is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    if max_images is not None and (not is_int(max_images) or max_images < 1):
        raise ValueError(f"max_images must be None (all images) or a positive int, got {max_images!r}.")
    for name, value in (("patience", patience), ("lr_patience", lr_patience)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if not is_number(lr_factor) or not 0 < lr_factor < 1:
        raise ValueError(f"lr_factor must be a number between 0 and 1 (exclusive), got {lr_factor!r}.")
    if not is_number(min_lr) or not 0 <= min_lr < float("inf"):
        raise ValueError(f"min_lr must be a number >= 0, got {min_lr!r}.")
    for name, value in seeds.items():  # split_seed may be None (the same as seed)
        if (value is not None or name == "seed") and (not is_int(value) or value < 0):
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")


METADATA_ENCODING = {
    "columns": list(METADATA_COLUMNS),
    "encoding": "helpers.clinical (age/100 + missing flag, sex one-hot, body site one-hot)",
    "width": METADATA_WIDTH,
    "field_dropout": FIELD_DROPOUT,
    "all_fields_dropout": ALL_FIELDS_DROPOUT,
}
"""What a metadata run records (in its identity and manifest) about its second input."""


def prepare_data(
    data_dir: str | Path = "auto",
    df: pd.DataFrame | None = None,
    seed: int = 42,
    max_images: int | None = None,
    verbose: bool = True,
    metadata_csv: str | Path | None = None,
    held_out_source: str | None = None,
    split_seed: int | None = None,
) -> pd.DataFrame:
    """The metadata of the images to use, with a ``split`` column.

    ``df`` (from :func:`helpers.data.load_metadata`, split or not) is used instead of loading ``data_dir``
    (with ``metadata_csv``, or the CSV found there). A missing split is made by
    :func:`helpers.splits.split_by_lesion` with ``seed``; the split is computed on all images before
    ``max_images`` subsets them (:func:`helpers.splits.subsample`), so an image keeps its split.
    ``held_out_source`` (e.g. ``"rosendahl"``) instead makes every image of that source (column ``dataset``)
    the test split (:func:`helpers.splits.split_by_source`): a check of how the model carries over to a
    clinic it never saw. ``split_seed`` (None: ``seed``) takes the place of ``seed`` here.
    """
    seed = seed if split_seed is None else split_seed
    if df is None:
        df = load_metadata(data_dir, metadata_csv, verbose=verbose)
    elif not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame from helpers.data.load_metadata, got {type(df)}.")
    missing = [c for c in ("image_id", "dx", "path") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks column(s) {missing}; pass the DataFrame returned by load_metadata.")
    if held_out_source is not None:
        df = split_by_source(df, held_out_source, seed=seed)
    elif "split" not in df.columns or df["split"].isna().any():
        df = split_by_lesion(df, seed=seed)
    subset = subsample(df, max_images, seed)
    subset.attrs = dict(df.attrs)
    for split in ("train", "val"):
        if not (subset["split"] == split).any():
            raise ValueError(
                f"The data has no '{split}' images ({len(subset)} images in all); training needs train and "
                "val splits. Use more images (raise max_images) or fix the 'split' column."
            )
    return subset.reset_index(drop=True)


def train(
    data_dir: str | Path = "auto",
    img_size: int = 128,
    model_name: str = "default",
    epochs: int = 15,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 42,
    run_dir: str | Path | None = None,
    resume: bool = True,
    max_images: int | None = None,
    df: pd.DataFrame | None = None,
    strategy: tf.distribute.Strategy | None = None,
    patience: int = 5,
    lr_patience: int = 2,
    lr_factor: float = 0.5,
    min_lr: float = 1e-6,
    recipe: Recipe | str | None = None,
    figures_dir: str | Path | None = None,
    cache: bool | str | Path = True,
    held_out_source: str | None = None,
    metadata: bool = False,
    fusion: str = "concat",
    split_seed: int | None = None,
    teacher: str | Path | keras.Model | None = None,
    model_options: dict | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
) -> TrainResult:
    """Train ``model_name`` on the train split, select on the validation split, and return the result.

    ``epochs`` is the run's total: calling again with the same ``run_dir`` resumes after the last completed
    epoch (``resume=True``), or continues a finished run when ``epochs`` is raised. ``resume=False`` deletes
    the run's previous state and starts fresh. Resuming with another ``model_name``, ``img_size``,
    ``batch_size``, ``seed``, architecture (:func:`~helpers.train.run.architecture_signature`) or data
    (:func:`~helpers.splits.data_fingerprint`) is refused.

    Adam (``learning_rate``), balanced class weights from the train split, ReduceLROnPlateau on ``val_loss``
    (``lr_factor``, ``lr_patience``, ``min_lr``), the best epoch by :data:`SELECTION_METRIC` (ties: lower
    ``val_loss``) saved as ``best.keras``, and early stopping after ``patience`` epochs without a new best
    epoch. ``recipe`` (a :class:`Recipe` or a name in :data:`RECIPES`) changes the optimisation: a cosine
    schedule, weight decay, label smoothing, softer class weights, weight averaging. The test split is never
    used. ``run_dir`` defaults to ``models/<default_run_name>``, ``figures_dir`` to
    ``visualizations/<run_dir name>``. ``strategy`` (a ``tf.distribute`` strategy) builds and trains the model
    in its scope; ``batch_size`` is then the global batch. With a multi-worker strategy
    (:func:`helpers.train.workers.cluster_strategy`) every worker makes the same call and only the chief
    writes ``run_dir`` (:func:`helpers.train.workers.writing_dir`). Seeds Python, NumPy and
    TensorFlow and turns on TensorFlow op determinism (process-wide), so the same seed and data give the
    same weights on CPU (with one op at a time, :mod:`helpers.runtime`; it warns when not).
    ``held_out_source``: see :func:`prepare_data` (a held-out-clinic check).
    ``metadata=True`` trains the two-input model (:func:`helpers.models.add_metadata_input`) on the images and
    their encoded age, sex and body site (:mod:`helpers.clinical`), joined by ``fusion`` (``"concat"`` or
    ``"film"``); the manifest records the encoding. ``split_seed`` (None: ``seed``) seeds the split and the
    ``max_images`` subset instead: several training seeds on one split.

    ``recipe=None`` is the model's own: "transfer" for a pretrained backbone (a warm-up of the new classifier
    on the frozen backbone, then fine-tuning: :mod:`helpers.train.transfer`), "plain" otherwise.
    ``teacher`` (a ``.keras`` path or a Keras model) distils it into this model: the teacher sees each
    augmented (and mixed) batch the student sees, and the loss mixes the labels' cross-entropy with the
    teacher's softened probabilities (``recipe.distill_alpha``, ``recipe.distill_temperature``); its path
    and SHA-256 go in the manifest, and resuming with another teacher is refused
    (:mod:`helpers.train.distill`). ``model_options`` go to the model's builder (e.g. ``{"widths": (32, 64,
    128, 256)}`` or ``{"dropout": 0.2}``). ``callbacks`` (Keras callbacks) run after each epoch's
    checkpoint is saved, e.g. a hyperparameter search's pruner that stops the run.
    """
    arguments = dict(locals())  # the first statement: exactly the call's arguments
    _check_params(
        img_size,
        model_name,
        epochs,
        batch_size,
        learning_rate,
        max_images,
        patience,
        lr_patience,
        lr_factor,
        min_lr,
        {"seed": seed, "split_seed": split_seed},
    )
    key = resolve_model_name(model_name)
    recipe = resolve_recipe(recipe, key)
    _check_recipe_fits(recipe, key, metadata, teacher)
    model_options = _check_model_options(model_options)
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser().resolve()
    if is_chief(strategy):  # only the chief of a multi-worker cluster writes the run folder
        ensure_writable(MODELS_DIR if run_dir is None else run_dir)  # before any data is read
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    if warning := reproducibility_warning():
        warnings.warn(warning, stacklevel=2)

    data = prepare_data(
        data_dir, df, seed, max_images, verbose > 0, held_out_source=held_out_source, split_seed=split_seed
    )
    fingerprint = data_fingerprint(data)
    teacher_model, teacher_record = load_teacher(teacher) if teacher is not None else (None, None)
    optimiser = {
        "learning_rate": float(learning_rate),
        "lr_factor": float(lr_factor),
        "lr_patience": int(lr_patience),
        "min_lr": float(min_lr),
    }
    settings = {"batch_size": batch_size, "optimiser": optimiser, "recipe": recipe.settings()}
    if fusion not in FUSIONS or (fusion != "concat" and not metadata):
        raise ValueError(
            f"fusion must be one of {FUSIONS} (other than 'concat' only with metadata=True), got {fusion!r}."
        )
    if metadata:  # only then, so image-only runs keep their names
        settings["metadata"] = {**METADATA_ENCODING, **({"fusion": fusion} if fusion != "concat" else {})}
    if model_options:
        settings["model_options"] = model_options
    if teacher_record:
        settings["teacher"] = teacher_record["weights_sha256"]
    if run_dir is None:
        run_dir = MODELS_DIR / default_run_name(key, img_size, seed, fingerprint, settings)
        if is_chief(strategy):
            ensure_writable(run_dir)
    parameters = recorded_parameters(arguments, run_dir, recipe)
    train_df, val_df = data[data["split"] == "train"], data[data["split"] == "val"]
    steps = max(1, len(train_df) // batch_size)
    model = _built_model(key, img_size, strategy, metadata, fusion, model_options)
    identity = {
        "model_name": key,
        "img_size": img_size,
        "batch_size": batch_size,
        "seed": seed,
        "data_fingerprint": fingerprint,
        "architecture": architecture_signature(model),
        **settings,
    }
    with writing_dir(run_dir, strategy) as write_dir:  # a temporary folder on a worker that is not the chief
        snapshot, restored = resume_point(write_dir, identity, resume)
        start_epoch = restored["epoch"] if restored else 0
        weights = recipe.weights(class_weights(train_df["dx"]))
        trainer = Trainer(model, recipe, plan_phases(recipe, epochs, learning_rate), weights, steps, strategy)
        trainer.soft = recipe.mix is not None or teacher_model is not None
        trainer.callbacks = list(callbacks)
        trainer.enter(phase_at(trainer.phases, max(start_epoch - 1, 0)))  # the phase the snapshot saved
        if snapshot is not None:
            restore(model, snapshot, strategy)

        manifest = restored["manifest"] if restored else new_manifest(parameters, data, identity, weights)
        if teacher_record and not restored:
            manifest["teacher"] = teacher_record
        open_session(manifest, parameters, start_epoch, strategy)
        reduce_lr = None
        if recipe.schedule == "plateau":
            reduce_lr = keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", mode="min", factor=lr_factor, patience=lr_patience, min_lr=min_lr
            )
        selection = BalancedSelection(patience, restored["selection"] if restored else None)
        history = pd.read_csv(snapshot / "history.csv") if snapshot is not None else None
        checkpoint = CrashSafeCheckpoint(
            write_dir, selection, reduce_lr, identity, manifest, restored, history
        )
        remove_temporaries(write_dir)  # left by a process killed while writing
        checkpoint.publish()  # repairs a kill between a snapshot's commit and its publication
        if verbose:
            _describe_start(model, run_dir, train_df, val_df, start_epoch, epochs)
        if not _nothing_to_do(restored, start_epoch, epochs, patience, verbose):
            data_args = {
                "img_size": img_size,
                "batch_size": batch_size,
                "seed": seed,
                "cache": cache,
                "metadata": metadata,
            }
            train_args = {
                "augment": recipe.augment,
                "class_sampling": recipe.class_sampling,
                "mix": recipe.mix,
                "teacher": teacher_model,
            }
            trainer.fit(train_df, val_df, checkpoint, start_epoch, epochs, data_args, train_args, verbose)
        if write_dir != run_dir:
            figures_dir = write_dir / "figures"
        result = _finish(model, write_dir, checkpoint, start_epoch, figures_dir)
    if write_dir != run_dir:  # what the chief wrote
        result = replace(result, run_dir=run_dir, best_model_path=run_dir / "best.keras", figure_path=None)
    if verbose:
        print(result.summary())
    return result


def _check_recipe_fits(recipe: Recipe, model_key: str, metadata: bool, teacher: object) -> None:
    """ValueError, before any work, when the recipe asks what this model or input cannot do."""
    transfer = recipe.head_epochs > 0 or recipe.freeze_batchnorm or recipe.fine_tune_from is not None
    if transfer and model_key not in PRETRAINED_MODELS:
        raise ValueError(
            f"The recipe warms up or freezes a pretrained backbone (head_epochs, freeze_batchnorm, "
            f"fine_tune_from), but {model_key} is trained from scratch; use recipe='tuned' for it, or one of "
            f"{', '.join(PRETRAINED_MODELS)}."
        )
    if metadata and (recipe.mix is not None or teacher is not None):
        raise ValueError(
            "Mixup/CutMix and distillation (teacher) work with image-only models (metadata=False)."
        )


def _check_model_options(options: object) -> dict:
    """``model_options`` as a JSON-ready dict (tuples as lists), or a clear error."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"model_options must be a dict of builder arguments, got {options!r}.")
    if {"img_size", "num_classes", "pretrained"} & set(options):
        raise ValueError("model_options cannot set img_size, num_classes or pretrained (train() sets them).")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


class Trainer:
    """Compiles the model for each phase of the run (:mod:`helpers.train.transfer`) and fits it."""

    def __init__(
        self,
        model: keras.Model,
        recipe: Recipe,
        phases: list[Phase],
        weights: dict[int, float],
        steps: int,
        strategy: tf.distribute.Strategy | None,
    ):
        self.model, self.recipe, self.phases, self.weights = model, recipe, phases, weights
        self.steps, self.strategy = steps, strategy
        self.soft = False  # soft targets (Mixup/CutMix, a teacher): class weights go into the loss
        self.callbacks: list[keras.callbacks.Callback] = []  # the caller's, after the checkpoint
        self.phase: Phase | None = None

    def enter(self, phase: Phase) -> None:
        """Freeze the layers ``phase`` freezes and compile with a new, built optimizer for it."""
        if phase == self.phase:
            return
        self.phase = phase
        recipe, model = self.recipe, self.model
        set_trainable(model, recipe, phase)
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():
            optimizer = make_optimizer(
                phase.learning_rate, recipe, self.steps * phase.epochs, self.steps, phase.constant_rate
            )
            if self.soft:
                weights = [self.weights[k] for k in range(NUM_CLASSES)]
                loss = SoftTargetLoss(
                    weights, recipe.label_smoothing, recipe.distill_alpha, recipe.distill_temperature
                )
                metrics = [keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")]
            else:
                loss, metrics = SmoothedSparseCrossentropy(recipe.label_smoothing), ["accuracy"]
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
            model.optimizer.build(model.trainable_variables)  # so its state can be loaded before fit
            self._build_metrics()

    def _build_metrics(self) -> None:
        """Create the compiled metrics' variables now, on one dummy batch, and zero them again.

        Keras creates them while tracing the first training step, and a traced function that creates
        variables is traced a second time, which lengthens every training's first epoch for nothing.
        """
        if self.soft:
            labels = np.full((1, 2 * NUM_CLASSES), 1 / NUM_CLASSES, dtype="float32")
        else:
            labels = np.zeros((1,), dtype="int32")
        self.model.compute_metrics(None, labels, np.full((1, NUM_CLASSES), 1 / NUM_CLASSES, dtype="float32"))
        self.model.reset_metrics()

    def fit(
        self,
        train_df: pd.DataFrame,
        val_df: pd.DataFrame,
        checkpoint: CrashSafeCheckpoint,
        start_epoch: int,
        epochs: int,
        data_args: dict,
        train_args: dict,
        verbose: int,
    ) -> None:
        """Fit from ``start_epoch`` to ``epochs``, phase by phase, with the validation scorer first and the
        checkpoint last."""
        val_ds = make_dataset(val_df, training=False, progress=verbose > 0, **data_args)
        callbacks = [ValidationMetrics(val_ds, val_df["dx"].map(CLASS_TO_INDEX).to_numpy())]
        callbacks += [c for c in (checkpoint.selection, checkpoint.reduce_lr, checkpoint) if c is not None]
        callbacks += [*self.callbacks, keras.callbacks.ProgbarLogger()]
        callbacks += [EpochSummary(epochs, checkpoint.selection)] if verbose else []
        for phase in self.phases:
            if phase.end <= start_epoch or checkpoint.selection.stopped_early:
                continue
            self.enter(phase)
            first = max(phase.start, start_epoch)
            if verbose and len(self.phases) > 1:
                rate = f"learning rate {phase.learning_rate:.2e}"
                print(f"Phase {phase.name}: epochs {first + 1}-{phase.end}, {rate}", flush=True)
            train_ds = self._train_dataset(train_df, first, data_args, train_args, verbose)
            self.model.fit(
                train_ds,
                steps_per_epoch=epoch_steps(len(train_df), data_args["batch_size"]),
                epochs=phase.end,
                initial_epoch=first,
                class_weight=None if self.soft else self.weights,
                shuffle=False,  # make_dataset shuffles (seeded) itself
                callbacks=callbacks,
                verbose=verbose,
            )

    def _train_dataset(
        self, train_df: pd.DataFrame, first: int, data_args: dict, train_args: dict, verbose: int
    ) -> tf.data.Dataset:
        """The training stream from epoch ``first`` on.

        One stream for a one-phase fit: epoch k draws the k-th shuffle/augmentation. Under several replicas
        the strategy copies the dataset (per device, per worker), and a copy does not share the original's
        shuffle state; a recipe of several phases builds a new stream per phase. There each epoch is keyed
        by its number (make_dataset's first_epoch), so every copy, every phase and a run resumed at ``first``
        read the same batches as an uninterrupted run.
        """
        keyed = self.model.distribute_strategy.num_replicas_in_sync > 1 or self.recipe.head_epochs > 0
        ds = make_dataset(
            train_df,
            training=True,
            progress=verbose > 0,
            first_epoch=first if keyed else None,
            **data_args,
            **train_args,
        )
        if keyed:
            return ds
        for _ in range(first):  # advance the shuffle/augmentation seeds to the resumed epoch
            iter(ds)
        return ds.repeat()


def compiled_model(
    model_name: str,
    img_size: int,
    learning_rate: float,
    recipe: Recipe | str,
    epochs: int,
    steps_per_epoch: int,
) -> keras.Model:
    """The model compiled as :func:`train` compiles it for its first epoch, its optimizer built: e.g. to
    load a backup's ``state.weights.h5`` into."""
    recipe = resolve_recipe(recipe)
    model = _built_model(resolve_model_name(model_name), img_size, None, False, "concat", {})
    weights = dict.fromkeys(range(NUM_CLASSES), 1.0)
    trainer = Trainer(
        model, recipe, plan_phases(recipe, epochs, learning_rate), weights, steps_per_epoch, None
    )
    trainer.enter(trainer.phases[0])
    return model


def _built_model(
    model_key: str,
    img_size: int,
    strategy: tf.distribute.Strategy | None,
    metadata: bool,
    fusion: str,
    model_options: dict,
) -> keras.Model:
    """Build the model (in ``strategy``'s scope), its BatchNorm synchronized across workers."""
    with strategy.scope() if strategy else contextlib.nullcontext():
        try:
            model = build_model(
                model_key, img_size, NUM_CLASSES, metadata=metadata, fusion=fusion, **model_options
            )
        except TypeError as err:
            raise ValueError(f"model_options {model_options} do not fit {model_key}: {err}.") from None
        synchronize_batch_norm(model, strategy)  # the same moving statistics on every worker
    return model


def _nothing_to_do(restored: dict | None, start_epoch: int, epochs: int, patience: int, verbose: int) -> bool:
    if restored is None:
        return False
    message = None
    if start_epoch >= epochs:
        message = f"The run already has {start_epoch} of {epochs} epochs; raise epochs to continue training."
    elif restored["selection"]["stopped_early"] and restored["selection"]["wait"] >= patience:
        message = (
            f"The run stopped early at epoch {start_epoch} (no new best epoch for {patience} epochs); "
            "raise patience to continue, or pass resume=False to start again."
        )
    if message and verbose:
        print(message)
    return message is not None


def _describe_start(
    model: keras.Model, run_dir: Path, train_df, val_df, start_epoch: int, epochs: int
) -> None:
    where = f"resuming after epoch {start_epoch}" if start_epoch else "starting fresh"
    print(
        f"Training {model.name} ({count_params(model):,} parameters) on {len(train_df)} train / "
        f"{len(val_df)} val images for {epochs} epochs ({where}); run_dir: {run_dir}",
        flush=True,
    )


def _finish(
    model: keras.Model,
    run_dir: Path,
    checkpoint: CrashSafeCheckpoint,
    start_epoch: int,
    figures_dir: str | Path | None,
) -> TrainResult:
    """Mark the run finished in its manifest, draw the history figure and build the result."""
    history = pd.DataFrame(checkpoint.rows)
    manifest = checkpoint.manifest
    selection = checkpoint.selection
    manifest.update(finished_at=now(), status="stopped_early" if selection.stopped_early else "completed")
    manifest["sessions"][-1]["finished_at"] = manifest["finished_at"]
    write_json(manifest, run_dir / "manifest.json")
    figure_path = None
    if len(history):
        figures = Path(figures_dir) if figures_dir is not None else VISUALIZATIONS_DIR / run_dir.name
        figure_path = figures / "training_history.png"
        plot_training_history(history, save_path=figure_path)
    return TrainResult(
        run_dir=run_dir,
        best_model_path=run_dir / "best.keras",
        history=history,
        best_epoch=selection.best_epoch,
        best_value=selection.best_value,
        epochs_completed=len(history),
        start_epoch=start_epoch,
        stopped_early=selection.stopped_early,
        figure_path=figure_path,
        model=model,
    )
