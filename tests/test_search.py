"""helpers.search: a study's total of trials, resume after a kill, two processes sharing one study, pruning,
the best recipe, bad input. Tiny trials (28 px, 60 images, 3 epochs) on the synthetic set: one search, killed
and resumed by two processes at once, serves the slow tests (each training costs seconds of tracing)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"img_size": 28, "epochs": 3, "max_images": 60, "seed": 0, "space": {"batch_size": 16}}
TIMEOUT = 600  # seconds: generous, for a busy machine


def cli_args(data_dir: Path, out_dir: Path, study: str, trials: int, pruner: str = "median") -> list[str]:
    """The command line of a tiny search (the same as :data:`SETTINGS`)."""
    return [
        *("--study", study, "--trials", str(trials), "--data-dir", str(data_dir), "--out-dir", str(out_dir)),
        *("--img-size", "28", "--epochs", "3", "--max-images", "60", "--seed", "0"),
        *("--set", "batch_size=16", "--pruner", pruner, "--verbose", "0"),
    ]


def start_search(args: list[str], out_dir: Path) -> subprocess.Popen:
    """``python -m helpers.search ARGS`` in a new process (its output in ``out_dir/search-*.log``)."""
    env = {**os.environ, "DERM_CACHE_DIR": str(out_dir / "cache")}
    command = [sys.executable, "-m", "helpers.search", *args]
    with open(out_dir / f"search-{time.monotonic_ns()}.log", "w") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the search process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def trials_of(out_dir: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    from helpers.search import load_search

    return load_search(study, out_dir=out_dir).get_trials()


def running_in(out_dir: Path, study: str, pid: int) -> bool:
    """Whether process ``pid`` runs a trial of the study."""
    if not (out_dir / "study.db").is_file():
        return False
    try:
        trials = trials_of(out_dir, study)
    except Exception:  # the study is being created
        return False
    return any(
        t.state == TrialState.RUNNING and t.user_attrs.get("process", {}).get("pid") == pid for t in trials
    )


@pytest.fixture(scope="module")
def search(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-trial search killed (SIGKILL) in trial 0 after its first epoch; the same command started again in
    another process, and, once that process runs a trial, the same search in this process too, with a pruner
    that stops every trial after its first epoch; then the same command once more, here."""
    from helpers.search import main, run_search

    out = tmp_path_factory.mktemp("search")
    args = cli_args(synthetic_dir, out, "killed", trials=2)
    killed = start_search(args, out)
    try:
        epoch_1 = out / "killed" / "trial-0000" / "backup" / "epoch-0001"
        wait_for(epoch_1.is_dir, killed, "trial 0's epoch 1", every=0.02)  # killed well before epoch 3 ends
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    at_kill = {t.number: t.state for t in trials_of(out, "killed")}
    again = start_search(args, out)
    try:
        wait_for(lambda: running_in(out, "killed", again.pid), again, "the second process's trial")
        pruner = optuna.pruners.ThresholdPruner(lower=1.0)  # no trial reaches it: each is pruned at epoch 1
        here = run_search("killed", 2, data_dir=synthetic_dir, out_dir=out, pruner=pruner,
                          cache=out / "cache", verbose=0, **SETTINGS)  # fmt: skip
        assert again.wait(timeout=TIMEOUT) == 0
    finally:
        again.kill()
    os.environ["DERM_CACHE_DIR"] = str(out / "cache")
    try:
        last = main(args)  # once more: the study has its trials, nothing runs
    finally:
        del os.environ["DERM_CACHE_DIR"]
    pids = {"killed": killed.pid, "again": again.pid, "here": os.getpid()}
    return {"out": out, "at_kill": at_kill, "pids": pids, "ran_here": here.ran, "last": last}


