"""Two workers on 127.0.0.1 train one model with TensorFlow's ``MultiWorkerMirroredStrategy``.

The README's two-terminal example, word for word (free ports instead of 12345/12346, small settings
appended), trains uninterrupted while the same training through :func:`helpers.train.train` runs beside it,
its worker 1 killed after the first completed epoch, both restarted: they resume from that epoch, end with
identical weights, and those weights are the uninterrupted run's. As root, worker 1 runs as ``nobody``, so
a write of it into the run folder (owned by root) would fail: only the chief writes there.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_readme import README, section, shell_commands

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
SMALL = ["--img-size", "32", "--epochs", "2", "--batch-size", "8", "--max-images", "120", "--verbose", "0"]
SMALL += ["--model-name", "fast"]
SCRIPT = """
import sys
import numpy as np
from helpers.train import train
from helpers.train.workers import cluster_strategy

strategy = cluster_strategy()
result = train(data_dir=sys.argv[1], run_dir=sys.argv[2], img_size=32, epochs=2, batch_size=8,
               model_name="fast", max_images=120, strategy=strategy, verbose=1)
np.savez(sys.argv[3], *result.model.get_weights())
"""
NOBODY = 65534


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(
    argv: list[str], env: dict[str, str], index: int, cwd: Path, log: Path, pair: str
) -> subprocess.Popen:
    """Worker ``index`` of ``pair`` (worker 1 as ``nobody`` when the tests run as root), with its own
    ``TMPDIR`` ``cwd/<pair><index>``, where its temporary run folder goes."""
    user = NOBODY if index == 1 and os.geteuid() == 0 else None
    tmp = cwd / f"{pair}{index}"
    tmp.mkdir(exist_ok=True)
    if user:
        os.chown(tmp, NOBODY, -1)
    env = {**env, "TMPDIR": str(tmp), "DERM_CACHE_DIR": str(tmp / "cache"), "HOME": str(tmp)}
    out = open(log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, user=user)


def wait_all(processes: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> None:
    for process, log in zip(processes, logs, strict=True):
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail(f"a worker did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
        assert code == 0, log.read_text()[-3000:]


def weights_h5(path: Path) -> list[np.ndarray]:
    found = []
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: found.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.fixture()
def cluster(open_tmp_path: Path, synthetic_dir: Path):
    """A folder every user can enter, the environment of the workers, and a copy of the data they can read."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DERM_WORK_DIR", None)
    subprocess.run(["cp", "-r", str(synthetic_dir), str(open_tmp_path / "data")], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(open_tmp_path / "data")], check=True)
    return open_tmp_path, env


def readme_workers(folder: Path, env: dict[str, str], data: str) -> tuple[list[subprocess.Popen], list[Path]]:
    """The README's two terminals, word for word (free ports for 12345/12346, small settings appended)."""
    commands = shell_commands(section(README.read_text(), "On several machines"))
    assert len(commands) == 2
    ports = free_ports(2)
    processes, logs = [], []
    for index, command in enumerate(commands):
        for readme_port, port in zip(("12345", "12346"), ports, strict=True):
            command = command.replace(f"localhost:{readme_port}", f"127.0.0.1:{port}")
        assignment, *argv = shlex.split(command)
        name, value = assignment.split("=", 1)
        argv = [PYTHON, *argv[1:], "--data-dir", data, *SMALL]
        logs.append(folder / f"readme{index}.log")
        processes.append(launch(argv, {**env, name: value}, index, folder, logs[-1], "readme"))
    return processes, logs


def script_workers(folder: Path, env: dict[str, str], data: str, run: Path, attempt: str):
    """Both workers of a fresh cluster running :data:`SCRIPT` (``helpers.train.train``) into ``run``."""
    (folder / "script.py").write_text(SCRIPT)
    cluster_spec = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    processes, logs = [], []
    for index in (0, 1):
        config = {"cluster": cluster_spec, "task": {"type": "worker", "index": index}}
        weights = folder / f"script{index}" / "weights.npz"  # a folder the worker may write to
        argv = [PYTHON, str(folder / "script.py"), data, str(run), str(weights)]
        logs.append(folder / f"{attempt}{index}.log")
        config_env = {**env, "TF_CONFIG": json.dumps(config)}
        processes.append(launch(argv, config_env, index, folder, logs[-1], "script"))
    return processes, logs


