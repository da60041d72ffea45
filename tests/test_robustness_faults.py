"""Catalogue of faults: a training process killed at chosen points, failing writes (disk full, permissions),
damaged or half-written caches, and concurrent runs sharing a cache. No completed epoch is ever lost.

The kill test runs training in subprocesses whose script (test code) wraps one write so that it writes part
of its file and then SIGKILLs its own process: each kill point is hit deterministically.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from robustness_utils import without_root
from train_utils import CLI_SETTINGS, SETTINGS, run_training, same_weights

from helpers import files, pipeline
from helpers.data import load_metadata
from helpers.evaluate import evaluate_model
from helpers.export import save_keras_model
from helpers.plots.common import save_figure
from helpers.train import MIN_FREE_BYTES, read_backup_state, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

KILL_SCRIPT = textwrap.dedent(
    """
    import io, json, os, signal, sys
    from pathlib import Path
    import keras, numpy as np
    import helpers.pipeline, helpers.train
    from helpers.files import atomic_write

    data_dir, run_dir, figures, point = sys.argv[1:5]
    settings = dict(img_size=32, batch_size=16, model_name="cpu_light_efficient_cnn", seed=42)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def die_writing(path, data):  # into the temporary file the real (atomic) write uses
        with atomic_write(path) as f:
            f.write(data[: len(data) // 2])
            f.flush()
            die()

    def snapshot_epoch(path):  # backup/.tmp-0002-<pid>/file -> 2
        name = Path(path).parent.name
        return int(name.split("-")[1]) if name.startswith(".tmp-") else None

    if point == "cache_write":
        def write_cache(path, arr):
            buffer = io.BytesIO()
            np.save(buffer, arr)
            die_writing(path, buffer.getvalue())
        helpers.pipeline._write_cache = write_cache
    elif point == "mid_epoch_2":
        class KillInEpoch2(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch
            def on_train_batch_end(self, batch, logs=None):
                if self.epoch == 1 and batch == 1:
                    die()
        fit = keras.Model.fit
        def fit_with_kill(self, *a, callbacks=(), **k):
            return fit(self, *a, callbacks=[*callbacks, KillInEpoch2()], **k)
        keras.Model.fit = fit_with_kill
    elif point == "checkpoint_write_epoch_2":
        save_weights = keras.Model.save_weights
        def save_weights_then_die(self, path, *a, **k):
            save_weights(self, path, *a, **k)
            if snapshot_epoch(path) == 2:  # leave the weights file of the snapshot half-written
                Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
                die()
        keras.Model.save_weights = save_weights_then_die
    elif point == "publish_epoch_3":
        publish = helpers.train.checkpoint._publish
        def publish_or_die(src, dst):
            if dst.name == "history.csv" and src.parent.name == "epoch-0003":
                tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")  # _publish's temporary name
                tmp.write_bytes(src.read_bytes()[:100])
                die()
            publish(src, dst)
        helpers.train.checkpoint._publish = publish_or_die
    elif point == "final_manifest":
        write_json = helpers.train.loop.write_json
        def write_json_or_die(obj, path):
            if Path(path) == Path(run_dir) / "manifest.json":
                die_writing(path, json.dumps(obj).encode())
            return write_json(obj, path)
        helpers.train.loop.write_json = write_json_or_die
    helpers.train.train(data_dir, epochs=3, run_dir=run_dir, figures_dir=figures, verbose=2, **settings)
    print("NOT KILLED")
    """
)

# kill point -> (completed epochs it leaves, epochs in the run folder's history.csv, where the run started)
KILL_POINTS = {
    "cache_write": (0, [], "starting fresh"),
    "mid_epoch_2": (1, [1], "starting fresh"),
    "checkpoint_write_epoch_2": (1, [1], "resuming after epoch 1"),
    "publish_epoch_3": (3, [1, 2], "resuming after epoch 1"),
    "final_manifest": (3, [1, 2, 3], "resuming after epoch 3"),
}


def _kill_at(point: str, data_dir: Path, run_dir: Path, cache: Path, log: Path) -> str:
    """Run the training script until it kills itself at ``point``; return its output."""
    command = [sys.executable, "-c", KILL_SCRIPT, str(data_dir), str(run_dir), str(run_dir) + "-fig", point]
    with open(log, "wb") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**ENV, "DERM_CACHE_DIR": str(cache)}
        ).returncode
    text = log.read_text(errors="replace")
    assert code == -signal.SIGKILL, f"{point}: the process was not killed (exit {code}):\n{text[-3000:]}"
    return text


def _history_epochs(run_dir: Path) -> list[int]:
    path = run_dir / "history.csv"
    return pd.read_csv(path)["epoch"].tolist() if path.exists() else []


def _check_after_kill(point: str, run_dir: Path, output: str) -> None:
    completed, history, started = KILL_POINTS[point]
    state = read_backup_state(run_dir)
    assert (state["epoch"] if state else 0) == completed, f"{point}: last completed epoch"
    assert started in output, f"{point}: the run did not resume from the last completed epoch"
    assert _history_epochs(run_dir) == history, f"{point}: every completed epoch exactly once"
    if completed:
        keras.models.load_model(run_dir / "best.keras")  # the best checkpoint always loads
        json_text = (run_dir / "manifest.json").read_text()
        assert '"epochs_completed"' in json_text


@pytest.mark.slow
def test_sigkill_at_each_kill_point_resumes_from_last_completed_epoch(synthetic_dir, workdir, continued):
    run_dir, cache = workdir / "killed", workdir / "kill-cache"
    for point in KILL_POINTS:
        output = _kill_at(point, synthetic_dir, run_dir, cache, workdir / f"kill-{point}.log")
        _check_after_kill(point, run_dir, output)
        if point == "cache_write":  # half a cache file in a temporary, no cache file
            assert not list(cache.glob("*.npy")) and len(list(cache.glob(".*.tmp"))) == 1
    resumed = run_training(synthetic_dir, workdir, run_dir, epochs=3)
    assert resumed.start_epoch == 3 and _history_epochs(run_dir) == [1, 2, 3]
    assert same_weights(resumed.model.get_weights(), continued.model.get_weights()), (
        "killed five times and resumed, the run must end with the weights of the run trained without a kill"
    )
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="seconds"), continued.history.drop(columns="seconds")
    )
    assert pd.read_json(run_dir / "manifest.json", typ="series")["status"] == "completed"
    assert not list(run_dir.rglob(".*")), "no temporary files left behind"
    assert not list(cache.glob(".*")) and len(list(cache.glob("*.npy"))) == 2, (
        "the killed cache write is gone"
    )
    keras.models.load_model(run_dir / "best.keras")


# ------------------------------------------------------------------------------------------ failing writes
def test_disk_full_at_checkpoint_write_is_a_clear_error_and_loses_no_epoch(
    synthetic_dir, workdir, two_epochs, monkeypatch
):
    run_dir = workdir / "disk-full"
    shutil.copytree(two_epochs.run_dir, run_dir)
    save_weights = keras.Model.save_weights

    def full_disk(self, path, *args, **kwargs):
        save_weights(self, path, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    expected = (
        rf"Could not save the checkpoint of epoch 3 in {re.escape(str(run_dir / 'backup'))} "
        r"\(No space left on device\)\. No completed epoch is lost: epochs 1-2 are saved in .*epoch-0002\. "
        "Free disk space .*continue after epoch 2"
    )
    with pytest.raises(OSError, match=expected) as caught:
        run_training(synthetic_dir, workdir, run_dir, epochs=3)
    assert caught.value.errno == errno.ENOSPC
    assert read_backup_state(run_dir)["epoch"] == 2 and _history_epochs(run_dir) == [1, 2]
    assert [p.name for p in (run_dir / "backup").iterdir()] == ["epoch-0002"], "the partial snapshot is gone"
    keras.models.load_model(run_dir / "best.keras")


def test_disk_full_at_publication_is_a_clear_error_and_loses_no_epoch(
    synthetic_dir, workdir, two_epochs, monkeypatch
):
    run_dir = workdir / "disk-full-publish"
    shutil.copytree(two_epochs.run_dir, run_dir)  # copies, not the backup's hard links: published again

    def full_disk(src: Path, dst: Path) -> None:
        dst.write_bytes(src.read_bytes()[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("helpers.train.checkpoint._link_or_copy", full_disk)
    expected = r"Could not copy best\.keras into .*\(No space left on device\)\. .*epochs 1-2 are saved in"
    with pytest.raises(OSError, match=expected):
        run_training(synthetic_dir, workdir, run_dir, epochs=2)
    assert read_backup_state(run_dir)["epoch"] == 2 and not list(run_dir.glob(".*"))
    monkeypatch.undo()
    again = run_training(synthetic_dir, workdir, run_dir, epochs=2)  # nothing to train: publishes
    assert again.start_epoch == 2 and _history_epochs(run_dir) == [1, 2]


def _low_disk(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))


def test_disk_too_full_for_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    _low_disk(monkeypatch, 10 * 2**20)
    needed = f"at least {MIN_FREE_BYTES // 2**20} MB"
    with pytest.raises(
        OSError, match=f"run_dir .*run' is on a disk with only 10 MB free.*{needed}.*another disk"
    ):
        train(tmp_path / "no-such-data", run_dir=tmp_path / "run", epochs=1, **SETTINGS)  # data never read


def test_disk_too_full_for_the_cache_decodes_in_memory_and_says_so(synthetic_dir, tmp_path, monkeypatch):
    df = load_metadata(synthetic_dir, verbose=False).iloc[:10]
    _low_disk(monkeypatch, 100 * 2**20)
    with pytest.warns(
        UserWarning, match=r"Not writing the image cache .*only 100 MB are free.*DERM_CACHE_DIR"
    ):
        images = pipeline.load_images(df["path"], 16, cache=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())
    np.testing.assert_array_equal(images, pipeline.load_images(df["path"], 16, cache=False, progress=False))


def test_disk_full_at_cache_write_warns_and_leaves_no_partial_file(synthetic_dir, tmp_path, monkeypatch):
    df = load_metadata(synthetic_dir, verbose=False).iloc[:10]

    def full_disk(file, arr, **kwargs):
        file.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.warns(UserWarning, match=r"Could not write .*\.npy \(No space left on device\)\. Free disk"):
        images = pipeline.load_images(df["path"], 16, cache=tmp_path, progress=False)
    assert images.shape == (10, 16, 16, 3) and not list(tmp_path.iterdir())


def test_disk_full_at_metrics_write_is_a_clear_error_and_keeps_the_old_file(
    synthetic_dir, tmp_path, monkeypatch
):
    model_path = tmp_path / "run" / "best.keras"
    model_path.parent.mkdir()
    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))).save(
        model_path
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("old predictions\n")

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    expected = (
        f"Could not write {re.escape(str(out / 'predictions.csv'))} \\(No space left on device\\)\\. Free"
    )
    with pytest.raises(OSError, match=expected):
        evaluate_model(model_path, synthetic_dir, out_dir=out, cache=False, n_bootstrap=10, verbose=False)
    assert (out / "predictions.csv").read_text() == "old predictions\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.csv"], "no temporaries"


def test_disk_full_while_saving_a_keras_model_keeps_the_old_file(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    target = tmp_path / "model.keras"
    save_keras_model(model, target)
    old = target.read_bytes()

    def half_written_then_full(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(old[: len(old) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "save", half_written_then_full)
    with pytest.raises(
        OSError, match=f"Could not write {re.escape(str(target))} \\(No space left on device\\)"
    ):
        save_keras_model(model, target)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"], "no temporary folder left"


def test_temporary_folders_of_killed_writers_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = tmp_path / f".model.keras.{int(finished.stdout)}.k1ll3d.tmp"
    live = tmp_path / f".model.keras.{os.getpid()}.w0rk1n.tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"PK half a model")
    assert files.remove_stale_temporaries(tmp_path) == 1
    assert not dead.exists() and live.exists()


def test_disk_full_while_saving_a_figure_keeps_the_old_figure(tmp_path, monkeypatch):
    target = tmp_path / "figures" / "confusion.png"
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    save_figure(figure, target)
    old = target.read_bytes()
    assert old.startswith(b"\x89PNG")
    real_savefig = matplotlib.figure.Figure.savefig

    def half_written_then_full(self, target, **kwargs):  # writes part of the PNG, then the disk is full
        buffer = io.BytesIO()
        real_savefig(self, buffer, **{"format": "png", **kwargs})
        with contextlib.ExitStack() as stack:
            handle = target if hasattr(target, "write") else stack.enter_context(open(target, "wb"))
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written_then_full)
    axes.plot([0, 1], [0, 1])
    with pytest.raises(
        OSError, match=f"Could not write {re.escape(str(target))} \\(No space left on device\\)"
    ):
        save_figure(figure, target)
    plt.close(figure)
    assert target.read_bytes() == old
    assert [p.name for p in target.parent.iterdir()] == ["confusion.png"], "no temporaries"


def test_checkpoint_files_reach_the_disk_before_they_are_published(synthetic_dir, workdir, monkeypatch):
    """Power-cut safety: a snapshot's files are fsynced before ``state.json`` marks it complete, and each
    rename (snapshot commit, publication into the run folder) is followed by an fsync of its folder."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            real(src, dst, *args, **kwargs)
            events.append(("rename", str(Path(dst).resolve())))

        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    run_dir = (workdir / "fsynced").resolve()
    run_training(synthetic_dir, workdir, run_dir, epochs=2)
    snapshot, backup = run_dir / "backup" / "epoch-0002", run_dir / "backup"
    committed = events.index(("rename", str(snapshot)))
    assert events[committed + 1] == ("fsync", str(backup)), "the commit is durable before old ones go"
    state_written = max(
        i for i, (kind, path) in enumerate(events[:committed]) if path.endswith("/state.json")
    )
    flushed = {Path(path).name for kind, path in events[:state_written] if kind == "fsync"}
    assert {"state.weights.h5", "rng.npz", "best.keras", "history.csv", "manifest.json"} <= flushed
    for name in ("best.keras", "history.csv", "manifest.json"):
        published = max(i for i, event in enumerate(events) if event == ("rename", str(run_dir / name)))
        assert events[published + 1] == ("fsync", str(run_dir)), name


def test_run_dir_under_a_regular_file_is_refused_before_loading_data(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=f"run_dir '{blocker / 'run'}' cannot be written .*write to"):
        train(tmp_path / "no-such-data", run_dir=blocker / "run", epochs=1, **SETTINGS)


def test_unwritable_models_folder_is_refused_before_loading_data(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr("helpers.train.loop.MODELS_DIR", blocker / "models")  # run_dir=None goes there
    with pytest.raises(PermissionError, match=f"'{blocker / 'models'}' cannot be written"):
        train(tmp_path / "no-such-data", run_dir=None, epochs=1, **SETTINGS)


def test_read_only_run_dir_is_refused_before_loading_data(open_tmp_path):
    run_dir = open_tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    with without_root(), pytest.raises(PermissionError, match=r"cannot be written \(Permission denied\)"):
        train(open_tmp_path / "no-such-data", run_dir=run_dir, epochs=1, **SETTINGS)
    assert not list(run_dir.iterdir())


# ------------------------------------------------------------------------------------------ caches
@pytest.fixture()
def paths(synthetic_dir: Path) -> list[str]:
    return load_metadata(synthetic_dir, verbose=False)["path"].tolist()[:12]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_shape"])
def test_partial_or_damaged_cache_is_detected_and_rebuilt(paths, tmp_path, damage):
    first = pipeline.load_images(paths, 16, cache=tmp_path, progress=False)
    (target,) = tmp_path.glob("*.npy")
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not numpy at all")
    else:
        np.save(target, np.zeros((3, 16, 16, 3), dtype=np.uint8))
    again = pipeline.load_images(paths, 16, cache=tmp_path, progress=False)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(np.load(target), first)  # repaired on disk


def test_temporaries_of_killed_cache_writers_are_removed_live_ones_kept(paths, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)
    dead = tmp_path / f".images_16px.npy.{dead_pid}.k1ll3d.tmp"
    live = tmp_path / f".images_16px.npy.{os.getpid()}.w0rk1n.tmp"
    for path in (dead, live):
        path.write_bytes(b"\x93NUMPY half a file")
    pipeline.load_images(paths, 16, cache=tmp_path, progress=False)
    assert not dead.exists() and live.exists()
    assert files.remove_stale_temporaries(tmp_path) == 0


# ------------------------------------------------------------------------------------------ concurrency
@pytest.mark.slow
def test_concurrent_runs_sharing_one_cache_do_not_interfere(synthetic_dir, workdir, two_epochs):
    """A training subprocess and an in-process run, in two run folders, at the same time, one cache."""
    cache, runs = workdir / "shared-cache", [workdir / "concurrent-0", workdir / "concurrent-1"]
    command = [sys.executable, "-m", "helpers.train", "--data-dir", str(synthetic_dir), "--epochs", "1"]
    command += ["--run-dir", str(runs[0]), "--figures-dir", f"{runs[0]}-fig", "--verbose", "0", *CLI_SETTINGS]
    env = {**ENV, "DERM_CACHE_DIR": str(cache)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env) as p:
        run_training(synthetic_dir, workdir, runs[1], epochs=1, cache=cache)
        output = p.communicate(timeout=400)[0].decode(errors="replace")
    assert p.returncode == 0, output[-3000:]
    expected = two_epochs.history.drop(columns="seconds").iloc[:1]
    models = []
    for run in runs:
        history = pd.read_csv(run / "history.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(history, expected)  # the same first epoch as the run trained alone
        models.append(keras.models.load_model(run / "best.keras"))
    assert same_weights(models[0].get_weights(), models[1].get_weights())
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".*"))