@pytest.mark.slow
def test_a_killed_search_resumes_and_retries_the_killed_trial_once(search):
    out = search["out"]
    assert search["at_kill"] == {0: TrialState.RUNNING}
    trials = trials_of(out, "killed")
    states = [(t.number, t.state, t.system_attrs.get("failed_trial")) for t in trials]
    assert states[:2] == [(0, TrialState.FAIL, None), (1, TrialState.COMPLETE, 0)]
    killed, retry = trials[:2]
    assert killed.user_attrs["process"]["pid"] == search["pids"]["killed"]
    assert retry.params == killed.params
    # the second process retried it, once, resuming the killed trial's run after its last completed epoch;
    # the last command found the study finished and trained nothing (the run has 2 sessions, not 3)
    assert retry.user_attrs["process"]["pid"] == search["pids"]["again"]
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert len(json.loads((out / "killed" / "trial-0000" / "manifest.json").read_text())["sessions"]) == 2
    assert pd.read_csv(out / "killed" / "trial-0000" / "history.csv")["epoch"].tolist() == [1, 2, 3]
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    assert search["last"] == 0 and len(trials_of(out, "killed")) == 3


@pytest.mark.slow
def test_two_processes_share_one_study(search):
    """The second process and this one share the study of 2 trials (the killed trial 0, retried, and one
    more): each runs one, none runs a trial the other ran. This process's pruner stopped its trial after the
    first epoch; the other's (median, after 4 finished trials) none."""
    trials = trials_of(search["out"], "killed")
    assert [(t.number, t.state) for t in trials] == [
        (0, TrialState.FAIL),
        (1, TrialState.COMPLETE),
        (2, TrialState.PRUNED),
    ]
    by_pid = {name: [t.number for t in trials if t.user_attrs["process"]["pid"] == pid]
              for name, pid in search["pids"].items()}  # fmt: skip
    assert by_pid == {"killed": [0], "again": [1], "here": [2]}  # their counts add up to the total
    assert search["ran_here"] == [2]
    assert trials[2].params != trials[0].params  # the new trial's settings are not the killed one's
    assert [t.user_attrs["epochs"] for t in trials[1:]] == [3, 1]
    assert sorted(trials[2].intermediate_values) == [1]


@pytest.mark.slow
def test_the_best_recipe_reproduces_its_trial(search, synthetic_dir):
    """best_recipe.json + its train_args are exactly the trial's training: train() resumes the trial's
    finished run (it refuses other settings) and has nothing left to do."""
    from helpers.search import load_search
    from helpers.train import load_recipe, train

    out = search["out"] / "killed"
    assert {"trials.csv", "optimization_history.png", "best_recipe.json"} <= {p.name for p in out.iterdir()}
    table = pd.read_csv(out / "trials.csv", index_col="trial")
    assert table["state"].tolist() == ["fail", "complete", "pruned"]
    best = load_search("killed", out_dir=out.parent).best_trial
    recipe, train_args = load_recipe(out / "best_recipe.json")
    assert train_args["batch_size"] == 16 and train_args["learning_rate"] == best.params["learning_rate"]
    assert recipe.label_smoothing == best.params["label_smoothing"]
    origin = best.system_attrs.get("failed_trial", best.number)
    settings = {k: v for k, v in SETTINGS.items() if k != "space"}
    result = train(
        data_dir=synthetic_dir,
        run_dir=out / f"trial-{origin:04d}",
        recipe=str(out / "best_recipe.json"),
        cache=search["out"] / "cache",
        figures_dir=search["out"] / "figures",
        patience=3,
        verbose=0,
        **settings,
        **train_args,
    )
    assert (result.start_epoch, result.epochs_completed) == (3, 3)
    assert result.best_value == pytest.approx(best.value)


@pytest.mark.slow
def test_a_study_name_with_another_space_or_budget_is_refused(search, synthetic_dir):
    from helpers.search import SearchError, run_search

    common = {
        **SETTINGS,
        "study": "killed",
        "n_trials": 2,
        "data_dir": synthetic_dir,
        "out_dir": search["out"],
    }
    with pytest.raises(SearchError, match=r"exists with another search space.*space\.dropout"):
        run_search(**{**common, "space": {"batch_size": 16, "dropout": (0.0, 0.3)}})
    with pytest.raises(SearchError, match=r"epochs: study has 3, asked 2"):
        run_search(**{**common, "epochs": 2})