def first_fields(line: str) -> list[str]:
    """A history.csv row without its last field (the epoch's seconds)."""
    return line.split(",")[:-1]


def assert_same(found: list[np.ndarray], expected: list[np.ndarray], what: str) -> None:
    assert len(found) == len(expected) > 0
    for i, (a, b) in enumerate(zip(found, expected, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}: array {i} of {len(found)}")


@pytest.mark.slow
def test_two_workers_train_resume_and_agree(cluster):
    """The README's pair trains two epochs uninterrupted while a second pair (``helpers.train.train``) starts
    the same run and is killed after its first epoch (worker 1 first); restarted, that pair resumes from
    epoch 1 and ends, on both workers, with the uninterrupted run's weights."""
    folder, env = cluster
    data = str(folder / "data")
    run = folder / "killed"
    readme, readme_logs = readme_workers(folder, env, data)
    processes, logs = script_workers(folder, env, data, run, "first")
    deadline = time.monotonic() + 240
    while not (run / "backup" / "epoch-0001" / "state.json").exists():
        assert time.monotonic() < deadline and processes[0].poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.02)
    processes[1].send_signal(signal.SIGKILL)  # worker 1 dies mid-run; the chief then waits for it
    processes[0].send_signal(signal.SIGKILL)
    for process in processes:
        process.wait()
    assert not (run / "backup" / "epoch-0002").exists(), "the run finished before the kill: no resume tested"
    wait_all(readme, readme_logs)

    uninterrupted = folder / "models" / "two_workers"
    assert sorted(p.name for p in uninterrupted.iterdir()) == [
        "backup",
        "best.keras",
        "history.csv",
        "manifest.json",
    ]
    assert (uninterrupted / "history.csv").read_text().count("\n") == 3  # header + epochs 1, 2
    assert not list((folder / "readme1").glob("dermsep-worker-*")), "worker 1 left its temporary run folder"
    epoch_one = (run / "backup" / "epoch-0001" / "history.csv").read_text().splitlines()[:2]
    history = (uninterrupted / "history.csv").read_text().splitlines()
    assert epoch_one[0] == history[0] and first_fields(epoch_one[1]) == first_fields(history[1])

    processes, logs = script_workers(folder, env, data, run, "again")
    wait_all(processes, logs)
    for log in logs:
        assert "resuming after epoch 1" in log.read_text()
    chief, worker = (np.load(folder / f"script{index}" / "weights.npz") for index in (0, 1))
    assert_same([worker[k] for k in worker.files], [chief[k] for k in chief.files], "worker 1 and the chief")
    state = "backup/epoch-0002/state.weights.h5"
    assert_same(weights_h5(run / state), weights_h5(uninterrupted / state), "resumed epoch 2")
    assert (run / "history.csv").read_text().count("\n") == 3


class _Replicas:
    """Stands in for a strategy: only its number of replicas matters."""

    def __init__(self, n: int) -> None:
        self.num_replicas_in_sync = n


def test_batch_norm_is_synchronized_only_across_replicas():
    from helpers.models import build_model
    from helpers.train.workers import synchronize_batch_norm

    model = build_model("fast", 32)
    norms = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
    assert synchronize_batch_norm(model, None) == synchronize_batch_norm(model, _Replicas(1)) == 0
    assert not any(layer.get_config()["synchronized"] for layer in norms)  # one process: as before
    assert synchronize_batch_norm(model, _Replicas(2)) == len(norms) > 10
    assert all(layer.get_config()["synchronized"] for layer in norms)


@pytest.mark.parametrize("config", [None, "not json", '{"cluster": {"worker": ["127.0.0.1:1"]}}'])
def test_multi_worker_without_a_usable_tf_config_says_how_to_set_it(monkeypatch, capsys, config):
    from helpers.train.cli import main

    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    assert main(["--multi-worker", "--epochs", "1"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: multi-worker training reads the cluster from TF_CONFIG")
    assert '"task": {"type": "worker", "index": 0}' in message
