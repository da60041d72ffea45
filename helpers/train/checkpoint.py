"""Crash-safe checkpoints: after every epoch a complete snapshot (weights, optimizer and random-generator
state, selection and learning-rate-schedule state, history, best model) is committed with one atomic rename,
then the run folder's files are published from it; resuming restores the newest complete snapshot."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers.files import fsync_files, fsync_folder, write_json
from helpers.train.recipes import averaged_weights
from helpers.train.run import now
from helpers.train.selection import SELECTION_METRIC, BalancedSelection

BACKUP_DIR = "backup"


_SNAPSHOT_PREFIX = "epoch-"


_TMP_PREFIX = ".tmp-"


_STATE_FORMAT = 2


_RUN_FILES = ("best.keras", "history.csv", "manifest.json")


_IDENTITY_KEYS = (
    "model_name",
    "img_size",
    "batch_size",
    "seed",
    "data_fingerprint",
    "architecture",
    "recipe",
    "optimiser",
    "model_options",
    "teacher",
)


_REDUCE_LR_STATE = ("wait", "best", "cooldown_counter")


def _snapshots(run_dir: Path) -> list[Path]:
    """Committed snapshot folders, newest first."""
    folder = run_dir / BACKUP_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_SNAPSHOT_PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _latest_snapshot(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest committed snapshot that reads back completely, with its state."""
    for snapshot in _snapshots(run_dir):
        try:
            state = json.loads((snapshot / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("format") == _STATE_FORMAT and all(
            (snapshot / name).is_file() for name in ("state.weights.h5", "rng.npz", *_RUN_FILES)
        ):
            return snapshot, state
    return None


def latest_snapshot(run_dir: str | Path) -> Path | None:
    """The folder of the newest complete snapshot in ``run_dir`` (None when no epoch has completed)."""
    found = _latest_snapshot(Path(run_dir))
    return None if found is None else found[0]


def read_backup_state(run_dir: str | Path) -> dict | None:
    """The resume state saved after the last completed epoch of ``run_dir`` (None when there is none).

    Keys: ``epoch`` (completed epochs), ``learning_rate`` (of the next epoch), ``selection`` (best
    ``value`` of :data:`SELECTION_METRIC`, its ``val_loss`` and ``epoch``, ``wait``: epochs since then,
    ``stopped_early``), ``reduce_lr`` (the learning-rate schedule's counters), ``identity`` (settings a
    resume must match) and ``manifest``.
    """
    found = _latest_snapshot(Path(run_dir))
    return found[1] if found else None


def resume_summary(run_dir: str | Path) -> pd.Series:
    """What resuming ``run_dir`` would restore, as a readable table (empty when there is no backup)."""
    state = read_backup_state(run_dir)
    if state is None:
        return pd.Series(dtype=object, name="no backup yet")
    best = state["selection"]
    return pd.Series(
        {
            "completed epochs": state["epoch"],
            "learning rate of the next epoch": state["learning_rate"],
            f"best {SELECTION_METRIC}": f"{best['value']:.4f} (epoch {best['epoch']})",
            "early stopping: epochs since the best epoch": best["wait"],
            "LR schedule: epochs since its best val_loss": (state["reduce_lr"] or {}).get(
                "wait", "n/a (cosine)"
            ),
            "stopped early": best["stopped_early"],
        },
        name="restored on resume",
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _publish(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s content atomically (never a half-written ``dst``)."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already the same file (renaming a hard link onto itself would leave the link behind)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        _link_or_copy(src, tmp)
        os.replace(tmp, dst)
        fsync_folder(dst.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files and folders a killed process can leave (``.*.tmp``, ``backup/.tmp-*``)."""
    for path in [*run_dir.glob(".*.tmp"), *run_dir.glob(".write-test-*")]:
        path.unlink(missing_ok=True)
    for path in (run_dir / BACKUP_DIR).glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _seed_states(model: keras.Model) -> list:
    """The models' random-generator state variables (e.g. dropout), in a stable order."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _clear_run(run_dir: Path) -> None:
    """Remove a previous run's files (resume=False)."""
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


class CrashSafeCheckpoint(keras.callbacks.Callback):
    """Keeps ``best.keras`` (the selection's best epoch), ``history.csv``, ``manifest.json`` and the backup.

    Put it after ``selection`` and ``reduce_lr`` so that each snapshot holds their state at the end of the
    epoch. ``restored`` is a backup's state; its learning-rate schedule counters are put back into
    ``reduce_lr`` when training starts (Keras resets them there).
    """

    def __init__(
        self,
        run_dir: Path,
        selection: BalancedSelection,
        reduce_lr: keras.callbacks.ReduceLROnPlateau | None,
        identity: dict,
        manifest: dict,
        restored: dict | None = None,
        history: pd.DataFrame | None = None,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.selection = selection
        self.reduce_lr = reduce_lr
        self.identity = identity
        self.manifest = manifest
        self.restored = restored
        self.rows = [] if history is None else history.to_dict("records")
        self._epoch_start = 0.0

    # -- Keras hooks
    def on_train_begin(self, logs: dict | None = None) -> None:
        saved = (self.restored or {}).get("reduce_lr")
        if saved and self.reduce_lr is not None:
            for attr in _REDUCE_LR_STATE:
                setattr(self.reduce_lr, attr, saved[attr])

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        if SELECTION_METRIC not in logs:
            raise RuntimeError(f"{SELECTION_METRIC} is not in the logs: put ValidationMetrics first.")
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        row["seconds"] = round(time.perf_counter() - self._epoch_start, 3)
        self.rows.append(row)
        self._commit(epoch + 1, self.selection.improved)
        self.publish()

    # -- saving
    def state(self, epoch: int) -> dict:
        """The JSON part of a snapshot (``learning_rate``: the one the next epoch uses)."""
        reduce_lr = None
        if self.reduce_lr is not None:
            reduce_lr = {a: getattr(self.reduce_lr, a) for a in _REDUCE_LR_STATE}
            reduce_lr["best"] = _float_or_none(reduce_lr["best"])
        return {
            "format": _STATE_FORMAT,
            "epoch": epoch,
            "identity": self.identity,
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "selection": self.selection.state(),
            "reduce_lr": reduce_lr,
            "manifest": self.manifest,
        }

    def _commit(self, epoch: int, improved: bool) -> None:
        """Write the epoch's snapshot into a temporary folder, then commit it with one atomic rename.

        A failing write (disk full, permissions) removes the partial folder and raises an OSError that says
        which completed epoch is safe and how to continue from it.
        """
        backup = self.run_dir / BACKUP_DIR
        previous = _latest_snapshot(self.run_dir)
        tmp = backup / f"{_TMP_PREFIX}{epoch:04d}-{os.getpid()}"
        target = backup / f"{_SNAPSHOT_PREFIX}{epoch:04d}"
        try:
            self._write_snapshot(tmp, epoch, improved, previous)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
            fsync_folder(backup)  # the new snapshot is on disk before the previous one is deleted
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(
                err.errno,
                f"Could not save the checkpoint of epoch {epoch} in {backup} ({err.strerror or err}). "
                + _what_is_safe(previous),
            ) from err
        for old in backup.iterdir():
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def _write_snapshot(
        self, tmp: Path, epoch: int, improved: bool, previous: tuple[Path, dict] | None
    ) -> None:
        """Every file of the epoch's snapshot, ``state.json`` last (it marks the folder complete)."""
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_weights(tmp / "state.weights.h5")
        np.savez(tmp / "rng.npz", *[np.asarray(v.numpy()) for v in _seed_states(self.model)])
        if improved or previous is None:
            with averaged_weights(self.model):
                self.model.save(tmp / "best.keras")
        else:
            _link_or_copy(previous[0] / "best.keras", tmp / "best.keras")
        pd.DataFrame(self.rows).to_csv(tmp / "history.csv", index=False)
        self.manifest.update(
            epochs_completed=epoch,
            best_epoch=self.selection.best_epoch,
            best_value=self.selection.best_value,
            stopped_early=self.selection.stopped_early,
            updated_at=now(),
        )
        self.manifest["sessions"][-1]["end_epoch"] = epoch
        write_json(self.manifest, tmp / "manifest.json")
        fsync_files(tmp)  # everything is on disk before state.json marks the snapshot complete
        write_json(self.state(epoch), tmp / "state.json")

    def publish(self) -> None:
        """Copy the newest snapshot's best model, history and manifest into the run folder (atomically)."""
        latest = _latest_snapshot(self.run_dir)
        if latest is None:
            return
        try:
            for name in _RUN_FILES:
                _publish(latest[0] / name, self.run_dir / name)
        except OSError as err:
            raise OSError(
                err.errno,
                f"Could not copy {name} into {self.run_dir} ({err.strerror or err}). "
                + _what_is_safe(latest),
            ) from err


def _what_is_safe(snapshot: tuple[Path, dict] | None) -> str:
    """What a failed write leaves and how to go on (for error messages)."""
    if snapshot is None:
        return (
            "No epoch had completed yet. Free disk space (or fix permissions) and call train again with the "
            "same run_dir."
        )
    epoch = snapshot[1]["epoch"]
    return (
        f"No completed epoch is lost: epochs 1-{epoch} are saved in {snapshot[0]}. Free disk space (or fix "
        f"permissions) and call train again with the same run_dir to continue after epoch {epoch}."
    )


def restore(model: keras.Model, snapshot: Path, strategy: tf.distribute.Strategy | None = None) -> None:
    """Load weights, optimizer state (step counter and learning rate included) and random-generator state."""
    with np.load(snapshot / "rng.npz") as saved:
        states = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = _seed_states(model)
    if len(states) != len(variables):
        raise ValueError(f"{snapshot} does not match this model (random-generator state differs).")
    with strategy.scope() if strategy else contextlib.nullcontext():
        model.load_weights(snapshot / "state.weights.h5")
        for variable, value in zip(variables, states, strict=True):
            variable.assign(value)


def resume_point(run_dir: Path, identity: dict, resume: bool) -> tuple[Path | None, dict | None]:
    """The snapshot to resume from (checked against ``identity``), or (None, None) for a fresh start."""
    if not resume:
        _clear_run(run_dir)
        return None, None
    found = _latest_snapshot(run_dir)
    if found is None:
        _clear_run(run_dir)  # files of a run killed before its first epoch completed
        return None, None
    snapshot, state = found
    saved = state.get("identity", {})
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {identity.get(k)!r}"
        for k in _IDENTITY_KEYS
        if saved.get(k) != identity.get(k)
        and (k in saved or k != "optimiser")  # runs saved before it was kept
    ]
    if diffs:
        raise ValueError(
            f"run_dir {str(run_dir)!r} holds a run ({state['epoch']} epochs) with different settings - "
            + "; ".join(diffs)
            + ". Resuming would mix two trainings. Pass a new run_dir (or run_dir=None for an automatic "
            "name), or resume=False to delete that run and start fresh."
        )
    return snapshot, state