def test_a_failed_trial_is_retried_once_and_a_dead_process_trial_is_failed():
    """Without training: a running trial whose process is gone is failed and queued again; a retry that
    fails is not queued again; a live process's trial is left alone."""
    from helpers.search import recover_dead_trials, retry_once

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = optuna.create_study(direction="maximize")
    for pid, start in ((gone.pid, None), (os.getpid(), None)):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        host = socket.gethostname()
        trial.set_user_attr("process", {"host": host, "pid": pid, "start": start, "trial": trial.number})
    assert recover_dead_trials(study) == [0]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.ask()  # the queued retry, with the failed trial's settings
    assert retry.number == 2 and retry.params == study.trials[0].params
    study.tell(retry, state=TrialState.FAIL)
    retry_once(study, 2)
    assert len(study.trials) == 3 and recover_dead_trials(study) == []


def test_a_trial_whose_heartbeat_stopped_on_another_machine_is_retried(tmp_path):
    """Without training: a running trial of another machine is failed and queued again once its heartbeat
    is older than the grace period (1 s here, 60 s in helpers.search)."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from helpers.search import recover_dead_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna
        storage = RDBStorage(
            f"sqlite:///{tmp_path / 'study.db'}",
            heartbeat_interval=1,
            grace_period=1,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
        study = optuna.create_study(storage=storage, direction="maximize")
        trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("process", {"host": "elsewhere", "pid": 1, "start": None, "trial": 0})
    storage.record_heartbeat(trial._trial_id)
    assert recover_dead_trials(study) == [] and study.trials[0].state == TrialState.RUNNING  # alive
    time.sleep(2.5)
    assert recover_dead_trials(study) == []  # not this machine's process: found by its heartbeat
    assert [(t.state, t.system_attrs.get("failed_trial")) for t in study.get_trials()] == [
        (TrialState.FAIL, None),
        (TrialState.WAITING, 0),
    ]


BAD_INPUT = [
    ({"space": {"label_smoothing": (0.0, 1.5)}}, r"label_smoothing.*outside its range \[0, 0.99\]"),
    ({"space": {"width": (0.5, 1.5)}}, r"width: 1.5 gives 3\d\d,\d\d\d parameters.*widest within it is 1.2"),
    ({"space": {"momentum": (0.8, 0.99)}}, r"Unknown search setting\(s\) \['momentum'\]"),
    ({"space": {"distill_alpha": (0.1, 0.9)}}, r"searched only with a teacher"),
    ({"space": {"batch_size": (16, 64)}}, r"batch_size: give a list of whole numbers"),
    ({"space": {"learning_rate": (0.0, 0.01, "log")}}, r"learning_rate.*outside its range"),
    ({"storage": "not a url"}, r"is not a database URL"),
    ({"storage": "nosuchdb://host/db"}, r"unknown database kind 'nosuchdb'"),
    ({"storage": "sqlite:///{tmp}/a-file/study.db"}, r"cannot write .*a-file/study.db"),
    ({"storage": "sqlite:///{tmp}/a-file"}, r"Cannot open the storage .*file is not a database"),
    ({"study": "two words"}, r"study name 'two words'"),
    ({"n_trials": 0}, r"n_trials must be an int >= 1"),
    ({"pruner": "random"}, r"pruner must be one of"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_INPUT, ids=[m[:24] for _, m in BAD_INPUT])
def test_bad_input_gets_a_clear_error_before_any_training(kwargs, message, synthetic_dir, tmp_path):
    from helpers.search import SearchError, run_search

    (tmp_path / "a-file").write_text("not a database\n")
    kwargs = {k: v.format(tmp=tmp_path) if k == "storage" else v for k, v in kwargs.items()}
    settings = {**SETTINGS, "space": {**SETTINGS["space"], **kwargs.pop("space", {})}}
    with pytest.raises(SearchError, match=message):
        run_search(
            **{"data_dir": synthetic_dir, "out_dir": tmp_path / "out", "verbose": 0, **settings, **kwargs}
        )
    assert not list((tmp_path / "out").glob("*/trial-*"))


def test_the_command_line_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from helpers.search import main

    assert main(["--out-dir", str(tmp_path), "--set", "dropout=0:1.5"]) == 2
    assert main(["--out-dir", str(tmp_path), "--set", "dropout=lots"]) == 2
    err = capsys.readouterr().err
    assert "error: Search setting dropout" in err and "error: --set 'dropout=lots'" in err
    assert "Traceback" not in err
