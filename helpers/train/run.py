"""A run's identity and record: the run folder's name, the architecture signature, the manifest (parameters,
library versions, data, class weights, git commit, sessions) and the checks a run folder must pass."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import sklearn
import tensorflow as tf

from helpers.classes import CLASS_NAMES
from helpers.files import free_bytes, megabytes
from helpers.models import resolve_model_name
from helpers.paths import PROJECT_ROOT
from helpers.train.recipes import Recipe
from helpers.train.selection import SELECTION_METRIC

MIN_FREE_BYTES = 64 * 2**20
"""Free space a run folder's disk needs before training starts: two snapshots and the published files (a
few MB for the models here), with room to spare."""


def ensure_writable(run_dir: Path) -> None:
    """Create ``run_dir``, prove a file can be written there and that its disk has :data:`MIN_FREE_BYTES`
    free; PermissionError or OSError (ENOSPC) with advice otherwise, before any work is done."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"run_dir {str(run_dir)!r} cannot be written ({err.strerror or err}); pass a run_dir in a folder "
            "you can write to (e.g. models/<name>)."
        ) from err
    free = free_bytes(run_dir)
    if free < MIN_FREE_BYTES:
        raise OSError(
            errno.ENOSPC,
            f"run_dir {str(run_dir)!r} is on a disk with only {megabytes(free)} free; training needs at "
            f"least {megabytes(MIN_FREE_BYTES)} for its checkpoints. Free disk space or pass a run_dir on "
            "another disk.",
        )


def default_run_name(model_name: str, img_size: int, seed: int, fingerprint: str, settings: dict) -> str:
    """``<model>_<size>px_data-<fingerprint[:8]>_seed<seed>_cfg-<hash>``: the same settings find the same
    run again. ``settings`` (JSON values: batch size, optimiser, recipe) are hashed into the last part, so
    changing any of them starts a new run instead of colliding with the old one."""
    key = resolve_model_name(model_name)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{key}_{img_size}px_data-{fingerprint[:8]}_seed{seed}_cfg-{digest[:6]}"


def architecture_signature(model: keras.Model) -> str:
    """A short hash of the model's weight shapes: changes when the architecture behind a name changes."""
    shapes = [[type(model).__name__, len(model.layers)], *[list(w.shape) for w in model.weights]]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


def new_manifest(parameters: dict, df: pd.DataFrame, identity: dict, weights: dict[int, float]) -> dict:
    counts = pd.crosstab(df["dx"], df["split"]).reindex(index=list(CLASS_NAMES), fill_value=0)
    validation = df.attrs.get("validation", {})
    return {
        "parameters": parameters,
        "identity": identity,
        "selection_metric": SELECTION_METRIC,
        "data": {
            "fingerprint": identity["data_fingerprint"],
            "source": validation.get("image_root"),
            "excluded_images": {
                "missing": validation.get("missing_images", []),
                "unreadable": [
                    {"image_id": c["image_id"], "reason": c["reason"]}
                    for c in validation.get("corrupt_images", [])
                ],
            },
            "split": df.attrs.get("split"),
            "images": {s: int((df["split"] == s).sum()) for s in ("train", "val", "test")},
            "class_counts": {s: counts[s].to_dict() for s in counts.columns},
        },
        "class_weights": {CLASS_NAMES[k]: round(v, 6) for k, v in weights.items()},
        "seed": identity["seed"],
        "versions": _versions(),
        "git_commit": _git_commit(),
        "started_at": now(),
        "finished_at": None,
        "status": "running",
        "epochs_completed": 0,
        "best_epoch": None,
        "best_value": None,
        "stopped_early": False,
        "sessions": [],
    }


def recorded_parameters(arguments: dict, run_dir: Path, recipe: Recipe) -> dict:
    """The call's arguments as JSON values for the manifest (a DataFrame or strategy by description)."""
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}
    recorded.update(
        run_dir=str(run_dir),
        df=None if arguments["df"] is None else f"DataFrame with {len(arguments['df'])} rows",
        strategy=type(arguments["strategy"]).__name__ if arguments["strategy"] else None,
        recipe=recipe.settings(),
        teacher=arguments["teacher"]
        if not isinstance(arguments["teacher"], keras.Model)
        else "a Keras model",
    )
    return recorded


def open_session(manifest: dict, parameters: dict, start_epoch: int, strategy) -> None:
    """Record this call of :func:`~helpers.train.train` in the manifest."""
    manifest.update(status="running", finished_at=None, parameters=parameters)
    manifest["sessions"].append(
        {
            "started_at": now(),
            "start_epoch": start_epoch,
            "end_epoch": start_epoch,
            "strategy": type(strategy).__name__ if strategy else None,
            "replicas": strategy.num_replicas_in_sync if strategy else 1,
        }
    )


def list_run_files(run_dir: str | Path) -> pd.DataFrame:
    """Every file of a run folder: relative path, size in kB and modification time."""
    run_dir = Path(run_dir)
    rows = [
        {
            "file": str(p.relative_to(run_dir)),
            "kB": round(p.stat().st_size / 1024, 1),
            "modified": datetime.fromtimestamp(p.stat().st_mtime).isoformat(sep=" ", timespec="seconds"),
        }
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    ]
    return pd.DataFrame(rows, columns=["file", "kB", "modified"])
